"""`pj login` with the OpenID device authorization grant (RFC 8628) against a real provider (oidc-provider,
tests/support/oidc/) and the whole system verifying its tokens through the provider's JWKS.

The test plays the person: it reads the code `pj login` shows, opens the provider's verification page with
httpx, types the code, signs in and confirms, following the provider's own HTML forms. Then the stored
token works against the gateway, and an expired access token is renewed with the refresh token (which the
provider rotates: the old one is refused afterwards)."""

import asyncio
import json
import os
import re
import stat
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from pj_common.broker_access import Service
from tests.support.local_http import serving
from tests.support.oidc_provider import USERS, Provider, sign_in, start_provider
from tests.support.pj_cli import Run, pj_in_process
from tests.support.system import System, free_port, running_system
from tests.support.webhook_sink import SinkState

from .conftest import system_env, verified_by

PJ = Path(sys.executable).parent / "pj"
CODE_SHOWN = re.compile(r"code (?P<code>[A-Z0-9]{4}-[A-Z0-9]{4})\b.*?\n\s*(?P<url>http\S+)", re.S)


@dataclass
class LoginSystem:
    system: System
    provider: Provider
    tenant_prefix: str


@pytest.fixture(scope="module")
async def login_system(module_database: str, amqp_url: str, sink: SinkState, broker_users: dict[Service, str],
                       tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LoginSystem]:
    """Gateway, approvals and a dispatcher that verify tokens with the provider's JWKS; the gateway's console
    names the provider, which is where `pj login` finds it."""
    port = free_port()
    prefix = f"pjl-{uuid.uuid4().hex[:10]}"
    logdir = tmp_path_factory.mktemp("cli-login-logs")
    with start_provider([f"http://127.0.0.1:{port}/console/"], tenant_prefix=f"{prefix}-",
                        log=logdir / "oidc.log") as provider:
        env = verified_by(provider, system_env(module_database, amqp_url, prefix, port, sink.url))
        async with running_system(env, amqp_url=amqp_url, logdir=logdir, broker_users=broker_users) as system:
            yield LoginSystem(system, provider, f"{prefix}-")


@pytest.fixture
def pj_env(login_system: LoginSystem, tmp_path: Path) -> dict[str, str]:
    """No PJ_ setting of the test run, and a config directory of the test's own (never the user's)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PJ_")},
            "XDG_CONFIG_HOME": str(tmp_path / "config"), "COLUMNS": "200"}


async def pj(env: dict[str, str], *args: str, typed: str | None = None) -> Run:
    """`pj args...` in this process; `pj login` itself runs the installed entry point (`login_as`)."""
    return await pj_in_process(dict(env), *args, typed=typed)


# ---------------------------------------------------------------- the person at the browser


@dataclass
class Form:
    action: str
    fields: dict[str, str] = field(default_factory=dict)


class Forms(HTMLParser):
    """The forms of a page and their inputs, as a browser would submit them."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "form":
            self.forms.append(Form(action=named.get("action") or ""))
        elif tag == "input" and self.forms and named.get("name"):
            self.forms[-1].fields[str(named["name"])] = named.get("value") or ""


def confirm_device(verification_uri: str, user_code: str, login: str, *, abort: bool = False) -> str:
    """Open the verification page, type the code, sign in and confirm (or abort); the last page's text."""
    with httpx.Client(timeout=10, trust_env=False, follow_redirects=True) as browser:
        page = browser.get(verification_uri)
        for _ in range(8):  # code, (confirmation,) login, confirmation: a handful of forms at most
            forms = Forms(page.text).forms
            if not forms:
                return page.text
            form = forms[0]
            fields = dict(form.fields)
            if "user_code" in fields and not fields["user_code"]:
                fields["user_code"] = user_code  # the input the person types into
            if "login" in fields:
                fields.update(login=login, password=USERS[login]["password"])
            if abort and fields.get("confirm") == "yes":
                del fields["confirm"]
                fields["abort"] = "yes"  # the page's "Abort" button
                return browser.post(urljoin(str(page.url), form.action), data=fields).text
            page = browser.post(urljoin(str(page.url), form.action), data=fields)
    raise AssertionError(f"the verification did not end after 8 forms: {page.status_code} {page.text[:300]}")


async def login_as(env: dict[str, str], base_url: str, login: str, *, abort: bool = False) -> tuple[Run, str]:
    """Run `pj login`, play the person with the code it shows; its run and the provider's last page."""
    proc = await asyncio.create_subprocess_exec(str(PJ), "login", "--url", base_url, "--json", env=env,
                                                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None and proc.stdout is not None
    shown = ""
    try:
        async with asyncio.timeout(20):
            while not (found := CODE_SHOWN.search(shown)):
                line = await proc.stderr.readline()
                assert line, f"pj login ended without showing a code: {shown}"
                shown += line.decode()
    except TimeoutError:
        proc.kill()
        raise
    url = found["url"]
    assert urlsplit(url).query == f"user_code={found['code']}", url  # verification_uri_complete
    # As a person on another device: the plain verification page, the code typed in.
    last_page = await asyncio.to_thread(confirm_device, url.split("?")[0], found["code"], login, abort=abort)
    out, err = await asyncio.wait_for(proc.communicate(), 30)  # the next poll (every 5 s) sees the outcome
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), shown + err.decode()), last_page


def stored(env: dict[str, str]) -> tuple[Path, dict[str, Any]]:
    path = Path(env["XDG_CONFIG_HOME"]) / "pj" / "config.json"
    return path, json.loads(path.read_text())


async def test_device_login_stores_a_token_that_works_and_is_renewed(login_system: LoginSystem,
                                                                    pj_env: dict[str, str]) -> None:
    base_url, provider = login_system.system.base_url, login_system.provider
    before = time.time()
    run, last_page = await login_as(pj_env, base_url, "olga")
    assert "Sign-in Success" in last_page
    assert run.code == 0, run
    assert run.json() | {"config": None} == {
        "url": base_url, "config": None, "issuer": provider.issuer, "sub": "olga", "role": "operator",
        "tenant": f"{login_system.tenant_prefix}acme", "exp": run.json()["exp"]}

    path, config = stored(pj_env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sign_in = config["sign_in"]
    assert sign_in["issuer"] == provider.issuer and sign_in["client_id"] == "pj-cli"
    assert sign_in["token_endpoint"] == f"{provider.issuer}/token" and sign_in["refresh_token"]
    assert before + 250 < sign_in["expires_at"] < time.time() + 301  # the provider's 300 s

    # The stored token works against the gateway: the request is olga's, in her tenant.
    asked = await pj(pj_env, "execute", "notify.webhook", "-p", '{"message": "signed in with the device flow"}',
                     "-q")
    assert asked.code == 0, asked
    listed = await pj(pj_env, "list", "--json")
    assert listed.code == 0, listed
    assert [(a["id"], a["operator_id"]) for a in listed.json()["approvals"]] == [(asked.out.strip(), "olga")]
    assert stored(pj_env)[1] == config  # a valid token is not renewed

    # Expired (as far as the client knows): the next command renews it first, and the file stays private.
    path.write_text(json.dumps({**config, "sign_in": {**sign_in, "expires_at": time.time() - 1}}))
    renewed = await pj(pj_env, "list", "--json")
    assert renewed.code == 0 and renewed.json()["total"] == 1, renewed
    _, fresh = stored(pj_env)
    assert fresh["token"] != config["token"] and fresh["sign_in"]["refresh_token"] != sign_in["refresh_token"]
    assert fresh["sign_in"]["expires_at"] > time.time() + 250
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The provider rotated it: the old refresh token is spent.
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        spent = await http.post(f"{provider.issuer}/token", data={
            "grant_type": "refresh_token", "refresh_token": sign_in["refresh_token"], "client_id": "pj-cli"})
    assert spent.status_code == 400 and spent.json()["error"] == "invalid_grant"

    # A refresh token the provider refuses: sign in again (exit 5), and the file is left as it was.
    refused = {**fresh, "sign_in": {**fresh["sign_in"], "refresh_token": "not-a-refresh-token",
                                    "expires_at": time.time() - 1}}
    path.write_text(json.dumps(refused))
    again = await pj(pj_env, "list")
    assert again.code == 5 and "session_expired" in again.err and "pj login" in again.err, again
    assert stored(pj_env)[1] == refused


async def test_a_refusal_at_the_provider_stores_nothing(login_system: LoginSystem, pj_env: dict[str, str]) -> None:
    run, _ = await login_as(pj_env, login_system.system.base_url, "amir", abort=True)
    assert run.code == 5 and "access_denied" in run.err, run
    assert not (Path(pj_env["XDG_CONFIG_HOME"]) / "pj" / "config.json").exists()


class NoDeviceFlow(BaseHTTPRequestHandler):
    """A provider's discovery document without a device_authorization_endpoint."""

    def do_GET(self) -> None:
        issuer = f"http://{self.headers['Host']}"
        found = self.path == "/.well-known/openid-configuration"
        body = json.dumps({"issuer": issuer, "token_endpoint": f"{issuer}/token",
                           "authorization_endpoint": f"{issuer}/auth"}).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


async def test_without_a_device_endpoint_it_says_so_and_takes_a_pasted_token(
        login_system: LoginSystem, pj_env: dict[str, str]) -> None:
    base_url = login_system.system.base_url
    pasted = str((await asyncio.to_thread(sign_in, login_system.provider, "alice",
                                          redirect_uri=f"{base_url}/console/"))["access_token"])
    with serving(NoDeviceFlow) as issuer:
        result = await pj(pj_env, "login", "--url", base_url, "--issuer", issuer, typed=pasted + "\n")
    assert result.code == 0, result
    assert "offers no device sign-in" in result.err and pasted not in result.out + result.err
    assert stored(pj_env)[1] == {"url": base_url, "token": pasted}  # nothing to renew it with
    listed = await pj(pj_env, "list", "--json")
    assert listed.code == 0, listed
