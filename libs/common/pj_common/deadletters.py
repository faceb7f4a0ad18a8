"""Dead letters: why a message was dead-lettered (its headers), and listing and replaying them.

    python -m pj_common.deadletters list [--json] [--limit N]      (make dlq)
    python -m pj_common.deadletters replay (--id ID ... | --all)   (make dlq-replay ID=… | ALL=1)
    python -m pj_common.deadletters discard --id ID ...           (garbage: printed, then removed)

A message reaches `<prefix>.dead` two ways. The transport dead-letters one a handler can never process
(`Permanent`, an invalid body, or a failure on its last allowed delivery) by republishing it to the
dead-letter exchange with the `x-pj-*` headers below, under publisher confirms, and acking the
original only once the copy is confirmed: a crash in between leaves a duplicate in the dead-letter
queue, never a loss. The broker dead-letters one itself when a quorum queue's `x-delivery-limit` is
passed (a message whose consumer crashes on every delivery); RabbitMQ then records why in `x-death`.

Reading the dead-letter queue without losing or reordering it: the queue is a quorum queue, read with
basic.get and manual acks, always whole (until basic.get finds it empty, before anything is
replayed). Every message read stays unacked until the run ends; the ones not replayed are then nacked back in the
order they were read. A quorum queue delivers returned messages before any other, in the order they
came back, so the queue keeps its order; reading only part of it would not (the part would go back
behind earlier returns), which is why `--limit` only shortens what is shown, and why a run ends only
once the queue shows what it gave back. A replayed message is
acked only after its publish to the original queue is confirmed (a crash in between leaves it in
the dead-letter queue as well as replayed: a duplicate, which the receivers' idempotency makes
harmless: message ids, compare-and-set transitions, step checkpoints). If the tool dies, the broker
returns whatever it held. A stream would give non-destructive reads, but a replayed message could not
be removed from it, and changing the queue's type would need a new queue name; a quorum queue needs
neither. Two consequences: a returned message counts as delivered again, so the dead-letter queue
must never get a delivery limit (it has none; keep it out of any `delivery-limit` policy), and
while a listing runs, the messages it holds are invisible to another listing or replay.
"""

import argparse
import asyncio
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, DeliveryMode
from pamqp.commands import Basic

from .topology import Topology

REASON = "x-pj-dead-reason"
ORIGINAL_QUEUE = "x-pj-original-queue"
DELIVERY_COUNT = "x-pj-delivery-count"
LAST_ERROR = "x-pj-last-error"
DEAD_AT = "x-pj-dead-at"
REPLAYS = "x-pj-replays"

LAST_ERROR_MAX = 500
NAME_MAX = 255
# Counts come from headers anyone who can publish could have set: anything outside this is not a count.
COUNT_MAX = 1_000_000_000

# Headers a dead-lettering replaces (ours) or the broker owns; a replay drops them all.
_DEATH_HEADERS = frozenset({REASON, ORIGINAL_QUEUE, DELIVERY_COUNT, LAST_ERROR, DEAD_AT, "x-delivery-count",
                            "x-death", "x-first-death-queue", "x-first-death-reason",
                            "x-first-death-exchange", "x-last-death-queue", "x-last-death-reason",
                            "x-last-death-exchange"})

_CREDENTIALS = (
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+@"), r"\1***@"),   # scheme://user:pass@
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 ***"),        # Authorization values
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "***"),     # JWTs
    (re.compile(r"(?i)\b(password|passwd|secret|token|api[_-]?key)(\s*[=:]\s*)[^\s,;&]+"), r"\1\2***"),
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class DeadReason(StrEnum):
    """Why the transport dead-lettered a message (`x-pj-dead-reason`)."""

    PERMANENT = "permanent"            # the handler raised Permanent: processing can never succeed
    INVALID = "invalid"                # the body is not a valid message (it can never be parsed)
    DELIVERY_LIMIT = "delivery_limit"  # it failed again on its last allowed delivery
    OVERSIZED = "oversized"            # larger than PJ_MAX_MESSAGE_BYTES: dead-lettered unread


@dataclass(frozen=True, slots=True)
class DeadLetterRoute:
    """Where the transport (`consume`) dead-letters a queue's messages itself, with the reason in their headers.

    `channel` must have publisher confirms: the original is acked only once its copy is confirmed.
    `secrets` are masked in the `x-pj-last-error` header (credential-shaped text is masked anyway).
    """

    channel: AbstractChannel
    exchange: str
    secrets: tuple[str, ...] = ()


def scrub(text: str, secrets: Iterable[str] = (), *, limit: int = LAST_ERROR_MAX) -> str:
    """`text` with the given secrets and anything shaped like a credential masked, cut to `limit` characters."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern, replacement in _CREDENTIALS:
        text = pattern.sub(replacement, text)
    text = _CONTROL.sub(" ", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dead_letter_headers(
    original: Mapping[str, Any] | None, *, reason: DeadReason, queue: str, deliveries: int, error: str,
    now: float,
) -> dict[str, Any]:
    """The headers of a message the transport dead-letters: its own (minus earlier death records) and why.

    `error` must already be scrubbed; it is cut to LAST_ERROR_MAX here.
    """
    kept = {key: value for key, value in (original or {}).items() if key not in _DEATH_HEADERS}
    return {**kept, REASON: reason.value, ORIGINAL_QUEUE: queue[:NAME_MAX],
            DELIVERY_COUNT: max(0, min(deliveries, COUNT_MAX)), LAST_ERROR: scrub(error),
            DEAD_AT: int(now)}


def _text(value: Any, limit: int = NAME_MAX) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str) or not value:
        return None
    return scrub(value, limit=limit)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= COUNT_MAX:
        return None
    return value


def _epoch(value: Any, now: float) -> float | None:
    if isinstance(value, datetime):
        value = value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 < value <= now + 86400 else None


def _first_death(headers: Mapping[str, Any]) -> Mapping[str, Any]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        return deaths[0]
    return {}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What the headers of one dead-lettered message say, every value checked: a header of the wrong
    type or out of range reads as unknown (None), never as a crash or a wrong number."""

    id: str
    original_queue: str | None
    reason: str | None
    delivery_count: int | None
    dead_at: float | None
    last_error: str | None
    replays: int

    @classmethod
    def read(cls, message: AbstractIncomingMessage, *, now: float) -> "DeadLetter":
        headers: Mapping[str, Any] = message.headers or {}
        death = _first_death(headers)
        ours = _text(headers.get(REASON)) is not None
        return cls(
            id=message_id_of(message),
            original_queue=_text(headers.get(ORIGINAL_QUEUE) if ours else death.get("queue")),
            reason=_text(headers.get(REASON) if ours else death.get("reason"), 64),
            # x-death's count is how often it died there, not how often it was delivered: unknown then.
            delivery_count=_count(headers.get(DELIVERY_COUNT)) if ours else None,
            dead_at=_epoch(headers.get(DEAD_AT) if ours else death.get("time"), now),
            last_error=_text(headers.get(LAST_ERROR), LAST_ERROR_MAX) if ours else None,
            replays=_count(headers.get(REPLAYS)) or 0,
        )

    def age_s(self, now: float) -> float | None:
        return None if self.dead_at is None else max(0.0, now - self.dead_at)


def message_id_of(message: AbstractIncomingMessage) -> str:
    """A dead letter's id: its message id, or a digest of its body when it has none."""
    given = _text(message.message_id, 128)
    return given if given else "sha256:" + hashlib.sha256(message.body).hexdigest()[:16]


async def count_dead_letters(channel: AbstractChannel, topology: Topology) -> int:
    """Messages ready in the dead-letter queue (a passive declare: reads the count, changes nothing).

    A missing queue closes `channel` with a 404: use a channel of its own.
    """
    queue = await channel.declare_queue(topology.dead_letters, passive=True)
    result = queue.declaration_result
    return int(result.message_count or 0)


async def read_dead_letter_count(connection: aio_pika.abc.AbstractConnection | None,
                                 topology: Topology) -> int | None:
    """`count_dead_letters` on a short-lived channel of `connection`; None while there is no connection."""
    if connection is None or connection.is_closed:
        return None
    channel = await connection.channel(publisher_confirms=False)
    try:
        return await count_dead_letters(channel, topology)
    finally:
        if not channel.is_closed:
            await channel.close()


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """What a replay did with the messages it matched."""

    replayed: list[str]
    skipped: dict[str, str]  # id -> why it stayed in the dead-letter queue


class DeadLetterQueue:
    """The dead-letter queue of one topology, read without losing or reordering it (see the module)."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, topology: Topology) -> None:
        self._connection = connection
        self._topology = topology
        # Replay goes only to queues of this topology that dead-letter: never where a header says.
        self.replayable = frozenset({topology.dispatch, topology.results})
        # A bound on one run, should the queue be fed faster than it is read.
        self.max_messages = 100_000

    async def _read(self, channel: AbstractChannel) -> list[AbstractIncomingMessage]:
        # All of it, read before anything is replayed, so a replayed message that dies again during the
        # run is not read twice. Held in memory until the run ends: a dead-letter queue is short.
        queue = await channel.get_queue(self._topology.dead_letters, ensure=False)
        held: list[AbstractIncomingMessage] = []
        while len(held) < self.max_messages:
            message = await queue.get(no_ack=False, fail=False, timeout=10)
            if message is None:
                break
            held.append(message)
        return held

    async def _give_back(self, channel: AbstractChannel, messages: Sequence[AbstractIncomingMessage]) -> None:
        """Return `messages` to the queue in the order read, and wait until the queue shows them.

        A return reaches a quorum queue a moment after its nack; a run that began in between would
        read only part of the queue and put that part back behind the rest (out of order). Waiting
        here keeps back-to-back runs of this tool apart.
        """
        for message in messages:
            await message.nack(requeue=True)
        for _ in range(100):
            queue = await channel.declare_queue(self._topology.dead_letters, passive=True)
            if int(queue.declaration_result.message_count or 0) >= len(messages):
                return
            await asyncio.sleep(0.05)

    async def read_letters(self, *, limit: int | None = None, now: float | None = None) -> list[DeadLetter]:
        """The dead letters, oldest first (the first `limit` of them); the queue is left as it was."""
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            held = await self._read(channel)
            stamp = time.time() if now is None else now
            letters = [DeadLetter.read(message, now=stamp) for message in held[:limit]]
            await self._give_back(channel, held)
        finally:
            await channel.close()
        return letters

    async def replay(self, ids: Sequence[str] | None) -> ReplayOutcome:
        """Put the dead letters with these ids (all when `ids` is None) back on their original queue.

        Each is acked here only after its publish is confirmed; everything else goes back in order.
        """
        reader = await self._connection.channel(publisher_confirms=False)
        publisher = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        outcome = ReplayOutcome(replayed=[], skipped={})
        try:
            held = await self._read(reader)
            keep: list[AbstractIncomingMessage] = []
            wanted = None if ids is None else set(ids)
            for message in held:
                letter = DeadLetter.read(message, now=time.time())
                if wanted is not None and letter.id not in wanted:
                    keep.append(message)
                    continue
                why_not = await self._replay_one(publisher, message, letter)
                if why_not is None:
                    await message.ack()
                    outcome.replayed.append(letter.id)
                else:
                    keep.append(message)
                    outcome.skipped[letter.id] = why_not
            await self._give_back(reader, keep)
        finally:
            await publisher.close()
            await reader.close()
        return outcome

    async def discard(self, ids: Sequence[str], *,
                      record: Callable[[list[tuple[DeadLetter, bytes]]], None]) -> int:
        """Remove the dead letters with these ids for good (garbage no replay can help).

        `record` gets each one (and its body) before anything is acked: what is removed is seen first.
        Returns how many were removed.
        """
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            held = await self._read(channel)
            chosen = [(m, DeadLetter.read(m, now=time.time())) for m in held]
            doomed = [(m, letter) for m, letter in chosen if letter.id in ids]
            await self._give_back(channel, [m for m, letter in chosen if letter.id not in ids])
            record([(letter, m.body) for m, letter in doomed])
            for message, _ in doomed:
                await message.ack()
        finally:
            await channel.close()
        return len(doomed)

    async def _replay_one(self, channel: AbstractChannel, message: AbstractIncomingMessage,
                          letter: DeadLetter) -> str | None:
        """Publish one dead letter to its original queue; None when confirmed, else why not."""
        if letter.original_queue not in self.replayable:
            return f"original queue {letter.original_queue!r} is not one this tool replays to"
        headers = {k: v for k, v in (message.headers or {}).items() if k not in _DEATH_HEADERS}
        headers[REPLAYS] = letter.replays + 1
        copy = aio_pika.Message(
            message.body, headers=headers, content_type=message.content_type,
            content_encoding=message.content_encoding, delivery_mode=DeliveryMode.PERSISTENT,
            correlation_id=message.correlation_id, message_id=message.message_id, timestamp=message.timestamp,
            type=message.type, app_id=message.app_id)
        try:
            result = await channel.default_exchange.publish(copy, routing_key=letter.original_queue,
                                                            mandatory=True, timeout=10)
        except (aio_pika.exceptions.AMQPError, TimeoutError, RuntimeError) as exc:
            return f"publish not confirmed: {exc!r}"
        return None if isinstance(result, Basic.Ack) else "publish not confirmed"


# --- the command line (make dlq, make dlq-replay) --------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def format_table(letters: Sequence[DeadLetter], *, now: float) -> str:
    """Dead letters as a text table: id, original queue, reason, delivery count, age, last error."""
    header = ("ID", "ORIGINAL QUEUE", "REASON", "DELIVERIES", "AGE", "LAST ERROR")
    rows = [(letter.id, letter.original_queue or "?", letter.reason or "?",
             "?" if letter.delivery_count is None else str(letter.delivery_count),
             _age(letter.age_s(now)), (letter.last_error or "")[:80]) for letter in letters]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join([*lines, f"{len(letters)} dead letter(s)"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pj_common.deadletters", description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url", default=os.environ.get("PJ_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--prefix", default=os.environ.get("PJ_AMQP_PREFIX", "pj"))
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list dead letters (the queue is left as it was)")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    listing.add_argument("--limit", type=int, default=None, help="show only the oldest N (the whole queue is read)")
    replay = commands.add_parser("replay", help="put dead letters back on their original queue")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", action="append", dest="ids", metavar="ID", help="a dead letter's id (repeatable)")
    which.add_argument("--all", action="store_true", help="every dead letter")
    discard = commands.add_parser("discard", help="remove dead letters for good (printed as JSON first)")
    discard.add_argument("--id", action="append", dest="ids", metavar="ID", required=True)
    return parser


async def _run(dlq: DeadLetterQueue, args: argparse.Namespace) -> int:
    if args.command == "list":
        now = time.time()
        letters = await dlq.read_letters(limit=args.limit, now=now)
        if args.json:
            print(json.dumps([{**asdict(letter), "age_s": letter.age_s(now)} for letter in letters], indent=2))
        else:
            print(format_table(letters, now=now))
        return 0
    if args.command == "discard":
        def show(removed: list[tuple[DeadLetter, bytes]]) -> None:
            print(json.dumps([{**asdict(letter), "body": body.decode("utf-8", "replace")}
                              for letter, body in removed], indent=2), flush=True)

        return 0 if await dlq.discard(args.ids, record=show) else 1
    outcome = await dlq.replay(None if args.all else args.ids)
    for letter_id in outcome.replayed:
        print(f"replayed {letter_id}")
    for letter_id, why in outcome.skipped.items():
        print(f"left {letter_id} in the dead-letter queue: {why}", file=sys.stderr)
    missing = set(args.ids or ()) - set(outcome.replayed) - set(outcome.skipped)
    for letter_id in sorted(missing):
        print(f"no dead letter {letter_id}", file=sys.stderr)
    return 1 if outcome.skipped or missing else 0


async def _main(args: argparse.Namespace) -> int:
    topology = Topology(args.prefix)
    try:
        connection = await aio_pika.connect(args.amqp_url, timeout=10,
                                            client_properties={"connection_name": "pj-deadletters"})
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        print(f"cannot reach RabbitMQ at PJ_AMQP_URL: {scrub(str(exc))}", file=sys.stderr)
        return 2
    async with connection:
        try:
            return await _run(DeadLetterQueue(connection, topology), args)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            print(f"no queue {topology.dead_letters}: has the system run with PJ_AMQP_PREFIX={args.prefix}?",
                  file=sys.stderr)
            return 2


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: list or replay dead letters."""
    return asyncio.run(_main(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
