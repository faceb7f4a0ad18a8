"""The runbook's smoke tests and its API contract, walked over HTTP against the running system."""

import asyncio
import os
import re
import time
import uuid
from pathlib import Path

import httpx
import jwt
import pytest

from tests.support.system import System, free_port
from tests.support.webhook_sink import SinkState

from .conftest import CSRF, METRICS_TOKEN, SECRET, approve, headers, request_approval, token


def tenant() -> str:
    return f"acme-{uuid.uuid4().hex[:6]}"


async def test_smoke_1_health(client: httpx.AsyncClient) -> None:
    r = await client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert {"broker", "approvals", "database", "dispatchers"} <= set(body["checks"])


async def test_smoke_2_to_6_full_walk(client: httpx.AsyncClient, sink: SinkState) -> None:
    t = tenant()
    admin = headers("admin", "alice", t)
    r = await client.get("/api/approvals/count/pending", headers=admin)
    assert r.status_code == 200 and r.json()["success"] is True
    assert r.json()["data"] == {"pendingCount": 0}

    r = await client.post("/api/pj/execute", headers=headers("operator", "bob", t), json={
        "actionId": "notify.webhook", "mode": "execute", "requestId": "smoke-1", "payload": {"hello": "world"}})
    assert r.status_code == 202
    body = r.json()
    approval_id = body["approvalId"]
    assert body["approvalRequired"] is True
    assert body["data"]["approvalStatus"] == "pending" and len(body["data"]["planHash"]) == 64

    r = await client.get("/api/approvals", params={"status": "pending", "limit": 10}, headers=admin)
    assert r.status_code == 200
    listed = r.json()["data"]
    assert listed["total"] == 1 and listed["pendingCount"] == 1
    assert listed["approvals"][0]["id"] == approval_id

    r = await client.post(f"/api/approvals/{approval_id}/decide", headers=admin,
                          json={"status": "approved", "note": "Reviewed and approved — smoke test"})
    assert r.status_code == 200 and r.json()["data"]["approval_status"] == "approved"
    assert r.json()["data"]["approver_id"] == "alice"

    before = len(sink.deliveries)
    r = await client.post(f"/api/approvals/{approval_id}/dispatch", headers=admin, json={"dryRun": True})
    assert r.status_code == 200, r.text
    dry = r.json()["data"]
    assert dry["approvalStatus"] == "approved"
    assert [s["status"] for s in dry["dispatchResult"]] == ["simulated"]
    r = await client.get(f"/api/approvals/{approval_id}", headers=admin)
    assert r.json()["data"]["approval_status"] == "approved"  # the dry run consumed nothing
    assert len(sink.deliveries) == before

    r = await client.post(f"/api/approvals/{approval_id}/dispatch", headers=admin, json={})
    assert r.status_code == 200, r.text
    done = r.json()["data"]
    assert done["approvalStatus"] == "dispatched"
    step = done["dispatchResult"][0]
    assert step["status"] == "succeeded" and step["attempts"] == 1 and step["stepId"] == "post-webhook"
    assert step["startedAt"] and step["finishedAt"]
    delivered = [d for d in sink.deliveries if d.body["approvalId"] == approval_id]
    assert len(delivered) == 1 and delivered[0].signature_ok
    assert delivered[0].body == {"approvalId": approval_id, "actionId": "notify.webhook",
                                 "payload": {"hello": "world"}}
    assert delivered[0].headers["Idempotency-Key"] == f"{approval_id}:post-webhook"

    r = await client.get(f"/api/approvals/{approval_id}", headers=admin)
    record = r.json()["data"]
    for name in ("id", "request_id", "tenant_id", "operator_id", "action_id", "approval_status", "approver_id",
                 "approval_note", "plan", "plan_hash", "audit", "dispatch_result", "created_at", "updated_at",
                 "decided_at", "dispatched_at", "expires_at"):
        assert name in record, name
    assert record["approval_status"] == "dispatched" and record["dispatched_at"]
    assert [e["event"] for e in record["audit"]] == [
        "approval.created", "approval.decided", "approval.dispatch.started", "approval.dispatch.completed"]

    # 6. dry-run is never gated: 200, not 202, and nothing stored.
    r = await client.post("/api/pj/execute", headers=admin, json={
        "actionId": "environment.create", "mode": "dry-run", "payload": {"name": "smoke-test-env"}})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["approvalRequired"] is False
    assert [s["connector"] for s in r.json()["data"]["plan"]][:1] == ["github"]
    r = await client.get("/api/approvals", headers=admin)
    assert r.json()["data"]["total"] == 1


async def test_same_request_id_returns_the_same_approval(client: httpx.AsyncClient) -> None:
    t = tenant()
    ids = await asyncio.gather(*(request_approval(client, t, request_id="dup") for _ in range(20)))
    assert len(set(ids)) == 1
    r = await client.get("/api/approvals", headers=headers("admin", "alice", t))
    assert r.json()["data"]["total"] == 1


async def test_twenty_concurrent_dispatches_one_winner_one_delivery(client: httpx.AsyncClient,
                                                                     sink: SinkState) -> None:
    t = tenant()
    approval_id = await request_approval(client, t, payload={"race": True})
    await approve(client, t, approval_id)
    admin = headers("admin", "alice", t)
    responses = await asyncio.gather(*(client.post(f"/api/approvals/{approval_id}/dispatch", headers=admin,
                                                   json={}) for _ in range(20)))
    codes = sorted(r.status_code for r in responses)
    assert sum(c in (200, 202) for c in codes) == 1, codes
    assert codes.count(409) == 19, codes
    assert all(r.json()["error"]["code"] == "invalid_state" for r in responses if r.status_code == 409)
    for _ in range(100):
        status = (await client.get(f"/api/approvals/{approval_id}", headers=admin)).json()["data"]
        if status["approval_status"] == "dispatched":
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # a duplicate delivery, if there were one, would have arrived by now
    assert len([d for d in sink.deliveries if d.body["approvalId"] == approval_id]) == 1


async def test_two_dispatchers_share_the_work(client: httpx.AsyncClient, system: System, sink: SinkState) -> None:
    t = tenant()
    ids = [await request_approval(client, t, payload={"i": i}) for i in range(12)]
    for approval_id in ids:
        await approve(client, t, approval_id)
    sink.delay_s = 0.2  # slow deliveries keep each dispatcher busy, so the broker spreads the orders
    try:
        admin = headers("admin", "alice", t)
        responses = await asyncio.gather(*(client.post(f"/api/approvals/{a}/dispatch", headers=admin, json={})
                                           for a in ids))
    finally:
        sink.delay_s = 0.0
    assert all(r.status_code == 200 and r.json()["data"]["approvalStatus"] == "dispatched" for r in responses)
    ran_by = {name: sum(system.log(name).count(a) for a in ids) for name in ("dispatcher-1", "dispatcher-2")}
    assert all(count > 0 for count in ran_by.values()), ran_by


async def test_unconfigured_connector_fails_the_dispatch_naming_the_setting(client: httpx.AsyncClient) -> None:
    t = tenant()
    approval_id = await request_approval(client, t, action="environment.create", payload={"name": "env-x"})
    await approve(client, t, approval_id)
    r = await client.post(f"/api/approvals/{approval_id}/dispatch", headers=headers("admin", "alice", t), json={})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["approvalStatus"] == "dispatch_failed"
    first = data["dispatchResult"][0]
    assert first["status"] == "failed" and first["error"]["code"] == "connector_not_configured"
    assert "GITHUB_DISPATCH_TOKEN" in first["error"]["message"]
    assert {s["status"] for s in data["dispatchResult"][1:]} == {"not_run"}


async def test_auth_csrf_and_validation_errors(client: httpx.AsyncClient) -> None:
    t = tenant()
    r = await client.get("/api/approvals")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = await client.get("/api/approvals", headers={"Authorization": "Bearer not-a-jwt"})
    assert r.status_code == 401
    expired = jwt.encode({"sub": "a", "tenant": t, "role": "admin", "iss": "puddlejumper",
                          "aud": "pj-approval-gate", "iat": int(time.time()) - 160, "exp": int(time.time()) - 100},
                         SECRET, algorithm="HS256")
    r = await client.get("/api/approvals", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    r = await client.post("/api/pj/execute", headers=headers("operator", "bob", t, csrf=False),
                          json={"actionId": "notify.webhook", "payload": {}})
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_required"
    r = await client.post("/api/pj/execute", headers=headers("operator", "bob", t),
                          json={"actionId": "notify.webhook", "payload": {}, "surprise": 1})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    r = await client.post("/api/pj/execute", headers=headers("operator", "bob", t),
                          json={"actionId": "does.not.exist", "payload": {}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_action"
    r = await client.post("/api/pj/execute", headers=headers("operator", "bob", t),
                          json={"actionId": "environment.create", "payload": {"nope": 1}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_payload"
    r = await client.get("/api/approvals", params={"status": "bogus"}, headers=headers(tenant=t))
    assert r.status_code == 422
    r = await client.get("/api/approvals", params={"limit": 201}, headers=headers(tenant=t))
    assert r.status_code == 422
    r = await client.get(f"/api/approvals/{uuid.uuid4()}", headers=headers(tenant=t))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.get("/api/approvals/not-a-uuid", headers=headers(tenant=t))
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"  # ids are UUIDs


async def test_correlation_id_is_honoured_and_echoed(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/approvals/count/pending",
                         headers={**headers(tenant=tenant()), "X-Correlation-Id": "trace-123"})
    assert r.headers["X-Correlation-Id"] == "trace-123" and r.json()["correlationId"] == "trace-123"


async def test_roles_and_visibility(client: httpx.AsyncClient) -> None:
    t = tenant()
    mine = await request_approval(client, t, sub="bob")
    theirs = await request_approval(client, t, sub="carol")
    r = await client.get("/api/approvals", headers=headers("operator", "bob", t))
    assert [a["id"] for a in r.json()["data"]["approvals"]] == [mine]
    r = await client.get(f"/api/approvals/{theirs}", headers=headers("operator", "bob", t))
    assert r.status_code == 404
    r = await client.get("/api/approvals", headers=headers("viewer", "vic", t))
    assert r.json()["data"]["total"] == 2
    r = await client.post(f"/api/approvals/{mine}/decide", headers=headers("operator", "bob", t),
                          json={"status": "approved"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = await client.post(f"/api/approvals/{mine}/decide", headers=headers("viewer", "vic", t),
                          json={"status": "approved"})
    assert r.status_code == 403
    r = await client.post(f"/api/approvals/{mine}/dispatch", headers=headers("operator", "bob", t), json={})
    assert r.status_code == 403
    r = await client.post(f"/api/approvals/{mine}/decide", headers=headers("admin", "alice", tenant()),
                          json={"status": "approved"})
    assert r.status_code == 404  # another tenant's admin
    r = await client.post(f"/api/approvals/{mine}/decide", headers=headers("admin", "alice", t),
                          json={"status": "rejected", "note": "no"})
    assert r.status_code == 200 and r.json()["data"]["approval_status"] == "rejected"
    r = await client.post(f"/api/approvals/{mine}/decide", headers=headers("admin", "alice", t),
                          json={"status": "approved"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"
    r = await client.post(f"/api/approvals/{mine}/dispatch", headers=headers("admin", "alice", t), json={})
    assert r.status_code == 409


async def test_metrics_expose_the_runbook_counters(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 401  # outside dev, never without the token
    r = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("approvals_created_total", "approvals_approved_total", "approvals_rejected_total",
                 "approval_pending_gauge", "approval_time_seconds_bucket", "dispatch_success_total",
                 "dispatch_failure_total", "dispatch_latency_seconds_bucket",
                 "consume_for_dispatch_success_total", "consume_for_dispatch_conflict_total"):
        assert name in text, name


async def test_service_token_publishes_commands_with_the_same_rbac(client: httpx.AsyncClient) -> None:
    """A token minted for a service is checked by approvals exactly like a user's."""
    t = tenant()
    bad = token("viewer", "svc-reporting", t)
    r = await client.post("/api/pj/execute", headers={"Authorization": f"Bearer {bad}", **CSRF},
                          json={"actionId": "notify.webhook", "payload": {}})
    assert r.status_code == 403


async def test_openapi_and_docs_are_served(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in ("/api/pj/execute", "/api/approvals", "/api/approvals/{approval_id}",
                 "/api/approvals/{approval_id}/decide", "/api/approvals/{approval_id}/dispatch",
                 "/api/approvals/{approval_id}/chain", "/api/approvals/count/pending", "/health", "/metrics"):
        assert path in spec["paths"], path
    assert (await client.get("/docs")).status_code == 200


async def test_metrics_token_is_required_when_set(system: System) -> None:
    """A second gateway with PJ_METRICS_TOKEN: /metrics needs the bearer, the API is unchanged."""
    port = free_port()
    other = System(base_url=f"http://127.0.0.1:{port}", env={**system.env, "PJ_GATEWAY_PORT": str(port)},
                   logdir=system.logdir)
    other.start("gateway-metrics", "pj_gateway", PJ_METRICS_TOKEN="scrape-me")
    try:
        await other.wait_healthy()
        async with httpx.AsyncClient(base_url=other.base_url, timeout=10) as c:
            assert (await c.get("/metrics")).status_code == 401
            assert (await c.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
            ok = await c.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
            assert ok.status_code == 200 and "approvals_created_total" in ok.text
    finally:
        other.stop_all()


async def test_approvals_serves_its_own_metrics_for_direct_scrapes(client: httpx.AsyncClient,
                                                                   system: System) -> None:
    """Each approvals process can be scraped alone, so several instances add up correctly."""
    port = system.env["PJ_APPROVALS_METRICS_PORT"]
    async with httpx.AsyncClient(timeout=10) as direct:
        text = (await direct.get(f"http://127.0.0.1:{port}/metrics")).text
    assert "approvals_created_total" in text and "approval_pending_gauge" in text
    assert "pj_gateway_requests_total" not in text  # this process's metrics only


async def test_a_dispatcher_serves_step_metrics_and_a_taken_port_is_not_fatal(
        client: httpx.AsyncClient, system: System) -> None:
    t = tenant()
    approval_id = await request_approval(client, t, payload={"metrics": True})
    await approve(client, t, approval_id)
    r = await client.post(f"/api/approvals/{approval_id}/dispatch", headers=headers("admin", "alice", t), json={})
    assert r.status_code == 200
    port = system.env["PJ_DISPATCHER_METRICS_PORT"]
    async with httpx.AsyncClient(timeout=10) as direct:
        text = (await direct.get(f"http://127.0.0.1:{port}/metrics")).text
    assert "dispatch_steps_total" in text and "dispatch_orders_in_flight" in text
    logs = [system.log(name) for name in ("dispatcher-1", "dispatcher-2")]
    # At least the one that started second could not bind (the logs also hold dispatchers test_crash.py
    # restarted, which may have met the port taken again); every one of them kept working.
    assert any("metrics.bind_failed" in log for log in logs)
    health = (await client.get("/health")).json()
    assert health["checks"]["dispatchers"]["consumers"] == 2


# --- the documented commands themselves, run as written (twice) ---------------------------------------

ROOT = Path(__file__).resolve().parents[2]
# The tests run from this venv: the documented `make -s token` must not re-sync it under the other tests.
MAKE_ENV = {"MAKEFLAGS": "-o .venv/.synced"}
BASE_LINE = "export BASE=http://127.0.0.1:8080"


def documented_commands(path: Path, heading: str) -> str:
    """The ```bash blocks of one section of a markdown file, in order."""
    text = path.read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start:] if end < 0 else text[start:end]
    blocks = re.findall(r"^```bash\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    assert blocks, f"no bash blocks under {heading} in {path.name}"
    return "\n".join(blocks)


SMOKE_TESTS = {
    "readme": (ROOT / "README.md", "## Walk-through (the runbook's smoke tests)"),
    "runbook": (ROOT / "docs" / "runbook.md", "## Smoke Tests (curl)"),
}


def test_documented_requests_use_a_fresh_request_id() -> None:
    """A literal requestId in a documented command makes its second run find the first run's approval."""
    for name, (path, heading) in SMOKE_TESTS.items():
        commands = documented_commands(path, heading)
        assert '"requestId"' in commands, name
        literal = re.findall(r'"requestId"\s*:\s*"(?![\'"]*\$)[^"]*"', commands)
        assert not literal, f"{name}: a fixed requestId in the documented commands: {literal}"


async def run_documented(script: str, system: System) -> tuple[int, str]:
    """Run the commands with bash against the test system (its URL for BASE, its settings for tokens)."""
    assert BASE_LINE in script
    script = "set -euo pipefail\n" + script.replace(BASE_LINE, f"export BASE={system.base_url}")
    env = {**os.environ, **system.env, **MAKE_ENV}
    proc = await asyncio.create_subprocess_exec("bash", "-c", script, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.parametrize("name", sorted(SMOKE_TESTS))
@pytest.mark.timeout(300)
async def test_the_documented_smoke_tests_run_twice(name: str, system: System, sink: SinkState) -> None:
    """The README walk-through and the runbook's smoke tests, as written, twice on the same database."""
    script = documented_commands(*SMOKE_TESTS[name])
    calls = len(re.findall(r"\bcurl -i\b", script))
    approvals = []
    for run in (1, 2):
        code, out = await run_documented(script, system)
        assert code == 0, f"run {run} of the {name} commands failed:\n{out}"
        statuses = [int(s) for s in re.findall(r"^HTTP/[\d.]+ (\d{3})", out, re.MULTILINE)]
        assert len(statuses) == calls, f"run {run}: {statuses}\n{out}"
        assert all(200 <= s < 300 for s in statuses), f"run {run}: {statuses}\n{out}"
        assert '"approvalStatus":"dispatched"' in out, f"run {run} dispatched nothing:\n{out}"
        approvals += re.findall(r'"approvalId":"([0-9a-f-]{36})"', out)[:1]
    assert len(set(approvals)) == 2, f"both runs must make their own approval: {approvals}"
    for approval_id in approvals:
        assert [d for d in sink.deliveries if d.body["approvalId"] == approval_id], "the webhook got the delivery"
