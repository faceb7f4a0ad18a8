"""The console's routes: static assets and their security headers, the development token, sign-in through
a real OpenID provider (discovery and the code exchange via the gateway), and /console/me."""

from collections.abc import Iterator

import pytest

from pj_common.auth import mint_token
from tests.support.oidc_provider import Provider, authorize, start_provider

from .conftest import CSRF, SECRET, Gateway, GatewayFactory, auth

REDIRECT = "http://gateway/console/"


def test_every_console_asset_is_plain_and_named_as_served() -> None:
    """The CSP forbids inline script and style: no asset may rely on either."""
    from pj_gateway.routes.console import _ASSET_NAME, STATIC

    html = (STATIC / "index.html").read_text()
    assert "<script>" not in html and "style=" not in html and "<style" not in html
    for path in STATIC.iterdir():
        assert _ASSET_NAME.match(path.name), path.name
        assert "innerHTML" not in path.read_text(), f"{path.name} writes markup from strings"


async def test_console_is_served_with_strict_security_headers(gateway: Gateway) -> None:
    r = await gateway.client.get("/console/")
    assert r.status_code == 200 and "<main" in r.text
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store" and r.headers["x-content-type-options"] == "nosniff"
    script = await gateway.client.get("/console/assets/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "frame-ancestors 'none'" in script.headers["content-security-policy"]
    root = await gateway.client.get("/console")
    assert root.status_code == 308 and root.headers["location"] == "/console/"


@pytest.mark.parametrize("name", ["..%2Fsettings.py", "missing.js", "APP.JS", ".hidden.js"])
async def test_only_named_assets_of_the_static_folder_are_served(gateway: Gateway, name: str) -> None:
    r = await gateway.client.get(f"/console/assets/{name}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_development_tokens_only_in_dev(gateway_factory: GatewayFactory) -> None:
    body = {"role": "approver", "sub": "dana", "tenant": "acme"}
    async with gateway_factory() as prod:
        r = await prod.client.post("/console/dev-token", json=body, headers=CSRF)
        assert r.status_code == 404
        assert (await prod.client.get("/console/config.json")).json()["devTokens"] is False
    async with gateway_factory(env="dev") as dev:
        assert (await dev.client.get("/console/config.json")).json()["devTokens"] is True
        refused = await dev.client.post("/console/dev-token", json=body)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_required"
        r = await dev.client.post("/console/dev-token", json=body, headers=CSRF)
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        token = r.json()["access_token"]
        me = await dev.client.get("/console/me", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["data"] == {"sub": "dana", "tenant": "acme", "role": "approver"}


async def test_me_needs_a_valid_token(gateway: Gateway) -> None:
    assert (await gateway.client.get("/console/me")).status_code == 401
    forged = mint_token("another-secret-0123456789abcdef0123456789", subject="eve", tenant="acme", role="admin",
                        issuer="puddlejumper", audience="pj-approval-gate")
    r = await gateway.client.get("/console/me", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401
    r = await gateway.client.get("/console/me", headers=auth("viewer", "vic", "acme"))
    assert r.json()["data"] == {"sub": "vic", "tenant": "acme", "role": "viewer"}


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with start_provider([REDIRECT]) as started:
        yield started


async def test_sign_in_through_the_provider_via_the_gateway(
        gateway_factory: GatewayFactory, provider: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_OIDC_ISSUER", provider.issuer)
    monkeypatch.setenv("PJ_OIDC_CLIENT_ID", provider.client_id)
    async with gateway_factory(jwt_secret=None, jwt_jwks_url=provider.jwks_url, jwt_algorithms="RS256",
                               jwt_issuer=provider.issuer, jwt_audience=provider.audience) as gateway:
        config = (await gateway.client.get("/console/config.json")).json()
        assert config["signIn"]["authorizationEndpoint"] == f"{provider.issuer}/auth"
        assert config["signIn"]["clientId"] == "pj-console" and config["devTokens"] is False
        grant = authorize(provider, "amir", redirect_uri=REDIRECT)
        exchange = {"grant_type": "authorization_code", "code": grant.code, "redirect_uri": REDIRECT,
                    "code_verifier": "not-the-verifier-" + "x" * 40}
        wrong = await gateway.client.post("/console/auth/token", json=exchange, headers=CSRF)
        assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"  # PKCE holds
        grant = authorize(provider, "amir", redirect_uri=REDIRECT)
        exchange |= {"code": grant.code, "code_verifier": grant.verifier}
        tokens = await gateway.client.post("/console/auth/token", json=exchange, headers=CSRF)
        assert tokens.status_code == 200, tokens.text
        access = tokens.json()["access_token"]
        me = await gateway.client.get("/console/me", headers={"Authorization": f"Bearer {access}"})
        assert me.status_code == 200, me.text
        assert me.json()["data"] == {"sub": "amir", "tenant": "acme", "role": "approver"}
        refreshed = await gateway.client.post("/console/auth/token", headers=CSRF, json={
            "grant_type": "refresh_token", "refresh_token": tokens.json()["refresh_token"]})
        assert refreshed.status_code == 200 and refreshed.json()["access_token"] != access
        hs256 = await gateway.client.get("/console/me", headers=auth("admin", "eve", "acme"))
        assert hs256.status_code == 401  # a secret-signed token means nothing to a JWKS gateway


async def test_token_exchange_takes_only_the_console_grants(gateway_factory: GatewayFactory, provider: Provider,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_OIDC_ISSUER", provider.issuer)
    async with gateway_factory() as gateway:
        r = await gateway.client.post("/console/auth/token", json={"grant_type": "client_credentials"},
                                      headers=CSRF)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
        r = await gateway.client.post("/console/auth/token", json={"grant_type": "refresh_token",
                                                                   "refresh_token": "x"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_required"


async def test_without_an_issuer_the_console_says_sign_in_is_not_configured(gateway: Gateway) -> None:
    config = (await gateway.client.get("/console/config.json")).json()
    assert config["signIn"] is None and config["devTokens"] is False
    assert SECRET  # the gateway of this module verifies with the shared secret


async def test_an_unreachable_provider_is_a_clear_error_not_a_crash(
        gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.system import free_port

    monkeypatch.setenv("PJ_OIDC_ISSUER", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    async with gateway_factory() as gateway:
        r = await gateway.client.get("/console/config.json")
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
        assert "discovery document could not be read" in r.json()["error"]["message"]
        page = await gateway.client.get("/console/")
        assert page.status_code == 200  # the page itself still loads and says what is wrong
