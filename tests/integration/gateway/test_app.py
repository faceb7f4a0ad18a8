"""The middleware: one access-log line per request, refusals included, findable by correlation id."""

import json
import logging

import pytest

from pj_common.logging import JsonFormatter
from pj_common.messages import PendingCount

from .conftest import APPROVAL_ID, FakeApprovals, Gateway, auth, ok


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    formatter = JsonFormatter("gateway")
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == "pj.gateway.access"]


async def test_a_refused_decide_is_logged_with_its_correlation_id_and_caller(
        gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pj.gateway.access")
    headers = {**auth("approver", "carol", "acme", csrf=False), "X-Correlation-Id": "find-me-4711"}
    r = await gateway.client.post(f"/api/approvals/{APPROVAL_ID}/decide", json={"status": "approved"},
                                  headers=headers)
    assert r.status_code == 403
    [line] = access_lines(caplog)
    assert line["scope"] == "gateway.access" and line["level"] == "info"
    assert line["method"] == "POST" and line["route"] == "/api/approvals/{approval_id}/decide"
    assert line["path"] == f"/api/approvals/{APPROVAL_ID}/decide"
    assert line["status"] == 403 and isinstance(line["durationMs"], float)
    assert line["correlationId"] == "find-me-4711" == r.json()["correlationId"]
    assert line["sub"] == "carol" and line["tenant"] == "acme"


async def test_every_request_gets_one_line_unauthenticated_ones_without_a_caller(
        gateway: Gateway, approvals: FakeApprovals, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pj.gateway.access")
    approvals.answer("count_pending", ok(PendingCount(pending_count=0)))
    ok_response = await gateway.client.get("/api/approvals/count/pending", headers=auth(csrf=False))
    no_token = await gateway.client.post("/api/pj/execute", json={"actionId": "x"})
    unknown = await gateway.client.get("/nowhere")
    lines = access_lines(caplog)
    assert [line["status"] for line in lines] == [200, 401, 404]
    assert lines[0]["sub"] == "alice" and lines[0]["correlationId"] == ok_response.headers["X-Correlation-Id"]
    assert "sub" not in lines[1] and lines[1]["correlationId"] == no_token.json()["correlationId"]
    assert lines[2]["route"] == "unmatched" and lines[2]["correlationId"] == unknown.json()["correlationId"]


async def test_the_correlation_id_is_the_same_in_the_command(
        gateway: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("count_pending", ok(PendingCount(pending_count=0)))
    r = await gateway.client.get("/api/approvals/count/pending",
                                 headers={**auth(csrf=False), "X-Correlation-Id": "trace-1"})
    assert r.headers["X-Correlation-Id"] == "trace-1"
    assert approvals.received[-1].correlation_id == "trace-1"
