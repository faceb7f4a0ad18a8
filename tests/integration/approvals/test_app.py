"""The approvals process (pj_approvals.app): its database pool against the real PostgreSQL (connections a
server restart closed are replaced, a stuck statement fails at its timeout, and a command that cannot get
a connection in time is answered database_unavailable before the gateway's RPC timeout), and its lease
reaper, which waits for a whole lease of broker connection."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import aio_pika
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from pj_approvals import store
from pj_approvals.app import ApprovalsApp, database_pool
from pj_approvals.domain import Transition, edge
from pj_approvals.handlers import Handlers
from pj_approvals.service import ApprovalService
from pj_approvals.settings import ApprovalsSettings
from pj_common.auth import Principal, TokenVerifier, mint_token
from pj_common.errors import ErrorCode
from pj_common.messages import ApprovalStatus, CommandEnvelope, CountPending, PendingCount
from pj_common.topology import Topology
from pj_gateway.settings import GatewaySettings

KEY, ISSUER, AUDIENCE = "k" * 40, "puddlejumper", "pj-approval-gate"
T0 = datetime.now(UTC)


def settings(database_url: str, **overrides: Any) -> ApprovalsSettings:
    return ApprovalsSettings(env="dev", database_url=database_url, **overrides)


@pytest.fixture
async def make_pool(database_url: str) -> AsyncIterator[Any]:
    """Opens database_pool(settings) for a test, closed afterwards."""
    pools: list[AsyncConnectionPool[Any]] = []

    async def make(**overrides: Any) -> AsyncConnectionPool[Any]:
        pool = database_pool(settings(database_url, **overrides))
        pools.append(pool)
        await pool.open(wait=True, timeout=10)
        return pool

    yield make
    for pool in pools:
        await pool.close()


def pending_row(tenant: str) -> store.ApprovalRow:
    return store.ApprovalRow(
        id=uuid.uuid4(), tenant_id=tenant, request_id=uuid.uuid4().hex, operator_id="olga",
        action_id="notify.webhook", payload={}, request_hash="rh", approval_status=ApprovalStatus.PENDING,
        approver_id=None, approval_note=None, plan=[], plan_hash="ph", dispatch_result=None, claim_token=None,
        created_at=T0, updated_at=T0, decided_at=None, dispatched_at=None, finished_at=None,
        expires_at=T0 + timedelta(hours=1),
        approval_rule={"stages": [{"name": "approval", "roles": ["admin"], "approvalsRequired": 2}],
                       "dispatchWindowS": 3600})


def first_approval(approver: str) -> store.Decision:
    return store.Decision(approver_id=approver, approver_role="admin", decision="approved", note=None,
                          stage_name="approval", to_stage_index=0, to_stage_approvals=1, final=False)


async def test_connections_closed_by_the_server_are_replaced_without_a_failed_command(
        make_pool: Any, pg_admin_url: str) -> None:
    pool = await make_pool(db_pool_min=2, db_pool_max=2)
    async with pool.connection() as one, pool.connection() as two:
        pids = [one.info.backend_pid, two.info.backend_pid]
    # What a PostgreSQL restart does to the pool's idle connections.
    async with await psycopg.AsyncConnection.connect(pg_admin_url, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (pids,))
        for _ in range(100):
            cur = await admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))
            if (await cur.fetchone() or (0,))[0] == 0:
                break
            await asyncio.sleep(0.02)

    async def command() -> int:
        async with pool.connection() as conn:
            return await store.count_pending(conn, f"t-{uuid.uuid4().hex[:8]}", None, now=T0)

    assert await asyncio.gather(*(command() for _ in range(4))) == [0] * 4


async def test_a_statement_past_the_statement_timeout_fails_with_a_database_error(
        make_pool: Any, database_url: str) -> None:
    pool = await make_pool(db_statement_timeout_s=0.3)
    async with pool.connection() as conn:
        row = await store.insert_approval(conn, pending_row(f"t-{uuid.uuid4().hex[:8]}"),
                                          store.EventRecord(event_type="approval.created", at=T0))
    assert row is not None
    from_status, to_status = edge(Transition.ADVANCE)
    decided = store.EventRecord(event_type="approval.decided", at=T0)
    # Another session decides in a transaction it keeps open: the row stays locked.
    async with await psycopg.AsyncConnection.connect(database_url) as other:
        assert await store.record_decision(other, row, first_approval("sam"), from_status=from_status,
                                           to_status=to_status, event=decided) is not None
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled) as raised:
            async with pool.connection() as conn:
                await store.record_decision(conn, row, first_approval("zoe"), from_status=from_status,
                                            to_status=to_status, event=decided)
        assert time.monotonic() - started < 3
        assert "statement timeout" in str(raised.value)
        # The handlers answer every OperationalError with database_unavailable.
        assert isinstance(raised.value, psycopg.OperationalError)
        await other.rollback()


@dataclass
class PendingCounter:
    """A service whose one command (count_pending) waits for a connection of `pool`."""

    pool: AsyncConnectionPool[Any]

    async def count_pending(self, principal: Principal) -> PendingCount:
        async with self.pool.connection() as conn:
            return PendingCount(pending_count=await store.count_pending(conn, principal.tenant, None, now=T0))


class Incoming:
    """The parts of an incoming AMQP message the handlers read."""

    def __init__(self, body: bytes) -> None:
        self.body, self.reply_to, self.correlation_id = body, None, None


async def test_a_command_that_waits_past_the_pool_timeout_answers_database_unavailable(make_pool: Any) -> None:
    pool = await make_pool(db_pool_min=1, db_pool_max=1, db_pool_timeout_s=0.3)
    handlers = Handlers(cast(ApprovalService, PendingCounter(pool)), TokenVerifier(KEY, ISSUER, AUDIENCE),
                        report_key=KEY)
    token = mint_token(KEY, subject="olga", tenant="t-pool", role="operator", issuer=ISSUER, audience=AUDIENCE)
    body = CommandEnvelope(command=CountPending(), token=token).to_json()
    async with pool.connection():  # every connection busy
        started = time.monotonic()
        reply = await handlers.answer(cast(Any, Incoming(body)))
        waited = time.monotonic() - started
    assert not reply.ok and reply.error is not None and reply.error.code == ErrorCode.DATABASE_UNAVAILABLE
    assert 0.3 <= waited < 2
    # Idle again, the same command is served.
    assert (await handlers.answer(cast(Any, Incoming(body)))).ok


def test_the_pool_gives_up_before_the_gateway_does() -> None:
    approvals, gateway = ApprovalsSettings(env="dev"), GatewaySettings(env="dev")
    assert approvals.db_pool_timeout_s < gateway.rpc_timeout_s


async def test_the_reaper_waits_until_broker_and_database_have_been_reachable_for_a_whole_lease(
        database_url: str, amqp_url: str, topology: Topology) -> None:
    # Leases are renewed over the broker and recorded in the database: right after either comes back,
    # a lapsed lease may belong to a live dispatcher that has not renewed yet, so nothing is reaped
    # for one lease.
    app = ApprovalsApp(settings(database_url, amqp_url=amqp_url, amqp_prefix=topology.prefix, dispatch_lease_s=0.5))
    reaps: list[int] = []

    async def reap(batch: int = 100) -> int:
        reaps.append(batch)
        return 0

    app.service.reap_expired_leases = reap  # type: ignore[method-assign]  # counts the passes, reaps nothing
    assert await app._reap() is False and reaps == []  # never connected
    connection = await aio_pika.connect(amqp_url)
    try:
        await app._setup(connection)
        await asyncio.sleep(0.6)
        assert await app._reap() is False and reaps == []  # the database is not reachable (pool not open)
        await app.pool.open(wait=True, timeout=10)
        assert await app._reap() is False and reaps == []  # reachable for less than a lease
        await asyncio.sleep(0.6)
        await app._reap()
        assert len(reaps) == 1
        app._lost()  # the broker connection dropped: its clock starts again at the next connection
        assert await app._reap() is False and len(reaps) == 1
        await app._setup(connection)
        await app.pool.close()  # the database is away: its clock starts again too
        await asyncio.sleep(0.6)
        assert await app._reap() is False and len(reaps) == 1
    finally:
        await connection.close()
        await app.pool.close()
