"""A real OpenID Connect provider on 127.0.0.1 (the npm package oidc-provider, tests/support/oidc/server.mjs).

`ensure_installed()` runs `npm ci` on a fresh clone; `start_provider()` runs it until the context ends;
`sign_in()` goes through the authorization code flow with PKCE as a browser would, for tests that need a
provider's token without a browser.
"""

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

from tests.support.system import _die_with_parent, free_port

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
USERS: dict[str, dict[str, str]] = json.loads((OIDC_DIR / "users.json").read_text())
CLIENT_ID = "pj-console"
AUDIENCE = "urn:pj-approval-gate"


def _need(condition: bool, message: str) -> None:
    """Missing tooling skips locally and fails under CI."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: it is required)")
    pytest.skip(message)


def ensure_installed() -> None:
    """Install the provider's npm packages from the committed lock file when they are missing or stale."""
    _need(shutil.which("node") is not None and shutil.which("npm") is not None, "Node.js and npm are not installed")
    stamp = OIDC_DIR / "node_modules" / ".package-lock.json"
    lock = OIDC_DIR / "package-lock.json"

    def installed() -> bool:
        return stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime

    if installed():
        return
    # One installer at a time: `npm ci` empties node_modules first, under any other test run using it.
    with open(tempfile.gettempdir() + "/pj-oidc-npm.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if installed():
            return
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=OIDC_DIR,
                              capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"npm ci failed in {OIDC_DIR}:\n{done.stdout}\n{done.stderr}"


@dataclass(frozen=True)
class Provider:
    issuer: str
    client_id: str
    audience: str

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"


@contextlib.contextmanager
def start_provider(redirect_uris: list[str], *, access_ttl_s: int = 300, tenant_prefix: str = "",
                   log: Path | None = None) -> Iterator[Provider]:
    """Run the provider until the context ends; the console client may return to `redirect_uris`.
    `tenant_prefix` goes before every user's tenant (a test's own tenants in a shared database)."""
    ensure_installed()
    port = free_port()
    env = {**os.environ, "OIDC_PORT": str(port), "OIDC_CLIENT_ID": CLIENT_ID, "OIDC_AUDIENCE": AUDIENCE,
           "OIDC_REDIRECT_URIS": " ".join(redirect_uris), "OIDC_ACCESS_TTL_S": str(access_ttl_s),
           "OIDC_TENANT_PREFIX": tenant_prefix}
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115  # closed below
    proc = subprocess.Popen(["node", "server.mjs"], cwd=OIDC_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    provider = Provider(issuer=f"http://127.0.0.1:{port}", client_id=CLIENT_ID, audience=AUDIENCE)
    try:
        _wait_ready(proc, provider.issuer)
        yield provider
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log is not None:
            out.close()  # type: ignore[union-attr]  # a file when a log was given


def _wait_ready(proc: "subprocess.Popen[bytes]", issuer: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the OpenID provider exited with {proc.returncode}")
        try:
            if httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=1, trust_env=False).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the OpenID provider did not answer within {timeout}s")


def pkce_pair() -> tuple[str, str]:
    """A code verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@dataclass(frozen=True)
class Authorization:
    """A code the provider issued to the console's client, and the PKCE verifier that redeems it."""

    code: str
    verifier: str
    redirect_uri: str


def authorize(provider: Provider, login: str, *, redirect_uri: str, password: str | None = None) -> Authorization:
    """The browser's part of the authorization code flow with PKCE, done with httpx: the code it brings back."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    with httpx.Client(base_url=provider.issuer, timeout=10, trust_env=False) as client:
        r = client.get("/auth", params={
            "client_id": provider.client_id, "response_type": "code", "redirect_uri": redirect_uri,
            "scope": "openid profile offline_access pj", "state": state, "code_challenge": challenge,
            "code_challenge_method": "S256", "resource": provider.audience, "prompt": "login"})
        for _ in range(10):  # the provider's redirects up to the login form, then back to the client
            if r.status_code not in (302, 303):
                break
            location = urljoin(str(r.url), r.headers["location"])
            if location.startswith(redirect_uri):
                query = parse_qs(urlsplit(location).query)
                assert query.get("state") == [state] and "code" in query, query
                return Authorization(code=query["code"][0], verifier=verifier, redirect_uri=redirect_uri)
            r = client.get(location)
            if r.status_code == 200 and "<form" in r.text:
                r = client.post(f"{urlsplit(location).path}/login", data={
                    "login": login, "password": password or USERS[login]["password"]})
        raise AssertionError(f"sign-in of {login} did not come back to {redirect_uri}: {r.status_code} {r.text[:300]}")


def sign_in(provider: Provider, login: str, *, redirect_uri: str) -> dict[str, Any]:
    """The whole flow: authorize, then redeem the code at the token endpoint; the token response."""
    grant = authorize(provider, login, redirect_uri=redirect_uri)
    tokens = httpx.post(f"{provider.issuer}/token", timeout=10, trust_env=False, data={
        "grant_type": "authorization_code", "code": grant.code, "redirect_uri": redirect_uri,
        "client_id": provider.client_id, "code_verifier": grant.verifier})
    assert tokens.status_code == 200, tokens.text
    return dict(tokens.json())
