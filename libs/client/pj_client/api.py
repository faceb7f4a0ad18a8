"""The gateway's HTTP API as data: each route is a `Call` (method, path, body) with the parser of its
answer, so the async and the sync client send the same requests and read the same models, and neither
holds any knowledge of a route.

Answers are read straight into the contract's reply models (pj_common.messages); an error envelope
becomes the `ClientError` its code names (pj_client.errors).
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, ValidationError

from pj_common.errors import ErrorCode
from pj_common.messages import (
    ApprovalPage,
    ApprovalStatus,
    ApprovalView,
    ChainView,
    ComponentHealth,
    Decision,
    DispatchOutcome,
    DryRunPlan,
    ExecuteAccepted,
    PendingCount,
)

from .errors import ClientError, ServerError, error_from

T = TypeVar("T")
ModelT = TypeVar("ModelT", bound=BaseModel)

CSRF_HEADER = "X-PuddleJumper-Request"
CORRELATION_HEADER = "X-Correlation-Id"

Parser = Callable[[int, bytes], T]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request to the gateway and how to read its answer (status, body) into `T`."""

    method: Literal["GET", "POST"]
    path: str
    parse: Parser[T]
    params: dict[str, str | int] = field(default_factory=dict)
    body: dict[str, Any] | None = None

    @property
    def changes_state(self) -> bool:
        """A POST: it must carry the CSRF header (a browser form cannot set it)."""
        return self.method == "POST"


class _Envelope(BaseModel, Generic[ModelT]):
    # Lenient about the envelope's other keys (execute repeats approvalId at the top level); the data
    # itself is a contract model and as strict as the contract.
    model_config = ConfigDict(extra="ignore")

    success: Literal[True]
    correlationId: str
    data: ModelT


class _ErrorDetail(BaseModel):
    code: str
    message: str


class _ErrorEnvelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    success: Literal[False]
    correlationId: str | None = None
    error: _ErrorDetail


class QueueHealth(BaseModel):
    """A work queue (the dispatchers', the notifier's) as the gateway's broker connection sees it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["ok", "degraded", "error", "unknown"]
    detail: str | None = None
    consumers: int | None = None
    queueDepth: int | None = None


class HealthChecks(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    broker: ComponentHealth
    approvals: ComponentHealth
    database: ComponentHealth
    dispatchers: QueueHealth
    notifier: QueueHealth | None = None  # gateways of earlier releases do not report it


class GatewayHealth(BaseModel):
    """GET /health: the gateway's own answer (not a command reply), ok, degraded or error."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["ok", "degraded", "error"]
    checks: HealthChecks


@cache
def _envelope_type(model: type[ModelT]) -> type[_Envelope[ModelT]]:
    # Parametrizing a generic model is not free: once per reply model.
    return _Envelope[model]  # type: ignore[valid-type]  # a runtime class as a type argument


def raise_for_error(status: int, body: bytes) -> None:
    """Raise the `ClientError` of an answer that is not a success (2xx); return for a success."""
    if 200 <= status < 300:
        return
    try:
        envelope = _ErrorEnvelope.model_validate_json(body)
    except ValidationError:
        # Not the gateway's envelope: a proxy's page, or a server that is not the gateway.
        text = body.decode("utf-8", "replace").strip()[:200] or "no body"
        raise error_from("http_error", f"HTTP {status}: {text}", status=status) from None
    raise error_from(envelope.error.code, envelope.error.message, status=status,
                     correlation_id=envelope.correlationId)


def read_data(model: type[ModelT], status: int, body: bytes) -> ModelT:
    """The `data` of a success envelope as `model`, or the error the answer carries."""
    raise_for_error(status, body)
    try:
        envelope: _Envelope[ModelT] = _envelope_type(model).model_validate_json(body)
    except ValidationError as exc:
        raise ServerError(ErrorCode.INTERNAL_ERROR, f"the gateway answered outside the contract: {exc}",
                          status=status) from exc
    return envelope.data


def _reader(model: type[ModelT]) -> Parser[ModelT]:
    def parse(status: int, body: bytes) -> ModelT:
        return read_data(model, status, body)

    return parse


def _execute_answer(status: int, body: bytes) -> ExecuteAccepted | DispatchOutcome:
    # 202: a stored request (pending, or a launch-tier action still running); 200: a launch-tier action
    # that finished within the gateway's wait, with its dispatch result.
    if status == 200:
        return read_data(DispatchOutcome, status, body)
    return read_data(ExecuteAccepted, status, body)


def _health_answer(status: int, body: bytes) -> GatewayHealth:
    # 503 still carries the health report (status `error`); only another status is a failure.
    if status not in (200, 503):
        raise_for_error(status, body)
    try:
        return GatewayHealth.model_validate_json(body)
    except ValidationError:
        raise_for_error(status, body)
        raise ServerError(ErrorCode.INTERNAL_ERROR, "the gateway's /health answer is not a health report",
                          status=status) from None


def _text_answer(status: int, body: bytes) -> str:
    raise_for_error(status, body)
    return body.decode("utf-8", "replace")


def execute(action_id: str, payload: dict[str, Any], *, request_id: str | None = None
            ) -> Call[ExecuteAccepted | DispatchOutcome]:
    """POST /api/pj/execute in execute mode."""
    body: dict[str, Any] = {"actionId": action_id, "mode": "execute", "payload": payload}
    if request_id is not None:
        body["requestId"] = request_id
    return Call("POST", "/api/pj/execute", _execute_answer, body=body)


def dry_run(action_id: str, payload: dict[str, Any]) -> Call[DryRunPlan]:
    """POST /api/pj/execute in dry-run mode: the plan, nothing stored."""
    return Call("POST", "/api/pj/execute", _reader(DryRunPlan),
                body={"actionId": action_id, "mode": "dry-run", "payload": payload})


def list_approvals(*, status: ApprovalStatus | None = None, limit: int = 50, offset: int = 0
                   ) -> Call[ApprovalPage]:
    """GET /api/approvals: one page, newest first."""
    params: dict[str, str | int] = {"limit": limit, "offset": offset}
    if status is not None:
        params["status"] = status.value
    return Call("GET", "/api/approvals", _reader(ApprovalPage), params=params)


def count_pending() -> Call[PendingCount]:
    """GET /api/approvals/count/pending."""
    return Call("GET", "/api/approvals/count/pending", _reader(PendingCount))


def _approval_path(approval_id: str, *rest: str) -> str:
    # An id is a path segment, never a path: quoted, so "x/../y" cannot reach another route.
    return "/".join(["/api/approvals", quote(approval_id, safe=""), *rest])


def get_approval(approval_id: str) -> Call[ApprovalView]:
    """GET /api/approvals/{id}: with plan, audit trail and dispatch result."""
    return Call("GET", _approval_path(approval_id), _reader(ApprovalView))


def get_chain(approval_id: str) -> Call[ChainView]:
    """GET /api/approvals/{id}/chain: the rule's stages and who decided each."""
    return Call("GET", _approval_path(approval_id, "chain"), _reader(ChainView))


def decide(approval_id: str, decision: Decision, *, note: str | None = None) -> Call[ApprovalView]:
    """POST /api/approvals/{id}/decide."""
    return Call("POST", _approval_path(approval_id, "decide"), _reader(ApprovalView),
                body={"status": decision, "note": note})


def dispatch(approval_id: str, *, dry_run: bool = False) -> Call[DispatchOutcome]:
    """POST /api/approvals/{id}/dispatch: 200 finished (or the dry run), 202 still dispatching."""
    return Call("POST", _approval_path(approval_id, "dispatch"), _reader(DispatchOutcome),
                body={"dryRun": dry_run})


def health() -> Call[GatewayHealth]:
    """GET /health (no token needed)."""
    return Call("GET", "/health", _health_answer)


def metrics() -> Call[str]:
    """GET /metrics: Prometheus text."""
    return Call("GET", "/metrics", _text_answer)


def error_body(error: ClientError) -> str:
    """An error as the JSON the command line prints for scripts (`--json`)."""
    return json.dumps({"success": False, "correlationId": error.correlation_id, "status": error.status,
                       "error": {"code": str(error.code), "message": error.message}})
