"""A connection pool and a service bound to the session's test database."""

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from pj_approvals.catalog import load_catalog
from pj_approvals.metrics import ApprovalMetrics
from pj_approvals.service import ApprovalService
from pj_approvals.settings import DEFAULT_CATALOG, ApprovalsSettings
from pj_common.messages import DispatchOrder


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
    """Collects the dispatch orders the service hands to the broker; the broker is exercised end to end."""

    def __init__(self) -> None:
        self.orders: list[DispatchOrder] = []

    async def order(self, order: DispatchOrder) -> None:
        self.orders.append(order)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outbox() -> Outbox:
    return Outbox()


@pytest.fixture
def make_service(pool: AsyncConnectionPool[Any], clock: Clock, outbox: Outbox
                 ) -> Callable[..., ApprovalService]:
    def build(**overrides: Any) -> ApprovalService:
        settings = ApprovalsSettings(env="dev", **overrides)
        return ApprovalService(pool, load_catalog(DEFAULT_CATALOG), settings, metrics=ApprovalMetrics(),
                               publish_order=outbox.order, clock=clock)
    return build
