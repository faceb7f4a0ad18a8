"""Hostile HTTP input through the gateway: every request gets a clear 4xx with the error envelope, and
nothing it refuses reaches the approvals service as a command."""

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import Request
from fastapi.responses import JSONResponse

from pj_common.messages import ApprovalPage, DecideRequest
from pj_gateway.errors import CORRELATION_HEADER

from .conftest import (
    APPROVAL_ID,
    CSRF,
    FakeApprovals,
    Gateway,
    GatewayFactory,
    accepted,
    approval_view,
    auth,
    ok,
    refused,
    token,
)

EXECUTE = "/api/pj/execute"
JSON = {"Content-Type": "application/json"}


def assert_refused(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["success"] is False and body["error"]["code"] == code, body
    assert body["correlationId"] == r.headers[CORRELATION_HEADER]
    return body


def execute_body(payload: object) -> bytes:
    return json.dumps({"actionId": "notify.webhook", "payload": payload}).encode()


@pytest.fixture
async def small(approvals: FakeApprovals, gateway_factory: GatewayFactory) -> AsyncIterator[Gateway]:
    """A gateway with small limits, so the tests send kilobytes, not megabytes."""
    async with gateway_factory(max_body_bytes=16384, max_json_string=100, max_json_depth=8) as started:
        yield started


async def test_a_body_under_the_limit_gets_through(small: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("execute", ok(accepted()))
    r = await small.client.post(EXECUTE, content=execute_body({"text": "x" * 100}), headers={**auth(), **JSON})
    assert r.status_code == 202, r.text


async def test_a_body_over_the_limit_is_413(small: Gateway, approvals: FakeApprovals) -> None:
    r = await small.client.post(EXECUTE, content=execute_body(["x" * 50] * 400), headers={**auth(), **JSON})
    assert_refused(r, 413, "payload_too_large")
    assert approvals.received == []


async def test_a_body_over_the_limit_without_content_length_is_413(small: Gateway, approvals: FakeApprovals) -> None:
    """A chunked upload declares no length: the body is counted as it arrives."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"actionId": "notify.webhook", "payload": {"a": "'
        for _ in range(300):
            yield b"x" * 64
        yield b'"}}'

    r = await small.client.post(EXECUTE, content=chunks(), headers={**auth(), **JSON})
    assert "content-length" not in r.request.headers
    assert_refused(r, 413, "payload_too_large")
    assert approvals.received == []


async def test_a_declared_length_over_the_limit_is_413_before_the_body(gateway: Gateway) -> None:
    r = await gateway.client.post(EXECUTE, content=b"{}",
                                  headers={**auth(), **JSON, "Content-Length": str(2 * 1024 * 1024)})
    assert_refused(r, 413, "payload_too_large")


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml"])
async def test_a_body_that_is_not_json_is_415(gateway: Gateway, content_type: str | None) -> None:
    headers = auth() if content_type is None else {**auth(), "Content-Type": content_type}
    r = await gateway.client.post(EXECUTE, content=execute_body({}), headers=headers)
    assert_refused(r, 415, "unsupported_media_type")


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"actionId": "notify.webhook", "payload": {"a": "\xff\xfe"}}', "UTF-8"),
    (b'{"actionId": "a\x00b"}', "not JSON"),  # a raw control character: the JSON grammar refuses it
    (execute_body({"a": "nul \u0000 inside"}), "control characters"),
    (execute_body({"a": "bell \u0007"}), "control characters"),
    (execute_body({"a\u001b[31m": "escape in a key"}), "control characters"),
    (execute_body({"a": "\ud800 lone surrogate"}), "control characters"),
    (b'{"actionId": "notify.webhook", "payload": {"n": NaN}}', "non-finite"),
    (b'{"actionId": "notify.webhook", "payload": {"n": Infinity}}', "non-finite"),
    (b'{"actionId": "notify.webhook", "payload": {"n": -Infinity}}', "non-finite"),
    (b'{"actionId": "notify.webhook", "payload": {"n": 1e999}}', "non-finite"),
    (b'{"actionId": "notify.webhook", "payload": {"n": ' + b"9" * 5000 + b"}}", "not JSON"),
    (execute_body({"s": "x" * 101}), "longer than 100"),
    (execute_body({"x" * 101: 1}), "longer than 100"),
    (execute_body(json.loads("[" * 8 + "]" * 8)), "nested deeper"),
    (b'{"payload": ' + b"[" * 3000 + b"]" * 3000 + b"}", "nested deeper"),
    (b'{"actionId": "notify.webhook", "payload": {', "not JSON"),
    (b'{"actionId": "notify.webhook", "actionId": "admin.everything"}', "ambiguous"),
])
async def test_a_json_body_the_contract_cannot_hold_is_422(
        small: Gateway, approvals: FakeApprovals, body: bytes, reason: str) -> None:
    r = await small.client.post(EXECUTE, content=body, headers={**auth(), **JSON})
    assert reason in assert_refused(r, 422, "validation_error")["error"]["message"]
    assert approvals.received == []


async def test_tab_and_newline_are_text_not_control(small: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("execute", ok(accepted()))
    r = await small.client.post(EXECUTE, content=execute_body({"a": "line\tone\nline two\r\n"}),
                                headers={**auth(), **JSON})
    assert r.status_code == 202, r.text


async def test_a_note_over_4000_characters_is_422(gateway: Gateway, approvals: FakeApprovals) -> None:
    url = f"/api/approvals/{APPROVAL_ID}/decide"
    r = await gateway.client.post(url, json={"status": "approved", "note": "n" * 4001}, headers=auth("approver"))
    assert_refused(r, 422, "validation_error")
    assert approvals.received == []
    approvals.answer("decide", ok(approval_view()))
    r = await gateway.client.post(url, json={"status": "approved", "note": "n" * 4000}, headers=auth("approver"))
    assert r.status_code == 200, r.text
    command = approvals.received[-1].command
    assert isinstance(command, DecideRequest) and command.note == "n" * 4000


@pytest.mark.parametrize("body", [{"status": "approved", "extra": 1}, {"status": "approved", "approverId": "me"}])
async def test_unknown_fields_are_refused(gateway: Gateway, approvals: FakeApprovals, body: dict[str, Any]) -> None:
    r = await gateway.client.post(f"/api/approvals/{APPROVAL_ID}/decide", json=body, headers=auth("approver"))
    assert_refused(r, 422, "validation_error")
    r = await gateway.client.post(EXECUTE, json={"actionId": "a", "tenant": "other"}, headers=auth())
    assert_refused(r, 422, "validation_error")
    assert approvals.received == []


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "limit=-1", "limit=abc", "limit=1e3", "offset=-1",
                                   "offset=x", "offset=99999999999999999999999", "status=nope"])
async def test_paging_out_of_bounds_is_422(gateway: Gateway, approvals: FakeApprovals, query: str) -> None:
    r = await gateway.client.get(f"/api/approvals?{query}", headers=auth())
    assert_refused(r, 422, "validation_error")
    assert approvals.received == []


async def test_paging_within_bounds_is_sent(gateway: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("list_approvals", ok(ApprovalPage(approvals=[], total=0, pending_count=0, limit=200,
                                                       offset=5)))
    r = await gateway.client.get("/api/approvals?limit=200&offset=5", headers=auth())
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("approval_id", ["not-a-uuid", "1", "%00", "..%2F..%2Fetc", "x" * 300,
                                         f"{APPROVAL_ID}x", "' OR 1=1 --"])
@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("GET", "/chain"), ("POST", "/decide"),
                                                ("POST", "/dispatch")])
async def test_a_malformed_approval_id_is_a_4xx_envelope(
        gateway: Gateway, approvals: FakeApprovals, approval_id: str, method: str, suffix: str) -> None:
    body = {"status": "approved"} if suffix == "/decide" else None
    r = await gateway.client.request(method, f"/api/approvals/{approval_id}{suffix}", json=body, headers=auth())
    assert r.status_code in (404, 422), r.text
    assert r.json()["success"] is False
    assert approvals.received == []


async def test_a_422_never_echoes_the_input_or_the_token(gateway: Gateway) -> None:
    bearer = token()
    secret_value = "do-not-echo-4711-" + bearer[-20:]
    r = await gateway.client.post(
        EXECUTE, json={"actionId": ["not", "a", "string", secret_value], "mode": secret_value, "requestId": 7},
        headers={"Authorization": f"Bearer {bearer}", **CSRF})
    assert_refused(r, 422, "validation_error")
    assert secret_value not in r.text and bearer not in r.text and "do-not-echo" not in r.text


async def test_an_error_relayed_from_approvals_never_carries_the_token(
        gateway: Gateway, approvals: FakeApprovals) -> None:
    """A service that echoes the command it refused (its envelope holds the token) is scrubbed at the edge."""
    bearer = token()
    approvals.answer("count_pending", refused("validation_error", f"invalid command: {{'token': '{bearer}'}}"))
    r = await gateway.client.get("/api/approvals/count/pending", headers={"Authorization": f"Bearer {bearer}"})
    assert_refused(r, 422, "validation_error")
    assert bearer not in r.text


async def test_a_long_url_is_414_and_large_headers_are_431(gateway: Gateway) -> None:
    r = await gateway.client.get("/api/approvals?status=pending&x=" + "a" * 9000, headers=auth())
    assert_refused(r, 414, "uri_too_long")
    r = await gateway.client.get("/api/approvals", headers={**auth(), "X-Padding": "p" * 20000})
    assert_refused(r, 431, "headers_too_large")


async def test_a_form_post_reaches_a_route_that_reads_forms_but_not_over_the_limit(small: Gateway) -> None:
    """Slack posts its interactions as forms: such a route gets the exact bytes (it checks a signature over
    them); the size limit still holds."""

    async def echo_length(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})

    small.app.add_api_route("/api/test-only/form", echo_length, methods=["POST"])
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = b"payload=" + b"%7B%22a%22%3A1%7D" * 100
    r = await small.client.post("/api/test-only/form", content=body, headers=form)
    assert r.status_code == 200 and r.json() == {"bytes": len(body)}
    r = await small.client.post("/api/test-only/form", content=b"payload=" + b"x" * 20000, headers=form)
    assert_refused(r, 413, "payload_too_large")
