"""The gateway: HTTP in, RabbitMQ commands out. It never touches the database."""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import install_error_handlers
from .routes import approvals, execute, system
from .settings import GatewaySettings
from .state import GatewayMetrics, GatewayState


class MetricsMiddleware:
    """Counts requests by route template (not raw path, which would explode cardinality)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """Build the gateway; its broker connection opens in the lifespan and reconnects by itself."""
    settings = settings or GatewaySettings()
    state = GatewayState.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.supervisor.start()
        # Serve even if the broker is down: requests get 503 broker_unavailable until it is back.
        await state.supervisor.wait_ready(timeout=5)
        yield
        await state.supervisor.stop()

    app = FastAPI(title="PuddleJumper approval gate", version="0.1.0", lifespan=lifespan,
                  description="Governed actions: nothing with side effects runs until a human approves it.")
    app.state.gateway = state
    install_error_handlers(app)
    app.include_router(execute.router)
    app.include_router(approvals.router)
    app.include_router(system.router)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
