"""`python -m pj_gateway`: serve the HTTP API."""


import uvicorn

from pj_common.runtime import start_service

from .app import create_app
from .server import server_config
from .settings import GatewaySettings


def main() -> None:
    settings = start_service(GatewaySettings, "gateway")
    uvicorn.Server(server_config(create_app(settings), settings)).run()


if __name__ == "__main__":
    main()
