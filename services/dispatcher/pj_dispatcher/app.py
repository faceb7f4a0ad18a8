"""The dispatcher process: one HTTP client, the connectors, and the dispatch-queue consumer."""

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

import httpx
from aio_pika.abc import AbstractChannel, AbstractConnection

from pj_common.deadletters import DeadLetterRoute
from pj_common.messages import StepReport
from pj_common.metrics import MetricsServer
from pj_common.signing import signature_headers
from pj_common.topology import Topology, require_topology
from pj_common.transport import Retryable, RpcClient, Supervisor, consume, json_message, publish_confirmed

from .approvals_client import ApprovalsClient
from .connectors.bounded import response_size_hook
from .connectors.registry import build_connectors
from .intake import OrderIntake
from .metrics import DispatcherMetrics
from .runner import PlanRunner
from .settings import DispatcherSettings

log = logging.getLogger("pj.dispatcher")

# The longest wait for the broker's confirm of a step report: past it the report is published again
# (the runner retries while the lease holds; approvals takes a repeated report once).
REPORT_CONFIRM_TIMEOUT_S = 10.0


class DispatcherApp:
    """Owns every long-lived resource of one dispatcher process."""

    def __init__(self, settings: DispatcherSettings) -> None:
        self.settings = settings
        self.topology = Topology(settings.amqp_prefix)
        # Redirects are never followed: a connector target must answer where it was configured.
        # The timeout is per read; the runner bounds each attempt as a whole (PJ_STEP_DEADLINE_S).
        self.http = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s),
            limits=httpx.Limits(max_connections=max(16, settings.concurrency * 2)),
            event_hooks={"response": [response_size_hook()]},
        )
        self.rpc = RpcClient.to(self.topology, self.topology.leases)
        self.metrics = DispatcherMetrics()
        # This process's holder id: approvals binds each claim to the first process that confirms it.
        self.holder = uuid.uuid4().hex
        self.approvals = ApprovalsClient(self.rpc, timeout_s=settings.plan_fetch_timeout_s, holder=self.holder)
        runner = PlanRunner(settings, build_connectors(settings, self.http), publish_report=self._publish_report,
                            renew_lease=self.approvals.renew_lease, metrics=self.metrics)
        self.intake = OrderIntake(settings, confirm_plan=self.approvals.get_dispatch_plan, runner=runner,
                                  metrics=self.metrics)
        self._metrics_server = MetricsServer(self.metrics.registry, host=settings.dispatcher_metrics_host,
                                             port=settings.dispatcher_metrics_port)
        self._stop_consuming: Callable[[], Awaitable[None]] | None = None
        self.supervisor = Supervisor(settings.amqp_url, self._setup, name="dispatcher", on_lost=self._lost)
        self._confirm: AbstractChannel | None = None

    async def _setup(self, connection: AbstractConnection) -> None:
        # Approvals declares the topology; this process's broker user may only use it (docs/security.md).
        # Checked on the channel that then publishes the reports and dead letters.
        topology, watch = self.topology, self.supervisor.watch
        confirm = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await require_topology(confirm, queues=(topology.dispatch,), exchanges=(
            topology.inlet(topology.leases), topology.inlet(topology.results), topology.dead_letter_exchange))
        self._confirm = watch(confirm)
        watch(await self.rpc.attach(connection))
        orders = watch(await connection.channel(publisher_confirms=False))
        self._stop_consuming = await consume(
            orders, self.topology.dispatch, self.intake.on_order, prefetch=self.settings.concurrency,
            max_bytes=self.settings.max_message_bytes,
            dead_letters=DeadLetterRoute(confirm, self.topology.dead_letter_exchange, self.settings.secret_values()))

    def _lost(self) -> None:
        self._confirm = None
        self.rpc.detach()

    async def _publish_report(self, report: StepReport) -> None:
        channel = self._confirm
        if channel is None:
            raise Retryable("broker connection lost before the step report was published")
        body = report.to_json()  # signed: approvals reads no report it cannot check came from a dispatcher
        results = self.topology.results
        await asyncio.wait_for(publish_confirmed(channel, results, json_message(
            body, message_id=report.message_id, headers=signature_headers(body, self.settings.signing_key)),
            exchange=self.topology.inlet(results)), REPORT_CONFIRM_TIMEOUT_S)

    async def start(self) -> None:
        self.supervisor.start()
        self._metrics_server.start()

    async def stop(self) -> None:
        """Drain, then disconnect: take no new orders, let the running ones finish (up to
        PJ_DISPATCHER_DRAIN_S), so a scale-down does not interrupt a step halfway."""
        if self._stop_consuming is not None:
            try:
                await self._stop_consuming()
            except Exception:  # the connection may already be gone: nothing new can arrive then either
                log.warning("could not stop consuming", exc_info=True, extra={"scope": "dispatcher.drain"})
        drained = await self.intake.drain(self.settings.drain_s)
        scope = "dispatcher.drained" if drained else "dispatcher.drain_timeout"
        log.info("dispatcher stopping", extra={"scope": scope})
        await self.supervisor.stop()
        self._metrics_server.stop()
        await self.http.aclose()
