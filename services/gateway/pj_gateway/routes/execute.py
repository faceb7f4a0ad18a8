"""POST /api/pj/execute: ask for a governed action (or preview its plan with dry-run)."""

from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from pj_common.messages import DispatchOutcome, DryRunPlan, ExecuteAccepted, ExecuteRequest

from ..deps import State
from ..envelope import Envelope, ExecuteEnvelope
from ..errors import BODY_ERRORS, EVERY_ROUTE_ERRORS, error_responses, success
from ..ratelimit import LimitedWriterDep
from ..rpc import call, call_and_wait

router = APIRouter(prefix="/api/pj", tags=["execute"])


class ExecuteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actionId: str = Field(min_length=1, max_length=200)
    mode: Literal["execute", "dry-run"] = "execute"
    requestId: str | None = Field(default=None, min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)


@router.post(
    "/execute", status_code=202, response_model=ExecuteEnvelope[ExecuteAccepted],
    responses={
        200: {"model": Envelope[DryRunPlan] | ExecuteEnvelope[DispatchOutcome],
              "description": "dry-run: the plan, nothing stored; or a launch-tier action that finished "
                             "within PJ_DISPATCH_WAIT_S, with its dispatch result"},
        202: {"description": "a pending approval (approvalRequired), or a launch-tier action still dispatching"},
        **error_responses(*EVERY_ROUTE_ERRORS, *BODY_ERRORS, 401, 403, 409, 503, 504),
    })
async def execute(*, body: ExecuteBody, request: Request, caller: LimitedWriterDep, state: State) -> Response:
    """Governed action -> 202 with a pending approval; dry-run -> 200 with the plan, nothing stored;
    launch-tier action -> run at once: 200 with its outcome, or 202 while it still runs."""
    command = ExecuteRequest(action_id=body.actionId, mode=body.mode, request_id=body.requestId,
                             payload=body.payload)
    if body.mode == "dry-run":
        plan = await call(state, command, DryRunPlan, token=caller.token, correlation_id=caller.correlation_id)
        return success(request, plan)
    # A launch-tier action is dispatched at once: wait for its outcome as POST /dispatch does.
    started = await call_and_wait(state, command, ExecuteAccepted, token=caller.token,
                                  correlation_id=caller.correlation_id, wait_s=state.settings.dispatch_wait_s)
    if started.outcome is not None:
        return success(request, started.outcome, approvalId=started.outcome.approval_id, approvalRequired=False)
    accepted = started.data
    return success(request, accepted, status_code=202, approvalId=accepted.approval_id,
                   approvalRequired=accepted.approval_required)
