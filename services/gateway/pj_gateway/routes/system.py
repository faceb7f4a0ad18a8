"""GET /health (no auth) and GET /metrics (Prometheus text, optional bearer token)."""

import asyncio
import hmac
from typing import Annotated, Literal

import aio_pika
import pydantic_core
from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import generate_latest
from pydantic import BaseModel, ConfigDict

from pj_common.errors import ErrorCode, GateError
from pj_common.messages import CheckHealth, ComponentHealth, HealthReport, MetricsText, ReadMetrics

from ..deps import State
from ..errors import EVERY_ROUTE_ERRORS, error_responses, failure
from ..rpc import call

router = APIRouter(tags=["system"])

metrics_bearer = HTTPBearer(auto_error=False, scheme_name="metricsToken",
                            description="PJ_METRICS_TOKEN (alias METRICS_TOKEN); outside PJ_ENV=dev /metrics "
                                        "answers only with it, so it must be set there")


class QueueHealth(BaseModel):
    """A work queue as the broker sees it: the processes consuming it, the messages waiting."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "degraded", "error", "unknown"]
    detail: str | None = None
    consumers: int | None = None
    queueDepth: int | None = None


class HealthChecks(BaseModel):
    model_config = ConfigDict(extra="forbid")

    broker: ComponentHealth
    approvals: ComponentHealth
    database: ComponentHealth
    dispatchers: QueueHealth
    # Optional part: `unknown` where no notifier ever ran (its queue does not exist), `degraded` when
    # its queue exists and nobody consumes it (notifications wait).
    notifier: QueueHealth


class GatewayHealth(BaseModel):
    """ok: everything answers; degraded: the broker is up but something behind it is not; error: no broker."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "degraded", "error"]
    checks: HealthChecks


_OK = ComponentHealth(status="ok")


async def _check_approvals(state: State) -> tuple[ComponentHealth, ComponentHealth]:
    """The approvals service, and the database as that service reached it."""
    try:
        report = await call(state, CheckHealth(), HealthReport, token=None, correlation_id="health",
                            timeout=state.settings.health_timeout_s)
    except GateError as exc:
        unknown = ComponentHealth(status="unknown", detail=f"approvals did not answer ({exc.code})")
        return ComponentHealth(status="error", detail=exc.message), unknown
    return _OK, report.database


async def _check_queue(state: State, name: str, *, missing: QueueHealth) -> QueueHealth:
    """`name`'s consumers and depth; `missing` when the queue does not exist (the broker says not found)."""
    channel = await state.inspect_channel()
    if channel is None:
        return QueueHealth(status="error", detail="broker unavailable")
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:  # closes the channel: inspect_channel reopens it
        return missing
    except Exception as exc:  # the channel may have just closed; report, do not raise
        return QueueHealth(status="error", detail=type(exc).__name__)
    result = queue.declaration_result
    consumers, depth = result.consumer_count, result.message_count
    return QueueHealth(status="ok" if consumers else "degraded", consumers=consumers, queueDepth=depth)


async def _check_queues(state: State) -> tuple[QueueHealth, QueueHealth]:
    """The dispatchers' queue, then the notifier's (one after the other: a missing queue closes the
    health channel under any check sharing it)."""
    topology = state.topology
    dispatchers = await _check_queue(state, topology.dispatch, missing=QueueHealth(
        status="error", detail=f"queue {topology.dispatch} missing"))
    notifier = await _check_queue(state, topology.notifier, missing=QueueHealth(
        status="unknown", detail="no notifier has run (its queue does not exist)"))
    return dispatchers, notifier


def _health_response(health: GatewayHealth, status_code: int) -> Response:
    return Response(pydantic_core.to_json(health, by_alias=True, exclude_none=True), status_code=status_code,
                    media_type="application/json")


@router.get("/health", response_model=GatewayHealth,
            responses={503: {"model": GatewayHealth, "description": "no broker connection (status `error`)"},
                       # Not 429: the authentication-failure limit never refuses /health.
                       **error_responses(400, 414, 431, 500)})
async def health(state: State) -> Response:
    """ok: everything answers; degraded: the broker is up but something behind it is not; error: no broker.
    Every check is listed; one that could not be made is `unknown`."""
    if not state.rpc.connected:
        unknown = ComponentHealth(status="unknown", detail="broker unavailable")
        no_broker = QueueHealth(status="unknown", detail="broker unavailable")
        checks = HealthChecks(broker=ComponentHealth(status="error", detail="not connected"), approvals=unknown,
                              database=unknown, dispatchers=no_broker, notifier=no_broker)
        return _health_response(GatewayHealth(status="error", checks=checks), 503)
    (approvals, database), (dispatchers, notifier) = await asyncio.gather(_check_approvals(state),
                                                                          _check_queues(state))
    checks = HealthChecks(broker=_OK, approvals=approvals, database=database, dispatchers=dispatchers,
                          notifier=notifier)
    # A notifier is optional: only one whose queue waits unconsumed makes the whole degraded.
    everything_ok = (all(c.status == "ok" for c in (approvals, database, dispatchers))
                     and notifier.status != "degraded")
    return _health_response(GatewayHealth(status="ok" if everything_ok else "degraded", checks=checks), 200)


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text: the gateway's metrics, then the approvals service's"},
                       **error_responses(*EVERY_ROUTE_ERRORS, 401, by_reference=True)})
async def metrics(*, request: Request, state: State,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(metrics_bearer)]) -> Response:
    """The gateway's own metrics plus the approvals service's (the runbook's approval metrics)."""
    expected = state.settings.metrics_token
    if expected is None and state.settings.env != "dev":
        # Outside dev /metrics is never open: it names routes, tenants' volumes and the system's state.
        return failure(request, ErrorCode.UNAUTHORIZED, "metrics token required: set PJ_METRICS_TOKEN",
                       status_code=401)
    if expected is not None:
        given = credentials.credentials.strip() if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
            return failure(request, ErrorCode.UNAUTHORIZED, "metrics token required", status_code=401)
    text = generate_latest(state.metrics.registry).decode()
    try:
        approvals = await call(state, ReadMetrics(), MetricsText, token=None, correlation_id="metrics",
                               timeout=state.settings.health_timeout_s)
        text += approvals.text
    except GateError as exc:
        text += f"# approvals metrics unavailable: {exc.code}\n"
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
