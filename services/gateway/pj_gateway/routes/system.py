"""GET /health (no auth) and GET /metrics (Prometheus text, optional bearer token)."""

import asyncio
import hmac
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import generate_latest

from pj_common.errors import GateError
from pj_common.messages import CheckHealth, ReadMetrics

from ..deps import State
from ..errors import failure
from ..rpc import send_command

router = APIRouter(tags=["system"])


async def _check_approvals(state: State) -> dict[str, Any]:
    try:
        reply = await send_command(state, CheckHealth(), token=None, correlation_id="health",
                                   timeout=state.settings.health_timeout_s)
    except GateError as exc:
        return {"approvals": {"status": "error", "detail": exc.message}}
    return {"approvals": {"status": "ok"}, **reply.data}


async def _check_dispatchers(state: State) -> dict[str, Any]:
    channel = await state.inspect_channel()
    if channel is None:
        return {"status": "error", "detail": "broker unavailable"}
    try:
        queue = await channel.declare_queue(state.topology.dispatch, passive=True)
    except Exception as exc:  # the channel may have just closed; report, do not raise
        return {"status": "error", "detail": type(exc).__name__}
    result = queue.declaration_result
    consumers, depth = result.consumer_count, result.message_count
    return {"status": "ok" if consumers else "degraded", "consumers": consumers, "queueDepth": depth}


@router.get("/health")
async def health(state: State) -> JSONResponse:
    """ok: everything answers; degraded: the broker is up but something behind it is not; error: no broker."""
    if not state.rpc.connected:
        checks: dict[str, Any] = {"broker": {"status": "error", "detail": "not connected"}}
        return JSONResponse({"status": "error", "checks": checks}, status_code=503)
    behind, dispatchers = await asyncio.gather(_check_approvals(state), _check_dispatchers(state))
    checks = {"broker": {"status": "ok"}, **behind, "dispatchers": dispatchers}
    status = "ok" if all(c.get("status") == "ok" for c in checks.values()) else "degraded"
    return JSONResponse({"status": status, "checks": checks})


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request, state: State) -> Response:
    """The gateway's own metrics plus the approvals service's (the runbook's approval metrics)."""
    expected = state.settings.metrics_token
    if expected is not None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {expected.get_secret_value()}".encode()):
            return failure(request, "unauthorized", "metrics token required", 401)
    text = generate_latest(state.metrics.registry).decode()
    try:
        reply = await send_command(state, ReadMetrics(), token=None, correlation_id="metrics",
                                   timeout=state.settings.health_timeout_s)
        text += reply.data["text"]
    except GateError as exc:
        text += f"# approvals metrics unavailable: {exc.code}\n"
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
