"""The bearer token and CSRF dependencies, on a bare app with a real token verifier (no broker)."""

from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from pj_common.auth import TokenVerifier, mint_token
from pj_gateway.deps import CSRF_HEADER, CallerDep, WriterDep, get_writer
from pj_gateway.errors import install_error_handlers
from pj_gateway.routes import approvals, execute, system

SECRET = "deps-test-secret-0123456789abcdef01234567"
ISSUER, AUDIENCE = "puddlejumper", "pj-approval-gate"


def token(role: str = "admin", secret: str = SECRET) -> str:
    return mint_token(secret, subject="alice", tenant="acme", role=role, issuer=ISSUER, audience=AUDIENCE)


def bare_app() -> FastAPI:
    app = FastAPI()
    app.state.gateway = SimpleNamespace(verifier=TokenVerifier(SECRET, ISSUER, AUDIENCE))
    install_error_handlers(app)

    @app.get("/read")
    async def read(caller: CallerDep) -> JSONResponse:
        return JSONResponse({"sub": caller.principal.subject, "tenant": caller.principal.tenant})

    @app.post("/write")
    async def write(caller: WriterDep) -> JSONResponse:
        return JSONResponse({"sub": caller.principal.subject})

    return app


@pytest.fixture
def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=bare_app()), base_url="http://gateway")


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", "Basic YWxpY2U6c2VjcmV0", "Token abc"])
async def test_no_bearer_token_is_401(client: httpx.AsyncClient, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    r = await client.get("/read", headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["error"] == {"code": "unauthorized", "message": "missing bearer token"}
    assert r.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_the_scheme_is_case_insensitive(client: httpx.AsyncClient, scheme: str) -> None:
    r = await client.get("/read", headers={"Authorization": f"{scheme} {token()}"})
    assert r.status_code == 200 and r.json() == {"sub": "alice", "tenant": "acme"}


async def test_a_token_signed_with_another_key_is_401(client: httpx.AsyncClient) -> None:
    r = await client.get("/read", headers={"Authorization": f"Bearer {token(secret='x' * 40)}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert r.json()["error"]["message"] == "token signature does not verify"


@pytest.mark.parametrize("csrf", [None, "", "false", "1", "TRUE"])
async def test_a_write_without_the_csrf_header_is_403(client: httpx.AsyncClient, csrf: str | None) -> None:
    headers = {"Authorization": f"Bearer {token()}"}
    if csrf is not None:
        headers[CSRF_HEADER] = csrf
    r = await client.post("/write", headers=headers)
    assert r.status_code == 403
    assert r.json()["error"] == {"code": "csrf_required", "message": f"header {CSRF_HEADER}: true is required"}


async def test_a_write_with_the_csrf_header_passes(client: httpx.AsyncClient) -> None:
    r = await client.post("/write", headers={"Authorization": f"Bearer {token()}", CSRF_HEADER: "true"})
    assert r.status_code == 200 and r.json() == {"sub": "alice"}


async def test_the_token_is_checked_before_the_csrf_header(client: httpx.AsyncClient) -> None:
    r = await client.post("/write")
    assert r.status_code == 401


async def test_a_read_needs_no_csrf_header(client: httpx.AsyncClient) -> None:
    r = await client.get("/read", headers={"Authorization": f"Bearer {token()}"})
    assert r.status_code == 200


def _depends_on(route: APIRoute, dependency: object) -> bool:
    pending = list(route.dependant.dependencies)
    while pending:
        dep = pending.pop()
        if dep.call is dependency:
            return True
        pending.extend(dep.dependencies)
    return False


def test_every_state_changing_route_of_the_gateway_requires_the_csrf_header() -> None:
    routes = [r for module in (approvals, execute, system) for r in module.router.routes
              if isinstance(r, APIRoute) and (r.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}]
    assert routes
    for route in routes:
        assert _depends_on(route, get_writer), route.path
