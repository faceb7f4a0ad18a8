"""The order relay against the real PostgreSQL and RabbitMQ: what a dispatch commits to the outbox
reaches the dispatch queue signed, once, even across a crash or a broker outage."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from psycopg_pool import AsyncConnectionPool

from pj_approvals import store
from pj_approvals.relay import OrderRelay, OutboxListener
from pj_approvals.service import ApprovalService, DispatchStarted
from pj_common.auth import Principal, Role
from pj_common.messages import DecideRequest, DispatchOrder, DispatchRequest, ExecuteAccepted, ExecuteRequest
from pj_common.settings import DEV_DISPATCH_SIGNING_KEY
from pj_common.signing import is_signed
from pj_common.topology import Topology, declare_topology

from .conftest import Outbox


@pytest.fixture
async def connection(amqp_url: str) -> AsyncIterator[AbstractConnection]:
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        yield conn


@pytest.fixture
async def confirm_channel(connection: AbstractConnection, topology: Topology) -> AbstractChannel:
    setup = await connection.channel()
    await declare_topology(setup, topology)
    await setup.close()
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


@pytest.fixture
def queued(make_service: Callable[..., ApprovalService], topology: Topology) -> ApprovalService:
    """A service whose orders are meant for this test's dispatch queue."""
    return make_service(order_queue=topology.dispatch)


def relay(pool: AsyncConnectionPool[Any], channel: AbstractChannel | None, topology: Topology, *,
          batch: int = 100, confirm_timeout_s: float = 5.0) -> OrderRelay:
    return OrderRelay(pool, lambda: channel, queue=topology.dispatch, signing_key=DEV_DISPATCH_SIGNING_KEY,
                      batch=batch, confirm_timeout_s=confirm_timeout_s)


async def dispatched(svc: ApprovalService, count: int = 1) -> list[str]:
    """`count` approvals of a new tenant, approved and dispatched: their orders sit in the outbox."""
    t = f"t-{uuid.uuid4().hex[:8]}"
    admin = Principal(subject="adam", tenant=t, role=Role.ADMIN)
    operator = Principal(subject="olga", tenant=t, role=Role.OPERATOR)
    ids = []
    for _ in range(count):
        created = await svc.execute(operator, ExecuteRequest(action_id="notify.webhook", payload={"n": 1}), "c")
        assert isinstance(created, ExecuteAccepted)
        await svc.decide(admin, DecideRequest(approval_id=created.approval_id, status="approved"), "c")
        assert isinstance(await svc.dispatch(admin, DispatchRequest(approval_id=created.approval_id), "c"),
                          DispatchStarted)
        ids.append(created.approval_id)
    return ids


async def drain(channel: AbstractChannel, queue_name: str) -> list[AbstractIncomingMessage]:
    """Every message on the queue now (a published message may take a moment to be gettable)."""
    queue = await channel.get_queue(queue_name, ensure=False)
    got: list[AbstractIncomingMessage] = []
    idle = 0
    while idle < 5:
        message = await queue.get(no_ack=True, fail=False, timeout=5)
        if message is None:
            idle += 1
            await asyncio.sleep(0.05)
            continue
        idle = 0
        got.append(message)
    return got


async def test_relay_publishes_signed_orders_and_empties_the_outbox(
        queued: ApprovalService, pool: AsyncConnectionPool[Any], confirm_channel: AbstractChannel,
        connection: AbstractConnection, topology: Topology, outbox: Outbox) -> None:
    ids = await dispatched(queued, 3)
    stored = {aid: (await outbox.orders_of(aid))[0] for aid in ids}
    assert await relay(pool, confirm_channel, topology).relay_once() == 3
    messages = await drain(await connection.channel(), topology.dispatch)
    assert len(messages) == 3
    for message in messages:
        assert is_signed(message.body, message.headers, DEV_DISPATCH_SIGNING_KEY)
        order = DispatchOrder.model_validate_json(message.body)
        assert order == stored[order.approval_id] and message.message_id == order.message_id
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert all([await outbox.orders_of(aid) == [] for aid in ids])
    assert await relay(pool, confirm_channel, topology).relay_once() == 0  # nothing left to send


async def test_orders_wait_in_the_outbox_while_the_broker_is_away(
        queued: ApprovalService, pool: AsyncConnectionPool[Any], confirm_channel: AbstractChannel,
        connection: AbstractConnection, topology: Topology, outbox: Outbox) -> None:
    [aid] = await dispatched(queued)  # the dispatch answered: it did not wait for the broker
    assert await relay(pool, None, topology).relay_once() == 0  # no broker connection at all
    broken = await connection.channel(publisher_confirms=True)
    await broken.close()  # a connection that dies under the publish
    assert await relay(pool, broken, topology).relay_once() == 0
    assert len(await outbox.orders_of(aid)) == 1  # handed back, not lost
    assert await relay(pool, confirm_channel, topology).relay_once() == 1  # the broker is back
    [message] = await drain(await connection.channel(), topology.dispatch)
    assert DispatchOrder.model_validate_json(message.body).approval_id == aid


async def test_an_order_whose_relay_died_mid_publish_goes_out_after_its_claim(
        queued: ApprovalService, pool: AsyncConnectionPool[Any], confirm_channel: AbstractChannel,
        connection: AbstractConnection, topology: Topology) -> None:
    [aid] = await dispatched(queued)
    async with pool.connection() as conn:  # a relay takes the row, then its process dies
        taken = await store.take_outbox(conn, queue=topology.dispatch, batch=10, hold_s=0.5)
    assert [str(r.approval_id) for r in taken] == [aid]
    assert await relay(pool, confirm_channel, topology).relay_once() == 0  # still claimed by the dead relay
    await asyncio.sleep(0.6)
    assert await relay(pool, confirm_channel, topology).relay_once() == 1
    assert len(await drain(await connection.channel(), topology.dispatch)) == 1


async def test_relays_of_several_processes_publish_each_order_once(
        queued: ApprovalService, pool: AsyncConnectionPool[Any], confirm_channel: AbstractChannel,
        connection: AbstractConnection, topology: Topology) -> None:
    await dispatched(queued, 30)
    relays = [relay(pool, confirm_channel, topology, batch=7) for _ in range(3)]

    async def run(r: OrderRelay) -> int:
        total = 0
        while (sent := await r.relay_once()) > 0:
            total += sent
        return total

    assert sum(await asyncio.gather(*(run(r) for r in relays))) == 30
    messages = await drain(await connection.channel(), topology.dispatch)
    assert len({DispatchOrder.model_validate_json(m.body).approval_id for m in messages}) == len(messages) == 30


async def test_a_commit_in_any_process_wakes_the_listener(
        queued: ApprovalService, database_url: str) -> None:
    woken = asyncio.Event()
    listener = OutboxListener(database_url, woken.set)
    listener.start()
    try:
        await asyncio.wait_for(woken.wait(), 5)  # (re)connecting wakes it: notices may have been missed
        woken.clear()
        await dispatched(queued)  # the service's commit notifies through the database, not in-process
        await asyncio.wait_for(woken.wait(), 2)
    finally:
        await listener.stop()
