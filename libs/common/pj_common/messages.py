"""The message contract between services: commands, replies, dispatch orders, step reports, events.

Every model is frozen and forbids unknown keys; on the wire they are JSON with camelCase keys.
A test compares each model's JSON Schema with the committed files in docs/schemas, so a
contract change shows in review.
"""

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

SCHEMA_VERSION = 1

ApprovalStatus = Literal[
    "pending", "approved", "rejected", "dispatching", "dispatched", "dispatch_failed", "expired"
]
APPROVAL_STATUSES: tuple[str, ...] = ApprovalStatus.__args__  # type: ignore[attr-defined]


def new_id() -> str:
    """A fresh random identifier for messages and approvals."""
    return str(uuid.uuid4())


class Contract(BaseModel):
    """Base of every wire model: frozen, strict about keys, camelCase on the wire."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    def to_json(self) -> bytes:
        """Serialize with wire (camelCase) names."""
        return self.model_dump_json(by_alias=True).encode()


# ---------------------------------------------------------------- commands (gateway or any service -> approvals)


class ExecuteRequest(Contract):
    """Ask for a governed action; `dry-run` returns the plan without storing anything."""

    name: Literal["execute"] = "execute"
    action_id: str = Field(min_length=1, max_length=200)
    mode: Literal["execute", "dry-run"] = "execute"
    request_id: str | None = Field(default=None, min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)


class ListApprovals(Contract):
    name: Literal["list_approvals"] = "list_approvals"
    status: ApprovalStatus | None = None
    limit: int = Field(default=50, ge=1, le=200)
    offset: int = Field(default=0, ge=0)


class GetApproval(Contract):
    name: Literal["get_approval"] = "get_approval"
    approval_id: str


Decision = Literal["approved", "rejected"]


class GetChain(Contract):
    """The approval's stages, who decided each, when and with what note."""

    name: Literal["get_chain"] = "get_chain"
    approval_id: str


class DecideRequest(Contract):
    name: Literal["decide"] = "decide"
    approval_id: str = ""
    status: Decision
    note: str | None = Field(default=None, max_length=4000)


class DispatchRequest(Contract):
    name: Literal["dispatch"] = "dispatch"
    approval_id: str = ""
    dry_run: bool = False


class GetDispatchPlan(Contract):
    """Asked by a dispatcher for every order it receives: the approved plan to run and the steps
    already done, or `stale` when the order's claim no longer holds the dispatch.

    The claim token authorizes it: only the holder of the current dispatch order knows it. A forged
    order (unknown claim) is stale, so nothing runs that approvals did not claim.
    """

    name: Literal["get_dispatch_plan"] = "get_dispatch_plan"
    approval_id: str
    claim_token: str


class CountPending(Contract):
    name: Literal["count_pending"] = "count_pending"


class CheckHealth(Contract):
    name: Literal["health"] = "health"


class ReadMetrics(Contract):
    name: Literal["metrics"] = "metrics"


Command = Annotated[
    ExecuteRequest
    | ListApprovals
    | GetApproval
    | GetChain
    | GetDispatchPlan
    | DecideRequest
    | DispatchRequest
    | CountPending
    | CheckHealth
    | ReadMetrics,
    Field(discriminator="name"),
]


class CommandEnvelope(Contract):
    """One command on the commands queue. `token` is the caller's bearer JWT, verified by approvals."""

    schema_version: Literal[1] = SCHEMA_VERSION
    message_id: str = Field(default_factory=new_id)
    correlation_id: str = Field(default_factory=new_id)
    token: str | None = None
    command: Command


class ErrorBody(Contract):
    code: str
    message: str


class Reply(Contract):
    """The answer to a command. `followUp` says a final reply comes later on `<correlationId>.done`."""

    schema_version: Literal[1] = SCHEMA_VERSION
    ok: bool
    data: Any = None
    error: ErrorBody | None = None
    follow_up: bool = False


# ---------------------------------------------------------------- dispatch (approvals -> dispatcher -> approvals)


class PlanStep(Contract):
    step_id: str
    connector: str
    operation: str
    params: dict[str, Any] = Field(default_factory=dict)


StepStatus = Literal["succeeded", "failed", "skipped", "not_run", "simulated"]


class StepResult(Contract):
    """One step's outcome, as stored in `dispatch_result` and shown to clients."""

    step_id: str
    connector: str
    operation: str
    status: StepStatus
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    http_status: int | None = None
    duration_ms: float | None = None
    result: dict[str, Any] | None = None
    error: ErrorBody | None = None


class ReplyAddress(Contract):
    """Where the final dispatch outcome goes: the waiting gateway's direct reply-to address."""

    reply_to: str
    correlation_id: str


class DispatchOrder(Contract):
    """Run this approval's plan. `claimToken` names the winning CAS; the dispatcher confirms it with
    approvals (get_dispatch_plan) and runs the plan approvals returns, so `steps` and `completed` here
    are informational (what the plan was when the order was sent)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    message_id: str = Field(default_factory=new_id)
    approval_id: str
    tenant_id: str
    action_id: str
    claim_token: str
    steps: list[PlanStep]
    completed: list[StepResult] = Field(default_factory=list)
    notify: ReplyAddress | None = None


PlanStatus = Literal["running", "dispatched", "dispatch_failed"]


class StepReport(Contract):
    """A finished step, published by a dispatcher; the last one of a plan carries every result."""

    schema_version: Literal[1] = SCHEMA_VERSION
    message_id: str = Field(default_factory=new_id)
    approval_id: str
    tenant_id: str
    claim_token: str
    step: StepResult
    plan_status: PlanStatus
    results: list[StepResult] = Field(default_factory=list)
    notify: ReplyAddress | None = None


# ---------------------------------------------------------------- events (approvals -> anyone, topic exchange)

EventType = Literal[
    "approval.created",
    "approval.decided",
    "approval.expired",
    "approval.dispatch.started",
    "approval.dispatch.completed",
    "approval.dispatch.failed",
]


class ApprovalEvent(Contract):
    """A lifecycle transition, published on the events exchange with `type` as routing key."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(default_factory=new_id)
    type: EventType
    approval_id: str
    tenant_id: str
    action_id: str
    actor: str | None
    from_status: ApprovalStatus | None
    to_status: ApprovalStatus
    occurred_at: datetime
    correlation_id: str | None = None
    note: str | None = None


CONTRACT_MODELS: tuple[type[Contract], ...] = (
    CommandEnvelope,
    Reply,
    DispatchOrder,
    StepReport,
    ApprovalEvent,
)
