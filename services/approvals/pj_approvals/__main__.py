"""`python -m pj_approvals [migrate]`: run the approvals service, or only apply migrations."""

import sys

from pj_common.runtime import run, start_service

from . import store
from .app import serve
from .catalog import CatalogError
from .settings import ApprovalsSettings


def main() -> None:
    settings = start_service(ApprovalsSettings, "approvals")
    if sys.argv[1:] == ["migrate"]:
        async def migrate_only() -> None:
            await store.ensure_database(settings.database_url)
            applied = await store.migrate(settings.database_url)
            print("applied: " + (", ".join(applied) or "nothing (up to date)"))
        run(migrate_only())
        return
    try:
        run(serve(settings))
    except CatalogError as exc:
        sys.exit(f"approvals: {exc}")


if __name__ == "__main__":
    main()
