"""POST /api/pj/execute through the gateway, with typed replies from a scripted approvals service."""

from pj_common.messages import ApprovalStatus, DryRunPlan, ExecuteRequest, PlanStep

from .conftest import APPROVAL_ID, FakeApprovals, Gateway, accepted, auth, ok, outcome, refused

EXECUTE = {"actionId": "notify.webhook", "requestId": "order-4711", "payload": {"message": "hi"}}


async def test_a_governed_action_is_202_with_the_pending_approval(gateway: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("execute", ok(accepted()))
    r = await gateway.client.post("/api/pj/execute", json=EXECUTE, headers=auth("operator", "bob"))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["success"] is True and body["approvalId"] == APPROVAL_ID and body["approvalRequired"] is True
    assert body["data"] == {"approvalId": APPROVAL_ID, "approvalRequired": True, "approvalStatus": "pending",
                            "planHash": "ab" * 32, "requestId": "order-4711", "created": True}
    assert body["correlationId"] == r.headers["X-Correlation-Id"]
    command = approvals.received[-1].command
    assert isinstance(command, ExecuteRequest) and command.request_id == "order-4711"


async def test_dry_run_is_200_with_the_plan(gateway: Gateway, approvals: FakeApprovals) -> None:
    plan = DryRunPlan(action_id="notify.webhook", plan=[PlanStep(step_id="s", connector="webhook", operation="post")],
                      plan_hash="cd" * 32)
    approvals.answer("execute", ok(plan))
    r = await gateway.client.post("/api/pj/execute", json={**EXECUTE, "mode": "dry-run"}, headers=auth())
    assert r.status_code == 200, r.text
    assert r.json()["data"]["approvalRequired"] is False and r.json()["data"]["planHash"] == "cd" * 32
    assert "approvalId" not in r.json()


async def test_a_launch_tier_action_that_finishes_in_time_is_200_with_its_result(
        gateway: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("execute", ok(accepted(ApprovalStatus.DISPATCHING, required=False), follow_up=True),
                     final=ok(outcome()), final_after_s=0.1)
    r = await gateway.client.post("/api/pj/execute", json=EXECUTE, headers=auth())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["approvalId"] == APPROVAL_ID and body["approvalRequired"] is False
    assert body["data"]["approvalStatus"] == "dispatched"
    assert body["data"]["dispatchResult"][0]["status"] == "succeeded"


async def test_a_launch_tier_action_still_running_is_202_dispatching(
        gateway: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("execute", ok(accepted(ApprovalStatus.DISPATCHING, required=False), follow_up=True),
                     final=ok(outcome()), final_after_s=3.0)  # after the gateway's 1 s wait
    r = await gateway.client.post("/api/pj/execute", json=EXECUTE, headers=auth())
    assert r.status_code == 202, r.text
    assert r.json()["data"]["approvalStatus"] == "dispatching" and r.json()["approvalRequired"] is False


async def test_an_error_reply_answers_its_status(gateway: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("execute", refused("idempotency_conflict", "requestId reused"))
    r = await gateway.client.post("/api/pj/execute", json=EXECUTE, headers=auth())
    assert r.status_code == 409
    assert r.json()["success"] is False
    assert r.json()["error"] == {"code": "idempotency_conflict", "message": "requestId reused"}


async def test_a_reply_outside_the_contract_is_an_internal_error_not_passed_on(
        gateway: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("execute", b'{"schemaVersion": 1, "ok": true, "data": {"approvalId": "x", "extra": 1}}')
    r = await gateway.client.post("/api/pj/execute", json=EXECUTE, headers=auth())
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"


async def test_a_json_body_without_content_type_says_so(gateway: Gateway, approvals: FakeApprovals) -> None:
    r = await gateway.client.post("/api/pj/execute", content=b'{"actionId": "notify.webhook"}', headers=auth())
    assert r.status_code == 415
    assert r.json()["error"] == {"code": "unsupported_media_type",
                                 "message": "Content-Type must be application/json"}
    assert approvals.received == []


async def test_a_json_body_sent_as_text_says_so(gateway: Gateway) -> None:
    r = await gateway.client.post("/api/pj/execute", content=b'{"actionId": "notify.webhook"}',
                                  headers={**auth(), "Content-Type": "text/plain"})
    assert r.status_code == 415
    assert r.json()["error"]["message"] == "Content-Type must be application/json"


async def test_a_body_that_does_not_match_still_names_the_field(gateway: Gateway) -> None:
    r = await gateway.client.post("/api/pj/execute", json={"payload": {}}, headers=auth())
    assert r.status_code == 422
    assert r.json()["error"]["message"].startswith("actionId:")
