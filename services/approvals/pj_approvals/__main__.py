"""`python -m pj_approvals [migrate]`: run the approvals service, or only apply migrations."""

import signal
import sys

from pj_common.runtime import run, serve, start_service

from . import store
from .app import ApprovalsApp
from .catalog import CatalogError
from .settings import ApprovalsSettings


async def serve_approvals(settings: ApprovalsSettings) -> None:
    """Run until SIGINT or SIGTERM; SIGHUP reloads the catalog."""
    app = ApprovalsApp(settings)
    await serve(app, name="approvals service", signals={signal.SIGHUP: app.reload_catalog})


async def migrate_only(settings: ApprovalsSettings) -> None:
    """Create the database if it is missing and apply the migrations."""
    await store.ensure_database(settings.database_url)
    applied = await store.migrate(settings.database_url)
    print("applied: " + (", ".join(applied) or "nothing (up to date)"))


def main() -> None:
    settings = start_service(ApprovalsSettings, "approvals")
    if sys.argv[1:] == ["migrate"]:
        run(migrate_only(settings))
        return
    try:
        run(serve_approvals(settings))
    except CatalogError as exc:
        sys.exit(f"approvals: {exc}")


if __name__ == "__main__":
    main()
