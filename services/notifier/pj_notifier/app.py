"""The notifier process: its database pool, HTTP client, the events-queue consumer and the reminder scan."""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import httpx
from aio_pika.abc import AbstractChannel, AbstractConnection
from psycopg_pool import AsyncConnectionPool

from pj_common.deadletters import DeadLetterRoute
from pj_common.metrics import MetricsServer
from pj_common.runtime import Periodic
from pj_common.topology import Topology, require_topology, work_queue_arguments
from pj_common.transport import Supervisor, consume

from . import store
from .catalog import CatalogError, NotifyCatalog, load_catalog
from .channels.email import EmailSender
from .channels.slack import SlackClient
from .channels.webhook import WebhookSender
from .metrics import NotifierMetrics
from .service import Channels, Notifier
from .settings import NotifierSettings

log = logging.getLogger("pj.notifier")


async def declare_notifier_queue(channel: AbstractChannel, topology: Topology) -> None:
    """Declare the notifier's queue and bind it to every approval event (idempotent): the one queue the
    notifier's broker user may configure; the events exchange is approvals' to declare."""
    await require_topology(channel, exchanges=(topology.events, topology.dead_letter_exchange))
    queue = await channel.declare_queue(topology.notifier, durable=True,
                                        arguments=work_queue_arguments(topology))
    await queue.bind(topology.events, routing_key="approval.#")


class NotifierApp:
    """Owns every long-lived resource of one notifier process."""

    def __init__(self, settings: NotifierSettings, catalog: NotifyCatalog | None = None) -> None:
        self.settings = settings
        self.topology = Topology(settings.amqp_prefix)
        self.catalog = catalog if catalog is not None else load_catalog(settings.catalog)
        self.metrics = NotifierMetrics()
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.database_url, min_size=1, max_size=settings.notifier_db_pool_max,
            kwargs={"autocommit": True}, open=False)
        self.http = httpx.AsyncClient(follow_redirects=False, timeout=settings.notifier_http_timeout_s)
        token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
        secret = settings.notifier_webhook_secret
        channels = Channels(
            slack=SlackClient(self.http, base_url=settings.slack_api_url, token=token),
            email=EmailSender(settings),
            webhook=WebhookSender(self.http, secret=secret.get_secret_value() if secret else None))
        self.notifier = Notifier(self.pool, self.catalog, channels, metrics=self.metrics, settings=settings)
        self.reminders = Periodic(self.notifier.scan_reminders, settings.reminder_scan_interval_s,
                                  name="reminder-scan", scope="notifier.reminder_scan_failed", logger=log)
        self.supervisor = Supervisor(settings.amqp_url, self._setup, name="notifier", on_lost=self._lost)
        self._stop_consuming: Callable[[], Awaitable[None]] | None = None
        self._metrics_server = MetricsServer(self.metrics.registry, host=settings.notifier_metrics_host,
                                             port=settings.notifier_metrics_port)

    async def _setup(self, connection: AbstractConnection) -> None:
        await declare_notifier_queue(await connection.channel(), self.topology)
        confirm = self.supervisor.watch(await connection.channel(publisher_confirms=True))
        events = self.supervisor.watch(await connection.channel(publisher_confirms=False))
        self._stop_consuming = await consume(
            events, self.topology.notifier, self.notifier.on_event, prefetch=self.settings.notifier_prefetch,
            max_bytes=self.settings.max_message_bytes,
            dead_letters=DeadLetterRoute(confirm, self.topology.dead_letter_exchange, self.settings.secret_values()))
        self.metrics.broker_connected.set(1)

    def reload_catalog(self) -> None:
        """Read the catalog file again (SIGHUP); a file that does not read keeps the current catalog."""
        try:
            self.catalog = load_catalog(self.settings.catalog)
        except CatalogError as exc:
            log.error("catalog not reloaded, the previous one stays in use: %s", exc,
                      extra={"scope": "notifier.catalog_reload_failed"})
            return
        self.notifier.use_catalog(self.catalog)
        log.info("catalog reloaded", extra={"scope": "notifier.catalog_reloaded"})

    def _lost(self) -> None:
        self.metrics.broker_connected.set(0)

    async def start(self) -> None:
        await self.pool.open(wait=True, timeout=30)
        async with self.pool.connection() as conn:
            applied = await store.migrate(conn)
        if applied:
            log.info("notifier tables migrated", extra={"scope": "notifier.migrated", "applied": applied})
        self._metrics_server.start()
        self.supervisor.start()
        self.reminders.start()

    async def stop(self) -> None:
        """Stop taking events, let the ones in hand finish their round, then close everything."""
        if self._stop_consuming is not None:
            try:
                await self._stop_consuming()
            except (aio_pika.exceptions.AMQPError, RuntimeError):
                log.warning("could not stop consuming", exc_info=True, extra={"scope": "notifier.stop"})
        await self.reminders.stop()
        await self.supervisor.stop()
        self._metrics_server.stop()
        await self.http.aclose()
        await self.pool.close()
