"""CORS: off by default (no browser page elsewhere can read the API), an explicit allow-list when
configured, and never the caller's own Origin reflected back."""

from collections.abc import AsyncIterator

import httpx
import pytest

from .conftest import FakeApprovals, Gateway, GatewayFactory, auth

ALLOWED = "https://console.example.com"
EVIL = "https://evil.example.net"


def preflight(origin: str) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-puddlejumper-request"}


def cors_headers(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.lower().startswith("access-control-")}


async def test_cors_is_off_by_default(gateway: Gateway) -> None:
    r = await gateway.client.options("/api/pj/execute", headers=preflight(EVIL))
    assert cors_headers(r) == {} and r.status_code == 405
    r = await gateway.client.get("/health", headers={"Origin": EVIL})
    assert cors_headers(r) == {}


@pytest.fixture
async def with_cors(approvals: FakeApprovals, gateway_factory: GatewayFactory) -> AsyncIterator[Gateway]:
    async with gateway_factory(cors_origins=[ALLOWED]) as started:
        yield started


async def test_an_allowed_origin_gets_its_preflight_and_reads(with_cors: Gateway) -> None:
    r = await with_cors.client.options("/api/pj/execute", headers=preflight(ALLOWED))
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "access-control-allow-credentials" not in r.headers
    r = await with_cors.client.get("/api/approvals?limit=0", headers={**auth(), "Origin": ALLOWED})
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "X-Correlation-Id" in r.headers["Access-Control-Expose-Headers"]


@pytest.mark.parametrize("origin", [EVIL, "null", "https://console.example.com.evil.example.net",
                                    "http://console.example.com"])
async def test_any_other_origin_is_never_reflected(with_cors: Gateway, origin: str) -> None:
    r = await with_cors.client.options("/api/pj/execute", headers=preflight(origin))
    assert r.status_code == 400
    assert r.headers.get("Access-Control-Allow-Origin") not in (origin, "*")
    r = await with_cors.client.get("/health", headers={"Origin": origin})
    assert "access-control-allow-origin" not in r.headers
