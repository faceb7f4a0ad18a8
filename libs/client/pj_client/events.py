"""Lifecycle events as they happen: a temporary queue of our own bound to `<prefix>.events`.

The queue is exclusive and server-named, so it vanishes with the connection and never collects
events nobody reads. Events are published at least once: one seen again (same `eventId`) is skipped.
Only events published after the queue is bound arrive (the exchange keeps nothing for absent queues).
"""

from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable

import aio_pika
from pydantic import ValidationError

from pj_common.errors import ErrorCode
from pj_common.messages import ApprovalEvent
from pj_common.topology import Topology

from .errors import NotFound, Unavailable

ALL_EVENTS = "approval.#"


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether a topic exchange would route `routing_key` to a binding with `pattern` (`*`: one word,
    `#`: zero or more), for the events that come through the gateway's stream, which binds everything."""
    return _words_match(pattern.split("."), routing_key.split("."))


def _words_match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_words_match(rest, words[skip:]) for skip in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and _words_match(rest, words[1:])


class RecentIds:
    """The last `size` event ids seen, to drop redelivered copies without growing for ever."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first_time(self, event_id: str) -> bool:
        """True the first time an id is offered (within the last `size`)."""
        if event_id in self._seen:
            return False
        self._seen[event_id] = None
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return True


async def approval_events(amqp_url: str, *, prefix: str = "pj", pattern: str = ALL_EVENTS,
                          tenant: str | None = None, on_ready: Callable[[], None] | None = None
                          ) -> AsyncGenerator[ApprovalEvent, None]:
    """Yield each event matching `pattern` (a topic pattern such as `approval.dispatch.*`) and, when
    given, of `tenant`, until the caller stops iterating. `on_ready` runs once the queue is bound."""
    topology = Topology(prefix)
    try:
        connection = await aio_pika.connect(amqp_url, timeout=10, client_properties={"connection_name": "pj-watch"})
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        raise Unavailable(ErrorCode.BROKER_UNAVAILABLE, f"cannot reach RabbitMQ: {type(exc).__name__}") from exc
    seen = RecentIds()
    async with connection:
        channel = await connection.channel()
        try:
            # Passive: watching must not create the exchange of a system that never ran.
            exchange = await channel.declare_exchange(topology.events, aio_pika.ExchangeType.TOPIC, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise NotFound(ErrorCode.NOT_FOUND, f"no exchange {topology.events}: has the system run with "
                                                f"PJ_AMQP_PREFIX={prefix}?") from exc
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=pattern)
        if on_ready is not None:
            on_ready()
        async with queue.iterator(no_ack=True) as messages:
            async for message in messages:
                try:
                    event = ApprovalEvent.model_validate_json(message.body)
                except ValidationError:
                    continue  # not an event of this contract: nothing to show, nothing to retry
                if (tenant is None or event.tenant_id == tenant) and seen.first_time(event.event_id):
                    yield event
