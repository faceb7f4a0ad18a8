"""`python -m pj_dispatcher`: run one dispatcher worker process."""


from pj_common.runtime import run, serve, start_service

from .app import DispatcherApp
from .settings import DispatcherSettings


async def serve_dispatcher(settings: DispatcherSettings) -> None:
    """Run one dispatcher until SIGINT or SIGTERM, which drains it (see `DispatcherApp.stop`)."""
    await serve(DispatcherApp(settings), name="dispatcher", log_fields={"concurrency": settings.concurrency})


def main() -> None:
    settings = start_service(DispatcherSettings, "dispatcher")
    run(serve_dispatcher(settings))


if __name__ == "__main__":
    main()
