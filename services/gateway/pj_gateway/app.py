"""The gateway: HTTP in, RabbitMQ commands out. It never touches the database."""

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .deps import CSRF_HEADER
from .errors import CORRELATION_HEADER, UnexpectedErrors, choose_correlation_id, install_error_handlers
from .ratelimit import AuthFailureLimit, RateLimits
from .request_limits import RequestLimits
from .routes import approvals, console, events, execute, slack, system
from .settings import GatewaySettings
from .state import GatewayMetrics, GatewayState

access_log = logging.getLogger("pj.gateway.access")

_CORRELATION_HEADER = b"x-correlation-id"  # ASGI header names are lower-case


def _correlation_header(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == _CORRELATION_HEADER:
            return bytes(value).decode("latin-1")
    return ""


class MetricsMiddleware:
    """Per request: the correlation id, the counters by route template (not raw path, which would explode
    cardinality) and one access-log line (scope `gateway.access`), refusals included.

    Pure ASGI: BaseHTTPMiddleware would cost CPU on every request.
    """

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        # Chosen here so that every line about this request, this one included, carries the same id.
        request_state: dict[str, Any] = scope.setdefault("state", {})
        request_state["correlation_id"] = choose_correlation_id(_correlation_header(scope))

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            if access_log.isEnabledFor(logging.INFO):
                _log_access(scope, request_state, route=route, status=status, elapsed=elapsed)


def _log_access(scope: Scope, request_state: dict[str, Any], *, route: str, status: int, elapsed: float) -> None:
    fields: dict[str, Any] = {
        "scope": "gateway.access", "method": scope["method"], "route": route, "path": scope["path"],
        "status": status, "durationMs": round(elapsed * 1000, 3),
        "correlationId": request_state["correlation_id"],
    }
    caller = request_state.get("caller")  # set by deps.get_caller once the token verified
    if caller is not None:
        fields["sub"] = caller.principal.subject
        fields["tenant"] = caller.principal.tenant
    access_log.info("%s %s %d", scope["method"], route, status, extra=fields)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """Build the gateway; its broker connection opens in the lifespan and reconnects by itself."""
    settings = settings or GatewaySettings()
    state = GatewayState.build(settings)
    rate_limits = RateLimits(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.supervisor.start()
        await state.load_token_keys()
        # Serve even if the broker is down: requests get 503 broker_unavailable until it is back.
        await state.supervisor.wait_ready(timeout=5)
        yield
        await state.supervisor.stop()
        await state.release_token_keys()
        await rate_limits.aclose()

    # FastAPIOffline: /docs and /redoc load their scripts from the gateway, not from a CDN.
    # One schema per model for input and output: the reply models are the contract both ways.
    app = FastAPIOffline(
        title="PuddleJumper approval gate", version="0.1.0", lifespan=lifespan,
        description="Governed actions: nothing with side effects runs until a human approves it.",
        separate_input_output_schemas=False)
    app.state.gateway = state
    app.state.rate_limits = rate_limits
    install_error_handlers(app)
    app.include_router(execute.router)
    app.include_router(approvals.router)
    app.include_router(system.router)
    # The web console and its live events (the console router's lifespan opens their connections).
    app.include_router(console.router)
    app.include_router(events.router)
    app.include_router(slack.router)  # Slack's buttons: POST /api/slack/interactions
    _add_middleware(app, settings, metrics=state.metrics, rate_limits=rate_limits)
    return app


def _add_middleware(app: FastAPI, settings: GatewaySettings, *, metrics: GatewayMetrics,
                    rate_limits: RateLimits) -> None:
    """Outermost last: metrics and the correlation id see every answer, the unexpected-error guard
    covers everything inside it, CORS answers preflights before any limit, and an address over its
    authentication-failure budget is refused before its body is read."""
    app.add_middleware(RequestLimits, settings=settings)
    app.add_middleware(AuthFailureLimit, limits=rate_limits)
    if settings.cors_origins:
        # An explicit allow-list: an Origin not on it gets no CORS headers, never its own Origin back.
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST"], expose_headers=[CORRELATION_HEADER, "Retry-After"],
                           allow_headers=["Authorization", "Content-Type", CSRF_HEADER, CORRELATION_HEADER],
                           max_age=600)
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
