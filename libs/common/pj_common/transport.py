"""The one thin AMQP layer: a reconnecting connection, publishing, consuming with ack/nack, and RPC.

Delivery rules live here and nowhere else: a handler that returns is acked (after its commit),
`Permanent` or an invalid message is dead-lettered at once, anything else is retried after a back-off
until its last allowed delivery (MAX_DELIVERIES), and then dead-lettered too.

How long a broken dependency may last before anything is dead-lettered: a message failing on
delivery k (k earlier deliveries, 0-based) waits between half and all of min(30 s, 0.1 s * 2^k)
before it goes back. Its first 9 waits add up to at least 25.5 s; every later one is at least 15 s
(on average 22.5 s). The transport dead-letters it when delivery number MAX_DELIVERIES = 200 fails,
after 199 waits: at least 25.5 + 190 * 15 = 2,875 s (48 minutes) and typically 72 minutes, plus the
time each failed attempt itself took. So a database or approvals outage of 30 minutes dead-letters
nothing, with more than half an hour to spare on average, and a message is retried within 30 s of
the outage ending. The broker's own limit (topology.DELIVERY_LIMIT, 250) sits above this one: it only
catches a message whose consumer crashes on every delivery, which the transport never sees fail.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    DeliveryMode,
)
from pamqp.commands import Basic
from pydantic import ValidationError

from .backoff import backoff_s
from .deadletters import COUNT_MAX, DeadLetterRoute, DeadReason, dead_letter_headers, scrub
from .errors import ErrorCode, GateError
from .runtime import cancel_and_wait
from .topology import Topology, TopologyNotReady

log = logging.getLogger("pj.transport")

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


class Permanent(Exception):
    """Processing can never succeed: dead-letter the message with this reason."""


class Retryable(Exception):
    """Processing failed for now: put the message back after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def broker_unavailable(detail: str = "message broker unavailable") -> GateError:
    """The error for "no broker connection right now" (a 503 at the gateway)."""
    return GateError(ErrorCode.BROKER_UNAVAILABLE, detail)


def reconnect_delay_s(attempt: int) -> float:
    """Seconds before reconnect number `attempt`: 0.2 s doubling to 5 s, jittered so that many
    processes losing the broker together do not all come back at the same instant."""
    return backoff_s(attempt, base=0.2, cap=5.0)


# The longest hold of a failed message, and the delivery whose failure dead-letters it (see the module).
REDELIVERY_CAP_S = 30.0
MAX_DELIVERIES = 200


def redelivery_delay_s(delivery_count: int, hint: float | None = None) -> float:
    """Seconds to hold a failed message before it goes back to its queue.

    Between half and all of 0.1 s doubling per earlier delivery, up to 30 s: a dead database is not
    hammered by a hot loop, and the floor keeps the time MAX_DELIVERIES takes from shrinking with
    the jitter. A handler's own `retry_after` wins, up to 30 s, but never shortens the wait below
    that floor (it would use up the deliveries faster than the sum in the module docstring says).
    """
    floor = min(REDELIVERY_CAP_S, 0.1 * 2.0 ** min(delivery_count, 16)) / 2
    if hint is not None:
        return max(floor, min(hint, REDELIVERY_CAP_S))
    return floor + backoff_s(min(delivery_count, 16) + 1, base=0.05, cap=REDELIVERY_CAP_S / 2)


class Supervisor:
    """Keeps one AMQP connection up: connects, runs `setup`, and starts over when the connection drops."""

    def __init__(
        self,
        url: str,
        setup: Callable[[AbstractConnection], Awaitable[None]],
        *,
        name: str,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._url = url
        self._setup = setup
        self._name = name
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None  # the last connection's close, if under way
        self._lost = asyncio.Event()
        self.connection: AbstractConnection | None = None
        self.ready = asyncio.Event()

    def watch(self, channel: AbstractChannel) -> AbstractChannel:
        """Start over if this channel closes while its connection lives on (the broker closes a channel
        on a protocol error or an ack timeout): a consumer on a dead channel would never get a message."""
        lost = self._lost  # this connection's: a channel of an older one must not end the new one
        channel.close_callbacks.add(lambda *_: lost.set())
        return channel

    def start(self) -> None:
        """Connect in the background and keep reconnecting until `stop`."""
        self._task = asyncio.create_task(self._run(), name=f"amqp-supervisor-{self._name}")

    async def wait_ready(self, timeout: float) -> bool:
        """True once connected and set up, False if that took longer than `timeout`."""
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Stop reconnecting and close the connection."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self.connection is not None:
            await self.connection.close()
        if self._closing is not None:  # started as the loop was cancelled: see it through
            with contextlib.suppress(Exception):
                await self._closing

    async def _run(self) -> None:
        attempt = 1
        while True:
            try:
                connection = await aio_pika.connect(self._url, timeout=5, client_properties={
                    "connection_name": self._name
                })
            except (OSError, aio_pika.exceptions.AMQPError, TimeoutError) as exc:
                delay = reconnect_delay_s(attempt)
                log.warning("amqp connect failed (%s); retrying in %.1fs", exc, delay,
                            extra={"scope": "amqp.connect_failed"})
                await asyncio.sleep(delay)
                attempt += 1
                continue
            # A connection the broker drops fires close_callbacks; `closed()` resolves only on our close.
            lost = self._lost = asyncio.Event()
            connection.close_callbacks.add(lambda *_, lost=lost: lost.set())
            try:
                await self._setup(connection)
                self.connection = connection
                self.ready.set()
                attempt = 1
                log.info("amqp connected", extra={"scope": "amqp.connected", "component": self._name})
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except TopologyNotReady as exc:
                log.warning("amqp setup waits: %s", exc, extra={"scope": "amqp.topology_missing"})
            except Exception:
                log.exception("amqp session failed", extra={"scope": "amqp.session_failed"})
            finally:
                self.ready.clear()
                self.connection = None
                if self._on_lost is not None:
                    self._on_lost()
                if not connection.is_closed:
                    self._closing = asyncio.ensure_future(connection.close())
                    await asyncio.shield(self._closing)
            delay = reconnect_delay_s(attempt)
            log.warning("amqp connection lost; reconnecting in %.1fs", delay,
                        extra={"scope": "amqp.connection_lost"})
            await asyncio.sleep(delay)
            attempt += 1


def json_message(
    body: bytes,
    *,
    message_id: str | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    persistent: bool = True,
    expiration_s: float | None = None,
    headers: dict[str, Any] | None = None,
) -> aio_pika.Message:
    """Build a JSON message with the properties this system relies on."""
    return aio_pika.Message(
        body,
        content_type="application/json",
        message_id=message_id,
        correlation_id=correlation_id,
        reply_to=reply_to,
        delivery_mode=DeliveryMode.PERSISTENT if persistent else DeliveryMode.NOT_PERSISTENT,
        expiration=expiration_s,
        headers=headers,
    )


async def publish_confirmed(
    channel: AbstractChannel, routing_key: str, message: aio_pika.Message, *, exchange: str = "",
    mandatory: bool = True,
) -> None:
    """Publish on a confirm channel and return once the broker has taken responsibility for it.

    With `mandatory`, a message no queue would take raises instead of vanishing.
    """
    target = channel.default_exchange if not exchange else await channel.get_exchange(exchange, ensure=False)
    await target.publish(message, routing_key=routing_key, mandatory=mandatory)


Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]


def delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times the broker delivered `message` before (quorum queues count; 0 when unknown).

    The header is checked like any input: only a non-negative integer (not a boolean) counts, and a
    count beyond any real one is taken as that bound, so the back-off arithmetic cannot overflow.
    """
    count = (message.headers or {}).get("x-delivery-count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return 0
    return min(count, COUNT_MAX)


async def settle(handler: Handler, message: AbstractIncomingMessage, *, queue: str = "",
                 dead_letters: DeadLetterRoute | None = None, max_bytes: int | None = None) -> None:
    """Run `handler` and ack, dead-letter or retry the message by what it did.

    With `dead_letters`, a dead letter is republished there with why (and then acked); without, it
    is rejected, and the queue's own dead-letter exchange (if any) takes it with only `x-death`.
    A message over `max_bytes` is dead-lettered at once, never handed to `handler`.
    """
    if max_bytes is not None and len(message.body) > max_bytes:
        await _dead_letter(message, DeadReason.OVERSIZED, Permanent(
            f"message of {len(message.body)} bytes is over PJ_MAX_MESSAGE_BYTES ({max_bytes})"),
            queue=queue or message.routing_key or "", route=dead_letters)
        return
    try:
        await handler(message)
    except (Permanent, ValidationError, ValueError) as exc:
        reason = DeadReason.PERMANENT if isinstance(exc, Permanent) else DeadReason.INVALID
        await _dead_letter(message, reason, exc, queue=queue or message.routing_key or "", route=dead_letters)
    except Exception as exc:
        if dead_letters is not None and delivery_count(message) + 1 >= MAX_DELIVERIES:
            await _dead_letter(message, DeadReason.DELIVERY_LIMIT, exc, queue=queue or message.routing_key or "",
                               route=dead_letters)
            return
        await _retry_later(message, exc)
    else:
        await _quietly(message.ack())


async def _retry_later(message: AbstractIncomingMessage, exc: BaseException, *, scope: str = "amqp.retry") -> None:
    delay = redelivery_delay_s(delivery_count(message), exc.retry_after if isinstance(exc, Retryable) else None)
    log.warning("message processing failed, retrying in %.2fs: %r", delay, exc, extra={
        "scope": scope, "routing_key": message.routing_key, "message_id": message.message_id,
    })
    await asyncio.sleep(delay)
    await _quietly(message.nack(requeue=True))


async def _dead_letter(message: AbstractIncomingMessage, reason: DeadReason, exc: BaseException, *,
                       queue: str, route: DeadLetterRoute | None) -> None:
    deliveries = delivery_count(message) + 1
    fields = {"scope": "amqp.dead_lettered", "routing_key": message.routing_key, "queue": queue,
              "message_id": message.message_id, "reason": reason.value, "deliveries": deliveries}
    if route is None:
        log.error("message dead-lettered: %s", exc, extra=fields)
        await _quietly(message.reject(requeue=False))
        return
    error = scrub(f"{type(exc).__name__}: {exc}", route.secrets)
    headers = dead_letter_headers(message.headers, reason=reason, queue=queue, deliveries=deliveries,
                                  error=error, now=time.time())
    copy = aio_pika.Message(
        message.body, headers=headers, content_type=message.content_type,
        content_encoding=message.content_encoding, delivery_mode=DeliveryMode.PERSISTENT,
        correlation_id=message.correlation_id, reply_to=message.reply_to, message_id=message.message_id,
        timestamp=message.timestamp, type=message.type, app_id=message.app_id)
    try:
        exchange = await route.channel.get_exchange(route.exchange, ensure=False)
        confirmed = isinstance(await exchange.publish(copy, routing_key=queue, mandatory=True), Basic.Ack)
    except (aio_pika.exceptions.AMQPError, RuntimeError, OSError, TimeoutError) as publish_error:
        log.warning("dead-letter publish failed: %r", publish_error, extra={"scope": "amqp.dead_letter_failed"})
        confirmed = False
    if not confirmed:
        # The original stays in its queue: nothing is lost, and it is tried again after the back-off.
        await _retry_later(message, exc, scope="amqp.dead_letter_failed")
        return
    log.error("message dead-lettered (%s): %s", reason.value, error, extra=fields)
    await _quietly(message.ack())


async def _quietly(settlement: Awaitable[None]) -> None:
    # A channel that closed under us means the broker redelivers the message: nothing is lost.
    try:
        await settlement
    except (aio_pika.exceptions.AMQPError, RuntimeError) as exc:
        log.warning("could not settle message: %r", exc, extra={"scope": "amqp.settle_failed"})


# Handlers running now (see `consume`).
_HANDLERS: set[asyncio.Task[None]] = set()


async def consume(channel: AbstractChannel, queue_name: str, handler: Handler, *, prefetch: int,
                  dead_letters: DeadLetterRoute | None = None,
                  max_bytes: int | None = None) -> Callable[[], Awaitable[None]]:
    """Start consuming `queue_name` with manual acks and at most `prefetch` messages in flight.

    `dead_letters`: where this queue's dead letters go, with why in their headers (see `settle`).
    `max_bytes`: larger messages are dead-lettered unread (PJ_MAX_MESSAGE_BYTES).
    Returns a function that stops new deliveries (messages already delivered finish as usual).

    A handler runs to its end even when the channel closes under it: aiormq cancels a channel's
    consumer tasks when it closes, which would cut a handler off halfway (a dispatch step that ran,
    its report not yet confirmed) and lose what it did. So each handler runs in a task of its own,
    shielded from that cancellation; its settlement on the dead channel is then a no-op, and the
    broker's redelivery of the message is recognised by the consumers (claims, message ids).
    """
    if dead_letters is not None and not dead_letters.channel.publisher_confirms:
        raise ValueError("the dead-letter channel needs publisher confirms: a dead letter is acked only once "
                         "its copy is confirmed")
    await channel.set_qos(prefetch_count=prefetch)
    queue = await channel.get_queue(queue_name, ensure=False)

    async def on_message(message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(settle(handler, message, queue=queue_name, dead_letters=dead_letters,
                                          max_bytes=max_bytes))
        _HANDLERS.add(task)  # a reference, so the task lives on once the channel's own task is cancelled
        task.add_done_callback(_HANDLERS.discard)
        await asyncio.shield(task)

    tag = await queue.consume(on_message)

    async def stop_consuming() -> None:
        if not channel.is_closed:
            await queue.cancel(tag)

    return stop_consuming


async def reply(channel: AbstractChannel, request: AbstractIncomingMessage, body: bytes,
                *, correlation_id: str | None = None) -> None:
    """Answer an RPC request on its reply-to address.

    mandatory=False: RabbitMQ 3.10 returns replies to direct reply-to as unroutable even when
    they were delivered (rabbitmq-server issue 6124).
    """
    if not request.reply_to:
        return
    await send_reply(channel, request.reply_to, body, correlation_id=correlation_id or request.correlation_id or "")


async def send_reply(channel: AbstractChannel, reply_to: str, body: bytes, *, correlation_id: str) -> None:
    """Publish a reply to a direct reply-to address (which may belong to another process's request)."""
    message = json_message(body, correlation_id=correlation_id, persistent=False)
    await channel.default_exchange.publish(message, routing_key=reply_to, mandatory=False)


class RpcAnswer(NamedTuple):
    """A reply body; `done` when it is the final `<correlation_id>.done` reply of a follow-up."""

    body: bytes
    done: bool


class RpcClient:
    """Request/reply over RabbitMQ direct reply-to, one reply consumer and a correlation-id -> future map.

    Requests go to `queue` through the exchange `inlet` (Topology.inlet): a broker user may write to
    that exchange without being able to reach any other queue.
    """

    def __init__(self, *, queue: str, inlet: str) -> None:
        self._routing_key = queue
        self._inlet = inlet
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._pending: dict[str, asyncio.Future[bytes]] = {}

    @classmethod
    def to(cls, topology: Topology, queue: str) -> "RpcClient":
        """A client of `queue`, one of topology.inlet_queues (commands or leases)."""
        return cls(queue=queue, inlet=topology.inlet(queue))

    @property
    def connected(self) -> bool:
        return self._channel is not None and not self._channel.is_closed

    async def attach(self, connection: AbstractConnection) -> AbstractChannel:
        """Open the request channel and its reply consumer on a fresh connection; returns the channel."""
        channel = await connection.channel(publisher_confirms=False)
        # Direct reply-to is a pseudo-queue: it is consumed, never declared.
        replies = aio_pika.Queue(channel, DIRECT_REPLY_TO, durable=False, exclusive=False,
                                 auto_delete=False, arguments=None, passive=True)
        await replies.consume(self._on_reply, no_ack=True)
        self._exchange = await channel.get_exchange(self._inlet, ensure=False)  # an object only: no round trip
        self._channel = channel
        return channel

    def detach(self) -> None:
        """The connection is gone: every call still waiting will never see its reply."""
        self._channel = self._exchange = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(broker_unavailable("connection to the broker lost; outcome unknown"))
        self._pending.clear()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(message.body)

    async def call(self, body: bytes, *, correlation_id: str, timeout: float) -> bytes:
        """Send one request and return its reply body (see `request`)."""
        return (await self.request(body, correlation_id=correlation_id, timeout=timeout)).body

    async def request(self, body: bytes, *, correlation_id: str, timeout: float,
                      follow_up_s: float = 0.0, is_follow_up: Callable[[bytes], bool] | None = None) -> RpcAnswer:
        """Send one request and return its reply, saying whether it is the final `.done` one.

        When `follow_up_s` > 0 and `is_follow_up(first reply)` says so, also wait up to that long
        for the final reply on `<correlation_id>.done` and return it; if it does not come in time,
        the first reply is returned. No reply within `timeout` raises `upstream_timeout`: the
        outcome is unknown, never "failed". A command the broker could not take raises
        `broker_unavailable`.
        """
        channel, exchange = self._channel, self._exchange
        if channel is None or channel.is_closed or exchange is None:
            raise broker_unavailable()
        loop = asyncio.get_running_loop()
        first: asyncio.Future[bytes] = loop.create_future()
        done_key = correlation_id + ".done"
        self._pending[correlation_id] = first
        final: asyncio.Future[bytes] | None = None
        if follow_up_s > 0:
            final = loop.create_future()
            self._pending[done_key] = final
        try:
            message = json_message(body, correlation_id=correlation_id, reply_to=DIRECT_REPLY_TO,
                                   persistent=False, expiration_s=timeout)
            await self._publish(exchange, message)
            try:
                answer = await asyncio.wait_for(first, timeout)
            except TimeoutError as exc:
                raise GateError(ErrorCode.UPSTREAM_TIMEOUT,
                                f"no reply from the approvals service within {timeout:g}s; outcome unknown"
                                ) from exc
            if final is None or is_follow_up is None or not is_follow_up(answer):
                return RpcAnswer(answer, done=False)
            try:
                return RpcAnswer(await asyncio.wait_for(final, follow_up_s), done=True)
            except (TimeoutError, GateError):  # still running, or the connection went: the first reply holds
                return RpcAnswer(answer, done=False)
        finally:
            self._pending.pop(correlation_id, None)
            self._pending.pop(done_key, None)
            _retrieve_exception(first)
            if final is not None:
                _retrieve_exception(final)

    async def _publish(self, exchange: AbstractExchange, message: aio_pika.Message) -> None:
        """Hand a command to the broker; any failure to do so is `broker_unavailable`."""
        try:
            await exchange.publish(message, routing_key=self._routing_key, mandatory=False)
        except asyncio.CancelledError as exc:
            # aiormq fails a publish caught by a closing connection with CancelledError; only a
            # cancellation of this task itself may propagate as one.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise broker_unavailable(f"could not publish the command: {exc!r}") from exc
        except Exception as exc:
            # AMQPError (ConnectionClosed, ChannelClosed...), ChannelInvalidStateError (a RuntimeError),
            # OSError, and the bare Exception aiormq sets on futures of a store closed without a reason:
            # a command the broker did not take, whatever the class.
            raise broker_unavailable(f"could not publish the command: {exc!r}") from exc


def _retrieve_exception(future: asyncio.Future[bytes]) -> None:
    # A future failed by `detach` while its call was elsewhere (a publish failing as the connection
    # closed) has an exception nobody will await: read it, so asyncio does not log "Future exception
    # was never retrieved".
    if future.done() and not future.cancelled():
        future.exception()
