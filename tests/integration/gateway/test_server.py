"""The gateway behind its real HTTP server (uvicorn with httptools, as `python -m pj_gateway` serves it):
the server's own refusals are the error envelope, and an error never costs the client its connection."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from pj_common.topology import Topology
from pj_gateway.app import create_app
from pj_gateway.server import server_config
from pj_gateway.settings import GatewaySettings

from .conftest import SECRET, FakeApprovals, auth


@contextlib.asynccontextmanager
async def serving(app: FastAPI, settings: GatewaySettings) -> AsyncIterator[tuple[str, int]]:
    """The app served on a free port of 127.0.0.1 in this event loop; stopped afterwards."""
    server = uvicorn.Server(server_config(app, settings, port=0, lifespan="on"))
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    assert server.started, "the server did not start"
    port: int = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@pytest.fixture
def settings(amqp_url: str, topology: Topology) -> GatewaySettings:
    return GatewaySettings(env="prod", jwt_secret=SECRET, amqp_url=amqp_url, amqp_prefix=topology.prefix,
                           rpc_timeout_s=0.5, dispatch_wait_s=0.5, health_timeout_s=0.3)


@pytest.fixture
def app_state() -> list[FastAPI]:
    """The served app, once `served` made it (for a test that breaks something behind it)."""
    return []


@pytest.fixture
async def served(settings: GatewaySettings, approvals: FakeApprovals,
                 app_state: list[FastAPI]) -> AsyncIterator[tuple[str, int]]:
    app = create_app(settings)
    app_state.append(app)

    @app.get("/api/test-only/boom", include_in_schema=False)
    async def boom() -> None:
        raise RuntimeError("an unexpected failure")

    async with serving(app, settings) as address:
        yield address


async def raw_request(address: tuple[str, int], request: bytes) -> tuple[int, dict[str, Any]]:
    """Send raw bytes, read the whole answer (the server closes the connection after a refusal)."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionResetError):
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split()[1]), json.loads(body)


def client_port(response: httpx.Response) -> int:
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/api/test-only/boom", 500, "internal_error"),
    ("/api/approvals/count/pending", 504, "upstream_timeout"),  # the approvals stand-in has no answer for it
])
async def test_a_5xx_keeps_the_keep_alive_connection(
        served: tuple[str, int], path: str, status: int, code: str) -> None:
    host, port = served
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10,
                                 limits=httpx.Limits(max_connections=1)) as client:
        first = await client.get(path, headers=auth(csrf=False))
        assert first.status_code == status and first.json()["error"]["code"] == code
        assert "an unexpected failure" not in first.text
        assert first.headers.get("connection") != "close"
        second = await client.get("/api/approvals?limit=0", headers=auth(csrf=False))
        assert second.status_code == 422 and second.json()["error"]["code"] == "validation_error"
        assert client_port(second) == client_port(first), "the second request needed a new connection"


async def test_a_503_keeps_the_keep_alive_connection(served: tuple[str, int], app_state: list[FastAPI]) -> None:
    """The broker gone: 503 `broker_unavailable`, and the connection serves the next request."""
    host, port = served
    app_state[0].state.gateway.rpc.detach()
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10,
                                 limits=httpx.Limits(max_connections=1)) as client:
        first = await client.get("/api/approvals/count/pending", headers=auth(csrf=False))
        assert first.status_code == 503 and first.json()["error"]["code"] == "broker_unavailable"
        second = await client.get("/api/approvals?limit=0", headers=auth(csrf=False))
        assert second.status_code == 422
        assert client_port(second) == client_port(first), "the second request needed a new connection"


@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (b"GET /api/approvals?x=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n", 414, "uri_too_long"),
    (b"GET /health HTTP/1.1\r\nHost: gw\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(20))
     + b"\r\n", 431, "headers_too_large"),
    # One header larger than everything allowed, sent before the parser has seen it end.
    (b"GET /health HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"b" * 30_000, 431, "headers_too_large"),
    (b"NOT A REQUEST LINE\r\n\r\n", 400, "bad_request"),
    (b"GET /health HTTP/1.1\r\nHost: gw\r\nContent-Length: nope\r\n\r\n", 400, "bad_request"),
    (b"GET /health HTTP/1.1\r\nBad Header Name: x\r\n\r\n", 400, "bad_request"),
])
async def test_the_servers_own_refusals_are_the_envelope(
        served: tuple[str, int], request_bytes: bytes, status: int, code: str) -> None:
    got_status, body = await raw_request(served, request_bytes)
    assert got_status == status and body["success"] is False and body["error"]["code"] == code, body
    assert body["correlationId"]


async def test_a_body_arriving_with_its_head_is_not_counted_as_head(served: tuple[str, int]) -> None:
    """A client that writes head and a large body at once: the body is not part of the header limit."""
    body = json.dumps({"actionId": "notify.webhook", "payload": {"x": ["x" * 1000] * 200}}).encode()
    head = (b"POST /api/pj/execute HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    status, answer = await raw_request(served, head + body)
    assert status == 401 and answer["error"]["code"] == "unauthorized", answer


async def test_a_chunked_body_over_the_limit_is_413_on_the_wire(served: tuple[str, int]) -> None:
    """No Content-Length at all: the gateway counts the body as it arrives and stops at the limit."""
    host, port = served

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"actionId": "a", "payload": {"x": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}}'

    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
        r = await client.post("/api/pj/execute", content=chunks(),
                              headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
