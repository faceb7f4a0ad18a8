"""The message contract between services: commands, replies, dispatch orders, step reports, events.

Every model is frozen and forbids unknown keys; on the wire they are JSON with camelCase keys, except
the approval view, which keeps the runbook's snake_case names (`RunbookView`). Each command names the
model of its reply's `data` (`reply_model`).
A test compares each model's JSON Schema with the committed files in docs/schemas, so a
contract change shows in review.
"""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_validator, model_serializer
from pydantic.alias_generators import to_camel

from .principal import Role

SCHEMA_VERSION: Final = 1


class ApprovalStatus(StrEnum):
    """Every status an approval can be in; the transitions between them live in approvals' domain."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    DISPATCHING = "dispatching"
    DISPATCHED = "dispatched"
    DISPATCH_FAILED = "dispatch_failed"
    EXPIRED = "expired"


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


# ---------------------------------------------------------------- parts shared by commands, replies and orders


def without_nul(value: Any) -> Any:
    """`value` with every NUL character in its strings (keys too) replaced by U+FFFD.

    PostgreSQL's text and jsonb cannot hold NUL: an upstream answer carrying one would make its step
    report impossible to store, a poison message retried until it is dead-lettered.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


class ErrorBody(Contract):
    code: str
    message: str

    @field_validator("code", "message")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        return str(without_nul(value))


class PlanStep(Contract):
    step_id: str
    connector: str
    operation: str
    params: dict[str, Any] = Field(default_factory=dict)


Decision = Literal["approved", "rejected"]

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

    @field_validator("step_id", "connector", "operation", "result")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return without_nul(value)


# ---------------------------------------------------------------- replies (approvals -> the caller of a command)


class RunbookView(BaseModel):
    """Base of the views that keep the runbook's snake_case field names on the wire (and nothing else does)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> bytes:
        """Serialize: its own fields keep their names; the contract models inside use their wire names."""
        return self.model_dump_json(by_alias=True).encode()


class AuditEntry(Contract):
    """One row of an approval's audit trail."""

    event: str
    actor: str | None
    role: str | None
    from_status: ApprovalStatus | None = Field(alias="from")
    to_status: ApprovalStatus = Field(alias="to")
    note: str | None
    correlation_id: str | None
    at: datetime


class ApprovalView(RunbookView):
    """An approval as clients see it, with the runbook's field names; `audit` only where it was read.

    `payload` and `plan` are null in a list page unless it was asked for in full (`full`): one large
    approval must not inflate every page that lists it. The detail (get_approval) always has them."""

    id: str
    request_id: str
    tenant_id: str
    operator_id: str
    action_id: str
    approval_status: ApprovalStatus
    approver_id: str | None
    approval_note: str | None
    payload: dict[str, Any] | None
    plan: list[PlanStep] | None
    plan_hash: str
    dispatch_result: list[StepResult] | None
    created_at: datetime
    updated_at: datetime
    decided_at: datetime | None
    dispatched_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime
    audit: list[AuditEntry] | None = None

    @model_serializer(mode="wrap")
    def _leave_out_unread_audit(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("audit") is None:
            data.pop("audit", None)
        return data


class ApprovalPage(Contract):
    """One page of approvals, newest first, with the number matching and the number pending."""

    approvals: list[ApprovalView]
    total: int
    pending_count: int
    limit: int
    offset: int


class PendingCount(Contract):
    pending_count: int


class ExecuteAccepted(Contract):
    """A stored request: pending (approvalRequired), or a launch-tier action already dispatching.
    `created` is false when an earlier request with the same requestId made it."""

    approval_id: str
    approval_required: bool
    approval_status: ApprovalStatus
    plan_hash: str
    request_id: str
    created: bool


class DryRunPlan(Contract):
    """What an execute would plan; nothing is stored."""

    approval_required: bool = False
    action_id: str
    plan: list[PlanStep]
    plan_hash: str


class DispatchOutcome(Contract):
    """Where a dispatch stands: started (`dispatching`, no result yet), finished with each step's result,
    or (dryRun) the steps a dispatch would run or skip."""

    approval_id: str
    approval_status: ApprovalStatus
    dispatch_result: list[StepResult] | None = None
    dry_run: bool = False


class ChainDecision(Contract):
    approver_id: str
    role: str
    stage_index: int
    stage: str
    decision: Decision
    note: str | None
    decided_at: datetime


StageState = Literal["approved", "current", "waiting", "rejected", "expired", "not_reached"]


class ChainStage(Contract):
    name: str
    roles: list[str]
    approvals_required: int
    state: StageState
    approvals: int
    decisions: list[ChainDecision]


class ChainView(Contract):
    """The approval's stages: who may decide each, who did, when, with what note."""

    approval_id: str
    approval_status: ApprovalStatus
    current_stage: str | None
    stages: list[ChainStage]


class ComponentHealth(Contract):
    status: Literal["ok", "degraded", "error", "unknown"]
    detail: str | None = None


class HealthReport(Contract):
    """What the approvals service checks behind it."""

    database: ComponentHealth


class MetricsText(Contract):
    """The approvals service's metrics in Prometheus text format."""

    text: str


class DispatchPlan(Contract):
    """The plan a dispatch order's claim may run and the steps already done; `stale` when the claim no
    longer holds the dispatch (then nothing may run). `leaseExpiresAt` is the claim's lease: its holder
    may start work only while it holds."""

    stale: bool
    steps: list[PlanStep] = Field(default_factory=list)
    completed: list[StepResult] = Field(default_factory=list)
    lease_expires_at: datetime | None = None


class LeaseGrant(Contract):
    """The answer to a lease renewal: renewed until `leaseExpiresAt`, or not granted (the claim is
    stale: the dispatch finished, failed, or was re-issued, or the asker is not the claim's holder),
    and then the holder stops before its next step."""

    granted: bool
    lease_expires_at: datetime | None = None


# ---------------------------------------------------------------- commands (gateway or any service -> approvals)


class ExecuteRequest(Contract):
    """Ask for a governed action; `dry-run` returns the plan without storing anything."""

    reply_model: ClassVar[Any] = ExecuteAccepted | DryRunPlan
    name: Literal["execute"] = "execute"
    action_id: str = Field(min_length=1, max_length=200)
    mode: Literal["execute", "dry-run"] = "execute"
    request_id: str | None = Field(default=None, min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)


class ListApprovals(Contract):
    reply_model: ClassVar[Any] = ApprovalPage
    name: Literal["list_approvals"] = "list_approvals"
    status: ApprovalStatus | None = None
    limit: int = Field(default=50, ge=1, le=200)
    # Bounded as the gateway bounds it: a larger offset is a scan, not a page.
    offset: int = Field(default=0, ge=0, le=1_000_000)
    # Each approval's payload and plan too (a summary of each, without them, by default).
    full: bool = False


class GetApproval(Contract):
    reply_model: ClassVar[Any] = ApprovalView
    name: Literal["get_approval"] = "get_approval"
    approval_id: str


class GetChain(Contract):
    """The approval's stages, who decided each, when and with what note."""

    reply_model: ClassVar[Any] = ChainView
    name: Literal["get_chain"] = "get_chain"
    approval_id: str


class DecideRequest(Contract):
    reply_model: ClassVar[Any] = ApprovalView
    name: Literal["decide"] = "decide"
    approval_id: str = ""
    status: Decision
    note: str | None = Field(default=None, max_length=4000)


class DispatchRequest(Contract):
    reply_model: ClassVar[Any] = DispatchOutcome
    name: Literal["dispatch"] = "dispatch"
    approval_id: str = ""
    dry_run: bool = False


class GetDispatchPlan(Contract):
    """Asked by a dispatcher for every dispatch order it takes, before anything runs: the approved
    plan to run, the steps already done and the claim's lease, or `stale` when the order's claim no
    longer holds the dispatch.

    The claim token authorizes it: only the holder of the current dispatch order knows it. A forged
    order (unknown claim) is stale, so nothing runs that approvals did not claim.

    It also binds the claim to one holder: `holder` is an id the dispatcher process makes at start,
    and the first holder to confirm a claim takes it; every other holder asking with the same claim
    token is answered stale. Orders go out at least once, so copies of one order may reach several
    dispatchers: only the first to confirm runs it. A claim whose holder died is recovered by the
    reaper once its lease runs out (a re-issue, with a new claim token and no holder), not by a copy
    of the order reaching another dispatcher.
    """

    reply_model: ClassVar[Any] = DispatchPlan
    name: Literal["get_dispatch_plan"] = "get_dispatch_plan"
    approval_id: str
    claim_token: str
    holder: str = Field(min_length=1, max_length=200)


class RenewLease(Contract):
    """Sent by the dispatcher holding a dispatch, every PJ_LEASE_RENEW_S while it runs (and before a
    step when the lease is about to end): keep my claim for another PJ_DISPATCH_LEASE_S.

    Authorized by the claim token, like get_dispatch_plan, and granted only to the claim's `holder`
    (the process that confirmed it).
    """

    reply_model: ClassVar[Any] = LeaseGrant
    name: Literal["renew_lease"] = "renew_lease"
    approval_id: str
    claim_token: str
    holder: str = Field(min_length=1, max_length=200)


class CountPending(Contract):
    reply_model: ClassVar[Any] = PendingCount
    name: Literal["count_pending"] = "count_pending"


class CheckHealth(Contract):
    reply_model: ClassVar[Any] = HealthReport
    name: Literal["health"] = "health"


class ReadMetrics(Contract):
    reply_model: ClassVar[Any] = MetricsText
    name: Literal["metrics"] = "metrics"


Command = Annotated[
    ExecuteRequest
    | ListApprovals
    | GetApproval
    | GetChain
    | GetDispatchPlan
    | RenewLease
    | DecideRequest
    | DispatchRequest
    | CountPending
    | CheckHealth
    | ReadMetrics,
    Field(discriminator="name"),
]


class OnBehalf(Contract):
    """The person a service identity decides for (a button pressed in Slack): approvals applies every rule
    as for them, once it has checked that the sender's grant allows `decide_on_behalf` for their tenant."""

    subject: str = Field(min_length=1, max_length=256)
    role: Role
    tenant: str = Field(min_length=1, max_length=256)
    # Where the person decided; recorded in the audit trail with the decision.
    via: Literal["slack"]


class CommandEnvelope(Contract):
    """One command on the commands queue. `token` is the caller's bearer JWT, verified by approvals;
    `onBehalf`, sent only by a permitted service identity, names the person it acts for."""

    schema_version: Literal[1] = SCHEMA_VERSION
    message_id: str = Field(default_factory=new_id)
    correlation_id: str = Field(default_factory=new_id)
    token: str | None = None
    command: Command
    on_behalf: OnBehalf | None = None

    @model_serializer(mode="wrap")
    def _leave_out_no_one(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Absent rather than null: envelopes without it stay byte-for-byte what they were.
        data: dict[str, Any] = handler(self)
        if data.get("onBehalf", data.get("on_behalf")) is None:
            data.pop("onBehalf", None)
            data.pop("on_behalf", None)
        return data


DataT = TypeVar("DataT")


class Reply(Contract, Generic[DataT]):
    """The answer to a command: `data` is the command's `reply_model` when `ok`, else `error` says why.

    `followUp` says a final reply (a `DispatchOutcome`) comes later on `<correlationId>.done`. A
    reader parses the bytes straight into `Reply[TheModel]`, so no reply crosses the wire as a dict.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    ok: bool
    data: DataT | None = None
    error: ErrorBody | None = None
    follow_up: bool = False




# ---------------------------------------------------------------- dispatch (approvals -> dispatcher -> approvals)


class ReplyAddress(Contract):
    """Where the final dispatch outcome goes: the waiting gateway's direct reply-to address."""

    reply_to: str
    correlation_id: str


class DispatchOrder(Contract):
    """Run this approval's plan under claim `claimToken` (attempt `attempt` of the dispatch).

    Approvals signs the message body (AMQP header `x-pj-signature`, see pj_common.signing). Orders
    are published at least once, so a copy may arrive twice, or at two dispatchers: every order is
    confirmed with approvals (get_dispatch_plan) before it runs, which binds its claim to the first
    dispatcher process that confirms it; a copy anywhere else is stale. A dispatcher runs the plan
    approvals returns, never the order's own `steps` on its word; a bad signature is counted and logged.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    message_id: str = Field(default_factory=new_id)
    approval_id: str
    tenant_id: str
    action_id: str
    claim_token: str
    attempt: int = Field(default=1, ge=1)
    lease_expires_at: datetime | None = None
    steps: list[PlanStep]
    completed: list[StepResult] = Field(default_factory=list)
    notify: ReplyAddress | None = None


PlanStatus = Literal["running", "dispatched", "dispatch_failed"]


class StepReport(Contract):
    """A finished step, published by a dispatcher; the last one of a plan carries every result.

    Recorded only while `claimToken` holds the dispatch (a report of an older claim changes nothing);
    a `running` report also renews the claim's lease.
    """

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
    # The approved plan's hash, so a consumer (the notifier, the console) can show what is decided on.
    plan_hash: str | None = None


CONTRACT_MODELS: tuple[type[BaseModel], ...] = (
    CommandEnvelope,
    Reply,
    DispatchOrder,
    StepReport,
    ApprovalEvent,
    ApprovalView,
    ApprovalPage,
    PendingCount,
    ExecuteAccepted,
    DryRunPlan,
    DispatchOutcome,
    ChainView,
    HealthReport,
    MetricsText,
    DispatchPlan,
    LeaseGrant,
)
