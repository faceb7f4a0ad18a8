"""The approvals process: database pool, migrations, command and result consumers, expiry sweeper."""

import logging
import select
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
from aio_pika.abc import AbstractChannel, AbstractConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from pj_common.deadletters import DeadLetterRoute, read_dead_letter_count
from pj_common.jwks import JwksKeys
from pj_common.metrics import MetricsServer
from pj_common.runtime import Periodic
from pj_common.topology import Topology, declare_topology
from pj_common.transport import Supervisor, consume

from . import store
from .catalog import CatalogError, load_catalog
from .handlers import Handlers
from .metrics import ApprovalMetrics
from .relay import EventRelay, OrderRelay, OutboxListener
from .service import ApprovalService
from .settings import ApprovalsSettings

log = logging.getLogger("pj.approvals")


# Dispatches one pass of the lease reaper handles in one short transaction.
_REAP_BATCH = 100


def utcnow() -> datetime:
    return datetime.now(UTC)


async def check_idle_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """Refuse a pooled connection the server has closed, without a round trip (psycopg_pool's own check
    runs a query: about 70 % of a statement's cost on every checkout, 5 extra statements a lifecycle).

    An idle autocommit connection has nothing to read unless the server spoke unasked: a restart or
    pg_terminate_backend sends its FATAL message and closes the socket. So a readable socket means replace
    it (a rare harmless notice costs a reconnect, never a failed command). It is closed before the check
    fails, because the pool puts a connection that failed its check back unless the connection is broken.
    """
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        await conn.close()
        raise psycopg.OperationalError("the server closed the connection or sent an unexpected message")


def database_pool(settings: ApprovalsSettings) -> AsyncConnectionPool[Any]:
    """The approvals connection pool: autocommit; each connection checked before it is handed out (one a
    server restart closed is replaced); every statement bounded by PJ_DB_STATEMENT_TIMEOUT_S; a wait for
    a free connection bounded by PJ_DB_POOL_TIMEOUT_S."""
    options = str(conninfo_to_dict(settings.database_url).get("options") or "")
    timeout_ms = int(settings.db_statement_timeout_s * 1000)
    return AsyncConnectionPool(
        settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max,
        timeout=settings.db_pool_timeout_s, check=check_idle_connection,
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
        self.order_relay = OrderRelay(self.pool, lambda: self.confirm_channel, topology=self.topology,
                                      signing_key=settings.signing_key, batch=settings.outbox_batch,
                                      confirm_timeout_s=settings.publish_confirm_timeout_s)
        self._orders = Periodic(self.order_relay.step, settings.outbox_poll_interval_s, name="order-relay",
                                scope="approval.dispatch.relay_failed")
        self._listener = OutboxListener(settings.database_url, self._orders.wake)
        self.service = ApprovalService(self.pool, self.catalog, settings, metrics=self.metrics,
                                       order_queue=self.topology.dispatch, on_order_queued=self._orders.wake,
                                       clock=utcnow)
        self.verifier = settings.token_verifier()
        self.handlers = Handlers(self.service, self.verifier, settings.service_identities(),
                                 report_key=settings.signing_key)
        self.supervisor = Supervisor(settings.amqp_url, self._setup, name="approvals", on_lost=self._lost)
        self._sweeper = Periodic(self._sweep, settings.sweep_interval_s, name="expiry-sweeper",
                                 scope="sweeper.failed", logger=log, level=logging.ERROR)
        # Re-issues (or, after the last attempt, fails) dispatches whose lease ran out; only once this
        # process has reached the broker and the database for a whole lease (see `_reap`).
        self._connected_since: float | None = None
        self._database_ok_since: float | None = None
        self._reaper = Periodic(self._reap, settings.reaper_interval_s, name="lease-reaper",
                                scope="reaper.failed", logger=log, level=logging.ERROR)
        self.event_relay = EventRelay(self.pool, lambda: self.confirm_channel, exchange=self.topology.events,
                                      name="events", batch=settings.event_relay_batch,
                                      confirm_timeout_s=settings.publish_confirm_timeout_s)
        self._relay = Periodic(self.event_relay.step, settings.event_relay_interval_s, name="event-relay",
                               scope="events.relay_failed", logger=log)
        # Keeps approval_pending_gauge current for direct scrapes (the RPC path refreshes it on demand).
        self._gauge = Periodic(self.service.refresh_gauges, settings.pending_gauge_interval_s,
                               name="pending-gauge", scope="metrics.refresh_failed", logger=log)
        # pj_dead_letters, for both scrape paths: every approvals process reads the one queue's count.
        self._dead_letter_gauge = Periodic(self._count_dead_letters, settings.pending_gauge_interval_s,
                                           name="dead-letter-gauge", scope="metrics.refresh_failed", logger=log)
        self._metrics_server = MetricsServer(self.metrics.registry, host=settings.approvals_metrics_host,
                                             port=settings.approvals_metrics_port)

    async def _setup(self, connection: AbstractConnection) -> None:
        channel = await connection.channel()
        await declare_topology(channel, self.topology)
        watch = self.supervisor.watch
        confirm = self.confirm_channel = watch(await connection.channel(publisher_confirms=True,
                                                                        on_return_raises=True))
        self.handlers.reply_channel = watch(await connection.channel(publisher_confirms=False))
        for queue, handler in ((self.topology.commands, self.handlers.on_command),
                               (self.topology.leases, self.handlers.on_lease)):
            await consume(watch(await connection.channel(publisher_confirms=False)), queue, handler,
                          prefetch=self.settings.command_prefetch, max_bytes=self.settings.max_message_bytes)
        results = watch(await connection.channel(publisher_confirms=False))
        await consume(results, self.topology.results, self.handlers.on_report,
                      prefetch=self.settings.command_prefetch, max_bytes=self.settings.max_message_bytes,
                      dead_letters=DeadLetterRoute(confirm, self.topology.dead_letter_exchange,
                                                   self.settings.secret_values()))
        self._orders.wake()  # orders queued while the broker was away go out now
        self._connected_since = time.monotonic()

    async def _count_dead_letters(self) -> None:
        """Set pj_dead_letters from the dead-letter queue (kept as it was while the broker is away)."""
        count = await read_dead_letter_count(self.supervisor.connection, self.topology)
        if count is not None:
            self.metrics.dead_letters.set(count)

    def _lost(self) -> None:
        self._connected_since = None
        self.confirm_channel = None
        self.handlers.reply_channel = None

    async def _sweep(self) -> None:
        """Expire approvals past their TTL or dispatch window."""
        expired = await self.service.expire_due()
        if expired:
            log.info("expired %d approvals", expired, extra={"scope": "sweeper.expired"})

    async def _reap(self) -> bool:
        """Re-issue or fail dispatches past their lease; True when a full batch was handled.

        Leases are renewed over the broker and recorded in the database, and so are steps' reports:
        while either is away (or this process cannot reach it) every lease runs out unrenewed, though
        its dispatcher may be alive, with a step done and its report waiting in a queue. So the
        reaper runs only once this process has reached both for a whole lease: each live dispatcher
        has had that long to renew, and each waiting report to be recorded, and only a dead
        dispatcher's lease is still out of date. An outage delays the recovery of dead dispatchers'
        dispatches by one lease instead of running live ones' steps again.
        """
        if not await self._settled_for_a_lease():
            return False
        reaped = await self.service.reap_expired_leases(batch=_REAP_BATCH)
        if reaped:
            log.warning("re-issued or failed %d dispatches past their lease", reaped,
                        extra={"scope": "sweeper.leases"})
        return reaped >= _REAP_BATCH

    async def _settled_for_a_lease(self) -> bool:
        """True when this process has been connected to the broker, and has reached the database at
        every reaper pass, for at least a whole lease."""
        now, lease = time.monotonic(), self.settings.dispatch_lease_s
        if (await self.service.health()).database.status != "ok":
            self._database_ok_since = None
            return False
        if self._database_ok_since is None:
            self._database_ok_since = now
        broker_since = self._connected_since
        return broker_since is not None and min(now - broker_since, now - self._database_ok_since) >= lease

    async def _release_event_cursor(self) -> None:
        try:
            await self.event_relay.release()
        except Exception as exc:  # another process's relay takes over when the cursor's lease runs out
            log.warning("event relay cursor not released: %r", exc, extra={"scope": "events.relay_failed"})

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
        if isinstance(self.verifier.keys, JwksKeys):
            await self.verifier.keys.start()  # the identity provider's keys, before the first command
        self.supervisor.start()
        self._orders.start()
        self._listener.start()
        self._sweeper.start()
        self._reaper.start()
        self._relay.start()
        self._dead_letter_gauge.start()
        if self._metrics_server.start():
            self._gauge.start()

    async def stop(self) -> None:
        for periodic in (self._sweeper, self._reaper, self._gauge, self._relay, self._dead_letter_gauge):
            await periodic.stop()
        await self._listener.stop()
        await self._orders.stop()
        await self._release_event_cursor()
        self._metrics_server.stop()
        await self.supervisor.stop()
        if isinstance(self.verifier.keys, JwksKeys):
            await self.verifier.keys.stop()
        await self.pool.close()

