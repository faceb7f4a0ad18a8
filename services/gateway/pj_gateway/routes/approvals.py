"""The approvals API of the runbook: list, get, chain, count pending, decide, dispatch."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from pj_common.messages import (
    ApprovalPage,
    ApprovalStatus,
    ApprovalView,
    ChainView,
    CountPending,
    DecideRequest,
    Decision,
    DispatchOutcome,
    DispatchRequest,
    GetApproval,
    GetChain,
    ListApprovals,
    PendingCount,
)

from ..deps import CallerDep, State, WriterDep
from ..envelope import Envelope
from ..errors import BODY_ERRORS, EVERY_ROUTE_ERRORS, error_responses, success
from ..ratelimit import LimitedWriterDep
from ..rpc import call, call_and_wait

router = APIRouter(prefix="/api/approvals", tags=["approvals"])

_READ_ERRORS = (*EVERY_ROUTE_ERRORS, 401, 503, 504)  # and 422 where the request has parameters
_WRITE_ERRORS = (*EVERY_ROUTE_ERRORS, *BODY_ERRORS, 401, 403, 404, 409, 503, 504)

# Deep enough for any page a person reads; a larger offset is a scan, not a page.
MAX_OFFSET = 1_000_000

# An approval id is a UUID: anything else is a 422 here, never a command approvals must refuse.
ApprovalId = Annotated[uuid.UUID, Path(description="The approval's id (a UUID)")]


class DecideBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Decision
    note: str | None = Field(default=None, max_length=4000)


class DispatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dryRun: bool = False


@router.get("", response_model=Envelope[ApprovalPage], responses=error_responses(*_READ_ERRORS, 422))
async def list_approvals(
    *, request: Request, caller: CallerDep, state: State,
    status: ApprovalStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    full: Annotated[bool, Query(description="each approval's payload and plan too (null otherwise)")] = False,
) -> Response:
    """Newest first; admins, approvers and viewers see their tenant, operators their own requests. Each
    approval is a summary (payload and plan null) unless `full=true`; GET /api/approvals/{id} has them."""
    page = await call(state, ListApprovals(status=status, limit=limit, offset=offset, full=full), ApprovalPage,
                      token=caller.token, correlation_id=caller.correlation_id)
    return success(request, page)


@router.get("/count/pending", response_model=Envelope[PendingCount], responses=error_responses(*_READ_ERRORS))
async def count_pending(*, request: Request, caller: CallerDep, state: State) -> Response:
    """Unexpired pending approvals visible to the caller."""
    count = await call(state, CountPending(), PendingCount, token=caller.token,
                       correlation_id=caller.correlation_id)
    return success(request, count)


@router.get("/{approval_id}", response_model=Envelope[ApprovalView],
            responses=error_responses(*_READ_ERRORS, 404, 422))
async def get_approval(*, approval_id: ApprovalId, request: Request, caller: CallerDep, state: State) -> Response:
    """One approval with its plan, audit trail and dispatch result."""
    approval = await call(state, GetApproval(approval_id=str(approval_id)), ApprovalView, token=caller.token,
                          correlation_id=caller.correlation_id)
    return success(request, approval)


@router.get("/{approval_id}/chain", response_model=Envelope[ChainView],
            responses=error_responses(*_READ_ERRORS, 404, 422))
async def get_chain(*, approval_id: ApprovalId, request: Request, caller: CallerDep, state: State) -> Response:
    """The approval's stages: who may decide each, who did, when, with what note."""
    chain = await call(state, GetChain(approval_id=str(approval_id)), ChainView, token=caller.token,
                       correlation_id=caller.correlation_id)
    return success(request, chain)


@router.post("/{approval_id}/decide", response_model=Envelope[ApprovalView],
             responses=error_responses(*_WRITE_ERRORS))
async def decide(*, approval_id: ApprovalId, body: DecideBody, request: Request, caller: LimitedWriterDep,
                 state: State) -> Response:
    """Record a decision; the approval stays pending while later stages or approvals are due."""
    command = DecideRequest(approval_id=str(approval_id), status=body.status, note=body.note)
    approval = await call(state, command, ApprovalView, token=caller.token, correlation_id=caller.correlation_id)
    return success(request, approval)


@router.post("/{approval_id}/dispatch", response_model=Envelope[DispatchOutcome],
             responses={202: {"model": Envelope[DispatchOutcome],
                              "description": "still dispatching after PJ_DISPATCH_WAIT_S (approvalStatus "
                                             "`dispatching`); read the outcome with GET /api/approvals/{id}"},
                        **error_responses(*_WRITE_ERRORS)})
async def dispatch(*, approval_id: ApprovalId, request: Request, caller: WriterDep, state: State,
                   body: DispatchBody | None = None) -> Response:
    """approved -> dispatching; waits up to PJ_DISPATCH_WAIT_S for the outcome (200), else 202.
    dryRun: every step as it would run, nothing changes (200)."""
    dry_run = body.dryRun if body is not None else False
    command = DispatchRequest(approval_id=str(approval_id), dry_run=dry_run)
    if dry_run:
        preview = await call(state, command, DispatchOutcome, token=caller.token,
                             correlation_id=caller.correlation_id)
        return success(request, preview)
    started = await call_and_wait(state, command, DispatchOutcome, token=caller.token,
                                  correlation_id=caller.correlation_id, wait_s=state.settings.dispatch_wait_s)
    if started.outcome is not None:
        return success(request, started.outcome)
    return success(request, started.data, status_code=202 if started.still_running else 200)
