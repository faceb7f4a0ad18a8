"""pj_client.progress: how far a dispatch has come, read from the approval."""

from datetime import UTC, datetime
from typing import Any

from pj_client.progress import ENDED, outcome_of, steps_done
from pj_common.messages import ApprovalStatus, ApprovalView, PlanStep, StepResult

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def approval(status: ApprovalStatus, results: list[str] | None) -> ApprovalView:
    steps = [PlanStep(step_id=f"s{i}", connector="webhook", operation="post") for i in range(3)]
    fields: dict[str, Any] = dict(
        id="a-1", request_id="r-1", tenant_id="acme", operator_id="bob", action_id="test.three",
        approval_status=status, approver_id="alice", approval_note=None, payload={}, plan=steps, plan_hash="h",
        created_at=NOW, updated_at=NOW, decided_at=NOW, dispatched_at=None, finished_at=None, expires_at=NOW)
    fields["dispatch_result"] = None if results is None else [
        StepResult(step_id=f"s{i}", connector="webhook", operation="post", status=r)  # type: ignore[arg-type]
        for i, r in enumerate(results)]
    return ApprovalView(**fields)


def test_steps_done_counts_recorded_outcomes_only() -> None:
    assert steps_done(approval(ApprovalStatus.APPROVED, None)) == 0
    assert steps_done(approval(ApprovalStatus.DISPATCHING, ["succeeded"])) == 1
    assert steps_done(approval(ApprovalStatus.DISPATCH_FAILED, ["succeeded", "failed", "not_run"])) == 2


def test_a_finished_approval_reads_as_the_gateways_outcome() -> None:
    done = outcome_of(approval(ApprovalStatus.DISPATCHED, ["succeeded", "skipped", "succeeded"]))
    assert (done.approval_id, done.approval_status, done.dry_run) == ("a-1", ApprovalStatus.DISPATCHED, False)
    assert [s.status for s in done.dispatch_result or []] == ["succeeded", "skipped", "succeeded"]


def test_only_final_statuses_end_the_wait() -> None:
    assert {ApprovalStatus.DISPATCHED, ApprovalStatus.DISPATCH_FAILED} <= ENDED
    assert ApprovalStatus.DISPATCHING not in ENDED and ApprovalStatus.APPROVED not in ENDED
