"""The approvals API of the runbook: list, get, count pending, decide, dispatch."""

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pj_common.messages import (
    ApprovalStatus,
    CountPending,
    DecideRequest,
    Decision,
    DispatchRequest,
    GetApproval,
    GetChain,
    ListApprovals,
)

from ..deps import CallerDep, State
from ..errors import success
from ..rpc import call, send_command

router = APIRouter(prefix="/api/approvals", tags=["approvals"])


class DecideBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Decision
    note: str | None = Field(default=None, max_length=4000)


class DispatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dryRun: bool = False


@router.get("")
async def list_approvals(
    request: Request, caller: CallerDep, state: State,
    status: ApprovalStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JSONResponse:
    """Newest first; admins and viewers see their tenant, others their own requests."""
    data = await call(state, ListApprovals(status=status, limit=limit, offset=offset),
                      token=caller.token, correlation_id=caller.correlation_id)
    return success(request, data)


@router.get("/count/pending")
async def count_pending(request: Request, caller: CallerDep, state: State) -> JSONResponse:
    data = await call(state, CountPending(), token=caller.token, correlation_id=caller.correlation_id)
    return success(request, data)


@router.get("/{approval_id}")
async def get_approval(approval_id: str, request: Request, caller: CallerDep, state: State) -> JSONResponse:
    data = await call(state, GetApproval(approval_id=approval_id), token=caller.token,
                      correlation_id=caller.correlation_id)
    return success(request, data)


@router.get("/{approval_id}/chain")
async def get_chain(approval_id: str, request: Request, caller: CallerDep, state: State) -> JSONResponse:
    """The approval's stages: who may decide each, who did, when, with what note."""
    data = await call(state, GetChain(approval_id=approval_id), token=caller.token,
                      correlation_id=caller.correlation_id)
    return success(request, data)


@router.post("/{approval_id}/decide")
async def decide(approval_id: str, body: DecideBody, request: Request, caller: CallerDep,
                 state: State) -> JSONResponse:
    """pending -> approved | rejected (admin; never the requester)."""
    command = DecideRequest(approval_id=approval_id, status=body.status, note=body.note)
    data = await call(state, command, token=caller.token, correlation_id=caller.correlation_id)
    return success(request, data)


@router.post("/{approval_id}/dispatch")
async def dispatch(approval_id: str, request: Request, caller: CallerDep, state: State,
                   body: DispatchBody | None = None) -> JSONResponse:
    """approved -> dispatching; waits up to PJ_DISPATCH_WAIT_S for the outcome (200), else 202."""
    dry_run = body.dryRun if body is not None else False
    reply = await send_command(state, DispatchRequest(approval_id=approval_id, dry_run=dry_run),
                               token=caller.token, correlation_id=caller.correlation_id,
                               follow_up_s=0.0 if dry_run else state.settings.dispatch_wait_s)
    still_running = reply.follow_up
    return success(request, reply.data, 202 if still_running else 200)
