"""Lifecycle events for the console's live view: one temporary queue per gateway, fanned out in process.

Each gateway binds a server-named, exclusive, auto-delete queue to the events exchange (`approval.#`), so
every gateway sees every event and no queue outlives its gateway. Events go to each open stream whose
caller may see them: the caller's tenant only, and for an operator only the approvals that operator
requested (as the API's list does; for an approval requested before this gateway started, the stream
asks approvals with the operator's own token). The last events are kept so a reconnecting stream replays what it
missed after its Last-Event-ID; when that id is no longer known, or the broker connection was lost
meanwhile, the stream is told to `resync` (reload what it shows) instead.
"""

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import pydantic
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from pj_common.auth import Principal
from pj_common.messages import ApprovalEvent
from pj_common.topology import require_topology
from pj_common.transport import Supervisor

log = logging.getLogger("pj.gateway.events")

SUBSCRIBER_BUFFER = 256  # events waiting for one slow stream before it is told to resync
OWNERS_KEPT = 50_000  # approval id -> requester, to show operators only their own approvals' events


@dataclass(frozen=True, slots=True)
class Resync:
    """The stream may have missed events: reload, then carry on."""

    reason: str


StreamItem = ApprovalEvent | Resync


@dataclass(eq=False)
class Subscription:
    principal: Principal
    queue: asyncio.Queue[StreamItem] = field(default_factory=lambda: asyncio.Queue(SUBSCRIBER_BUFFER))

    def offer(self, item: StreamItem) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:  # too slow: drop its backlog and let it reload instead
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(Resync("too many events at once"))


class EventHub:
    """Consumes the events exchange through this gateway's temporary queue and feeds open streams."""

    def __init__(self, amqp_url: str, exchange: str, *, history: int) -> None:
        self._exchange = exchange
        self._recent: deque[ApprovalEvent] = deque(maxlen=history)
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._subscribers: set[Subscription] = set()
        self._connected_before = False
        self._supervisor = Supervisor(amqp_url, self._setup, name="gateway-events", on_lost=self._lost)

    def start(self) -> None:
        self._supervisor.start()

    async def stop(self) -> None:
        await self._supervisor.stop()

    async def wait_ready(self, timeout: float) -> bool:
        return await self._supervisor.wait_ready(timeout)

    async def _setup(self, connection: AbstractConnection) -> None:
        channel = await connection.channel()
        # Approvals declares the exchange (the gateway's broker user may not): until then, wait for it.
        await require_topology(channel, exchanges=(self._exchange,))
        exchange = await channel.get_exchange(self._exchange, ensure=False)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="approval.#")
        await queue.consume(self._on_message, no_ack=True)  # a live view: an event lost with the queue is resynced
        self._supervisor.watch(channel)
        if self._connected_before:  # events of the outage went nowhere: whoever streams reloads now
            self._broadcast_resync("the gateway is back on the broker")
        self._connected_before = True

    def _lost(self) -> None:
        self._broadcast_resync("the gateway lost its broker connection")

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event = ApprovalEvent.model_validate_json(message.body)
        except pydantic.ValidationError:
            log.warning("event that breaks the contract dropped", extra={"scope": "gateway.events.invalid"})
            return
        self.publish(event)

    def publish(self, event: ApprovalEvent) -> None:
        """Remember one event and hand it to every stream that may see it (duplicates are dropped)."""
        if any(e.event_id == event.event_id for e in self._recent):
            return  # the relay publishes at least once
        self._recent.append(event)
        if event.type == "approval.created" and event.actor:
            self.remember_owner(event.approval_id, event.actor)
        for subscription in list(self._subscribers):
            if self.visible(subscription.principal, event) is not False:
                subscription.offer(event)

    def visible(self, principal: Principal, event: ApprovalEvent) -> bool | None:
        """The caller's tenant only; operators only their own requests' events. None: an operator and an
        approval requested before this gateway started; the stream asks approvals (`remember_owner`)."""
        if event.tenant_id != principal.tenant:
            return False
        if principal.sees_whole_tenant:
            return True
        owner = self._owners.get(event.approval_id)
        return None if owner is None else owner == principal.subject

    def remember_owner(self, approval_id: str, requester: str) -> None:
        """Who requested an approval, as approvals answered a stream that asked."""
        self._owners[approval_id] = requester
        if len(self._owners) > OWNERS_KEPT:
            self._owners.popitem(last=False)

    def _broadcast_resync(self, reason: str) -> None:
        for subscription in list(self._subscribers):
            subscription.offer(Resync(reason))

    def _missed_since(self, principal: Principal, last_event_id: str) -> list[StreamItem]:
        ids = [e.event_id for e in self._recent]
        if last_event_id not in ids:
            return [Resync("the last event seen is no longer kept")]
        after = list(self._recent)[ids.index(last_event_id) + 1:]
        return [e for e in after if self.visible(principal, e) is not False]

    async def subscribe(self, principal: Principal, last_event_id: str | None) -> AsyncGenerator[StreamItem, None]:
        """The caller's events from now on, after those missed since `last_event_id` when given."""
        subscription = Subscription(principal)
        self._subscribers.add(subscription)  # before the replay: nothing falls between the two
        try:
            if last_event_id:
                for item in self._missed_since(principal, last_event_id):
                    yield item
            while True:
                yield await subscription.queue.get()
        finally:
            self._subscribers.discard(subscription)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
