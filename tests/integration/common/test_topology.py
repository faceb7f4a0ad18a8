"""declare_topology against the real RabbitMQ: idempotent, a rejected order is dead-lettered, and queues
an earlier release declared with another delivery limit still work."""

import asyncio
import logging

import aio_pika
import pytest

from pj_common.topology import DELIVERY_LIMIT, Topology, declare_topology, work_queue_arguments


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


async def test_queues_declared_by_an_earlier_release_are_used_as_they_are(
        amqp_url: str, topology: Topology, caplog: pytest.LogCaptureFixture) -> None:
    """An existing deployment's queues carry x-delivery-limit 50, which can never change: declaring the
    topology over them must neither fail (PRECONDITION_FAILED) nor lose what they hold."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for name in (topology.dispatch, topology.results):
            await channel.declare_queue(name, durable=True, arguments=work_queue_arguments(topology, 50))
        await channel.default_exchange.publish(aio_pika.Message(b"queued before the upgrade"),
                                               routing_key=topology.dispatch)
        with caplog.at_level(logging.WARNING, logger="pj.topology"):
            await declare_topology(channel, topology)
            await declare_topology(channel, topology)  # the second declare with the existing arguments too
        legacy = [r for r in caplog.records if getattr(r, "scope", None) == "amqp.legacy_delivery_limit"]
        assert {getattr(r, "queue", None) for r in legacy} == {topology.dispatch, topology.results}
        assert not channel.is_closed
        message = await _get(await channel.get_queue(topology.dispatch, ensure=False))
        assert message.body == b"queued before the upgrade"
        await message.ack()
    finally:
        await connection.close()


async def test_a_new_queue_gets_the_new_limit_and_another_difference_still_fails(amqp_url: str,
                                                                                topology: Topology) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await declare_topology(channel, topology)
        # Declaring with the arguments this release uses succeeds: the queue has exactly these.
        queue = await channel.declare_queue(topology.dispatch, durable=True,
                                            arguments=work_queue_arguments(topology, DELIVERY_LIMIT))
        assert queue.name == topology.dispatch
        await channel.queue_delete(topology.results)
        await channel.declare_queue(topology.results, durable=True, arguments={
            "x-queue-type": "quorum", "x-delivery-limit": 50})  # no dead-letter exchange: not ours to accept
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await declare_topology(await connection.channel(), topology)
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
