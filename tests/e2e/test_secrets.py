"""No secret and no bearer token ever leaves the system: a full run (execute, decide, dispatch through the
webhook connector, a step whose upstream echoes the connector's token back, a forged and a tampered
token, /health, /metrics with its token and with a wrong one, a 404, 422s), then every service's log and
every answer it gave are searched for each configured secret and each token the run sent."""

import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from pj_common.auth import mint_token
from pj_common.broker_access import Service
from tests.support.local_http import serving
from tests.support.system import System, free_port, running_system
from tests.support.webhook_sink import SinkState, serving_sink

from .conftest import (
    AUDIENCE,
    CSRF,
    EXTRA_ACTIONS,
    ISSUER,
    METRICS_TOKEN,
    SECRET,
    SIGNING_KEY,
    WEBHOOK_SECRET,
    system_env,
    write_catalog,
)

# Connector credentials, each distinct so a hit names the one that leaked.
GITHUB_TOKEN = f"ghp_e2eSecretGithub{uuid.uuid4().hex}"
SLACK_TOKEN = f"xoxb-e2e-secret-slack-{uuid.uuid4().hex}"
MS_CLIENT_SECRET = f"ms-e2e-secret-{uuid.uuid4().hex}"
TENANT, CHANNEL = "default", "C0SECRETS01"

CONFIGURED_SECRETS = {"PJ_JWT_SECRET": SECRET, "PJ_DISPATCH_SIGNING_KEY": SIGNING_KEY,
                      "PJ_WEBHOOK_SECRET": WEBHOOK_SECRET, "PJ_METRICS_TOKEN": METRICS_TOKEN,
                      "GITHUB_DISPATCH_TOKEN": GITHUB_TOKEN, "SLACK_BOT_TOKEN": SLACK_TOKEN,
                      "MS_CLIENT_SECRET": MS_CLIENT_SECRET}

# One step of each API connector, each against an API that echoes back the credentials it was sent.
LEAKY_STEPS: dict[str, dict[str, Any]] = {
    "slack": {"operation": "post_message", "params": {"channel": CHANNEL, "text": "secrets e2e"}},
    "github": {"operation": "create_branch", "params": {"repo": "acme/leaky", "branch": "b", "base": "main"}},
    "sharepoint": {"operation": "create_list_item", "params": {"siteId": "s", "listId": "l", "fields": {"Title": "x"}}},
}
LEAKY_ACTIONS: dict[str, Any] = {
    f"test.leaky-{connector}": {"plan": [{"stepId": "leak", "connector": connector, **step}]}
    for connector, step in LEAKY_STEPS.items()
}


class EchoingApi(BaseHTTPRequestHandler):
    """A hostile upstream: refuses every request with an error that repeats the credentials it got."""

    def _refuse(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        sent = self.rfile.read(length).decode(errors="replace") if length else ""
        echo = f"you sent {self.headers.get('Authorization')} and {sent} to {self.path}"
        # Under every name an API's error detail goes by (Slack, GitHub, Graph, Entra's token endpoint).
        body = json.dumps({"ok": False, "error": "invalid_auth", "detail": echo, "message": echo,
                           "error_description": echo})
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("WWW-Authenticate", f"Bearer error={self.headers.get('Authorization')}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = _refuse

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Run:
    """The answers the run got and the bearer tokens it sent."""

    client: httpx.AsyncClient
    answers: list[tuple[str, str]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def bearer(self, role: str, sub: str = "alice") -> dict[str, str]:
        token = mint_token(SECRET, subject=sub, tenant=TENANT, role=role, issuer=ISSUER, audience=AUDIENCE, ttl_s=600)
        self.tokens.append(token)
        return {"Authorization": f"Bearer {token}", **CSRF}

    def sent(self, token: str) -> dict[str, str]:
        self.tokens.append(token)
        return {"Authorization": f"Bearer {token}", **CSRF}

    async def call(self, label: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.request(method, url, **kwargs)
        self.record(label, response)
        return response

    def record(self, label: str, response: httpx.Response) -> None:
        head = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.answers.append((f"{label} ({response.status_code})", f"{head}\n\n{response.text}"))


@pytest.fixture(scope="module")
def sink() -> Iterator[SinkState]:
    with serving_sink(WEBHOOK_SECRET) as state:
        yield state


@pytest.fixture(scope="module")
def echoing_api() -> Iterator[str]:
    with serving(EchoingApi) as url:
        yield url


@pytest.fixture(scope="module")
async def secret_system(module_database: str, amqp_url: str, sink: SinkState, echoing_api: str,
                        broker_users: dict[Service, str], tmp_path_factory: pytest.TempPathFactory
                        ) -> AsyncIterator[System]:
    """The e2e system (tests/e2e/conftest.py's settings) with every connector's credentials set as well,
    the API connectors pointed at the echoing API, and a log folder of its own."""
    folder = tmp_path_factory.mktemp("secrets")
    write_catalog(folder / "catalog.yaml", {**EXTRA_ACTIONS, **LEAKY_ACTIONS})
    prefix, port = f"pjs-{uuid.uuid4().hex[:10]}", free_port()
    env = system_env(module_database, amqp_url, prefix, port, sink.url)
    env.update({
        "PJ_CATALOG": str(folder / "catalog.yaml"),
        "PJ_DISPATCHER_METRICS_PORT": str(free_port()), "PJ_APPROVALS_METRICS_PORT": str(free_port()),
        "GITHUB_DISPATCH_TOKEN": GITHUB_TOKEN, "PJ_GITHUB_API_URL": echoing_api,
        "SLACK_BOT_TOKEN": SLACK_TOKEN, "PJ_SLACK_API_URL": f"{echoing_api}/api",
        "MS_TENANT_ID": "e2e-tenant", "MS_CLIENT_ID": "e2e-client", "MS_CLIENT_SECRET": MS_CLIENT_SECRET,
        "PJ_GRAPH_API_URL": f"{echoing_api}/v1.0", "PJ_GRAPH_LOGIN_URL": echoing_api,
        "PJ_LOG_LEVEL": "DEBUG",  # the most a service ever writes
    })
    async with running_system(env, amqp_url=amqp_url, logdir=folder, broker_users=broker_users) as system:
        yield system


async def approved(run: Run, action: str, payload: dict[str, Any]) -> str:
    r = await run.call(f"execute {action}", "POST", "/api/pj/execute",
                       json={"actionId": action, "payload": payload}, headers=run.bearer("operator", "olga"))
    assert r.status_code == 202, r.text
    approval_id = str(r.json()["approvalId"])
    r = await run.call(f"decide {action}", "POST", f"/api/approvals/{approval_id}/decide",
                       json={"status": "approved", "note": "ok"}, headers=run.bearer("admin"))
    assert r.status_code == 200, r.text
    return approval_id


async def full_run(run: Run, system: System, sink: SinkState) -> None:
    """Every kind of answer the system gives, each recorded."""
    hook_id = await approved(run, "notify.webhook", {"message": "hello"})
    r = await run.call("dispatch webhook", "POST", f"/api/approvals/{hook_id}/dispatch", json={},
                       headers=run.bearer("admin"))
    assert r.status_code == 200 and r.json()["data"]["approvalStatus"] == "dispatched", r.text
    assert [d.body["approvalId"] for d in sink.deliveries].count(hook_id) == 1

    leaky_ids = []
    for action in LEAKY_ACTIONS:
        leaky_ids.append(leaky_id := await approved(run, action, {}))
        r = await run.call(f"dispatch {action}", "POST", f"/api/approvals/{leaky_id}/dispatch", json={},
                           headers=run.bearer("admin"))
        data = r.json()["data"]
        assert data["approvalStatus"] == "dispatch_failed", r.text
        (step,) = data["dispatchResult"]
        assert "401" in step["error"]["message"] and "you sent" in step["error"]["message"], step  # the echo was read
    paths = [f"/api/approvals/{hook_id}", "/api/approvals?limit=50", "/api/approvals/count/pending"]
    paths += [f"/api/approvals/{i}{part}" for i in leaky_ids for part in ("", "/chain")]
    for path in paths:
        assert (await run.call(f"read {path}", "GET", path, headers=run.bearer("admin"))).status_code == 200

    forged = mint_token("not-the-secret-" + "x" * 40, subject="mallory", tenant=TENANT, role="admin",
                        issuer=ISSUER, audience=AUDIENCE)
    valid = run.bearer("admin")["Authorization"].removeprefix("Bearer ")
    head, claims, signature = valid.split(".")
    tampered = ".".join([head, base64.urlsafe_b64encode(json.dumps(
        {**json.loads(base64.urlsafe_b64decode(claims + "==")), "role": "admin", "tenant": "other"}).encode())
        .decode().rstrip("="), signature])
    for label, token in (("forged", forged), ("tampered", tampered), ("garbage", f"pj-garbage-{uuid.uuid4().hex}")):
        r = await run.call(f"401 {label}", "GET", "/api/approvals", headers=run.sent(token))
        assert r.status_code == 401, r.text

    assert (await run.call("health", "GET", "/health")).status_code == 200
    assert (await run.call("metrics", "GET", "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
            ).status_code == 200
    wrong_metrics = f"pj-wrong-metrics-{uuid.uuid4().hex}"
    r = await run.call("metrics wrong token", "GET", "/metrics", headers=run.sent(wrong_metrics))
    assert r.status_code == 401
    for name in ("PJ_DISPATCHER_METRICS_PORT", "PJ_APPROVALS_METRICS_PORT"):
        r = await run.call(name, "GET", f"http://127.0.0.1:{system.env[name]}/metrics")
        assert r.status_code == 200

    r = await run.call("404", "GET", f"/api/approvals/{uuid.uuid4()}", headers=run.bearer("admin"))
    assert r.status_code == 404, r.text
    r = await run.call("422 execute", "POST", "/api/pj/execute", json={"actionId": 12, "payload": "x"},
                       headers=run.bearer("operator", "olga"))
    assert r.status_code == 422, r.text
    r = await run.call("422 decide", "POST", f"/api/approvals/{hook_id}/decide", json={"status": "maybe"},
                       headers=run.bearer("admin"))
    assert r.status_code == 422, r.text


def hits(text: str, needles: dict[str, str]) -> list[str]:
    """Names of the needles found in `text`."""
    return [name for name, value in needles.items() if value and value in text]


async def test_no_secret_or_bearer_token_appears_in_logs_or_answers(secret_system: System, sink: SinkState) -> None:
    async with httpx.AsyncClient(base_url=secret_system.base_url, timeout=30, trust_env=False) as client:
        run = Run(client)
        await full_run(run, secret_system, sink)
    secret_system.stop_all()  # every log line written and flushed before it is read

    needles = dict(CONFIGURED_SECRETS)
    for i, token in enumerate(run.tokens):
        needles[f"bearer token #{i}"] = token
        needles[f"signature of bearer token #{i}"] = token.rsplit(".", 1)[-1] if token.count(".") == 2 else token
    logs = {path.name: path.read_text(errors="replace") for path in sorted(secret_system.logdir.glob("*.log"))}
    assert {"approvals.log", "dispatcher-1.log", "gateway.log"} <= set(logs)
    assert "dispatch" in logs["dispatcher-1.log"]  # the logs say something: an empty log proves nothing

    leaks = [f"{where}: {name}" for where, text in [*logs.items(), *run.answers] for name in hits(text, needles)]
    assert not leaks, "secrets or tokens found:\n" + "\n".join(leaks)
