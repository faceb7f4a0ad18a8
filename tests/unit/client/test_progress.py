"""pj_client.progress: how far a dispatch has come, read from the approval, and following it to its end."""

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from rich.console import Console

from pj_client.errors import Conflict, Unavailable
from pj_client.http import AsyncGatewayClient
from pj_client.progress import ENDED, dispatch_live, outcome_of, steps_done
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


# --- dispatch_live against a gateway that answers 202 and finishes later (httpx.MockTransport) ---------


class SlowDispatch:
    """A gateway whose dispatch outlives its wait: POST answers 202, the approval ends after `reads` GETs."""

    def __init__(self, *, reads: int, post_status: int = 202) -> None:
        self.reads_left = reads
        self.post_status = post_status
        self.gets = 0

    def view(self) -> ApprovalView:
        if self.reads_left > 0:
            return approval(ApprovalStatus.DISPATCHING, ["succeeded"])
        return approval(ApprovalStatus.DISPATCHED, ["succeeded", "succeeded", "succeeded"])

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            assert request.headers["X-PuddleJumper-Request"] == "true"
            await asyncio.sleep(0.05)
            if self.post_status == 409:
                return httpx.Response(409, json={"success": False, "correlationId": "c",
                                                 "error": {"code": "invalid_state", "message": "not approved"}})
            return httpx.Response(202, json={"success": True, "correlationId": "c",
                                             "data": {"approvalId": "a-1", "approvalStatus": "dispatching"}})
        self.gets += 1
        self.reads_left -= 1
        data = json.loads(self.view().to_json())
        return httpx.Response(200, json={"success": True, "correlationId": "c", "data": data})


def gate(fake: SlowDispatch) -> AsyncGatewayClient:
    return AsyncGatewayClient("http://gate.test", "t", transport=httpx.MockTransport(fake.handle))


async def test_wait_follows_a_202_until_the_dispatch_ends() -> None:
    fake = SlowDispatch(reads=3)
    async with gate(fake) as client:
        outcome = await dispatch_live(client, "a-1", wait=True, timeout_s=10, console=Console(quiet=True),
                                      poll_s=0.01)
    assert outcome.approval_status == ApprovalStatus.DISPATCHED
    assert [s.status for s in outcome.dispatch_result or []] == ["succeeded"] * 3
    assert fake.gets >= 4


async def test_without_wait_the_gateways_answer_is_the_outcome() -> None:
    async with gate(SlowDispatch(reads=100)) as client:
        outcome = await dispatch_live(client, "a-1", wait=False, timeout_s=10, console=Console(quiet=True),
                                      poll_s=0.01)
    assert outcome.approval_status == ApprovalStatus.DISPATCHING


async def test_a_refusal_is_raised_and_a_dispatch_that_never_ends_times_out() -> None:
    async with gate(SlowDispatch(reads=0, post_status=409)) as client:
        with pytest.raises(Conflict):
            await dispatch_live(client, "a-1", wait=True, timeout_s=10, console=Console(quiet=True), poll_s=0.01)
    async with gate(SlowDispatch(reads=10_000)) as client:
        with pytest.raises(Unavailable, match=r"did not finish dispatching within 0\.3s"):
            await dispatch_live(client, "a-1", wait=True, timeout_s=0.3, console=Console(quiet=True), poll_s=0.01)
