"""Rate limits through the gateway: executes and decisions per caller, authentication failures per
client address; in memory, or shared by gateway instances through the real Redis."""

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio

from pj_common.messages import PendingCount
from pj_common.topology import Topology

from .conftest import APPROVAL_ID, FakeApprovals, Gateway, GatewayFactory, accepted, approval_view, auth, ok

EXECUTE = {"actionId": "notify.webhook", "payload": {}}
DECIDE = f"/api/approvals/{APPROVAL_ID}/decide"


def assert_rate_limited(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["success"] is False and body["error"]["code"] == "rate_limited"
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    return retry_after


@pytest.fixture
async def limited(approvals: FakeApprovals, gateway_factory: GatewayFactory) -> AsyncIterator[Gateway]:
    approvals.answer("execute", ok(accepted()))
    approvals.answer("decide", ok(approval_view()))
    async with gateway_factory(rate_limit_per_min=3, auth_failures_per_min=3) as started:
        yield started


async def test_a_caller_over_its_budget_gets_429_and_nothing_is_sent(
        limited: Gateway, approvals: FakeApprovals) -> None:
    alice = auth("admin", "alice")
    for _ in range(2):
        assert (await limited.client.post("/api/pj/execute", json=EXECUTE, headers=alice)).status_code == 202
    assert (await limited.client.post(DECIDE, json={"status": "approved"}, headers=alice)).status_code == 200
    sent = len(approvals.received)
    assert_rate_limited(await limited.client.post("/api/pj/execute", json=EXECUTE, headers=alice))
    assert_rate_limited(await limited.client.post(DECIDE, json={"status": "approved"}, headers=alice))
    assert len(approvals.received) == sent


async def test_budgets_are_per_tenant_and_subject(limited: Gateway) -> None:
    for _ in range(3):
        await limited.client.post("/api/pj/execute", json=EXECUTE, headers=auth("admin", "alice", "acme"))
    assert_rate_limited(await limited.client.post("/api/pj/execute", json=EXECUTE,
                                                  headers=auth("admin", "alice", "acme")))
    assert (await limited.client.post("/api/pj/execute", json=EXECUTE,
                                      headers=auth("admin", "bob", "acme"))).status_code == 202
    assert (await limited.client.post("/api/pj/execute", json=EXECUTE,
                                      headers=auth("admin", "alice", "globex"))).status_code == 202


async def test_reads_do_not_spend_the_budget(limited: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("count_pending", ok(PendingCount(pending_count=0)))
    for _ in range(5):
        assert (await limited.client.get("/api/approvals/count/pending", headers=auth())).status_code == 200
    assert (await limited.client.post("/api/pj/execute", json=EXECUTE, headers=auth())).status_code == 202


async def test_an_address_with_too_many_authentication_failures_is_refused(limited: Gateway) -> None:
    bad = {"Authorization": "Bearer not-a-token", "X-PuddleJumper-Request": "true"}
    for _ in range(3):
        assert (await limited.client.get("/api/approvals/count/pending", headers=bad)).status_code == 401
    # Refused before the token is read: a valid token from this address waits out the window too.
    assert_rate_limited(await limited.client.get("/api/approvals/count/pending", headers=auth()))
    assert_rate_limited(await limited.client.get("/metrics"))
    assert (await limited.client.get("/health")).status_code in (200, 503)
    async with limited.client_from("192.0.2.7") as other:
        r = await other.post("/api/pj/execute", json=EXECUTE, headers=auth())
        assert r.status_code == 202, r.text


async def test_gateways_sharing_redis_share_one_budget(
        approvals: FakeApprovals, gateway_factory: GatewayFactory, redis_url: str, topology: Topology) -> None:
    """Two gateway instances of one deployment (one broker prefix): the budget is spent across both."""
    approvals.answer("execute", ok(accepted()))
    caller = auth("admin", f"alice-{uuid.uuid4().hex[:8]}")
    try:
        async with gateway_factory(rate_limit_per_min=3, redis_url=redis_url) as first, \
                gateway_factory(rate_limit_per_min=3, redis_url=redis_url) as second:
            for gateway in (first, second, first):
                assert (await gateway.client.post("/api/pj/execute", json=EXECUTE, headers=caller)).status_code == 202
            assert_rate_limited(await second.client.post("/api/pj/execute", json=EXECUTE, headers=caller))
            assert_rate_limited(await first.client.post("/api/pj/execute", json=EXECUTE, headers=caller))
    finally:
        client = redis.asyncio.Redis.from_url(redis_url)
        async with client:
            keys = [key async for key in client.scan_iter(match=f"{topology.prefix}:ratelimit*", count=100)]
            assert keys, "the budget was not kept in Redis"
            await client.delete(*keys)


async def test_an_unreachable_redis_lets_requests_through(
        approvals: FakeApprovals, gateway_factory: GatewayFactory) -> None:
    """A rate limit is not an authorization check: a Redis outage must not take the API down."""
    approvals.answer("execute", ok(accepted()))
    async with gateway_factory(rate_limit_per_min=1, redis_url="redis://127.0.0.1:1/0") as gateway:
        for _ in range(2):
            assert (await gateway.client.post("/api/pj/execute", json=EXECUTE, headers=auth())).status_code == 202
