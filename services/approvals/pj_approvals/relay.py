"""The relays that carry what approvals commits out to the broker, after the commit.

The order relay publishes the dispatch outbox: the statement that claims a dispatch writes its order
row, and the relay takes rows in a short statement (a claim until a deadline, SKIP LOCKED), publishes
them signed and with publisher confirms, all in flight together, then deletes them. No connection or
transaction is held while the broker confirms. It is woken at once after a commit (by this process,
or by LISTEN/NOTIFY from another), and polls as a fallback.

The event relay publishes approval_events in commit order (see migration 0008): it holds the cursor
row by a lease in one short statement, reads the events of finished transactions after it, publishes
them with confirms, all in flight together, and then advances the cursor by compare-and-set. A
relay that lost its lease meanwhile cannot move the cursor: the next holder publishes the same events
again (consumers dedupe on eventId), and none is ever skipped.
"""

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from aio_pika.abc import AbstractChannel
from psycopg_pool import AsyncConnectionPool

from pj_common.backoff import backoff_s
from pj_common.messages import ApprovalEvent, DispatchOrder
from pj_common.runtime import cancel_and_wait
from pj_common.signing import signature_headers
from pj_common.topology import Topology
from pj_common.transport import json_message, publish_confirmed

from . import store

log = logging.getLogger("pj.approvals.relay")

# The confirm channel of the current broker connection, or None while there is none.
ChannelSource = Callable[[], AbstractChannel | None]


class OrderRelay:
    """Publishes the dispatch outbox of one dispatch queue (see the module docstring)."""

    def __init__(self, pool: AsyncConnectionPool[Any], channel: ChannelSource, *, topology: Topology,
                 signing_key: str, batch: int, confirm_timeout_s: float) -> None:
        self._pool = pool
        self._channel = channel
        self._queue = topology.dispatch
        self._inlet = topology.inlet(topology.dispatch)  # only approvals' broker user may write to it
        self._key = signing_key
        self._batch = batch
        self._confirm_timeout_s = confirm_timeout_s

    async def step(self) -> bool:
        """One pass; True when a full batch went out (more may be waiting)."""
        return await self.relay_once() >= self._batch

    async def relay_once(self) -> int:
        """Take a batch, publish it, forget what the broker confirmed; the number published."""
        channel = self._channel()
        if channel is None:  # no broker now: the orders wait in the outbox, the reconnect wakes the relay
            return 0
        # The claim outlives the publish (bounded by the confirm timeout) by a second, so no other relay
        # publishes the rows meanwhile, and rows of a relay that died mid-publish are free soon after.
        async with self._pool.connection() as conn:
            rows = await store.take_outbox(conn, queue=self._queue, batch=self._batch,
                                           hold_s=self._confirm_timeout_s + 1)
        if not rows:
            return 0
        outcomes = await asyncio.gather(*(self._publish(channel, row) for row in rows), return_exceptions=True)
        sent = [row.id for row, outcome in zip(rows, outcomes, strict=True) if outcome is None]
        failed = [(row, outcome) for row, outcome in zip(rows, outcomes, strict=True) if outcome is not None]
        async with self._pool.connection() as conn:
            if sent:
                await store.delete_outbox(conn, sent)
            if failed:
                await store.release_outbox(conn, [row.id for row, _ in failed])
        for row, error in failed:
            log.warning("dispatch order not published yet; it stays in the outbox: %r", error, extra={
                "scope": "approval.dispatch.publish_failed", "approvalId": str(row.approval_id)})
        return len(sent)

    async def _publish(self, channel: AbstractChannel, row: store.OutboxRow) -> None:
        order = DispatchOrder.model_validate_json(row.body)  # never publish a body that breaks the contract
        message = json_message(row.body, message_id=order.message_id,
                               headers=signature_headers(row.body, self._key))
        await asyncio.wait_for(publish_confirmed(channel, self._queue, message, exchange=self._inlet),
                               self._confirm_timeout_s)


class OutboxListener:
    """Keeps one database connection LISTENing for the outbox's commit notices and wakes the relay on
    each (so an order queued by another approvals process goes out at once too); reconnects when the
    connection drops, waking the relay then as well, since notices may have been missed."""

    def __init__(self, conninfo: str, wake: Callable[[], None]) -> None:
        self._conninfo = conninfo
        self._wake = wake
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="outbox-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _run(self) -> None:
        attempt = 1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                    await store.listen_for_orders(conn)
                    attempt = 1
                    self._wake()
                    async for _ in conn.notifies():
                        self._wake()
            except psycopg.Error as exc:
                delay = backoff_s(attempt, base=0.5, cap=10.0)
                log.warning("outbox listener lost its connection (%s); again in %.1fs", exc, delay,
                            extra={"scope": "approval.dispatch.listen_failed"})
                await asyncio.sleep(delay)
                attempt += 1


class EventRelay:
    """Publishes approval_events to the events exchange in commit order (see the module docstring)."""

    def __init__(self, pool: AsyncConnectionPool[Any], channel: ChannelSource, *, exchange: str, name: str,
                 batch: int, confirm_timeout_s: float) -> None:
        self._pool = pool
        self._channel = channel
        self._exchange = exchange
        self._name = name
        self._batch = batch
        self._confirm_timeout_s = confirm_timeout_s
        self._holder = uuid.uuid4()  # this relay, as the cursor's lease names it

    async def step(self) -> bool:
        """One pass; True when a full batch went out (more may be waiting)."""
        return await self.relay_once() >= self._batch

    async def relay_once(self) -> int:
        """Read, publish and pass the next batch; the number published."""
        channel = self._channel()
        if channel is None:
            return 0
        async with self._pool.connection() as conn:
            # The lease outlives a publish that times out, so no other relay takes over mid-publish.
            seen = await store.take_relay_cursor(conn, self._name, holder=self._holder,
                                                 hold_s=self._confirm_timeout_s + 5)
            if seen is None:  # another approvals process relays
                return 0
            events = await store.committed_events_after(conn, seen, self._batch)
        if not events:
            return 0
        exchange = await channel.get_exchange(self._exchange, ensure=False)
        # Publishes in flight together: one confirm round trip for the batch, not one per event.
        await asyncio.wait_for(asyncio.gather(*(
            exchange.publish(json_message(event_message(e).to_json(), message_id=str(e.id)),
                             routing_key=e.event_type, mandatory=False)
            for e in events)), self._confirm_timeout_s)
        last = events[-1]
        async with self._pool.connection() as conn:
            advanced = await store.advance_relay_cursor(conn, self._name, holder=self._holder, seen=seen,
                                                        to=store.RelayPosition(last.tx, last.id))
        if not advanced:
            log.warning("event relay lost its cursor while publishing; the next holder publishes again",
                        extra={"scope": "events.relay_taken_over", "events": len(events)})
        return len(events)

    async def release(self) -> None:
        """Hand the cursor over at once (this process is stopping)."""
        async with self._pool.connection() as conn:
            await store.release_relay_cursor(conn, self._name, holder=self._holder)


def event_message(event: store.StoredEvent) -> ApprovalEvent:
    """A stored event as the events exchange carries it (its id is its eventId)."""
    return ApprovalEvent(event_id=str(event.id), type=event.event_type,
                         approval_id=str(event.approval_id), tenant_id=event.tenant_id, action_id=event.action_id,
                         plan_hash=event.plan_hash,
                         actor=event.actor, from_status=event.from_status, to_status=event.to_status,
                         occurred_at=event.occurred_at, correlation_id=event.correlation_id, note=event.note)
