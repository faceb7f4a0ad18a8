"""GET /health, GET /metrics and the offline /docs, through the gateway."""

import re
from urllib.parse import urljoin, urlsplit

import aio_pika
import pytest

from pj_common.messages import ComponentHealth, HealthReport, MetricsText

from .conftest import FakeApprovals, Gateway, GatewayFactory, ok


async def test_health_is_ok_when_everything_answers(gateway: Gateway, approvals: FakeApprovals) -> None:
    approvals.answer("health", ok(HealthReport(database=ComponentHealth(status="ok"))))
    body = (await gateway.client.get("/health")).json()
    checks = body["checks"]
    assert checks["broker"] == {"status": "ok"} and checks["approvals"] == {"status": "ok"}
    assert checks["database"] == {"status": "ok"}
    assert checks["dispatchers"]["status"] == "degraded" and checks["dispatchers"]["consumers"] == 0
    assert checks["notifier"]["status"] == "unknown"  # none ever ran here: optional, not a fault
    assert body["status"] == "degraded"  # no dispatcher consumes in this test


async def test_health_shows_the_notifier_by_its_queue(gateway: Gateway, approvals: FakeApprovals,
                                                      amqp_url: str) -> None:
    approvals.answer("health", ok(HealthReport(database=ComponentHealth(status="ok"))))
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        name = gateway.state.topology.notifier
        queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        try:
            waiting = (await gateway.client.get("/health")).json()["checks"]["notifier"]
            assert waiting == {"status": "degraded", "consumers": 0, "queueDepth": 0}  # notifications would wait
            async def notify(_: aio_pika.abc.AbstractIncomingMessage) -> None:
                pass

            tag = await queue.consume(notify)
            checks = (await gateway.client.get("/health")).json()["checks"]
            assert checks["notifier"]["status"] == "ok" and checks["notifier"]["consumers"] == 1
            assert checks["dispatchers"]["consumers"] == 0  # read on the same channel after the notifier's
            await queue.cancel(tag)
        finally:
            await channel.queue_delete(name)


async def test_health_lists_the_database_as_unknown_when_approvals_does_not_answer(gateway: Gateway) -> None:
    r = await gateway.client.get("/health")
    assert r.status_code == 200
    checks = r.json()["checks"]
    assert checks["approvals"]["status"] == "error"
    assert checks["database"]["status"] == "unknown"
    assert set(checks) == {"broker", "approvals", "database", "dispatchers", "notifier"}


async def test_health_lists_every_check_when_the_broker_is_gone(gateway: Gateway) -> None:
    gateway.state.rpc.detach()
    r = await gateway.client.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "error"
    checks = r.json()["checks"]
    assert checks["broker"]["status"] == "error"
    assert {checks[name]["status"] for name in ("approvals", "database", "dispatchers", "notifier")} == {"unknown"}


async def test_metrics_token_from_the_runbooks_name_closes_metrics(
        approvals: FakeApprovals, gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    approvals.answer("metrics", ok(MetricsText(text="approvals_created_total 0\n")))
    monkeypatch.setenv("METRICS_TOKEN", "scrape-me")
    monkeypatch.delenv("PJ_METRICS_TOKEN", raising=False)
    async with gateway_factory() as gateway:
        r = await gateway.client.get("/metrics")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"] == "Bearer"
        r = await gateway.client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert r.status_code == 200 and "approvals_created_total 0" in r.text
        assert "pj_gateway_requests_total" in r.text


@pytest.mark.parametrize(("env", "status"), [("prod", 401), ("dev", 200)])
async def test_metrics_need_a_token_outside_dev(
        approvals: FakeApprovals, gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch,
        env: str, status: int) -> None:
    """No token configured: a production gateway keeps /metrics closed; only dev serves it open."""
    approvals.answer("metrics", ok(MetricsText(text="approvals_created_total 0\n")))
    for name in ("PJ_METRICS_TOKEN", "METRICS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    async with gateway_factory(env=env) as gateway:
        r = await gateway.client.get("/metrics", headers={"Authorization": "Bearer anything"})
        assert r.status_code == status, r.text
        if status == 401:
            assert r.json()["error"]["code"] == "unauthorized" and "PJ_METRICS_TOKEN" in r.json()["error"]["message"]
            assert "approvals_created_total" not in r.text


ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


def _asset_urls(html: str) -> list[str]:
    """Every URL a docs page loads: scripts, styles, icons, and the OpenAPI document it reads."""
    return [tag or spec for tag, spec in ASSET.findall(html) if not (tag or spec).startswith(("#", "data:"))]


async def test_docs_load_every_asset_from_the_gateway(gateway: Gateway) -> None:
    for page in ("/docs", "/redoc"):
        r = await gateway.client.get(page)
        assert r.status_code == 200
        urls = _asset_urls(r.text)
        assert any(u.endswith(".js") for u in urls), urls
        for url in urls:
            absolute = urljoin(f"http://gateway{page}", url)
            assert urlsplit(absolute).netloc == "gateway", f"{page} loads {url} from elsewhere"
            asset = await gateway.client.get(absolute)
            assert asset.status_code == 200, url
            assert asset.content, url
