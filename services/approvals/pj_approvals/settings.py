"""Approvals service settings (`PJ_*`)."""

from pathlib import Path

from pj_common.settings import CommonSettings

DEFAULT_CATALOG = Path(__file__).with_name("default_catalog.yaml")


class ApprovalsSettings(CommonSettings):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/pj"
    catalog: Path = DEFAULT_CATALOG
    pending_ttl_s: float = 48 * 3600
    dispatch_window_s: float = 24 * 3600
    sweep_interval_s: float = 300
    # Commands handled at once by this process; the pool is sized to keep them all busy.
    command_prefetch: int = 64
    db_pool_min: int = 2
    db_pool_max: int = 16
    create_database: bool = False
