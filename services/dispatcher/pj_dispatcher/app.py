"""The dispatcher process: one HTTP client, the connectors, and the dispatch-queue consumer."""

import logging

import httpx
from aio_pika.abc import AbstractChannel, AbstractConnection

from pj_common.messages import StepReport
from pj_common.runtime import wait_for_shutdown
from pj_common.topology import Topology, declare_topology
from pj_common.transport import Retryable, Supervisor, consume, json_message, publish_confirmed

from .connectors.registry import build_connectors
from .settings import DispatcherSettings
from .worker import Worker

log = logging.getLogger("pj.dispatcher")


class DispatcherApp:
    """Owns every long-lived resource of one dispatcher process."""

    def __init__(self, settings: DispatcherSettings) -> None:
        self.settings = settings
        self.topology = Topology(settings.amqp_prefix)
        # Redirects are never followed: a connector target must answer where it was configured.
        self.http = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s),
            limits=httpx.Limits(max_connections=max(16, settings.concurrency * 2)),
        )
        self.worker = Worker(settings, build_connectors(settings, self.http), self._publish_report)
        self.supervisor = Supervisor(settings.amqp_url, self._setup, name="dispatcher", on_lost=self._lost)
        self._confirm: AbstractChannel | None = None

    async def _setup(self, connection: AbstractConnection) -> None:
        channel = await connection.channel()
        await declare_topology(channel, self.topology)
        self._confirm = await connection.channel(publisher_confirms=True, on_return_raises=True)
        orders = await connection.channel(publisher_confirms=False)
        await consume(orders, self.topology.dispatch, self.worker.on_order, prefetch=self.settings.concurrency)

    def _lost(self) -> None:
        self._confirm = None

    async def _publish_report(self, report: StepReport) -> None:
        channel = self._confirm
        if channel is None:
            raise Retryable("broker connection lost before the step report was published")
        await publish_confirmed(channel, self.topology.results,
                                json_message(report.to_json(), message_id=report.message_id))

    async def start(self) -> None:
        self.supervisor.start()

    async def stop(self) -> None:
        await self.supervisor.stop()
        await self.http.aclose()


async def serve(settings: DispatcherSettings) -> None:
    """Run until SIGINT or SIGTERM."""
    app = DispatcherApp(settings)
    await app.start()
    log.info("dispatcher started", extra={"scope": "service.started", "concurrency": settings.concurrency})
    await wait_for_shutdown()
    await app.stop()
