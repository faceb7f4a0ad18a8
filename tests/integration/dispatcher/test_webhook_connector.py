"""The signed webhook connector against a real HTTP receiver on 127.0.0.1."""

import datetime
import ssl
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from pj_common.messages import DispatchOrder, PlanStep, StepReport
from pj_dispatcher.connectors.addresses import Resolver, system_resolver
from pj_dispatcher.connectors.base import ConnectorError, StepContext
from pj_dispatcher.connectors.webhook import WebhookConnector
from pj_dispatcher.metrics import DispatcherMetrics
from pj_dispatcher.runner import PlanRunner
from pj_dispatcher.settings import DispatcherSettings
from tests.support.webhook_sink import SinkState, serving_sink, start_sink, verify

SECRET = "webhook-test-secret"


@pytest.fixture
def sink() -> Iterator[SinkState]:
    with serving_sink(SECRET) as state:
        yield state


def context(payload: Any = None, operation: str = "post") -> StepContext:
    step = PlanStep(step_id="notify", connector="webhook", operation=operation, params={"body": payload})
    return StepContext(approval_id="a-1", tenant_id="acme", action_id="notify.webhook", step=step)


def connector(client: httpx.AsyncClient, url: str, allow_private: bool = True,
              resolve: Resolver = system_resolver) -> WebhookConnector:
    return WebhookConnector(client, url=url, secret=SecretStr(SECRET), allow_private=allow_private, resolve=resolve)


async def run_one_step(settings: DispatcherSettings, hook: Any, approval_id: str, body: str,
                       metrics: DispatcherMetrics | None = None) -> StepReport:
    """Run a one-step webhook plan through the runner (its retry loop) and return the final report."""
    reports: list[StepReport] = []

    async def publish(report: StepReport) -> None:
        reports.append(report)

    order = DispatchOrder(approval_id=approval_id, tenant_id="acme", action_id="notify.webhook", claim_token="c",
                          steps=[context(body).step])
    await PlanRunner(settings, {"webhook": hook}, publish_report=publish, metrics=metrics).run_order(order)
    (final,) = reports
    return final


async def test_posts_a_signed_body_with_the_idempotency_key(sink: SinkState) -> None:
    async with httpx.AsyncClient() as client:
        out = await connector(client, sink.url).run(context({"x": 1}))
    assert out.http_status == 200 and out.result == {"status": 200}
    (delivery,) = sink.deliveries
    assert delivery.signature_ok
    assert delivery.body == {"approvalId": "a-1", "actionId": "notify.webhook", "payload": {"x": 1}}
    assert delivery.headers["Idempotency-Key"] == "a-1:notify"
    assert abs(int(delivery.headers["X-PJ-Timestamp"]) - time.time()) < 5
    assert verify(SECRET, delivery.headers["X-PJ-Timestamp"], b'{"approvalId":"a-1","actionId":"notify.webhook",'
                  b'"payload":{"x":1}}', delivery.headers["X-PJ-Signature"])


async def test_redelivery_sends_the_same_idempotency_key(sink: SinkState) -> None:
    async with httpx.AsyncClient() as client:
        hook = connector(client, sink.url)
        await hook.run(context("once"))
        await hook.run(context("once"))
    keys = {d.headers["Idempotency-Key"] for d in sink.deliveries}
    assert keys == {"a-1:notify"}  # the receiver sees one effect, delivered twice


async def test_client_errors_are_permanent(sink: SinkState) -> None:
    sink.fail_next = [400]
    async with httpx.AsyncClient() as client:
        with pytest.raises(ConnectorError) as err:
            await connector(client, sink.url).run(context())
    assert not err.value.retryable and err.value.http_status == 400


async def test_rate_limit_is_retryable_with_the_servers_delay(sink: SinkState) -> None:
    sink.fail_next, sink.retry_after = [429], "7"
    async with httpx.AsyncClient() as client:
        with pytest.raises(ConnectorError) as err:
            await connector(client, sink.url).run(context())
    assert err.value.retryable and err.value.retry_after == 7.0 and err.value.http_status == 429


async def test_runner_retries_server_errors_then_succeeds(sink: SinkState) -> None:
    sink.fail_next, sink.retry_after = [503, 502], "0"
    settings = DispatcherSettings(env="dev", PJ_CONNECTOR_RETRY_BASE_S=0.01)
    async with httpx.AsyncClient() as client:
        final = await run_one_step(settings, connector(client, sink.url), "a-2", "r")
    assert final.plan_status == "dispatched"
    assert final.step.attempts == 3 and final.step.status == "succeeded"
    assert sink.attempts == 3 and len(sink.deliveries) == 1


async def test_slow_receiver_times_out_as_retryable(sink: SinkState) -> None:
    sink.delay_s = 1.0
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.2)) as client:
        with pytest.raises(ConnectorError) as err:
            await connector(client, sink.url).run(context())
    assert err.value.retryable and err.value.code == "network_error"


async def test_redirects_are_refused_not_followed(sink: SinkState) -> None:
    sink.redirect_to = "http://127.0.0.1:9/elsewhere"
    async with httpx.AsyncClient(follow_redirects=False) as client:
        with pytest.raises(ConnectorError) as err:
            await connector(client, sink.url).run(context())
    assert err.value.code == "redirect_refused" and not err.value.retryable
    assert sink.deliveries == []


async def test_private_targets_are_refused_unless_allowed(sink: SinkState) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(ConnectorError) as err:
            await connector(client, sink.url, allow_private=False).run(context())
        assert err.value.code == "target_not_allowed" and sink.attempts == 0
        for url in ("http://10.1.2.3/x", "http://169.254.169.254/latest", "http://[::1]:8080/", "http://0.0.0.0/",
                    "http://100.64.0.1/cgnat", "http://[::ffff:127.0.0.1]/", "http://[2002:a9fe:a9fe::]/",
                    "http://[64:ff9b::a9fe:a9fe]/", "http://[fd00::1]/", "http://[fe80::1]/", "http://224.0.0.1/",
                    "http://2130706433/"):  # 127.0.0.1 spelled as one number: judged by what it resolves to
            with pytest.raises(ConnectorError) as err:
                await connector(client, url, allow_private=False).run(context())
            assert err.value.code == "target_not_allowed" and not err.value.retryable, url


async def test_a_name_is_judged_by_what_it_resolves_to(sink: SinkState) -> None:
    """`localhost` by name, through the system resolver: refused; allowed in dev, it reaches the sink."""
    by_name = sink.url.replace("127.0.0.1", "localhost")
    async with httpx.AsyncClient() as client:
        with pytest.raises(ConnectorError) as err:
            await connector(client, by_name, allow_private=False).run(context())
        assert err.value.code == "target_not_allowed" and "loopback" in err.value.message
        assert sink.attempts == 0
        await connector(client, by_name, allow_private=True).run(context("by name"))
    (delivery,) = sink.deliveries
    assert delivery.headers["Host"] == by_name.split("/")[2]  # the URL's host and port, not the address


class Rebinding:
    """A DNS answer that changes after the first lookup, as a rebinding attacker's server does: the first
    answer is the sink's address, every later one an address where nothing listens."""

    def __init__(self, first: Sequence[str], later: Sequence[str]) -> None:
        self.first, self.later = first, later
        self.lookups = 0

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups += 1
        return self.first if self.lookups == 1 else self.later


async def test_the_connection_goes_to_the_address_that_was_resolved_once(sink: SinkState) -> None:
    port = sink.url.split(":")[2].split("/")[0]
    resolver = Rebinding(["127.0.0.1"], ["127.0.0.2"])  # the sink listens on 127.0.0.1 only
    async with httpx.AsyncClient() as client:
        await connector(client, f"http://hook.pj.invalid:{port}/hook", resolve=resolver).run(context("pinned"))
    assert resolver.lookups == 1  # a second lookup would have sent the request to 127.0.0.2
    (delivery,) = sink.deliveries
    assert delivery.headers["Host"] == f"hook.pj.invalid:{port}" and delivery.signature_ok


async def test_an_address_that_refuses_the_connection_gives_way_to_the_next_checked_one(sink: SinkState) -> None:
    port = sink.url.split(":")[2].split("/")[0]
    resolver = Rebinding(["127.0.0.2", "127.0.0.1"], ["127.0.0.3"])
    async with httpx.AsyncClient() as client:
        await connector(client, f"http://hook.pj.invalid:{port}/hook", resolve=resolver).run(context())
    assert resolver.lookups == 1 and len(sink.deliveries) == 1


def certificate_for(name: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate valid for the DNS name `name` only (no IP address), and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "hook.crt", directory / "hook.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


async def test_https_keeps_the_name_for_sni_and_the_certificate_check(tmp_path: Path) -> None:
    """Connected to the checked address, TLS still names the URL's host: the server sees it as SNI, and
    the certificate (valid for that name only, not for 127.0.0.1) is verified against it."""
    name = "hook.pj.test"
    cert_file, key_file = certificate_for(name, tmp_path)
    server_names: list[str | None] = []
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_file, key_file)

    def record_server_name(sock: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        server_names.append(server_name)

    server_tls.sni_callback = record_server_name
    server, state = start_sink(SECRET)
    server.socket = server_tls.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    try:
        trusting = ssl.create_default_context(cafile=str(cert_file))
        async with httpx.AsyncClient(verify=trusting) as client:
            resolver = Rebinding(["127.0.0.1"], ["127.0.0.2"])
            await connector(client, f"https://{name}:{port}/hook", resolve=resolver).run(context("tls"))
        async with httpx.AsyncClient(verify=trusting) as client:  # a new pool: no connection made by name
            with pytest.raises(ConnectorError) as err:  # by address, the same certificate does not verify
                await connector(client, f"https://127.0.0.1:{port}/hook").run(context())
            assert "CERTIFICATE_VERIFY_FAILED" in err.value.message
    finally:
        server.shutdown()
        server.server_close()
    assert server_names[0] == name and resolver.lookups == 1
    (delivery,) = state.deliveries
    assert delivery.headers["Host"] == f"{name}:{port}"


async def test_missing_settings_are_named() -> None:
    async with httpx.AsyncClient() as client:
        unset = WebhookConnector(client, url=None, secret=None, allow_private=False)
        assert unset.missing_settings() == ["PJ_WEBHOOK_URL", "PJ_WEBHOOK_SECRET"]


async def test_a_crashing_connector_never_leaks_a_secret_into_the_result() -> None:
    class Leaky:
        name = "webhook"

        def missing_settings(self) -> list[str]:
            return []

        async def run(self, ctx: StepContext) -> Any:
            raise RuntimeError(f"boom with {SECRET} inside")

    settings = DispatcherSettings(env="dev", webhook_secret=SECRET)
    final = await run_one_step(settings, Leaky(), "a-3", "x")
    assert final.plan_status == "dispatch_failed" and final.step.error is not None
    assert final.step.error.code == "connector_error"
    assert SECRET not in final.step.error.message and "***" in final.step.error.message


async def test_per_connector_attempt_limit(sink: SinkState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_CONNECTOR_ATTEMPTS", '{"webhook": 2}')
    settings = DispatcherSettings(env="dev", PJ_CONNECTOR_RETRY_BASE_S=0.01)
    sink.fail_next, sink.retry_after = [503, 503, 503], "0"
    async with httpx.AsyncClient() as client:
        final = await run_one_step(settings, connector(client, sink.url), "a-4", "r")
    assert final.plan_status == "dispatch_failed" and final.step.attempts == 2 and sink.attempts == 2


async def test_runner_counts_steps_retries_and_durations(sink: SinkState) -> None:
    sink.fail_next, sink.retry_after = [503], "0"
    metrics = DispatcherMetrics()
    settings = DispatcherSettings(env="dev", PJ_CONNECTOR_RETRY_BASE_S=0.01)
    async with httpx.AsyncClient() as client:
        final = await run_one_step(settings, connector(client, sink.url), "a-5", "m", metrics)
    assert final.plan_status == "dispatched"
    sample = metrics.registry.get_sample_value
    assert sample("dispatch_steps_total", {"connector": "webhook", "status": "succeeded"}) == 1
    assert sample("dispatch_step_retries_total", {"connector": "webhook"}) == 1
    assert sample("dispatch_step_seconds_count", {"connector": "webhook"}) == 1
