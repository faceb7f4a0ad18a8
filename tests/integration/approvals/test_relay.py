"""The relays against the real PostgreSQL and RabbitMQ: what a dispatch commits to the outbox reaches
the dispatch queue signed, once, even across a crash or a broker outage; events go out in commit order,
none skipped."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import psycopg
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from psycopg_pool import AsyncConnectionPool

from pj_approvals import store
from pj_approvals.app import ApprovalsApp
from pj_approvals.relay import EventRelay, OrderRelay, OutboxListener
from pj_approvals.service import ApprovalService, DispatchStarted
from pj_approvals.settings import ApprovalsSettings
from pj_common.auth import Principal, Role
from pj_common.messages import (
    ApprovalEvent,
    ApprovalStatus,
    DecideRequest,
    DispatchOrder,
    DispatchRequest,
    ExecuteAccepted,
    ExecuteRequest,
)
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
    return OrderRelay(pool, lambda: channel, topology=topology, signing_key=DEV_DISPATCH_SIGNING_KEY,
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


# ---------------------------------------------------------------- the event relay


def event_relay(pool: AsyncConnectionPool[Any], channel: AbstractChannel, topology: Topology, name: str
                ) -> EventRelay:
    return EventRelay(pool, lambda: channel, exchange=topology.events, name=name, batch=1000, confirm_timeout_s=5)


@pytest.fixture
async def events_seen(connection: AbstractConnection, confirm_channel: AbstractChannel, topology: Topology
                      ) -> AsyncIterator[Callable[[set[uuid.UUID]], Any]]:
    """Reads the events of some approvals from a queue bound to this test's events exchange."""
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(topology.events, routing_key="#")

    async def seen(approvals: set[uuid.UUID]) -> list[ApprovalEvent]:
        events = [ApprovalEvent.model_validate_json(m.body) for m in await drain(channel, queue.name)]
        return [e for e in events if uuid.UUID(e.approval_id) in approvals]

    yield seen


async def cursor(pool: AsyncConnectionPool[Any]) -> str:
    """A relay cursor of this test's own, after every event of the transactions that have finished."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    async with pool.connection() as conn:
        await store.start_relay_cursor(conn, name)
    return name


def created_event(at: datetime) -> store.EventRecord:
    return store.EventRecord(event_type="approval.created", at=at, actor="olga", actor_role="operator")


async def test_an_event_committed_late_with_a_lower_id_is_still_published(
        pool: AsyncConnectionPool[Any], confirm_channel: AbstractChannel, topology: Topology, database_url: str,
        events_seen: Callable[[set[uuid.UUID]], Any]) -> None:
    """Writer A takes event id N and commits late; writer B takes N+1 and commits first, stamped earlier
    (its clock was read before it waited for a connection). The relay publishes neither while A is open,
    then both, A first: in commit order, none skipped."""
    relay = event_relay(pool, confirm_channel, topology, await cursor(pool))
    now = datetime.now(UTC)
    a_row, b_row = new_approval(), new_approval()
    async with await psycopg.AsyncConnection.connect(database_url) as a:  # not autocommit: A stays open
        assert await store.insert_approval(a, a_row, created_event(now)) is not None
        async with pool.connection() as b:
            assert await store.insert_approval(b, b_row, created_event(now - timedelta(minutes=1))) is not None
        ours = {a_row.id, b_row.id}
        assert await event_id(a, a_row.id) < await event_id(pool, b_row.id)  # A holds the lower id
        await relay.relay_once()
        assert await events_seen(ours) == []  # B committed, but A, before it in commit order, may still
        await a.commit()
    published = await relay_until(relay, events_seen, ours)
    assert [uuid.UUID(e.approval_id) for e in published] == [a_row.id, b_row.id]
    assert [e.plan_hash for e in published] == [a_row.plan_hash, b_row.plan_hash]  # what was decided on


async def test_a_relay_holds_the_cursor_until_it_stops_and_only_its_holder_moves_it(
        pool: AsyncConnectionPool[Any], confirm_channel: AbstractChannel, topology: Topology,
        events_seen: Callable[[set[uuid.UUID]], Any]) -> None:
    name = await cursor(pool)
    first, second = (event_relay(pool, confirm_channel, topology, name) for _ in range(2))
    row = new_approval()
    async with pool.connection() as conn:
        await store.insert_approval(conn, row, created_event(datetime.now(UTC)))
    assert len(await relay_until(first, events_seen, {row.id})) == 1
    assert await second.relay_once() == 0  # the first holds the cursor
    async with pool.connection() as conn:  # a holder that lost the cursor cannot move it
        assert not await store.advance_relay_cursor(conn, name, holder=uuid.uuid4(),
                                                    seen=store.RelayPosition(0, 0), to=store.RelayPosition(1, 1))
    await first.release()
    later = new_approval()
    async with pool.connection() as conn:
        await store.insert_approval(conn, later, created_event(datetime.now(UTC)))
    # The second takes over at once, from where the first got to.
    assert [uuid.UUID(e.approval_id) for e in await relay_until(second, events_seen, {row.id, later.id})] == [
        later.id]


async def relay_until(relay: EventRelay, events_seen: Callable[[set[uuid.UUID]], Any], ours: set[uuid.UUID]
                      ) -> list[ApprovalEvent]:
    """Run `relay` until the events of `ours` went out (within 15 s), and return them in publish order.

    Several passes may be needed: a transaction open anywhere on the server (another test session's)
    holds back the snapshot's xmin, and the relay waits for it."""
    seen: list[ApprovalEvent] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while loop.time() < deadline and {uuid.UUID(e.approval_id) for e in seen} != ours:
        await relay.relay_once()
        seen += await events_seen(ours)
    return seen


async def event_id(where: Any, approval_id: uuid.UUID) -> int:
    """The id of an approval's created event, read by a connection (which sees its own transaction's
    rows) or from the pool."""
    query = "SELECT id FROM approval_events WHERE approval_id = %s"
    if isinstance(where, AsyncConnectionPool):
        async with where.connection() as conn:
            row = await (await conn.execute(query, (approval_id,))).fetchone()
    else:
        row = await (await where.execute(query, (approval_id,))).fetchone()
    assert row is not None
    return int(row[0])


def new_approval() -> store.ApprovalRow:
    now = datetime.now(UTC)
    return store.ApprovalRow(
        id=uuid.uuid4(), tenant_id=f"t-{uuid.uuid4().hex[:8]}", request_id=uuid.uuid4().hex, operator_id="olga",
        action_id="notify.webhook", payload={}, request_hash="rh", approval_status=ApprovalStatus.PENDING,
        approver_id=None, approval_note=None, plan=[], plan_hash="ph", dispatch_result=None, claim_token=None,
        created_at=now, updated_at=now, decided_at=None, dispatched_at=None, finished_at=None,
        expires_at=now + timedelta(hours=1),
        approval_rule={"stages": [{"name": "approval", "roles": ["admin"], "approvalsRequired": 1}],
                       "dispatchWindowS": 3600})



async def test_an_order_left_by_a_crash_goes_out_within_two_seconds_of_a_start(
        queued: ApprovalService, database_url: str, amqp_url: str, topology: Topology,
        connection: AbstractConnection, confirm_channel: AbstractChannel) -> None:
    """The claim committed, then the process died before its relay published the order: the next
    approvals process to start publishes it at once. (The broker's queues exist: `confirm_channel`
    declared them, as the process that died had.)"""
    [aid] = await dispatched(queued)
    app = ApprovalsApp(ApprovalsSettings(env="dev", database_url=database_url, amqp_url=amqp_url,
                                         amqp_prefix=topology.prefix))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await app.start()
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.dispatch, ensure=False)
        found = None
        while found is None and loop.time() - started < 2:
            message = await queue.get(no_ack=True, fail=False, timeout=5)
            if message is not None and DispatchOrder.model_validate_json(message.body).approval_id == aid:
                found = message
            elif message is None:
                await asyncio.sleep(0.05)
        assert found is not None, "the order did not go out within 2 s of the start"
        assert is_signed(found.body, found.headers, DEV_DISPATCH_SIGNING_KEY)
    finally:
        await app.stop()


def gauge(text: str, name: str) -> float:
    [value] = [float(line.split()[1]) for line in text.splitlines() if line.startswith(f"{name} ")]
    return value


async def test_the_outbox_gauges_show_orders_that_wait_and_for_how_long(
        queued: ApprovalService, pool: AsyncConnectionPool[Any], confirm_channel: AbstractChannel,
        topology: Topology) -> None:
    assert len(await dispatched(queued)) == 1
    await asyncio.sleep(0.2)
    waiting = await queued.metrics_text()
    assert gauge(waiting, "dispatch_outbox_orders") >= 1
    assert gauge(waiting, "dispatch_outbox_oldest_seconds") >= 0.2
    async with pool.connection() as conn:
        before, _ = await store.outbox_backlog(conn)
    assert await relay(pool, confirm_channel, topology).relay_once() >= 1
    async with pool.connection() as conn:
        after, _ = await store.outbox_backlog(conn)
    assert after <= before - 1
