"""`python -m pj_dispatcher`: run one dispatcher worker process."""

import sys

from pydantic import ValidationError

from pj_common.logging import configure_logging
from pj_common.runtime import run

from .app import serve
from .settings import DispatcherSettings


def main() -> None:
    try:
        settings = DispatcherSettings()
    except ValidationError as exc:
        sys.exit(f"dispatcher: invalid configuration: {exc}")
    configure_logging("dispatcher", settings.log_level)
    run(serve(settings))


if __name__ == "__main__":
    main()
