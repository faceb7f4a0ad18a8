"""Governance over HTTP: multi-stage approval chains, separation of duties, tenant isolation on every
route, and a plan changed between approval and dispatch refused."""

import asyncio
import signal
import uuid
from pathlib import Path

import aio_pika
import httpx

from pj_common.messages import ApprovalEvent
from pj_common.topology import Topology
from tests.support.system import System
from tests.support.webhook_sink import SinkState

from .conftest import EXTRA_ACTIONS, headers, request_approval, write_catalog


def tenant() -> str:
    return f"gov-{uuid.uuid4().hex[:6]}"


async def decide(client: httpx.AsyncClient, t: str, approval_id: str, role: str, sub: str,
                 status: str = "approved", note: str | None = None) -> httpx.Response:
    return await client.post(f"/api/approvals/{approval_id}/decide", headers=headers(role, sub, t),
                             json={"status": status, "note": note})


async def test_two_stage_two_approver_chain(client: httpx.AsyncClient, sink: SinkState) -> None:
    t = tenant()
    aid = await request_approval(client, t, "release.production", {"version": "1.2.3"})
    r = await decide(client, t, aid, "admin", "olga")  # an admin token for the requester changes nothing
    assert r.status_code == 403 and r.json()["error"]["code"] == "self_approval_forbidden"
    r = await decide(client, t, aid, "operator", "oscar")  # may not even read olga's request
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

    r = await decide(client, t, aid, "approver", "sam", note="security ok")
    assert r.status_code == 200 and r.json()["data"]["approval_status"] == "pending"
    chain = (await client.get(f"/api/approvals/{aid}/chain", headers=headers("viewer", "vic", t))).json()["data"]
    assert chain["currentStage"] == "operations"
    assert [s["state"] for s in chain["stages"]] == ["approved", "current"]
    assert chain["stages"][0]["decisions"][0]["approverId"] == "sam"
    assert chain["stages"][0]["decisions"][0]["note"] == "security ok"

    r = await decide(client, t, aid, "approver", "ann")  # stage two is for admins only
    assert r.status_code == 403
    r = await decide(client, t, aid, "admin", "sam")  # sam decided already: nobody counts twice
    assert r.status_code == 409 and r.json()["error"]["code"] == "already_decided"
    r = await decide(client, t, aid, "admin", "alice")
    assert r.status_code == 200 and r.json()["data"]["approval_status"] == "pending"
    r = await decide(client, t, aid, "admin", "alice")
    assert r.status_code == 409 and r.json()["error"]["code"] == "already_decided"
    r = await decide(client, t, aid, "admin", "adam", note="ship it")
    assert r.status_code == 200
    approved = r.json()["data"]
    assert approved["approval_status"] == "approved" and approved["approver_id"] == "adam"

    chain = (await client.get(f"/api/approvals/{aid}/chain", headers=headers("admin", "alice", t))).json()["data"]
    assert chain["currentStage"] is None
    assert [s["state"] for s in chain["stages"]] == ["approved", "approved"]
    assert [d["approverId"] for d in chain["stages"][1]["decisions"]] == ["alice", "adam"]
    r = await client.post(f"/api/approvals/{aid}/dispatch", headers=headers("admin", "alice", t), json={})
    assert r.status_code == 200 and r.json()["data"]["approvalStatus"] == "dispatched"


async def test_one_rejection_rejects_the_chain(client: httpx.AsyncClient) -> None:
    t = tenant()
    aid = await request_approval(client, t, "release.production")
    assert (await decide(client, t, aid, "approver", "sam")).status_code == 200
    r = await decide(client, t, aid, "admin", "alice", status="rejected", note="not now")
    assert r.status_code == 200 and r.json()["data"]["approval_status"] == "rejected"
    chain = (await client.get(f"/api/approvals/{aid}/chain", headers=headers(tenant=t))).json()["data"]
    assert [s["state"] for s in chain["stages"]] == ["approved", "rejected"]
    assert (await decide(client, t, aid, "admin", "adam")).status_code == 409


async def test_concurrent_approvers_of_one_stage_both_count(client: httpx.AsyncClient) -> None:
    t = tenant()
    aid = await request_approval(client, t, "release.production")
    assert (await decide(client, t, aid, "approver", "sam")).status_code == 200
    first, second = await asyncio.gather(decide(client, t, aid, "admin", "alice"),
                                         decide(client, t, aid, "admin", "adam"))
    assert (first.status_code, second.status_code) == (200, 200)
    record = (await client.get(f"/api/approvals/{aid}", headers=headers(tenant=t))).json()["data"]
    assert record["approval_status"] == "approved"


async def test_every_route_is_scoped_to_the_callers_tenant(client: httpx.AsyncClient) -> None:
    t, other = tenant(), tenant()
    aid = await request_approval(client, t, "notify.webhook", {"x": 1})
    stranger = headers("admin", "alice", other)
    for method, path, body in (
        ("GET", f"/api/approvals/{aid}", None),
        ("GET", f"/api/approvals/{aid}/chain", None),
        ("POST", f"/api/approvals/{aid}/decide", {"status": "approved"}),
        ("POST", f"/api/approvals/{aid}/dispatch", {}),
        ("POST", f"/api/approvals/{aid}/dispatch", {"dryRun": True}),
    ):
        r = await client.request(method, path, headers=stranger, json=body)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path, r.text)
    assert (await client.get("/api/approvals", headers=stranger)).json()["data"]["total"] == 0
    count = await client.get("/api/approvals/count/pending", headers=stranger)
    assert count.json()["data"]["pendingCount"] == 0
    mine = await client.get("/api/approvals/count/pending", headers=headers(tenant=t))
    assert mine.json()["data"]["pendingCount"] == 1


async def test_plan_changed_between_approval_and_dispatch_is_refused(
        client: httpx.AsyncClient, system: System, sink: SinkState) -> None:
    t = tenant()
    aid = await request_approval(client, t, "test.replan")
    assert (await decide(client, t, aid, "admin", "alice")).status_code == 200
    catalog = system.env["PJ_CATALOG"]
    changed = {**EXTRA_ACTIONS, "test.replan": {"plan": [
        {"stepId": "first", "connector": "webhook", "operation": "post", "params": {"body": "v2"}}]}}
    write_catalog(Path(catalog), changed)
    try:
        system.processes["approvals"].send_signal(signal.SIGHUP)
        for _ in range(50):
            if "catalog reloaded" in system.log("approvals"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("approvals did not reload its catalog")
        delivered_before = len(sink.deliveries)
        r = await client.post(f"/api/approvals/{aid}/dispatch", headers=headers("admin", "alice", t), json={})
        assert r.status_code == 409 and r.json()["error"]["code"] == "plan_changed"
        record = (await client.get(f"/api/approvals/{aid}", headers=headers(tenant=t))).json()["data"]
        assert record["approval_status"] == "approved"
        assert len(sink.deliveries) == delivered_before
        # A request made after the reload gets the new plan and dispatches.
        fresh = await request_approval(client, t, "test.replan")
        assert (await decide(client, t, fresh, "admin", "alice")).status_code == 200
        r = await client.post(f"/api/approvals/{fresh}/dispatch", headers=headers("admin", "alice", t), json={})
        assert r.status_code == 200 and r.json()["data"]["approvalStatus"] == "dispatched"
        assert sink.deliveries[-1].body["payload"] == "v2"
    finally:
        write_catalog(Path(catalog), EXTRA_ACTIONS)
        system.processes["approvals"].send_signal(signal.SIGHUP)


async def test_launch_tier_runs_at_once_and_is_recorded(client: httpx.AsyncClient, sink: SinkState) -> None:
    t = tenant()
    body = {"actionId": "notify.launch", "requestId": "launch-1", "payload": {"go": True}}
    r = await client.post("/api/pj/execute", headers=headers("operator", "olga", t), json=body)
    assert r.status_code == 200, r.text
    aid = r.json()["approvalId"]
    assert r.json()["approvalRequired"] is False
    assert r.json()["data"]["approvalStatus"] == "dispatched"
    assert [d.body["payload"] for d in sink.deliveries if d.body["approvalId"] == aid] == [{"go": True}]
    record = (await client.get(f"/api/approvals/{aid}", headers=headers(tenant=t))).json()["data"]
    assert record["approver_id"] == "policy:launch"
    assert [e["event"] for e in record["audit"]] == [
        "approval.created", "approval.dispatch.started", "approval.dispatch.completed"]
    again = await client.post("/api/pj/execute", headers=headers("operator", "olga", t), json=body)
    assert again.status_code == 202 and again.json()["approvalId"] == aid
    assert again.json()["data"]["approvalStatus"] == "dispatched"
    await asyncio.sleep(0.3)
    assert len([d for d in sink.deliveries if d.body["approvalId"] == aid]) == 1


async def test_every_transition_is_published_on_the_events_exchange(client: httpx.AsyncClient, system: System,
                                                                     amqp_url: str) -> None:
    prefix = system.env["PJ_AMQP_PREFIX"]
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(Topology(prefix).events, routing_key="approval.#")
        t = tenant()
        aid = await request_approval(client, t, "notify.webhook", {"e": 1})
        assert (await decide(client, t, aid, "admin", "alice", note="ok")).status_code == 200
        r = await client.post(f"/api/approvals/{aid}/dispatch", headers=headers("admin", "alice", t), json={})
        assert r.status_code == 200
        seen: list[ApprovalEvent] = []
        deadline = asyncio.get_running_loop().time() + 10
        while len(seen) < 4 and asyncio.get_running_loop().time() < deadline:
            message = await queue.get(fail=False)
            if message is None:
                await asyncio.sleep(0.1)
                continue
            await message.ack()
            event = ApprovalEvent.model_validate_json(message.body)
            assert message.routing_key == event.type and message.message_id == event.event_id
            if event.approval_id == aid:
                seen.append(event)
    assert [(e.type, e.from_status, e.to_status) for e in seen] == [
        ("approval.created", None, "pending"), ("approval.decided", "pending", "approved"),
        ("approval.dispatch.started", "approved", "dispatching"),
        ("approval.dispatch.completed", "dispatching", "dispatched")]
    assert [int(e.event_id) for e in seen] == sorted(int(e.event_id) for e in seen)
    assert seen[1].actor == "alice" and seen[1].note == "ok" and seen[0].action_id == "notify.webhook"
    assert all(e.tenant_id == t for e in seen)
