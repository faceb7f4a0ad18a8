"""The AMQP transport against the real RabbitMQ: reconnecting when a watched channel dies, RPC."""

import asyncio
import uuid

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection

from pj_common.errors import ErrorCode, GateError
from pj_common.topology import Topology, declare_topology
from pj_common.transport import RpcClient, Supervisor, consume, reply


async def test_a_watched_channel_closed_by_the_broker_starts_the_connection_over(amqp_url: str) -> None:
    setups: list[AbstractChannel] = []

    async def setup(connection: AbstractConnection) -> None:
        setups.append(supervisor.watch(await connection.channel()))

    supervisor = Supervisor(amqp_url, setup, name="test-watch")
    supervisor.start()
    try:
        assert await supervisor.wait_ready(10)
        first = setups[0]
        # Publishing to an exchange that does not exist makes the broker close the channel (404).
        exchange = aio_pika.Exchange(first, f"missing-{uuid.uuid4().hex}", aio_pika.ExchangeType.DIRECT)
        with pytest.raises(aio_pika.exceptions.AMQPError):  # a confirm channel: the publish sees the close
            await exchange.publish(aio_pika.Message(b"x"), routing_key="x")
        for _ in range(100):
            if len(setups) > 1 and supervisor.ready.is_set():
                break
            await asyncio.sleep(0.1)
        assert len(setups) == 2, "the supervisor did not start over"
        assert not setups[1].is_closed
    finally:
        await supervisor.stop()


async def test_rpc_round_trip_and_timeout(amqp_url: str, topology: Topology) -> None:
    rpc = RpcClient.to(topology, topology.commands)

    async def setup(connection: AbstractConnection) -> None:
        await declare_topology(await connection.channel(), topology)
        supervisor.watch(await rpc.attach(connection))
        server = await connection.channel()

        async def echo(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if message.body != b"silence":
                await reply(server, message, b"echo:" + message.body)

        await consume(server, topology.commands, echo, prefetch=8)

    supervisor = Supervisor(amqp_url, setup, name="test-rpc", on_lost=rpc.detach)
    supervisor.start()
    try:
        assert await supervisor.wait_ready(10)
        answers = await asyncio.gather(*(rpc.call(f"m{i}".encode(), correlation_id=f"c{i}", timeout=5)
                                         for i in range(20)))
        assert answers == [f"echo:m{i}".encode() for i in range(20)]
        with pytest.raises(GateError) as err:
            await rpc.call(b"silence", correlation_id="quiet", timeout=0.3)
        assert err.value.code == ErrorCode.UPSTREAM_TIMEOUT
    finally:
        await supervisor.stop()
    with pytest.raises(GateError) as err:
        await rpc.call(b"late", correlation_id="late", timeout=1)
    assert err.value.code == ErrorCode.BROKER_UNAVAILABLE


async def test_a_dropped_connection_forgets_the_session_and_sets_up_a_new_one(amqp_url: str) -> None:
    connections: list[AbstractConnection] = []
    events: list[str] = []

    async def setup(connection: AbstractConnection) -> None:
        supervisor.watch(await connection.channel())
        connections.append(connection)
        events.append("setup")

    supervisor = Supervisor(amqp_url, setup, name="test-reconnect", on_lost=lambda: events.append("lost"))
    supervisor.start()
    try:
        assert await supervisor.wait_ready(10)
        assert supervisor.connection is connections[0]
        await connections[0].close()  # as if the broker went away
        for _ in range(100):
            if len(connections) > 1 and supervisor.ready.is_set():
                break
            await asyncio.sleep(0.05)
        assert events == ["setup", "lost", "setup"]
        assert supervisor.connection is connections[1]
        assert not connections[1].is_closed
    finally:
        await supervisor.stop()
    assert connections[1].is_closed


async def test_a_handler_runs_to_its_end_when_its_channel_closes_under_it(amqp_url: str, topology: Topology) -> None:
    # aiormq cancels a closing channel's consumer tasks: a dispatch step cut off there would be lost.
    connection = await aio_pika.connect(amqp_url)
    try:
        await declare_topology(await connection.channel(), topology)
        consumer = await connection.channel()
        started, go_on = asyncio.Event(), asyncio.Event()
        finished: list[bytes] = []

        async def handler(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            started.set()
            await go_on.wait()
            finished.append(message.body)

        await consume(consumer, topology.commands, handler, prefetch=1)
        publisher = await connection.channel()
        await publisher.default_exchange.publish(aio_pika.Message(b"work"), routing_key=topology.commands)
        await asyncio.wait_for(started.wait(), 10)
        await consumer.close()  # as when the broker connection drops mid-handler
        go_on.set()
        for _ in range(100):
            if finished:
                break
            await asyncio.sleep(0.02)
        assert finished == [b"work"]
        # The message was not settled on the closed channel: the broker delivers it again.
        again = await (await connection.channel()).get_queue(topology.commands, ensure=False)
        redelivered = await again.get(no_ack=True, fail=False, timeout=5)
        assert redelivered is not None and redelivered.body == b"work" and redelivered.redelivered
    finally:
        await connection.close()
