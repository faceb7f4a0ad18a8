"""The error table, the envelopes and the handlers, on a bare app (no broker)."""

import json
import logging
import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict

from pj_common.errors import ErrorCode, GateError
from pj_common.messages import PendingCount
from pj_gateway.errors import (
    CORRELATION_HEADER,
    JSON_REQUIRED,
    STATUS_BY_CODE,
    UnexpectedErrors,
    failure,
    install_error_handlers,
    success,
)

COMMANDS_MD = Path(__file__).resolve().parents[3] / "docs" / "commands.md"


def documented_statuses() -> dict[str, int]:
    """The `| code | HTTP | when |` table of docs/commands.md#errors."""
    return {code: int(status) for code, status in re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", COMMANDS_MD.read_text(),
                                                            re.MULTILINE)}


def test_every_error_code_maps_to_its_documented_status() -> None:
    documented = documented_statuses()
    assert set(documented) == set(ErrorCode)
    assert {str(code): status for code, status in STATUS_BY_CODE.items()} == documented


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


def bare_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(UnexpectedErrors)

    @app.get("/refuse/{code}")
    async def refuse(code: str) -> Response:
        raise GateError(ErrorCode(code), f"refused: {code}")

    @app.get("/boom")
    async def boom() -> Response:
        raise RuntimeError("secret detail")

    @app.post("/body")
    async def body(payload: Body, request: Request) -> Response:
        return success(request, PendingCount(pending_count=len(payload.name)), status_code=202, extra=True)

    return app


@pytest.fixture
async def client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=bare_app(), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


@pytest.mark.parametrize("code", list(ErrorCode))
async def test_a_gate_error_is_the_envelope_with_its_status(client: httpx.AsyncClient, code: ErrorCode) -> None:
    r = await client.get(f"/refuse/{code}", headers={CORRELATION_HEADER: "cid-1"})
    assert r.status_code == STATUS_BY_CODE[code]
    assert r.json() == {"success": False, "correlationId": "cid-1",
                        "error": {"code": str(code), "message": f"refused: {code}"}}
    assert r.headers[CORRELATION_HEADER] == "cid-1"
    assert ("WWW-Authenticate" in r.headers) == (r.status_code == 401)
    if r.status_code == 401:
        assert r.headers["WWW-Authenticate"] == "Bearer"


async def test_an_unexpected_error_is_a_500_envelope_and_logged(
        client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    r = await client.get("/boom")
    assert r.status_code == 500
    assert r.json()["error"] == {"code": "internal_error", "message": "internal error"}
    assert "secret detail" not in r.text
    [record] = [r for r in caplog.records if getattr(r, "scope", None) == "gateway.unexpected_error"]
    assert record.levelno == logging.ERROR and record.correlationId == r.json()["correlationId"]  # type: ignore[attr-defined]


async def test_an_unknown_route_is_the_envelope(client: httpx.AsyncClient) -> None:
    r = await client.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found" and r.json()["success"] is False


async def test_success_writes_the_envelope_from_the_model_with_wire_names(client: httpx.AsyncClient) -> None:
    r = await client.post("/body", json={"name": "abc"})
    assert r.status_code == 202 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body == {"success": True, "correlationId": r.headers[CORRELATION_HEADER], "data": {"pendingCount": 3},
                    "extra": True}


@pytest.mark.parametrize("headers", [{}, {"Content-Type": "text/plain"},
                                     {"Content-Type": "application/x-www-form-urlencoded"}])
async def test_a_body_not_sent_as_json_says_content_type(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    r = await client.post("/body", content=json.dumps({"name": "abc"}).encode(), headers=headers)
    assert r.status_code == 415
    assert r.json()["error"] == {"code": "unsupported_media_type", "message": JSON_REQUIRED}


async def test_a_json_body_that_does_not_match_names_the_field(client: httpx.AsyncClient) -> None:
    r = await client.post("/body", json={"name": 1})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("name:")
    r = await client.post("/body", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"


def test_failure_of_a_code_the_gateway_does_not_know_is_a_500() -> None:
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
    response = failure(Request(scope), "brand_new_code", "?")
    assert response.status_code == 500


@pytest.mark.parametrize("given", ["", "x" * 129, "tab\tid"])
async def test_an_insane_correlation_id_is_replaced(client: httpx.AsyncClient, given: str) -> None:
    r = await client.get("/nowhere", headers={CORRELATION_HEADER: given})
    cid = r.json()["correlationId"]
    assert cid != given and len(cid) == 36
