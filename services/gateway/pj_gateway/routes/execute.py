"""POST /api/pj/execute: ask for a governed action (or preview its plan with dry-run)."""

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pj_common.messages import ExecuteRequest

from ..deps import CallerDep, State
from ..errors import success
from ..rpc import send_command

router = APIRouter(prefix="/api/pj", tags=["execute"])


class ExecuteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actionId: str = Field(min_length=1, max_length=200)
    mode: Literal["execute", "dry-run"] = "execute"
    requestId: str | None = Field(default=None, min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)


@router.post("/execute", status_code=202)
async def execute(body: ExecuteBody, request: Request, caller: CallerDep, state: State) -> JSONResponse:
    """Governed action -> 202 with a pending approval; dry-run -> 200 with the plan, nothing stored;
    launch-tier action -> run at once: 200 with its outcome, or 202 while it still runs."""
    command = ExecuteRequest(action_id=body.actionId, mode=body.mode, request_id=body.requestId,
                             payload=body.payload)
    # A launch-tier action is dispatched at once: wait for its outcome as POST /dispatch does.
    wait = state.settings.dispatch_wait_s if body.mode == "execute" else 0.0
    reply = await send_command(state, command, token=caller.token, correlation_id=caller.correlation_id,
                               follow_up_s=wait)
    data = reply.data
    if body.mode == "dry-run":
        return success(request, data, 200)
    if "dispatchResult" in data:  # a launch-tier action that finished within the wait
        return success(request, data, 200, approvalId=data["approvalId"], approvalRequired=False)
    required = data.get("approvalRequired", True)
    return success(request, data, 202, approvalId=data["approvalId"], approvalRequired=required)
