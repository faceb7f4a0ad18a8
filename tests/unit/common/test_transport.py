"""Delivery rules and back-off of the AMQP transport (pj_common.transport), without a broker."""

import asyncio
import logging
import random
import socket
from collections.abc import Iterator
from typing import Any, cast

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from pamqp.commands import Basic

from pj_common.deadletters import COUNT_MAX, DeadLetterRoute
from pj_common.messages import DispatchOrder
from pj_common.topology import DELIVERY_LIMIT
from pj_common.transport import (
    MAX_DELIVERIES,
    REDELIVERY_CAP_S,
    Permanent,
    Retryable,
    Supervisor,
    consume,
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

    def __init__(self, headers: dict[str, Any] | None = None, *, body: bytes = b"{}") -> None:
        self.headers = headers
        self.body = body
        self.routing_key = "rk"
        self.message_id = "m-1"
        self.content_type = "application/json"
        self.content_encoding = None
        self.correlation_id = None
        self.reply_to = None
        self.timestamp = None
        self.type = None
        self.app_id = None
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
                                                ({"x-delivery-count": "3"}, 0), ({"x-delivery-count": -1}, 0),
                                                ({"x-delivery-count": True}, 0), ({"x-delivery-count": 2.5}, 0),
                                                ({"x-delivery-count": 10**30}, COUNT_MAX)])
def test_delivery_count_reads_the_quorum_queue_header(headers: dict[str, Any] | None, count: int) -> None:
    assert delivery_count(_incoming(FakeMessage(headers))) == count


@pytest.mark.parametrize(("count", "bound"), [(0, 0.1), (1, 0.2), (2, 0.4), (6, 6.4), (8, 25.6), (9, 30.0),
                                              (40, 30.0), (COUNT_MAX, 30.0)])
def test_redelivery_delay_doubles_per_delivery_up_to_thirty_seconds_never_below_half(
        count: int, bound: float, _seeded: None) -> None:
    samples = [redelivery_delay_s(count) for _ in range(1000)]
    assert all(bound / 2 <= s <= bound for s in samples)
    assert max(samples) > bound * 0.95 and min(samples) < bound * 0.55  # jittered over the whole upper half


def test_two_hundred_deliveries_outlast_a_thirty_minute_outage() -> None:
    """The transport's own limit: the waits before the last delivery add up to more than 30 minutes even
    when every draw of the jitter is the shortest (the floor), so such an outage dead-letters nothing."""
    shortest = sum(min(REDELIVERY_CAP_S, 0.1 * 2**k) / 2 for k in range(MAX_DELIVERIES - 1))
    assert shortest > 45 * 60
    assert DELIVERY_LIMIT > MAX_DELIVERIES  # the broker's backstop never comes first


@pytest.mark.parametrize(("count", "hint", "expected"), [(0, 0.0, 0.05), (0, 12.0, 12.0), (0, 30.0, 30.0),
                                                         (0, 300.0, 30.0), (9, 0.0, 15.0), (9, 20.0, 20.0)])
def test_a_retry_after_wins_up_to_thirty_seconds_but_never_below_the_floor(count: int, hint: float,
                                                                            expected: float) -> None:
    assert redelivery_delay_s(count, hint) == expected


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
async def test_settle_without_a_route_rejects_what_can_never_succeed(error: Exception) -> None:
    message = FakeMessage()

    async def handler(_: AbstractIncomingMessage) -> None:
        raise error

    await settle(handler, _incoming(message))
    assert message.settled == ["reject(requeue=False)"]


async def test_settle_requeues_a_retryable_failure_after_its_hint() -> None:
    message = FakeMessage({"x-delivery-count": 2})  # the bound alone would allow up to 0.4 s, the floor 0.2 s
    loop = asyncio.get_running_loop()

    async def handler(_: AbstractIncomingMessage) -> None:
        raise Retryable("later", retry_after=0.5)

    started = loop.time()
    await settle(handler, _incoming(message))
    assert 0.45 <= loop.time() - started < 1.5
    assert message.settled == ["nack(requeue=True)"]


class FakeExchange:
    def __init__(self, channel: "FakeChannel") -> None:
        self._channel = channel

    async def publish(self, message: aio_pika.Message, *, routing_key: str, mandatory: bool) -> object:
        self._channel.published.append((message, routing_key, mandatory))
        if isinstance(self._channel.outcome, Exception):
            raise self._channel.outcome
        return self._channel.outcome


class FakeChannel:
    """A publisher-confirm channel whose publish answers `outcome` (an Ack, a returned message, or raises)."""

    publisher_confirms = True

    def __init__(self, outcome: object) -> None:
        self.outcome = outcome
        self.published: list[tuple[aio_pika.Message, str, bool]] = []
        self.exchanges: list[str] = []

    async def get_exchange(self, name: str, *, ensure: bool) -> FakeExchange:
        self.exchanges.append(name)
        return FakeExchange(self)


def _route(outcome: object, secrets: tuple[str, ...] = ()) -> DeadLetterRoute:
    return DeadLetterRoute(cast(AbstractChannel, FakeChannel(outcome)), "pj.dlx", secrets)


@pytest.mark.parametrize(("error", "reason"), [(Permanent("never"), "permanent"),
                                               (ValueError("bad body"), "invalid")])
async def test_a_dead_letter_is_republished_with_why_then_acked(error: Exception, reason: str) -> None:
    message = FakeMessage({"x-delivery-count": 2, "x-pj-signature": "sig", "x-pj-last-error": "old"})
    route = _route(Basic.Ack(delivery_tag=1))

    async def handler(_: AbstractIncomingMessage) -> None:
        raise error

    await settle(handler, _incoming(message), queue="pj.dispatch", dead_letters=route)
    channel = cast(FakeChannel, route.channel)
    assert channel.exchanges == ["pj.dlx"]
    ((copy, routing_key, mandatory),) = channel.published
    assert (routing_key, mandatory, copy.body, copy.message_id) == ("pj.dispatch", True, b"{}", "m-1")
    headers = copy.headers
    assert headers["x-pj-dead-reason"] == reason and headers["x-pj-original-queue"] == "pj.dispatch"
    assert headers["x-pj-delivery-count"] == 3
    assert str(headers["x-pj-last-error"]).startswith(type(error).__name__)
    assert headers["x-pj-signature"] == "sig", "the order's own headers travel with it (a replay needs them)"
    assert "x-delivery-count" not in headers
    assert message.settled == ["ack"], "acked only after the copy was confirmed"


async def test_a_poison_message_is_dead_lettered_on_its_first_delivery() -> None:
    """A body that can never be parsed is not retried: the first delivery dead-letters it."""
    message = FakeMessage(None, body=b"\xff not json")
    route = _route(Basic.Ack(delivery_tag=1))

    async def handler(incoming: AbstractIncomingMessage) -> None:
        DispatchOrder.model_validate_json(incoming.body)

    await settle(handler, _incoming(message), queue="pj.dispatch", dead_letters=route)
    ((copy, _, _),) = cast(FakeChannel, route.channel).published
    assert copy.headers["x-pj-dead-reason"] == "invalid" and copy.headers["x-pj-delivery-count"] == 1
    assert message.settled == ["ack"]


@pytest.mark.parametrize("outcome", [aio_pika.exceptions.ChannelClosed(406, "gone"), object()])
async def test_a_dead_letter_not_confirmed_stays_in_its_queue(outcome: object,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A publish that fails or is returned (not an Ack) leaves the original unacked: requeued, never lost."""
    monkeypatch.setattr("pj_common.transport.redelivery_delay_s", lambda *_: 0.0)
    message = FakeMessage()

    async def handler(_: AbstractIncomingMessage) -> None:
        raise Permanent("never")

    await settle(handler, _incoming(message), queue="pj.dispatch", dead_letters=_route(outcome))
    assert message.settled == ["nack(requeue=True)"]


async def test_the_last_allowed_delivery_dead_letters_instead_of_retrying() -> None:
    message = FakeMessage({"x-delivery-count": MAX_DELIVERIES - 1})
    route = _route(Basic.Ack(delivery_tag=1), secrets=("hunter2-secret",))

    async def handler(_: AbstractIncomingMessage) -> None:
        raise ConnectionError("database at postgresql://pj:hunter2-secret@db/pj is down")

    await settle(handler, _incoming(message), queue="pj.dispatch.results", dead_letters=route)
    ((copy, _, _),) = cast(FakeChannel, route.channel).published
    assert copy.headers["x-pj-dead-reason"] == "delivery_limit"
    assert copy.headers["x-pj-delivery-count"] == MAX_DELIVERIES
    assert "hunter2" not in str(copy.headers["x-pj-last-error"])
    assert message.settled == ["ack"]


async def test_consume_refuses_a_dead_letter_channel_without_confirms() -> None:
    channel = FakeChannel(None)
    channel.publisher_confirms = False
    with pytest.raises(ValueError, match="publisher confirms"):
        await consume(cast(AbstractChannel, object()), "q", _noop, prefetch=1,
                      dead_letters=DeadLetterRoute(cast(AbstractChannel, channel), "pj.dlx"))


async def _noop(_: AbstractIncomingMessage) -> None:
    return None


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
