"""The approvals routes through the gateway, with typed replies from a scripted approvals service."""

from pj_common.messages import (
    ApprovalPage,
    ApprovalStatus,
    ChainStage,
    ChainView,
    DispatchOutcome,
    DispatchRequest,
    ListApprovals,
    PendingCount,
)

from .conftest import APPROVAL_ID, FakeApprovals, Gateway, approval_view, auth, ok, outcome, refused, step_result


async def test_list_passes_the_status_as_the_enum_and_answers_the_page(
        gateway: Gateway, approvals: FakeApprovals) -> None:
    page = ApprovalPage(approvals=[approval_view()], total=1, pending_count=1, limit=10, offset=0)
    approvals.answer("list_approvals", ok(page))
    r = await gateway.client.get("/api/approvals", params={"status": "pending", "limit": 10},
                                 headers=auth(csrf=False))
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["total"] == 1 and data["pendingCount"] == 1
    approval = data["approvals"][0]
    assert approval["approval_status"] == "pending" and approval["plan_hash"] == "ab" * 32
    assert approval["audit"][0]["correlationId"] == "c-1" and approval["audit"][0]["to"] == "pending"
    command = approvals.received[-1].command
    assert isinstance(command, ListApprovals) and command.status is ApprovalStatus.PENDING
    assert command.full is False  # a summary of each approval unless asked
    await gateway.client.get("/api/approvals", params={"full": "true"}, headers=auth(csrf=False))
    assert approvals.received[-1].command.full is True  # type: ignore[union-attr]


async def test_list_refuses_a_status_that_is_not_one(gateway: Gateway, approvals: FakeApprovals) -> None:
    r = await gateway.client.get("/api/approvals", params={"status": "done"}, headers=auth(csrf=False))
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    assert approvals.received == []


async def test_count_get_and_chain(gateway: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("count_pending", ok(PendingCount(pending_count=3)))
    approvals.answer("get_approval", ok(approval_view(ApprovalStatus.APPROVED)))
    chain = ChainView(approval_id=APPROVAL_ID, approval_status=ApprovalStatus.PENDING, current_stage="approval",
                      stages=[ChainStage(name="approval", roles=["admin"], approvals_required=1, state="current",
                                         approvals=0, decisions=[])])
    approvals.answer("get_chain", ok(chain))
    headers = auth(csrf=False)
    r = await gateway.client.get("/api/approvals/count/pending", headers=headers)
    assert r.json()["data"] == {"pendingCount": 3}
    r = await gateway.client.get(f"/api/approvals/{APPROVAL_ID}", headers=headers)
    assert r.json()["data"]["approval_status"] == "approved"
    r = await gateway.client.get(f"/api/approvals/{APPROVAL_ID}/chain", headers=headers)
    assert r.json()["data"]["currentStage"] == "approval"
    assert r.json()["data"]["stages"][0]["approvalsRequired"] == 1


async def test_not_found_is_404(gateway: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("get_approval", refused("not_found", "no such approval"))
    r = await gateway.client.get(f"/api/approvals/{APPROVAL_ID}", headers=auth(csrf=False))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_decide_answers_the_approval(gateway: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("decide", ok(approval_view(ApprovalStatus.APPROVED)))
    r = await gateway.client.post(f"/api/approvals/{APPROVAL_ID}/decide", json={"status": "approved"},
                                  headers=auth())
    assert r.status_code == 200, r.text
    assert r.json()["data"]["approval_status"] == "approved"


async def test_an_unknown_error_code_is_an_internal_error(gateway: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("decide", refused("something_new"))
    r = await gateway.client.post(f"/api/approvals/{APPROVAL_ID}/decide", json={"status": "approved"},
                                  headers=auth())
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"


async def test_dispatch_that_finishes_in_time_is_200_with_the_outcome(
        gateway: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("dispatch", ok(outcome(ApprovalStatus.DISPATCHING), follow_up=True),
                     final=ok(outcome()), final_after_s=0.1)
    r = await gateway.client.post(f"/api/approvals/{APPROVAL_ID}/dispatch", json={}, headers=auth())
    assert r.status_code == 200, r.text
    assert r.json()["data"]["approvalStatus"] == "dispatched"
    assert r.json()["data"]["dispatchResult"][0]["stepId"] == "post-webhook"


async def test_dispatch_still_running_is_202(gateway: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("dispatch", ok(outcome(ApprovalStatus.DISPATCHING), follow_up=True))
    r = await gateway.client.post(f"/api/approvals/{APPROVAL_ID}/dispatch", headers=auth())
    assert r.status_code == 202, r.text
    assert r.json()["data"] == {"approvalId": APPROVAL_ID, "approvalStatus": "dispatching",
                                "dispatchResult": None, "dryRun": False}


async def test_a_dry_run_dispatch_is_200_and_waits_for_nothing(gateway: Gateway, approvals: FakeApprovals) -> None:
    preview = DispatchOutcome(approval_id=APPROVAL_ID, approval_status=ApprovalStatus.APPROVED,
                              dispatch_result=[step_result("simulated")], dry_run=True)
    approvals.answer("dispatch", ok(preview))
    r = await gateway.client.post(f"/api/approvals/{APPROVAL_ID}/dispatch", json={"dryRun": True}, headers=auth())
    assert r.status_code == 200, r.text
    assert r.json()["data"]["dryRun"] is True and r.json()["data"]["dispatchResult"][0]["status"] == "simulated"
    command = approvals.received[-1].command
    assert isinstance(command, DispatchRequest) and command.dry_run is True


async def test_a_post_without_the_csrf_header_is_refused_before_any_command(
        gateway: Gateway, approvals: FakeApprovals) -> None:
    r = await gateway.client.post(f"/api/approvals/{APPROVAL_ID}/decide", json={"status": "approved"},
                                  headers=auth(csrf=False))
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_required"
    assert approvals.received == []
