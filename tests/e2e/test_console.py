"""The console in a real browser (Debian's chromium driven by Playwright) against the whole system, signed in
through a real OpenID provider: an operator signs in and sees her request appear live, an admin approves
and dispatches it and sees each step's result. axe-core finds no serious accessibility violation, and the
page breaks none of its own CSP. Screenshots of each step go to test-artifacts/console/."""

import asyncio
import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
import uvicorn
from playwright.async_api import Browser, Page, async_playwright, expect

from pj_common.broker_access import Service
from pj_common.topology import Topology, declare_topology
from pj_gateway.app import create_app
from pj_gateway.settings import GatewaySettings
from tests.support.oidc_provider import OIDC_DIR, USERS, Provider, start_provider
from tests.support.system import REPO, System, delete_topology, free_port, running_system
from tests.support.webhook_sink import SinkState, serving_sink

from .conftest import CSRF, WEBHOOK_SECRET, system_env, verified_by

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "console"
SERIOUS = ("serious", "critical")
ACCESS_TTL_S = 70
SESSION_TOKEN = "JSON.parse(sessionStorage.getItem('pj.console.session')).accessToken"


def ensure_chromium() -> None:
    """Debian's chromium, installed with apt-get when missing (tests/support/ensure-chromium.sh; `.ci/run`
    runs it before the suite); under CI a browser that cannot be had fails, it does not skip."""
    if not CHROMIUM.exists():
        subprocess.run(["bash", str(REPO / "tests" / "support" / "ensure-chromium.sh")], check=False, timeout=900)
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing and could not be installed with apt-get (CI is set: it is required)")
    pytest.skip(f"{CHROMIUM} is missing (tests/support/ensure-chromium.sh installs it as root)")


@dataclass
class ConsoleSystem:
    system: System
    provider: Provider
    sink: SinkState

    @property
    def base_url(self) -> str:
        return self.system.base_url


@pytest.fixture(scope="module")
def console_sink() -> Iterator[SinkState]:
    """A webhook receiver of this module's own: the other e2e modules count what theirs receives."""
    with serving_sink(WEBHOOK_SECRET) as state:
        yield state


@pytest.fixture(scope="module")
async def console_system(module_database: str, amqp_url: str, console_sink: SinkState,
                         broker_users: dict[Service, str], tmp_path_factory: pytest.TempPathFactory
                         ) -> AsyncIterator[ConsoleSystem]:
    """Gateway, approvals and a dispatcher that verify tokens with the OpenID provider's JWKS."""
    port = free_port()
    prefix = f"pjc-{uuid.uuid4().hex[:10]}"
    logdir = tmp_path_factory.mktemp("console-logs")
    # Access tokens of 70 s: the console refreshes a minute before expiry, so within the test.
    # Tenants of this run only (the provider's users are the same in every run).
    with start_provider([f"http://127.0.0.1:{port}/console/"], access_ttl_s=ACCESS_TTL_S,
                        tenant_prefix=f"{prefix}-", log=logdir / "oidc.log") as provider:
        env = verified_by(provider, system_env(module_database, amqp_url, prefix, port, console_sink.url))
        async with running_system(env, amqp_url=amqp_url, logdir=logdir, broker_users=broker_users) as system:
            yield ConsoleSystem(system, provider, console_sink)


@pytest.fixture(scope="module")
def axe_source() -> str:
    return (OIDC_DIR / "node_modules" / "axe-core" / "axe.min.js").read_text()


@pytest.fixture(scope="module")
def artifacts() -> Iterator[Path]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield ARTIFACTS


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    ensure_chromium()
    async with async_playwright() as playwright:
        # --no-sandbox: the test may run as root, where chromium's sandbox refuses to start.
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        await launched.close()


async def open_console(browser: Browser, base_url: str, csp_errors: list[str]) -> Page:
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(15_000)
    page = await context.new_page()
    page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
    await page.goto(f"{base_url}/console/")
    return page


async def sign_in(page: Page, login: str) -> None:
    """Through the provider's own login page, as a person would."""
    await page.get_by_role("button", name="Sign in with").click()
    await page.get_by_label("Login").fill(login)
    await page.get_by_label("Password").fill(USERS[login]["password"])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#who")).to_contain_text(f"{login} · {USERS[login]['role']}")
    assert "code=" not in page.url  # the code left the address bar at once


async def assert_accessible(page: Page, axe_source: str) -> None:
    # evaluate runs outside the page's CSP, which (rightly) refuses injected scripts.
    await page.evaluate(axe_source)
    result: dict[str, Any] = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    serious = [(v["id"], v["help"], [n["target"] for n in v["nodes"]][:3])
               for v in result["violations"] if v["impact"] in SERIOUS]
    assert not serious, serious


async def test_sign_in_see_a_request_live_approve_dispatch(
        console_system: ConsoleSystem, browser: Browser, axe_source: str, artifacts: Path) -> None:
    base = console_system.base_url
    csp_errors: list[str] = []

    operator = await open_console(browser, base, csp_errors)
    await sign_in(operator, "olga")
    await expect(operator.locator("#live-status")).to_have_text("Live updates on")
    await operator.screenshot(path=artifacts / "1-operator-signed-in.png", full_page=True)

    # A request through the API, with the token the operator's console holds.
    token = await operator.evaluate(SESSION_TOKEN)
    async with httpx.AsyncClient(base_url=base, timeout=20) as client:
        r = await client.post("/api/pj/execute", headers={"Authorization": f"Bearer {token}", **CSRF},
                              json={"actionId": "notify.webhook", "payload": {"message": "console e2e"}})
    assert r.status_code == 202, r.text
    approval_id = r.json()["approvalId"]

    row = operator.locator(f'tr[data-approval-id="{approval_id}"]')
    await expect(row).to_be_visible()  # no reload: the event arrived over the stream
    await expect(operator.locator("#badge")).to_have_text("1")
    await operator.screenshot(path=artifacts / "2-request-appears-live.png", full_page=True)
    await assert_accessible(operator, axe_source)
    await operator.get_by_label("Requester").fill("somebody-else")
    await operator.get_by_role("button", name="Apply filters").click()
    await expect(operator.locator("#queue-empty")).to_be_visible()
    await operator.get_by_label("Requester").fill("olga")
    await operator.get_by_label("Action").fill("notify.webhook")
    await operator.get_by_role("button", name="Apply filters").click()
    await expect(row).to_be_visible()

    await row.get_by_role("link").click()
    await expect(operator.locator("#requester")).to_have_text("olga")
    await expect(operator.get_by_role("button", name="Approve")).to_be_disabled()  # separation of duties
    await expect(operator.locator("#decide-reason")).to_contain_text("someone else decides")

    admin = await open_console(browser, base, csp_errors)
    await sign_in(admin, "alice")
    await admin.goto(f"{base}/console/#/approvals/{approval_id}")
    await expect(admin.locator("#plan-hash")).to_have_text(r.json()["data"]["planHash"])
    await admin.get_by_role("button", name="Reject").click()
    await expect(admin.locator("#notice")).to_have_text("A note is required to reject: say why.")
    await admin.get_by_label("Note").fill("Looks right, go ahead.")
    await admin.get_by_role("button", name="Approve").click()
    await expect(admin.locator("h1 .status")).to_have_text("approved")
    await admin.screenshot(path=artifacts / "3-approved-by-another-user.png", full_page=True)

    await admin.get_by_role("button", name="Preview dispatch (dry run)").click()
    await expect(admin.locator("#action-output")).to_contain_text("nothing was changed")
    await admin.get_by_role("button", name="Dispatch", exact=True).click()
    await expect(admin.locator("h1 .status")).to_have_text("dispatched")
    await expect(admin.locator("#dispatch-result")).to_contain_text("succeeded")
    delivered = [d for d in console_system.sink.deliveries if "console e2e" in json.dumps(d.body)]
    assert len(delivered) == 1 and delivered[0].signature_ok, console_system.sink.deliveries
    await expect(admin.locator("#audit")).to_contain_text("alice (admin)")
    await admin.screenshot(path=artifacts / "4-dispatched-result.png", full_page=True)
    await assert_accessible(admin, axe_source)

    # The operator's page followed along live.
    await expect(operator.locator("h1 .status")).to_have_text("dispatched")
    await operator.set_viewport_size({"width": 390, "height": 844})
    await operator.screenshot(path=artifacts / "5-operator-on-a-phone.png", full_page=True)

    # The operator's token was refreshed before it expired, and the console goes on with the new one.
    for _ in range(100):  # wait_for_function would need 'unsafe-eval', which the CSP rightly refuses
        if await operator.evaluate(SESSION_TOKEN) != token:
            break
        await operator.wait_for_timeout(200)
    assert await operator.evaluate(SESSION_TOKEN) != token, "the access token was not refreshed"
    await operator.get_by_role("link", name="Back to the queue").click()
    await expect(operator.get_by_role("heading", name="Approvals")).to_be_visible()
    await expect(operator.locator("#queue-empty")).to_be_visible()  # nothing pending any more

    # A stale page (its live updates cut off) acting on an approval decided elsewhere meanwhile: the API's
    # 409 in words, and the page reloaded.
    await admin.route("**/api/events", lambda route: route.abort())
    async with httpx.AsyncClient(base_url=base, timeout=20) as client:
        operator_token = await operator.evaluate(SESSION_TOKEN)
        r = await client.post("/api/pj/execute", headers={"Authorization": f"Bearer {operator_token}", **CSRF},
                              json={"actionId": "notify.webhook", "payload": {"message": "stale page"}})
        assert r.status_code == 202, r.text
        second_id = r.json()["approvalId"]
        await admin.goto(f"{base}/console/#/approvals/{second_id}")
        await admin.reload()
        await expect(admin.get_by_role("button", name="Approve")).to_be_enabled()
        admin_token = await admin.evaluate(SESSION_TOKEN)
        decided = await client.post(f"/api/approvals/{second_id}/decide", json={"status": "rejected", "note": "no"},
                                    headers={"Authorization": f"Bearer {admin_token}", **CSRF})
        assert decided.status_code == 200, decided.text
    await admin.get_by_role("button", name="Approve").click()
    await expect(admin.locator("#notice")).to_contain_text("Someone else changed this approval meanwhile")
    await expect(admin.locator("h1 .status")).to_have_text("rejected")
    await admin.screenshot(path=artifacts / "6-conflict-explained.png", full_page=True)
    await admin.unroute("**/api/events")

    await admin.get_by_role("button", name="Sign out").click()
    await admin.wait_for_url(f"{console_system.provider.issuer}/**")  # the provider ends its session too
    assert not csp_errors, csp_errors


@contextlib.asynccontextmanager
async def dev_gateway(amqp_url: str) -> AsyncIterator[str]:
    """A gateway with PJ_ENV=dev in this process (its development secret signs the role picker's tokens)."""
    settings = GatewaySettings(env="dev", amqp_url=amqp_url, amqp_prefix=f"pjd-{uuid.uuid4().hex[:8]}",
                               rpc_timeout_s=1.0)  # type: ignore[call-arg]
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:  # the topology, as approvals would declare it: the gateway waits for it
        await declare_topology(await connection.channel(), Topology(settings.amqp_prefix))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    for _ in range(100):
        if server.started:
            break
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        await delete_topology(amqp_url, Topology(settings.amqp_prefix))


async def test_development_role_picker(amqp_url: str, browser: Browser) -> None:
    async with dev_gateway(amqp_url) as base:
        page = await open_console(browser, base, csp_errors := [])
        await page.get_by_label("Role", exact=True).select_option("approver")
        await page.get_by_label("User (subject)").fill("dana")
        await page.get_by_role("button", name="Use a development token").click()
        await expect(page.locator("#who")).to_have_text("dana · approver · default")
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.locator("#notice")).to_have_text("You are signed out.")
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        await page.context.close()
    assert not csp_errors, csp_errors
