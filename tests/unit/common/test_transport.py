"""Delivery rules and back-off of the AMQP transport (pj_common.transport), without a broker."""

import asyncio
import logging
import random
import socket
from collections.abc import Iterator
from typing import Any, cast

import pytest
from aio_pika.abc import AbstractIncomingMessage

from pj_common.transport import (
    Permanent,
    Retryable,
    Supervisor,
    delivery_count,
    reconnect_delay_s,
    redelivery_delay_s,
    settle,
)


@pytest.fixture
def _seeded() -> Iterator[None]:
    state = random.getstate()
    random.seed(7)
    yield
    random.setstate(state)


class FakeMessage:
    """The part of an incoming message that `settle` touches."""

    def __init__(self, headers: dict[str, Any] | None = None) -> None:
        self.headers = headers
        self.routing_key = "rk"
        self.message_id = "m-1"
        self.settled: list[str] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def reject(self, requeue: bool = False) -> None:
        self.settled.append(f"reject(requeue={requeue})")

    async def nack(self, requeue: bool = True) -> None:
        self.settled.append(f"nack(requeue={requeue})")


def _incoming(message: FakeMessage) -> AbstractIncomingMessage:
    return cast(AbstractIncomingMessage, message)


@pytest.mark.parametrize(("headers", "count"), [(None, 0), ({}, 0), ({"x-delivery-count": 3}, 3),
                                                ({"x-delivery-count": "3"}, 0), ({"x-delivery-count": -1}, 0)])
def test_delivery_count_reads_the_quorum_queue_header(headers: dict[str, Any] | None, count: int) -> None:
    assert delivery_count(_incoming(FakeMessage(headers))) == count


@pytest.mark.parametrize(("count", "bound"), [(0, 0.1), (1, 0.2), (2, 0.4), (6, 6.4), (7, 10.0), (40, 10.0)])
def test_redelivery_delay_doubles_per_delivery_up_to_ten_seconds(count: int, bound: float, _seeded: None) -> None:
    samples = [redelivery_delay_s(count) for _ in range(1000)]
    assert all(0.0 <= s <= bound for s in samples)
    assert max(samples) > bound * 0.9


@pytest.mark.parametrize(("hint", "expected"), [(0.0, 0.0), (12.0, 12.0), (30.0, 30.0), (300.0, 30.0)])
def test_a_retry_after_wins_up_to_thirty_seconds(hint: float, expected: float) -> None:
    assert redelivery_delay_s(0, hint) == expected
    assert redelivery_delay_s(9, hint) == expected


@pytest.mark.parametrize(("attempt", "bound"), [(1, 0.2), (2, 0.4), (3, 0.8), (5, 3.2), (6, 5.0), (30, 5.0)])
def test_reconnect_delay_doubles_from_a_fifth_of_a_second_to_five(attempt: int, bound: float,
                                                                  _seeded: None) -> None:
    samples = [reconnect_delay_s(attempt) for _ in range(1000)]
    assert all(0.0 <= s <= bound for s in samples)
    assert max(samples) > bound * 0.9
    assert min(samples) < bound * 0.1  # jittered: processes that lost the broker together do not return together


async def test_settle_acks_what_the_handler_took() -> None:
    message = FakeMessage()

    async def handler(_: AbstractIncomingMessage) -> None:
        return None

    await settle(handler, _incoming(message))
    assert message.settled == ["ack"]


@pytest.mark.parametrize("error", [Permanent("never"), ValueError("bad body")])
async def test_settle_dead_letters_what_can_never_succeed(error: Exception) -> None:
    message = FakeMessage()

    async def handler(_: AbstractIncomingMessage) -> None:
        raise error

    await settle(handler, _incoming(message))
    assert message.settled == ["reject(requeue=False)"]


async def test_settle_requeues_a_retryable_failure_after_its_hint() -> None:
    message = FakeMessage({"x-delivery-count": 20})  # the bound alone would allow up to 10 s
    loop = asyncio.get_running_loop()

    async def handler(_: AbstractIncomingMessage) -> None:
        raise Retryable("later", retry_after=0.05)

    started = loop.time()
    await settle(handler, _incoming(message))
    assert 0.04 <= loop.time() - started < 1.0
    assert message.settled == ["nack(requeue=True)"]


async def test_the_supervisor_keeps_retrying_an_unreachable_broker(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lost: list[int] = []

    async def setup(_: object) -> None:
        raise AssertionError("never connected, never set up")

    supervisor = Supervisor(f"amqp://guest:guest@127.0.0.1:{port}/", setup, name="test-unreachable",
                            on_lost=lambda: lost.append(1))
    with caplog.at_level(logging.WARNING, logger="pj.transport"):
        supervisor.start()
        try:
            assert not await supervisor.wait_ready(1.0)
        finally:
            await supervisor.stop()
    failures = [r for r in caplog.records if getattr(r, "scope", None) == "amqp.connect_failed"]
    assert len(failures) >= 2, "a refused connection is tried again within a second (0.2 s, 0.4 s, ...)"
    assert lost == [], "on_lost is for a session that was set up"
    assert supervisor.connection is None
