"""A connection pool and a service bound to the session's test database, and a broker channel with an
inbox queue of the test's own, from which commands are read back as real incoming messages."""

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue
from psycopg_pool import AsyncConnectionPool

from pj_approvals import store
from pj_approvals.catalog import load_catalog
from pj_approvals.metrics import ApprovalMetrics
from pj_approvals.service import ApprovalService
from pj_approvals.settings import DEFAULT_CATALOG, ApprovalsSettings
from pj_common.messages import DispatchOrder
from pj_common.topology import Topology

# The queue the service's orders are meant for: no relay publishes them in these tests (a relay test
# uses a queue of its own).
ORDER_QUEUE = Topology("pj").dispatch


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    p: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, min_size=1, max_size=20,
                                                      kwargs={"autocommit": True}, open=False)
    await p.open(wait=True)
    yield p
    await p.close()


class Clock:
    """A clock the test moves by hand (the service never reads the real one)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


class Outbox:
    """Reads the dispatch orders the service queued in the outbox, and counts the relay wake-ups it asked
    for (the relay, and the broker, are tested on their own)."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1

    async def orders_of(self, approval_id: str) -> list[DispatchOrder]:
        """The orders of one approval still in the outbox, oldest first."""
        async with self._pool.connection() as conn:
            bodies = await store.queued_orders(conn, UUID(approval_id))
        return [DispatchOrder.model_validate_json(b) for b in bodies]

    async def last(self, approval_id: str) -> DispatchOrder:
        orders = await self.orders_of(approval_id)
        assert orders, f"no order queued for {approval_id}"
        return orders[-1]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outbox(pool: AsyncConnectionPool[Any]) -> Outbox:
    return Outbox(pool)


@pytest.fixture
def make_service(pool: AsyncConnectionPool[Any], clock: Clock, outbox: Outbox
                 ) -> Callable[..., ApprovalService]:
    def build(*, order_queue: str = ORDER_QUEUE, **overrides: Any) -> ApprovalService:
        settings = ApprovalsSettings(env="dev", **overrides)
        return ApprovalService(pool, load_catalog(DEFAULT_CATALOG), settings, metrics=ApprovalMetrics(),
                               order_queue=order_queue, on_order_queued=outbox.wake, clock=clock)
    return build


@pytest.fixture
async def channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        yield await connection.channel()


@pytest.fixture
async def inbox(channel: AbstractChannel) -> AsyncIterator[AbstractQueue]:
    """An exclusive queue of this test: commands are read back from it as real incoming messages."""
    queue = await channel.declare_queue(f"pjt-inbox-{uuid.uuid4().hex[:10]}", exclusive=True, auto_delete=True)
    yield queue
    await queue.delete(if_unused=False, if_empty=False)


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"
