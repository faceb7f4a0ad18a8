"""The whole system as subprocesses (gateway, approvals, dispatchers) against the real backends,
with a webhook sink on 127.0.0.1, isolated by its own database and broker prefix."""

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pj_approvals.settings import DEFAULT_CATALOG
from pj_common.auth import mint_token
from pj_common.broker_access import Service
from tests.support.oidc_provider import Provider
from tests.support.system import (
    System,
    SystemSecrets,
    free_port,
    fresh_database,
    running_system,
    service_env,
)
from tests.support.webhook_sink import SinkState, serving_sink

SECRET = "e2e-jwt-secret-0123456789abcdef0123456789"
SIGNING_KEY = "e2e-dispatch-signing-key-0123456789abcdef"
WEBHOOK_SECRET = "e2e-webhook-secret"
METRICS_TOKEN = "e2e-metrics-token"
ISSUER, AUDIENCE = "puddlejumper", "pj-approval-gate"
CSRF = {"X-PuddleJumper-Request": "true"}


def token(role: str, sub: str, tenant: str, ttl_s: int = 600) -> str:
    return mint_token(SECRET, subject=sub, tenant=tenant, role=role, issuer=ISSUER, audience=AUDIENCE, ttl_s=ttl_s)


def headers(role: str = "admin", sub: str = "alice", tenant: str = "acme", csrf: bool = True) -> dict[str, str]:
    h = {"Authorization": f"Bearer {token(role, sub, tenant)}"}
    return {**h, **CSRF} if csrf else h


async def request_approval(client: httpx.AsyncClient, tenant: str, action: str = "notify.webhook",
                           payload: dict[str, Any] | None = None, *, sub: str = "olga",
                           request_id: str | None = None) -> str:
    """An operator asks for a governed action; returns the pending approval's id (asserts 202)."""
    body: dict[str, Any] = {"actionId": action, "payload": payload or {}}
    if request_id:
        body["requestId"] = request_id
    r = await client.post("/api/pj/execute", json=body, headers=headers("operator", sub, tenant))
    assert r.status_code == 202, r.text
    return str(r.json()["approvalId"])


async def approve(client: httpx.AsyncClient, tenant: str, approval_id: str, sub: str = "alice") -> None:
    """An admin approves (asserts 200)."""
    r = await client.post(f"/api/approvals/{approval_id}/decide", json={"status": "approved"},
                          headers=headers("admin", sub, tenant))
    assert r.status_code == 200, r.text


@pytest.fixture(scope="session")
async def database_url(pg_admin_url: str) -> AsyncIterator[str]:
    """The e2e systems' own database. Their approvals processes run for the whole session, and their
    lease reaper and relays act on every row of their database: another tier's test rows (leases set in
    the past on purpose) must not be theirs to reap."""
    async with fresh_database(pg_admin_url, "pj_e2e") as url:
        yield url


@pytest.fixture(scope="module")
async def module_database(pg_admin_url: str) -> AsyncIterator[str]:
    """A database of the module's own, for a module that starts a system beside the session's: an approvals
    process relays the events of its whole database through one cursor (to its own exchange), and reaps
    every lease in it, so two systems on one database would take each other's events and leases."""
    async with fresh_database(pg_admin_url, "pj_e2e_module") as url:
        yield url


def system_env(database_url: str, amqp_url: str, prefix: str, port: int, webhook_url: str) -> dict[str, str]:
    return service_env(
        database_url=database_url, amqp_url=amqp_url, prefix=prefix, port=port, webhook_url=webhook_url,
        secrets=SystemSecrets(jwt=SECRET, signing_key=SIGNING_KEY, webhook=WEBHOOK_SECRET),
        PJ_DISPATCHER_CONCURRENCY="2",
        PJ_METRICS_TOKEN=METRICS_TOKEN,  # outside dev the gateway serves /metrics only with its token
        # A claim is held by the dispatcher that confirmed it: a killed one's dispatch resumes when the
        # reaper re-issues it after its lease, so the lease is short here (renewed every 2 s).
        PJ_DISPATCH_LEASE_S="10", PJ_LEASE_RENEW_S="2", PJ_REAPER_INTERVAL_S="1")


def verified_by(provider: Provider, env: dict[str, str]) -> dict[str, str]:
    """`env` with the OpenID provider's keys as the one token key source, the console signing in with the
    provider, and metrics ports of its own."""
    env = {k: v for k, v in env.items() if k != "PJ_JWT_SECRET"}
    return {**env, "PJ_JWT_JWKS_URL": provider.jwks_url, "PJ_JWT_ALGORITHMS": "RS256",
            "PJ_JWT_ISSUER": provider.issuer, "PJ_JWT_AUDIENCE": provider.audience,
            "PJ_OIDC_ISSUER": provider.issuer, "PJ_OIDC_CLIENT_ID": provider.client_id,
            "PJ_OIDC_SCOPES": "openid profile pj", "PJ_APPROVALS_METRICS_PORT": str(free_port()),
            "PJ_DISPATCHER_METRICS_PORT": str(free_port())}


@pytest.fixture(scope="session")
def sink() -> Iterator[SinkState]:
    with serving_sink(WEBHOOK_SECRET) as state:
        yield state


# Added to the default catalog for the e2e run: a two-stage rule, and an action whose plan a test changes.
EXTRA_ACTIONS: dict[str, Any] = {
    "release.production": {
        "description": "Two stages: security (approver or admin), then two distinct admins.",
        "approval": {"stages": [
            {"name": "security", "roles": ["approver", "admin"]},
            {"name": "operations", "roles": ["admin"], "approvals_required": 2},
        ]},
        "plan": [{"stepId": "announce", "connector": "webhook", "operation": "post",
                  "params": {"body": "{{ payload }}"}}],
    },
    "notify.launch": {
        "tier": "launch",
        "plan": [{"stepId": "post", "connector": "webhook", "operation": "post", "params": {"body": "{{ payload }}"}}],
    },
    "test.three": {
        "description": "Three webhook steps, for the crash-and-resume test.",
        "plan": [{"stepId": sid, "connector": "webhook", "operation": "post", "params": {"body": sid}}
                 for sid in ("first", "second", "third")],
    },
    "test.replan": {
        "plan": [{"stepId": "first", "connector": "webhook", "operation": "post", "params": {"body": "v1"}}],
    },
}


def write_catalog(path: Path, extra: dict[str, Any]) -> None:
    """The shipped default catalog plus `extra` actions."""
    catalog = yaml.safe_load(DEFAULT_CATALOG.read_text())
    catalog["actions"].update(extra)
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))


@pytest.fixture(scope="session")
async def system(database_url: str, amqp_url: str, sink: SinkState, broker_users: dict[Service, str],
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    """Gateway, approvals and two dispatchers, started once for the e2e session, each connecting to the
    broker as its own user (as `make run` starts them)."""
    prefix = f"pje-{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = system_env(database_url, amqp_url, prefix, port, sink.url)
    catalog = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    write_catalog(catalog, EXTRA_ACTIONS)
    env["PJ_CATALOG"] = str(catalog)
    env["PJ_APPROVALS_METRICS_PORT"] = str(free_port())
    # Both dispatchers are given this port: one serves its metrics, the other logs and works on.
    env["PJ_DISPATCHER_METRICS_PORT"] = str(free_port())
    # Both dispatchers consume before tests share work between them.
    async with running_system(env, amqp_url=amqp_url, logdir=tmp_path_factory.mktemp("e2e-logs"), dispatchers=2,
                              broker_users=broker_users) as system:
        yield system


@pytest.fixture
async def client(system: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as c:
        yield c
