"""POST /api/pj/execute: ask for a governed action (or preview its plan with dry-run)."""

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pj_common.messages import ExecuteRequest
from pydantic import BaseModel, ConfigDict, Field

from ..deps import CallerDep, State
from ..errors import success
from ..rpc import call

router = APIRouter(prefix="/api/pj", tags=["execute"])


class ExecuteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actionId: str = Field(min_length=1, max_length=200)
    mode: Literal["execute", "dry-run"] = "execute"
    requestId: str | None = Field(default=None, min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)


@router.post("/execute", status_code=202)
async def execute(body: ExecuteBody, request: Request, caller: CallerDep, state: State) -> JSONResponse:
    """Governed action -> 202 with a pending approval; dry-run -> 200 with the plan, nothing stored."""
    command = ExecuteRequest(action_id=body.actionId, mode=body.mode, request_id=body.requestId,
                             payload=body.payload)
    data = await call(state, command, token=caller.token, correlation_id=caller.correlation_id)
    if body.mode == "dry-run":
        return success(request, data, 200)
    return success(request, data, 202, approvalId=data["approvalId"], approvalRequired=True)
