"""`python -m pj_notifier`: run one notifier process; `python -m pj_notifier migrate`: create its tables."""

import signal
import sys

from psycopg_pool import PoolTimeout

from pj_common.runtime import run, serve, start_service

from . import store
from .app import NotifierApp
from .catalog import CatalogError
from .settings import NotifierSettings


async def serve_notifier(settings: NotifierSettings) -> None:
    """Run one notifier until SIGINT or SIGTERM."""
    try:
        app = NotifierApp(settings)
    except CatalogError as exc:
        sys.exit(f"notifier: {exc}")
    try:
        # SIGHUP reloads the catalog, as it does for approvals (edit both processes' file, signal both).
        await serve(app, name="notifier", signals={signal.SIGHUP: app.reload_catalog},
                    log_fields={"prefetch": settings.notifier_prefetch})
    except PoolTimeout as exc:
        sys.exit(f"notifier: the database is unreachable (PJ_DATABASE_URL): {exc}")


async def migrate(settings: NotifierSettings) -> None:
    applied = await store.migrate_database(settings.database_url)
    print(f"notifier: {applied} migration(s) applied")


def main() -> None:
    settings = start_service(NotifierSettings, "notifier")
    if sys.argv[1:] == ["migrate"]:
        run(migrate(settings))
        return
    run(serve_notifier(settings))


if __name__ == "__main__":
    main()
