"""Approvals service settings (`PJ_*`)."""

from pathlib import Path

from pj_common.settings import DispatchSigningSettings
from pj_common.token_settings import ServiceIdentitySettings

DEFAULT_CATALOG = Path(__file__).with_name("default_catalog.yaml")


class ApprovalsSettings(DispatchSigningSettings, ServiceIdentitySettings):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/pj"
    catalog: Path = DEFAULT_CATALOG
    pending_ttl_s: float = 48 * 3600
    dispatch_window_s: float = 24 * 3600
    # The expiry sweep (pending and approved approvals past their expiry).
    sweep_interval_s: float = 300
    # A dispatch's claim holds for this long; its dispatcher renews it while running (every
    # PJ_LEASE_RENEW_S, 15 s) and each step report renews it too. The lease reaper re-issues a dispatch
    # whose lease ran out to a new claim (the next attempt), up to PJ_MAX_DISPATCH_ATTEMPTS attempts in
    # all, then fails it. It looks every PJ_REAPER_INTERVAL_S.
    dispatch_lease_s: float = 60
    reaper_interval_s: float = 5
    max_dispatch_attempts: int = 3
    # The order relay: it publishes the dispatch outbox at once when woken after a commit (this
    # process's, or another's by LISTEN/NOTIFY), else every PJ_OUTBOX_POLL_INTERVAL_S; at most
    # PJ_OUTBOX_BATCH orders in flight together, each confirmed by the broker within
    # PJ_PUBLISH_CONFIRM_TIMEOUT_S or tried again.
    outbox_poll_interval_s: float = 1.0
    outbox_batch: int = 100
    publish_confirm_timeout_s: float = 5.0
    # The event relay: how often it looks for events of finished transactions, and how many it
    # publishes at once (in commit order; each confirmed within PJ_PUBLISH_CONFIRM_TIMEOUT_S).
    event_relay_interval_s: float = 0.2
    event_relay_batch: int = 500
    # Commands handled at once by this process; the pool is sized to keep them all busy.
    command_prefetch: int = 64
    db_pool_min: int = 2
    db_pool_max: int = 16
    # How long a command waits for a free connection: less than the gateway's PJ_RPC_TIMEOUT_S (5 s), so
    # a command the database cannot serve fails with database_unavailable (503) while the caller waits.
    db_pool_timeout_s: float = 3.0
    # PostgreSQL's statement_timeout for every statement of the pool: a stuck statement (a lock held
    # elsewhere, a runaway plan) fails the command instead of holding a connection for good.
    db_statement_timeout_s: float = 5.0
    create_database: bool = False
    # Serve this process's own /metrics on this port (0: off). With several approvals processes,
    # scrape each one here: the gateway's /metrics shows whichever instance answers its RPC.
    approvals_metrics_port: int = 0
    approvals_metrics_host: str = "127.0.0.1"
    pending_gauge_interval_s: float = 15.0
