"""declare_topology against the real RabbitMQ: idempotent, and a rejected order is dead-lettered."""

import asyncio

import aio_pika
import pytest

from pj_common.topology import Topology, declare_topology


async def test_declaring_twice_is_harmless_and_a_rejected_order_is_dead_lettered(amqp_url: str,
                                                                               topology: Topology) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await declare_topology(channel, topology)
        await declare_topology(channel, topology)  # every service declares on every (re)connect
        await channel.default_exchange.publish(aio_pika.Message(b"order", message_id="o-1"),
                                               routing_key=topology.dispatch)
        dispatch = await channel.get_queue(topology.dispatch, ensure=False)
        message = await _get(dispatch)
        await message.reject(requeue=False)
        dead = await _get(await channel.get_queue(topology.dead_letters, ensure=False))
        assert (dead.body, dead.message_id) == (b"order", "o-1")
        await dead.ack()
    finally:
        await connection.close()


async def test_events_route_by_type_on_the_topic_exchange(amqp_url: str, topology: Topology) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await declare_topology(channel, topology)
        listener = await channel.declare_queue(exclusive=True)
        await listener.bind(topology.events, routing_key="approval.dispatch.*")
        events = await channel.get_exchange(topology.events, ensure=False)
        await events.publish(aio_pika.Message(b"created"), routing_key="approval.created")
        await events.publish(aio_pika.Message(b"done"), routing_key="approval.dispatch.completed")
        message = await _get(listener)
        assert message.body == b"done"
        await message.ack()
        assert await listener.get(fail=False) is None
    finally:
        await connection.close()


async def _get(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    for _ in range(50):
        message = await queue.get(fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.1)
    pytest.fail(f"nothing arrived on {queue.name}")
