"""The typed approvals client (pj_dispatcher.approvals_client): replies are parsed as
`Reply[DispatchPlan]` and `Reply[LeaseGrant]`; anything else means "try again later"."""

import json
from typing import Any

import pytest

from pj_common.errors import ErrorCode, GateError
from pj_common.messages import CommandEnvelope, DispatchOrder, DispatchPlan, GetDispatchPlan, PlanStep, RenewLease
from pj_common.transport import Retryable
from pj_dispatcher.approvals_client import ApprovalsClient

ORDER = DispatchOrder(approval_id="apr-1", tenant_id="t", action_id="act", claim_token="claim", steps=[])


class Rpc:
    def __init__(self, answer: bytes | Exception) -> None:
        self.answer = answer
        self.sent: list[CommandEnvelope] = []

    async def call(self, body: bytes, *, correlation_id: str, timeout: float) -> bytes:
        envelope = CommandEnvelope.model_validate_json(body)
        assert correlation_id == envelope.message_id and timeout == 2.5
        self.sent.append(envelope)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def reply(**fields: Any) -> bytes:
    return json.dumps({"schemaVersion": 1, **fields}).encode()


async def ask(rpc: Rpc) -> DispatchPlan:
    return await ApprovalsClient(rpc, timeout_s=2.5, holder="proc-1").get_dispatch_plan(ORDER)  # type: ignore[arg-type]


async def test_the_plan_is_asked_for_with_the_orders_claim_and_parsed_into_models() -> None:
    step = {"stepId": "a", "connector": "webhook", "operation": "post", "params": {"x": 1}}
    done = {"stepId": "a", "connector": "webhook", "operation": "post", "status": "succeeded", "attempts": 1}
    rpc = Rpc(reply(ok=True, data={"stale": False, "steps": [step], "completed": [done]}))
    plan = await ask(rpc)
    assert rpc.sent[0].command == GetDispatchPlan(approval_id="apr-1", claim_token="claim", holder="proc-1")
    assert plan.stale is False
    assert plan.steps == [PlanStep(step_id="a", connector="webhook", operation="post", params={"x": 1})]
    assert plan.completed[0].status == "succeeded"


async def test_a_stale_claim_is_a_stale_plan() -> None:
    assert (await ask(Rpc(reply(ok=True, data={"stale": True, "steps": [], "completed": []})))).stale


@pytest.mark.parametrize("answer", [
    GateError(ErrorCode.BROKER_UNAVAILABLE, "no broker"),
    reply(ok=False, error={"code": "forbidden", "message": "no"}),
    reply(ok=True, data={"stale": False, "steps": [{"id": "not a step"}]}),
    b"not json",
], ids=["unreachable", "refused", "out-of-contract", "not-json"])
async def test_anything_but_a_plan_retries_the_order_later(answer: bytes | Exception) -> None:
    with pytest.raises(Retryable):
        await ask(Rpc(answer))


async def test_a_lease_renewal_is_asked_for_with_the_orders_claim_and_parsed_into_a_grant() -> None:
    rpc = Rpc(reply(ok=True, data={"granted": True, "leaseExpiresAt": "2026-01-01T00:01:00Z"}))
    grant = await ApprovalsClient(rpc, timeout_s=2.5, holder="proc-1").renew_lease(ORDER)  # type: ignore[arg-type]
    assert rpc.sent[0].command == RenewLease(approval_id="apr-1", claim_token="claim", holder="proc-1")
    assert grant.granted and grant.lease_expires_at is not None and grant.lease_expires_at.minute == 1


async def test_a_refused_renewal_is_a_grant_not_granted() -> None:
    rpc = Rpc(reply(ok=True, data={"granted": False}))
    assert not (await ApprovalsClient(rpc, timeout_s=2.5, holder="proc-1").renew_lease(ORDER)).granted  # type: ignore[arg-type]


@pytest.mark.parametrize("answer", [
    GateError(ErrorCode.UPSTREAM_TIMEOUT, "no reply"),
    reply(ok=False, error={"code": "forbidden", "message": "no"}),
    reply(ok=True, data={"granted": "perhaps"}),
], ids=["unanswered", "refused", "out-of-contract"])
async def test_a_renewal_without_a_grant_is_retryable(answer: bytes | Exception) -> None:
    with pytest.raises(Retryable):
        await ApprovalsClient(Rpc(answer), timeout_s=2.5, holder="proc-1").renew_lease(ORDER)  # type: ignore[arg-type]
