"""`python -m pj_dispatcher`: run one dispatcher worker process."""


from pj_common.runtime import run, start_service

from .app import serve
from .settings import DispatcherSettings


def main() -> None:
    settings = start_service(DispatcherSettings, "dispatcher")
    run(serve(settings))


if __name__ == "__main__":
    main()
