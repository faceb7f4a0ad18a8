"""Dead letters against the real RabbitMQ: the transport's own dead-lettering with why in the headers,
listing that loses and reorders nothing, replay with confirms, the gauge's count, the command line."""

import asyncio
import json
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from pj_common import deadletters
from pj_common.deadletters import (
    DeadLetterQueue,
    DeadLetterRoute,
    DeadReason,
    count_dead_letters,
    dead_letter_headers,
)
from pj_common.topology import Topology, declare_topology
from pj_common.transport import Permanent, consume


@pytest.fixture
async def connection(amqp_url: str, topology: Topology) -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(amqp_url)
    await declare_topology(await connection.channel(), topology)
    yield connection
    await connection.close()


async def _dead_letter(channel: AbstractChannel, topology: Topology, message_id: str, *,
                       queue: str | None = None) -> None:
    """Put one message in the dead-letter queue as the transport would."""
    headers = dead_letter_headers({"x-pj-signature": f"sig-{message_id}"}, reason=DeadReason.PERMANENT,
                                  queue=queue or topology.dispatch, deliveries=1, error="Permanent: test",
                                  now=1_800_000_000)
    exchange = await channel.get_exchange(topology.dead_letter_exchange, ensure=False)
    await exchange.publish(aio_pika.Message(message_id.encode(), message_id=message_id, headers=headers),
                           routing_key=topology.dispatch)


async def _drain(channel: AbstractChannel, name: str, expected: int = 1) -> list[AbstractIncomingMessage]:
    """Take (and ack) what the queue holds: at least `expected` messages, waiting up to 5 s for them
    (returned messages reach a quorum queue a moment after their nack), then whatever is left."""
    queue = await channel.get_queue(name, ensure=False)
    taken: list[AbstractIncomingMessage] = []
    for _ in range(50 + expected):
        message = await queue.get(fail=False)
        if message is None:
            if len(taken) >= expected:
                break
            await asyncio.sleep(0.1)
            continue
        await message.ack()
        taken.append(message)
    return taken


async def _depth(channel: AbstractChannel, name: str, expected: int) -> int:
    """The queue's ready count once it reaches `expected` (or after 5 s)."""
    count = -1
    for _ in range(50):
        queue = await channel.declare_queue(name, passive=True)
        count = int(queue.declaration_result.message_count or 0)
        if count == expected:
            break
        await asyncio.sleep(0.1)
    return count


async def test_the_transport_dead_letters_with_why_and_acks_the_original(connection: AbstractConnection,
                                                                         topology: Topology) -> None:
    confirm = await connection.channel(publisher_confirms=True, on_return_raises=True)
    consumer = await connection.channel(publisher_confirms=False)
    seen: list[bytes] = []

    async def handler(message: AbstractIncomingMessage) -> None:
        seen.append(message.body)
        raise Permanent("step uses an unknown connector; token=abc123")

    await consume(consumer, topology.dispatch, handler, prefetch=4,
                  dead_letters=DeadLetterRoute(confirm, topology.dead_letter_exchange))
    await confirm.default_exchange.publish(
        aio_pika.Message(b'{"order": 1}', message_id="o-1", headers={"x-pj-signature": "sig"}),
        routing_key=topology.dispatch)
    (dead,) = await _drain(await connection.channel(), topology.dead_letters)
    assert seen == [b'{"order": 1}'], "dead-lettered at once, not retried"
    headers = dead.headers
    assert (dead.body, dead.message_id) == (b'{"order": 1}', "o-1")
    assert headers["x-pj-dead-reason"] == "permanent"
    assert headers["x-pj-original-queue"] == topology.dispatch
    assert headers["x-pj-delivery-count"] == 1
    assert headers["x-pj-last-error"] == "Permanent: step uses an unknown connector; token=***"
    assert headers["x-pj-signature"] == "sig"
    assert "x-death" not in headers, "the transport's copy, not a broker rejection"
    await consumer.close()
    check = await connection.channel()
    assert await _depth(check, topology.dispatch, 0) == 0, "the original was acked"


async def test_an_oversized_message_is_dead_lettered_unread(connection: AbstractConnection,
                                                            topology: Topology) -> None:
    confirm = await connection.channel(publisher_confirms=True, on_return_raises=True)
    consumer = await connection.channel(publisher_confirms=False)
    seen: list[int] = []

    async def handler(message: AbstractIncomingMessage) -> None:
        seen.append(len(message.body))

    await consume(consumer, topology.dispatch, handler, prefetch=4, max_bytes=1024,
                  dead_letters=DeadLetterRoute(confirm, topology.dead_letter_exchange))
    for body in (b"x" * 2048, b"y" * 1024):
        await confirm.default_exchange.publish(aio_pika.Message(body), routing_key=topology.dispatch)
    (dead,) = await _drain(await connection.channel(), topology.dead_letters)
    assert dead.headers["x-pj-dead-reason"] == "oversized"
    assert "2048 bytes is over PJ_MAX_MESSAGE_BYTES (1024)" in str(dead.headers["x-pj-last-error"])
    for _ in range(50):
        if seen:
            break
        await asyncio.sleep(0.05)
    assert seen == [1024], "only the message within the bound reached the handler"
    await consumer.close()


async def test_listing_loses_and_reorders_nothing(connection: AbstractConnection, topology: Topology) -> None:
    channel = await connection.channel()
    ids = [f"d-{i}" for i in range(6)]
    for message_id in ids:
        await _dead_letter(channel, topology, message_id)
    dlq = DeadLetterQueue(connection, topology)
    assert await _depth(channel, topology.dead_letters, 6) == 6
    first = await dlq.read_letters()
    second = await dlq.read_letters(limit=3)
    assert [letter.id for letter in first] == ids
    assert [letter.id for letter in second] == ids[:3]
    assert {(letter.original_queue, letter.reason, letter.delivery_count) for letter in first} == {
        (topology.dispatch, "permanent", 1)}
    assert await count_dead_letters(await connection.channel(), topology) == 6
    assert [m.message_id for m in await _drain(channel, topology.dead_letters, 6)] == ids


async def test_replay_puts_back_what_was_asked_and_keeps_the_rest_in_order(connection: AbstractConnection,
                                                                           topology: Topology) -> None:
    channel = await connection.channel()
    for message_id in ("r-0", "r-1", "r-2", "r-3"):
        await _dead_letter(channel, topology, message_id)
    # A header naming another queue (the commands queue) is never followed.
    await _dead_letter(channel, topology, "r-elsewhere", queue=topology.commands)
    assert await _depth(channel, topology.dead_letters, 5) == 5
    dlq = DeadLetterQueue(connection, topology)

    outcome = await dlq.replay(["r-1", "r-elsewhere"])
    assert outcome.replayed == ["r-1"]
    assert list(outcome.skipped) == ["r-elsewhere"]
    (replayed,) = await _drain(channel, topology.dispatch)
    assert (replayed.body, replayed.message_id) == (b"r-1", "r-1")
    assert replayed.headers["x-pj-signature"] == "sig-r-1", "the order's signature travels with it"
    assert replayed.headers["x-pj-replays"] == 1
    assert "x-pj-dead-reason" not in replayed.headers
    assert [letter.id for letter in await dlq.read_letters()] == ["r-0", "r-2", "r-3", "r-elsewhere"]

    outcome = await dlq.replay(None)
    assert outcome.replayed == ["r-0", "r-2", "r-3"]
    assert [m.message_id for m in await _drain(channel, topology.dispatch, 3)] == ["r-0", "r-2", "r-3"]
    assert [letter.id for letter in await dlq.read_letters()] == ["r-elsewhere"]


async def test_a_replay_that_dies_again_is_not_replayed_twice_in_one_run(connection: AbstractConnection,
                                                                         topology: Topology) -> None:
    """Replay reads only what was there when it started: a message dead-lettered again during the run
    (its consumer still refuses it) waits for the next replay instead of looping."""
    confirm = await connection.channel(publisher_confirms=True, on_return_raises=True)

    async def refuse(_: AbstractIncomingMessage) -> None:
        raise Permanent("still broken")

    await consume(await connection.channel(), topology.dispatch, refuse, prefetch=4,
                  dead_letters=DeadLetterRoute(confirm, topology.dead_letter_exchange))
    channel = await connection.channel()
    await _dead_letter(channel, topology, "again")
    assert await _depth(channel, topology.dead_letters, 1) == 1
    outcome = await DeadLetterQueue(connection, topology).replay(None)
    assert outcome.replayed == ["again"]
    assert await _depth(channel, topology.dead_letters, 1) == 1


def test_the_command_line_lists_as_json_and_replays(amqp_url: str, topology: Topology,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    async def seed() -> None:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            await declare_topology(channel, topology)
            await _dead_letter(channel, topology, "cli-1")
            await _dead_letter(channel, topology, "cli-garbage")
            await _depth(channel, topology.dead_letters, 2)

    asyncio.run(seed())
    common = ["--amqp-url", amqp_url, "--prefix", topology.prefix]
    assert deadletters.main([*common, "list", "--json"]) == 0
    listed, _ = json.loads(capsys.readouterr().out)
    assert (listed["id"], listed["original_queue"], listed["reason"]) == ("cli-1", topology.dispatch, "permanent")
    assert deadletters.main([*common, "discard", "--id", "cli-garbage"]) == 0
    (removed,) = json.loads(capsys.readouterr().out)
    assert (removed["id"], removed["body"]) == ("cli-garbage", "cli-garbage")
    assert deadletters.main([*common, "list"]) == 0
    assert "cli-1" in capsys.readouterr().out
    assert deadletters.main([*common, "replay", "--id", "missing"]) == 1
    assert deadletters.main([*common, "replay", "--all"]) == 0
    assert capsys.readouterr().out == "replayed cli-1\n"
    assert deadletters.main(["--amqp-url", amqp_url, "--prefix", f"{topology.prefix}-none", "list"]) == 2
