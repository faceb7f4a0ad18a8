"""pj_client.api: the routes as data, and answers read into the contract's models or the error they carry."""

import json
from typing import Any

import pytest

from pj_client import api
from pj_client.errors import Conflict, Forbidden, InvalidRequest, NotFound, ServerError, Unavailable
from pj_common.messages import ApprovalStatus, DispatchOutcome, ExecuteAccepted, PendingCount

ACCEPTED = {"approvalId": "a-1", "approvalRequired": True, "approvalStatus": "pending", "planHash": "h" * 64,
            "requestId": "r-1", "created": True}


def envelope(data: dict[str, Any], **top: Any) -> bytes:
    return json.dumps({"success": True, "correlationId": "c-1", "data": data, **top}).encode()


def failure(code: str, message: str = "why") -> bytes:
    return json.dumps({"success": False, "correlationId": "c-9", "error": {"code": code, "message": message}}).encode()


def test_a_success_is_read_into_its_model() -> None:
    assert api.read_data(PendingCount, 200, envelope({"pendingCount": 3})) == PendingCount(pending_count=3)


def test_an_error_envelope_raises_its_class_with_code_status_and_correlation_id() -> None:
    with pytest.raises(Conflict) as caught:
        api.read_data(PendingCount, 409, failure("invalid_state", "approval is not pending"))
    assert (caught.value.code, caught.value.status, caught.value.correlation_id, caught.value.message) == (
        "invalid_state", 409, "c-9", "approval is not pending")
    with pytest.raises(Forbidden):
        api.read_data(PendingCount, 403, failure("self_approval_forbidden"))


def test_a_body_that_is_not_the_envelope_is_judged_by_its_status() -> None:
    with pytest.raises(Unavailable, match="HTTP 502: <html>bad gateway</html>"):
        api.read_data(PendingCount, 502, b"<html>bad gateway</html>")
    with pytest.raises(NotFound):
        api.read_data(PendingCount, 404, b"")


def test_a_success_outside_the_contract_is_a_server_error() -> None:
    with pytest.raises(ServerError, match="outside the contract"):
        api.read_data(PendingCount, 200, envelope({"pendingCount": 1, "surprise": True}))


def test_execute_202_is_a_stored_request_and_200_a_finished_launch() -> None:
    call = api.execute("notify.webhook", {"m": 1}, request_id="r-1")
    assert (call.method, call.path, call.changes_state) == ("POST", "/api/pj/execute", True)
    assert call.body == {"actionId": "notify.webhook", "mode": "execute", "payload": {"m": 1}, "requestId": "r-1"}
    stored = call.parse(202, envelope(ACCEPTED, approvalId="a-1", approvalRequired=True))
    assert isinstance(stored, ExecuteAccepted) and stored.approval_status == ApprovalStatus.PENDING
    done = call.parse(200, envelope({"approvalId": "a-1", "approvalStatus": "dispatched", "dispatchResult": []}))
    assert isinstance(done, DispatchOutcome) and done.approval_status == ApprovalStatus.DISPATCHED
    with pytest.raises(InvalidRequest):
        call.parse(422, failure("unknown_action"))


def test_reads_carry_no_csrf_and_ids_stay_one_path_segment() -> None:
    call = api.get_approval("../count/pending")
    assert call.path == "/api/approvals/..%2Fcount%2Fpending"
    assert not call.changes_state
    assert api.decide("a 1", "rejected", note="no").path == "/api/approvals/a%201/decide"
    listing = api.list_approvals(status=ApprovalStatus.PENDING, limit=10)
    assert listing.params == {"limit": 10, "offset": 0, "status": "pending"}


def test_health_503_still_reads_the_report() -> None:
    unknown = {"status": "unknown", "detail": "broker unavailable"}
    body = {"status": "error", "checks": {"broker": {"status": "error", "detail": "not connected"},
                                          "approvals": unknown, "database": unknown, "dispatchers": unknown}}
    report = api.health().parse(503, json.dumps(body).encode())
    assert report.status == "error" and report.checks.broker.detail == "not connected"
    with pytest.raises(Unavailable):
        api.health().parse(503, b"upstream connect error")


def test_error_body_is_the_envelope_scripts_read() -> None:
    error = NotFound("not_found", "no such approval", status=404, correlation_id="c-2")
    assert json.loads(api.error_body(error)) == {"success": False, "correlationId": "c-2", "status": 404,
                                                 "error": {"code": "not_found", "message": "no such approval"}}
