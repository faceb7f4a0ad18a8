"""`python -m pj_gateway`: serve the HTTP API."""


import uvicorn

from pj_common.runtime import start_service

from .app import create_app
from .settings import GatewaySettings


def main() -> None:
    settings = start_service(GatewaySettings, "gateway")
    uvicorn.run(create_app(settings), host=settings.gateway_host, port=settings.gateway_port,
                loop="uvloop", http="httptools", access_log=False, log_config=None)


if __name__ == "__main__":
    main()
