"""The approvals process: database pool, migrations, command and result consumers, expiry sweeper."""

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from pj_common.auth import TokenVerifier
from pj_common.messages import ApprovalEvent
from pj_common.metrics import MetricsServer
from pj_common.runtime import Periodic
from pj_common.topology import Topology, declare_topology
from pj_common.transport import Supervisor, consume, json_message

from . import store
from .catalog import CatalogError, load_catalog
from .handlers import Handlers
from .metrics import ApprovalMetrics
from .relay import OrderRelay, OutboxListener, WakeableLoop, publishable
from .service import ApprovalService
from .settings import ApprovalsSettings

log = logging.getLogger("pj.approvals")


# Dispatches one pass of the lease reaper handles in one short transaction.
_REAP_BATCH = 100


def utcnow() -> datetime:
    return datetime.now(UTC)


def database_pool(settings: ApprovalsSettings) -> AsyncConnectionPool[Any]:
    """The approvals connection pool: autocommit; each connection checked before it is handed out (one a
    server restart closed is replaced); every statement bounded by PJ_DB_STATEMENT_TIMEOUT_S; a wait for
    a free connection bounded by PJ_DB_POOL_TIMEOUT_S."""
    options = str(conninfo_to_dict(settings.database_url).get("options") or "")
    timeout_ms = int(settings.db_statement_timeout_s * 1000)
    return AsyncConnectionPool(
        settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max,
        timeout=settings.db_pool_timeout_s, check=AsyncConnectionPool.check_connection,
        kwargs={"autocommit": True, "options": f"{options} -c statement_timeout={timeout_ms}".strip()},
        open=False, name="approvals")


class ApprovalsApp:
    """Owns every long-lived resource of one approvals process."""

    def __init__(self, settings: ApprovalsSettings) -> None:
        self.settings = settings
        self.topology = Topology(settings.amqp_prefix)
        self.catalog = load_catalog(settings.catalog)
        self.metrics = ApprovalMetrics()
        self.pool = database_pool(settings)
        # The publisher-confirm channel of the current broker connection (replaced on every reconnect).
        self.confirm_channel: AbstractChannel | None = None
        self.order_relay = OrderRelay(self.pool, lambda: self.confirm_channel, queue=self.topology.dispatch,
                                      signing_key=settings.signing_key, batch=settings.outbox_batch,
                                      confirm_timeout_s=settings.publish_confirm_timeout_s)
        self._orders = WakeableLoop(self.order_relay.step, settings.outbox_poll_interval_s, name="order-relay",
                                    scope="approval.dispatch.relay_failed")
        self._listener = OutboxListener(settings.database_url, self._orders.wake)
        self.service = ApprovalService(self.pool, self.catalog, settings, metrics=self.metrics,
                                       order_queue=self.topology.dispatch, on_order_queued=self._orders.wake,
                                       clock=utcnow)
        verifier = TokenVerifier(settings.jwt_key, settings.jwt_issuer, settings.jwt_audience)
        self.handlers = Handlers(self.service, verifier)
        self.supervisor = Supervisor(settings.amqp_url, self._setup, name="approvals", on_lost=self._lost)
        self._sweeper = Periodic(self._sweep, settings.sweep_interval_s, name="expiry-sweeper",
                                 scope="sweeper.failed", logger=log, level=logging.ERROR)
        # Re-issues (or, after the last attempt, fails) dispatches whose lease ran out.
        self._reaper = Periodic(self._reap, settings.reaper_interval_s, name="lease-reaper",
                                scope="reaper.failed", logger=log, level=logging.ERROR)
        self._relay = Periodic(self._relay_events, settings.event_relay_interval_s, name="event-relay",
                               scope="events.relay_failed", logger=log)
        # Keeps approval_pending_gauge current for direct scrapes (the RPC path refreshes it on demand).
        self._gauge = Periodic(self.service.refresh_pending_gauge, settings.pending_gauge_interval_s,
                               name="pending-gauge", scope="metrics.refresh_failed", logger=log)
        self._metrics_server = MetricsServer(self.metrics.registry, host=settings.approvals_metrics_host,
                                             port=settings.approvals_metrics_port)

    async def _setup(self, connection: AbstractConnection) -> None:
        channel = await connection.channel()
        await declare_topology(channel, self.topology)
        watch = self.supervisor.watch
        self.confirm_channel = watch(await connection.channel(publisher_confirms=True, on_return_raises=True))
        self.handlers.reply_channel = watch(await connection.channel(publisher_confirms=False))
        commands = watch(await connection.channel(publisher_confirms=False))
        await consume(commands, self.topology.commands, self.handlers.on_command,
                      prefetch=self.settings.command_prefetch)
        results = watch(await connection.channel(publisher_confirms=False))
        await consume(results, self.topology.results, self.handlers.on_report,
                      prefetch=self.settings.command_prefetch)
        self._orders.wake()  # orders queued while the broker was away go out now

    def _lost(self) -> None:
        self.confirm_channel = None
        self.handlers.reply_channel = None

    async def _relay_events(self) -> bool:
        """Publish approval_events in id order to the events exchange, with confirms, then advance the
        cursor: at-least-once (a consumer dedupes on eventId), and a crash or outage loses nothing.
        True when a full batch went out: more may be waiting, so the relay runs again at once."""
        published = await self._relay_batch(timedelta(seconds=self.settings.event_relay_grace_s))
        return published >= self.settings.event_relay_batch

    async def _relay_batch(self, grace: timedelta) -> int:
        channel = self.confirm_channel
        if channel is None:
            return 0
        async with self.pool.connection() as conn, conn.transaction():
            last_id = await store.lock_relay_cursor(conn, "events")
            if last_id is None:  # another approvals process is relaying
                return 0
            rows = await store.events_after(conn, last_id, self.settings.event_relay_batch)
            ready = publishable(last_id, rows, now=utcnow(), grace=grace)
            if not ready:
                return 0
            exchange = await channel.get_exchange(self.topology.events, ensure=False)
            # Publishes in flight together: one confirm round trip for the batch, not one per event.
            await asyncio.gather(*(
                exchange.publish(json_message(_event_message(e).to_json(), message_id=str(e.id)),
                                 routing_key=e.event_type, mandatory=False)
                for e in ready))
            await store.advance_relay_cursor(conn, "events", ready[-1].id)
        return len(ready)

    async def _sweep(self) -> None:
        """Expire approvals past their TTL or dispatch window."""
        expired = await self.service.expire_due()
        if expired:
            log.info("expired %d approvals", expired, extra={"scope": "sweeper.expired"})

    async def _reap(self) -> bool:
        """Re-issue or fail dispatches past their lease; True when a full batch was handled."""
        reaped = await self.service.reap_expired_leases(batch=_REAP_BATCH)
        if reaped:
            log.warning("re-issued or failed %d dispatches past their lease", reaped,
                        extra={"scope": "sweeper.leases"})
        return reaped >= _REAP_BATCH

    def reload_catalog(self) -> None:
        """SIGHUP: load the catalog file again; a broken file keeps the current catalog in force."""
        try:
            catalog = load_catalog(self.settings.catalog)
        except CatalogError as exc:
            log.error("catalog reload failed; keeping the current catalog: %s", exc,
                      extra={"scope": "catalog.reload_failed"})
            return
        self.service.reload_catalog(catalog)
        log.info("catalog reloaded", extra={"scope": "catalog.reloaded", "actions": len(catalog.actions)})

    async def start(self) -> None:
        if self.settings.create_database:
            await store.ensure_database(self.settings.database_url)
        applied = await store.migrate(self.settings.database_url)
        if applied:
            log.info("migrations applied: %s", ", ".join(applied), extra={"scope": "db.migrated"})
        await self.pool.open(wait=True, timeout=30)
        self.supervisor.start()
        self._orders.start()
        self._listener.start()
        self._sweeper.start()
        self._reaper.start()
        self._relay.start()
        if self._metrics_server.start():
            self._gauge.start()

    async def stop(self) -> None:
        for periodic in (self._sweeper, self._reaper, self._gauge, self._relay):
            await periodic.stop()
        await self._listener.stop()
        await self._orders.stop()
        self._metrics_server.stop()
        await self.supervisor.stop()
        await self.pool.close()


def _event_message(event: store.StoredEvent) -> ApprovalEvent:
    return ApprovalEvent(event_id=str(event.id), type=event.event_type,
                         approval_id=str(event.approval_id), tenant_id=event.tenant_id, action_id=event.action_id,
                         actor=event.actor, from_status=event.from_status, to_status=event.to_status,
                         occurred_at=event.occurred_at, correlation_id=event.correlation_id, note=event.note)
