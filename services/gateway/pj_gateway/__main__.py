"""`python -m pj_gateway`: serve the HTTP API."""

import sys

import uvicorn
from pydantic import ValidationError

from pj_common.logging import configure_logging

from .app import create_app
from .settings import GatewaySettings


def main() -> None:
    try:
        settings = GatewaySettings()
    except ValidationError as exc:
        sys.exit(f"gateway: invalid configuration: {exc}")
    configure_logging("gateway", settings.log_level)
    uvicorn.run(create_app(settings), host=settings.gateway_host, port=settings.gateway_port,
                loop="uvloop", http="httptools", access_log=False, log_config=None)


if __name__ == "__main__":
    main()
