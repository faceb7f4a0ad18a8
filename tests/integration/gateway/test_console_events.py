"""GET /api/events: lifecycle events from the real events exchange, as Server-Sent Events, only of the
caller's tenant (operators: only their own requests), with Last-Event-ID replay, ending at token expiry."""

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import httpx
import pytest
import uvicorn

from pj_common.auth import Principal, Role, mint_token
from pj_common.messages import ApprovalEvent, ApprovalStatus
from pj_common.topology import Topology, declare_topology
from pj_gateway.app import create_app
from pj_gateway.console.events import EventHub, Resync
from pj_gateway.routes import events as events_route
from pj_gateway.settings import GatewaySettings

from .conftest import APPROVAL_ID, SECRET, FakeApprovals, approval_view, auth, ok

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def event(tenant: str, approval_id: str, *, type_: str = "approval.created", actor: str = "olga") -> ApprovalEvent:
    return ApprovalEvent(type=type_, approval_id=approval_id, tenant_id=tenant,  # type: ignore[arg-type]
                         action_id="notify.webhook", actor=actor, from_status=None,
                         to_status=ApprovalStatus.PENDING, occurred_at=NOW)


@contextlib.asynccontextmanager
async def serve(amqp_url: str, topology: Topology) -> AsyncIterator[str]:
    """The gateway on a real port: a stream cannot be read through an in-process transport, which waits
    for the whole body."""
    settings = GatewaySettings(env="prod", jwt_secret=SECRET, amqp_url=amqp_url,  # type: ignore[call-arg]
                               amqp_prefix=topology.prefix)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    task = asyncio.create_task(server.serve())
    for _ in range(100):
        if server.started:
            break
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def exchange(amqp_url: str, topology: Topology) -> AsyncIterator[aio_pika.abc.AbstractExchange]:
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        await declare_topology(channel, topology)
        yield await channel.get_exchange(topology.events)


async def publish(exchange: aio_pika.abc.AbstractExchange, *events: ApprovalEvent) -> None:
    for e in events:
        await exchange.publish(aio_pika.Message(e.to_json(), message_id=e.event_id), routing_key=e.type)


async def read_events(client: httpx.AsyncClient, headers: dict[str, str], *, until: int,
                      timeout: float = 5.0) -> list[dict[str, Any]]:
    """The SSE events of one stream (name, id, data), up to `until` of them or the stream's end."""
    seen: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout), client.stream("GET", "/api/events", headers=headers) as r:
            assert r.status_code == 200, await r.aread()
            assert r.headers["content-type"].startswith("text/event-stream")
            current: dict[str, Any] = {}
            async for line in r.aiter_lines():
                if not line:
                    if current:
                        seen.append(current)
                        current = {}
                    if len(seen) >= until:
                        break
                    continue
                field, _, value = line.partition(": ")
                if field in ("event", "id"):
                    current[field] = value
                elif field == "data":
                    current["data"] = json.loads(value)
    return seen


async def wait_subscribed() -> None:
    """Let the stream reach the hub before publishing (it opens asynchronously)."""
    await asyncio.sleep(0.5)


async def test_a_stream_shows_only_the_callers_tenant(amqp_url: str, topology: Topology,
                                                      exchange: aio_pika.abc.AbstractExchange) -> None:
    async with serve(amqp_url, topology) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        reader = asyncio.create_task(read_events(client, auth("viewer", "vic", "acme", csrf=False), until=3))
        await wait_subscribed()
        ours, theirs, ours_too = event("acme", "a-1"), event("globex", "g-1"), event("acme", "a-2")
        await publish(exchange, ours, theirs, ours_too)
        seen = await reader
    assert seen[0]["event"] == "ready" and seen[0]["data"] == {"tenant": "acme"}
    approvals = [e for e in seen if e.get("event") == "approval"]
    assert [e["data"]["approvalId"] for e in approvals] == ["a-1", "a-2"]
    assert approvals[0]["id"] == ours.event_id and approvals[0]["data"]["tenantId"] == "acme"


async def test_an_operator_sees_only_their_own_requests(amqp_url: str, topology: Topology,
                                                        exchange: aio_pika.abc.AbstractExchange) -> None:
    async with serve(amqp_url, topology) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        reader = asyncio.create_task(read_events(client, auth("operator", "olga", "acme", csrf=False), until=3))
        await wait_subscribed()
        await publish(exchange, event("acme", "theirs", actor="otto"), event("acme", "mine", actor="olga"),
                      event("acme", "theirs", type_="approval.decided", actor="alice"),
                      event("acme", "mine", type_="approval.decided", actor="alice"))
        seen = await reader
    assert [(e["data"]["type"], e["data"]["approvalId"]) for e in seen if e.get("event") == "approval"] == [
        ("approval.created", "mine"), ("approval.decided", "mine")]


async def test_a_reconnecting_stream_gets_what_it_missed_after_its_last_event_id(
        amqp_url: str, topology: Topology, exchange: aio_pika.abc.AbstractExchange) -> None:
    first, second, third = event("acme", "a-1"), event("globex", "g-1"), event("acme", "a-3")
    async with serve(amqp_url, topology) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        reader = asyncio.create_task(read_events(client, auth("admin", "alice", "acme", csrf=False), until=2))
        await wait_subscribed()
        await publish(exchange, first)
        assert [e.get("id") for e in await reader] == [None, first.event_id]
        await publish(exchange, second, third)  # while no stream is open
        await asyncio.sleep(0.3)
        headers = {**auth("admin", "alice", "acme", csrf=False), "Last-Event-ID": first.event_id}
        replayed = await read_events(client, headers, until=2)
        assert [e.get("id") for e in replayed] == [None, third.event_id]
        unknown = {**auth("admin", "alice", "acme", csrf=False), "Last-Event-ID": "forgotten"}
        resync = await read_events(client, unknown, until=2)
        assert resync[1]["event"] == "resync"


@pytest.mark.usefixtures("exchange")  # the topology approvals would have declared
async def test_a_stream_ends_when_its_token_expires_and_needs_a_token(amqp_url: str, topology: Topology) -> None:
    short = mint_token(SECRET, subject="vic", tenant="acme", role="viewer", issuer="puddlejumper",
                       audience="pj-approval-gate", ttl_s=1)
    async with serve(amqp_url, topology) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        assert (await client.get("/api/events")).status_code == 401
        seen = await read_events(client, {"Authorization": f"Bearer {short}"}, until=5, timeout=8)
    assert [e["event"] for e in seen] == ["ready", "expired"]


@pytest.mark.usefixtures("exchange")  # the topology approvals would have declared
async def test_a_stream_ends_after_its_lifetime_so_a_stopping_gateway_is_not_held(
        amqp_url: str, topology: Topology, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_route, "STREAM_MAX_S", 1.0)
    async with serve(amqp_url, topology) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        seen = await read_events(client, auth("viewer", "vic", "acme", csrf=False), until=5, timeout=8)
    assert [e["event"] for e in seen] == ["ready", "end"]


async def test_an_operator_stream_asks_approvals_about_an_approval_it_has_not_seen_created(
        amqp_url: str, topology: Topology, exchange: aio_pika.abc.AbstractExchange,
        approvals: FakeApprovals) -> None:
    approvals.answer("get_approval", ok(approval_view()))  # requested by bob, before this gateway started
    decided = event("acme", APPROVAL_ID, type_="approval.decided", actor="alice")
    async with serve(amqp_url, topology) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        bob = asyncio.create_task(read_events(client, auth("operator", "bob", "acme", csrf=False), until=2))
        olga = asyncio.create_task(read_events(client, auth("operator", "olga", "acme", csrf=False), until=2))
        await wait_subscribed()
        await publish(exchange, decided, event("acme", "olgas-own", actor="olga"))
        seen_by_bob, seen_by_olga = await bob, await olga
    assert [e.get("id") for e in seen_by_bob] == [None, decided.event_id]
    assert [e["data"].get("approvalId") for e in seen_by_olga] == [None, "olgas-own"]
    asked = [m.command for m in approvals.received if m.command.name == "get_approval"]
    assert asked and all(c.approval_id == APPROVAL_ID for c in asked)  # type: ignore[union-attr]


async def test_a_lost_broker_connection_tells_streams_to_resync_and_reconnects(
        amqp_url: str, topology: Topology, exchange: aio_pika.abc.AbstractExchange) -> None:
    hub = EventHub(amqp_url, topology.events, history=10)
    hub.start()
    try:
        assert await hub.wait_ready(10)
        stream = hub.subscribe(Principal(subject="alice", tenant="acme", role=Role.ADMIN), None)
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.1)
        connection = hub._supervisor.connection  # what a broker restart would drop
        assert connection is not None
        await connection.close()
        assert isinstance(await asyncio.wait_for(waiting, 5), Resync)  # when it was lost
        assert isinstance(await asyncio.wait_for(anext(stream), 15), Resync)  # and when it is back
        after = event("acme", "after-reconnect")
        await publish(exchange, after)
        assert await asyncio.wait_for(anext(stream), 5) == after
        await stream.aclose()
    finally:
        await hub.stop()
