"""Authorization on every object: every HTTP route of the gateway and every AMQP command, tried by
every kind of caller, against a real system (gateway, approvals, a dispatcher, PostgreSQL, RabbitMQ).

The expected answers are written out below, one row per route or command and one column per caller.
The routes come from the running gateway's /openapi.json and the commands from the contract's
`Command` union, so a new route or command without a row fails the test. Every mismatch of a run is
listed at once, as `route: caller expected X, got Y`.
"""

import asyncio
import importlib
import json
import pkgutil
import typing
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import httpx
import pytest
import yaml
from fastapi.routing import APIRoute

import pj_gateway.routes as gateway_routers
from pj_approvals.catalog import Catalog
from pj_approvals.settings import DEFAULT_CATALOG
from pj_common.auth import Role
from pj_common.broker_access import Service
from pj_common.messages import (
    ApprovalEvent,
    CheckHealth,
    Command,
    CommandEnvelope,
    CountPending,
    DecideRequest,
    DispatchRequest,
    ExecuteRequest,
    GetApproval,
    GetChain,
    GetDispatchPlan,
    ListApprovals,
    OnBehalf,
    ReadMetrics,
    RenewLease,
    Reply,
)
from pj_common.topology import Topology
from pj_common.transport import RpcClient
from tests.e2e.conftest import CSRF, METRICS_TOKEN, SECRET, SIGNING_KEY, WEBHOOK_SECRET, token
from tests.support.system import (
    System,
    SystemSecrets,
    free_port,
    fresh_database,
    running_system,
    service_env,
)
from tests.support.webhook_sink import SinkState

ACTION = "matrix.request"
SERVICE_SUBJECT = "report-bot"
# The service may read, request and decide on behalf of people for acme, nothing else (approvals
# enforces it on every command).
SERVICE_GRANT = {"commands": ["execute", "list_approvals", "get_approval", "get_chain", "count_pending",
                              "decide_on_behalf"],
                 "tenants": ["acme"]}


@dataclass(frozen=True)
class Actor:
    """One kind of caller: a role in a tenant, or nobody (no token)."""

    role: str | None
    sub: str = ""
    tenant: str = ""

    def token(self) -> str | None:
        return None if self.role is None else token(self.role, self.sub, self.tenant)

    def headers(self) -> dict[str, str]:
        bearer = self.token()
        return {**CSRF, **({"Authorization": f"Bearer {bearer}"} if bearer else {})}


# The columns of every row below, in this order. Every approval tried is requested by `owner`.
ACTORS: dict[str, Actor] = {
    "nobody": Actor(None),
    "admin": Actor("admin", "alice", "acme"),
    "approver": Actor("approver", "april", "acme"),  # the catalog's other deciding role
    "owner": Actor("operator", "olga", "acme"),  # requested the approval
    "operator": Actor("operator", "oscar", "acme"),  # another user of the same tenant
    "viewer": Actor("viewer", "vera", "acme"),
    "service": Actor("service", SERVICE_SUBJECT, "acme"),
    "service_elsewhere": Actor("service", SERVICE_SUBJECT, "globex"),  # a tenant its grant does not name
    "other_tenant": Actor("admin", "alice", "globex"),  # the same subject and the strongest role, another tenant
    "unlisted": Actor("admin", "ann", "initech"),  # a tenant the catalog does not list
}

# HTTP status per route and caller.
# Columns: nobody, admin, approver, owner, operator, viewer, service, service_elsewhere, other_tenant, unlisted.
HTTP_MATRIX: dict[str, tuple[int, ...]] = {
    "GET /health":                              (200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    # Only PJ_METRICS_TOKEN opens /metrics (outside dev): no user token does.
    "GET /metrics":                             (401, 401, 401, 401, 401, 401, 401, 401, 401, 401),
    "GET /console/config.json":                 (200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    # No identity provider configured: there is no token endpoint to pass a grant to.
    "POST /console/auth/token":                 (404, 404, 404, 404, 404, 404, 404, 404, 404, 404),
    "GET /console/me":                          (401, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    # Development tokens exist only in PJ_ENV=dev: never here, whoever asks.
    "POST /console/dev-token":                  (404, 404, 404, 404, 404, 404, 404, 404, 404, 404),
    "GET /api/events":                          (401, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    # Routes outside the OpenAPI document. The console's page and assets are public files.
    "GET /console":                             (308, 308, 308, 308, 308, 308, 308, 308, 308, 308),
    "GET /console/":                            (200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET /console/assets/{name}":               (200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    # Slack's buttons: only a request Slack signed counts, and no signing secret is configured here.
    # A bearer token, even an admin's, opens nothing.
    "POST /api/slack/interactions":             (401, 401, 401, 401, 401, 401, 401, 401, 401, 401),
    "POST /api/pj/execute":                     (401, 202, 403, 202, 202, 403, 202, 403, 202, 422),
    "GET /api/approvals":                       (401, 200, 200, 200, 200, 200, 200, 403, 200, 200),
    "GET /api/approvals/count/pending":         (401, 200, 200, 200, 200, 200, 200, 403, 200, 200),
    "GET /api/approvals/{approval_id}":         (401, 200, 200, 200, 404, 200, 404, 403, 404, 404),
    "GET /api/approvals/{approval_id}/chain":   (401, 200, 200, 200, 404, 200, 404, 403, 404, 404),
    "POST /api/approvals/{approval_id}/decide": (401, 200, 200, 403, 404, 403, 403, 403, 404, 404),
    # Only an admin dispatches: any other role is refused before the approval is looked up.
    "POST /api/approvals/{approval_id}/dispatch": (401, 200, 403, 403, 403, 403, 403, 403, 404, 404),
}

# Who finds the owner's approval in the list (and in the pending count): exactly who may read it.
LIST_SHOWS = frozenset({"admin", "approver", "owner", "viewer"})

# The reply to each command sent straight to the commands queue: ok, or the error code.
OK, UNAUTH, FORBID, GONE, NO_TENANT = "ok", "unauthorized", "forbidden", "not_found", "tenant_not_configured"
# Columns as above.
AMQP_MATRIX: dict[str, tuple[str, ...]] = {
    "health":            (OK, OK, OK, OK, OK, OK, OK, OK, OK, OK),
    "metrics":           (OK, OK, OK, OK, OK, OK, OK, OK, OK, OK),
    # Dispatchers' requests: taken on the leases queue only (whose inlet only dispatchers' broker user
    # may write to), whoever sends them here. There, the claim token they carry authorizes them.
    "get_dispatch_plan": (FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, FORBID),
    "renew_lease":       (FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, FORBID),
    "execute":           (UNAUTH, OK, FORBID, OK, OK, FORBID, OK, FORBID, OK, NO_TENANT),
    "list_approvals":    (UNAUTH, OK, OK, OK, OK, OK, OK, FORBID, OK, OK),
    "count_pending":     (UNAUTH, OK, OK, OK, OK, OK, OK, FORBID, OK, OK),
    "get_approval":      (UNAUTH, OK, OK, OK, GONE, OK, GONE, FORBID, GONE, GONE),
    "get_chain":         (UNAUTH, OK, OK, OK, GONE, OK, GONE, FORBID, GONE, GONE),
    "decide":            (UNAUTH, OK, OK, FORBID, GONE, FORBID, FORBID, FORBID, GONE, GONE),
    "dispatch":          (UNAUTH, OK, FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, GONE, GONE),
}

# A decision sent with `onBehalf` (what the gateway's Slack buttons send): only a service identity whose
# grant names decide_on_behalf and the person's tenant may; the person then meets every rule.
ON_BEHALF: dict[str, OnBehalf] = {
    "decide for acme's approver": OnBehalf(subject="april", role=Role.APPROVER, tenant="acme", via="slack"),
    "decide for globex's admin": OnBehalf(subject="alice", role=Role.ADMIN, tenant="globex", via="slack"),
    "decide for the requester": OnBehalf(subject="olga", role=Role.ADMIN, tenant="acme", via="slack"),
}
ON_BEHALF_MATRIX: dict[str, tuple[str, ...]] = {
    "decide for acme's approver": (UNAUTH, FORBID, FORBID, FORBID, FORBID, FORBID, OK, FORBID, FORBID, FORBID),
    "decide for globex's admin":  (UNAUTH, FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, FORBID),
    "decide for the requester":   (UNAUTH, FORBID, FORBID, FORBID, FORBID, FORBID, "self_approval_forbidden",
                                   FORBID, FORBID, FORBID),
}


def test_every_role_and_every_deciding_role_of_the_catalogs_has_a_column() -> None:
    """A new role, or a catalog deciding with a role nobody tries, needs a column first."""
    roles = {actor.role for actor in ACTORS.values()}
    assert roles >= set(Role)
    for catalog in (yaml.safe_load(DEFAULT_CATALOG.read_text()), matrix_catalog()):
        for action in Catalog.model_validate(catalog).actions.values():
            assert {role for stage in action.approval.stages for role in stage.roles} <= roles


def matrix_catalog() -> dict[str, Any]:
    """The shipped catalog with its tenants listed (unlisted ones refused) and an action that services,
    admins and operators may request and that approvers or admins decide."""
    catalog = yaml.safe_load(DEFAULT_CATALOG.read_text())
    catalog["unlisted_tenants"] = "refuse"
    catalog["tenants"].update({"acme": {}, "globex": {}})
    catalog["actions"][ACTION] = {
        "requesters": ["admin", "operator", "service"],
        "approval": {"roles": ["approver", "admin"]},
        "plan": [{"stepId": "post", "connector": "webhook", "operation": "post", "params": {"body": "{{ payload }}"}}],
    }
    return catalog


@pytest.fixture(scope="module")
async def matrix_system(pg_admin_url: str, amqp_url: str, sink: SinkState, broker_users: dict[Service, str],
                        tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    """Gateway, approvals and one dispatcher with their own database, the service identity configured
    and the gateway's rate limits out of the way (the matrix sends hundreds of requests from one address)."""
    folder = tmp_path_factory.mktemp("authz")
    (folder / "catalog.yaml").write_text(yaml.safe_dump(matrix_catalog(), sort_keys=False))
    prefix = f"pjz-{uuid.uuid4().hex[:10]}"
    port = free_port()
    async with fresh_database(pg_admin_url, "pj_authz") as database_url:
        env = service_env(
            database_url=database_url, amqp_url=amqp_url, prefix=prefix, port=port, webhook_url=sink.url,
            secrets=SystemSecrets(jwt=SECRET, signing_key=SIGNING_KEY, webhook=WEBHOOK_SECRET),
            PJ_CATALOG=str(folder / "catalog.yaml"), PJ_METRICS_TOKEN=METRICS_TOKEN,
            PJ_SERVICE_PRINCIPALS=json.dumps({SERVICE_SUBJECT: SERVICE_GRANT}),
            PJ_RATE_LIMIT_PER_MIN="100000", PJ_AUTH_FAILURES_PER_MIN="100000",
            PJ_CONNECTOR_ALLOW_HTTP="1")  # the webhook sink is plain HTTP on this host
        async with running_system(env, amqp_url=amqp_url, logdir=folder, broker_users=broker_users) as system:
            yield system


@pytest.fixture
async def http(matrix_system: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=matrix_system.base_url, timeout=20, trust_env=False) as client:
        yield client


async def pending(http: httpx.AsyncClient) -> str:
    """A new pending approval of acme, requested by `owner`."""
    r = await http.post("/api/pj/execute", json={"actionId": ACTION, "payload": {"n": uuid.uuid4().hex}},
                        headers=ACTORS["owner"].headers())
    assert r.status_code == 202, r.text
    return str(r.json()["approvalId"])


async def approved(http: httpx.AsyncClient) -> str:
    """A new approval of acme, requested by `owner` and approved by `approver`."""
    approval_id = await pending(http)
    r = await http.post(f"/api/approvals/{approval_id}/decide", json={"status": "approved"},
                        headers=ACTORS["approver"].headers())
    assert r.status_code == 200, r.text
    return approval_id


def mismatches(expected: dict[str, tuple[Any, ...]], got: dict[str, dict[str, Any]]) -> list[str]:
    return [f"{row}: {actor} expected {want}, got {got[row][actor]}"
            for row, wants in expected.items() for actor, want in zip(ACTORS, wants, strict=True)
            if got[row][actor] != want]


# ---------------------------------------------------------------- HTTP

Call = Callable[[httpx.AsyncClient, Actor, str], Awaitable[httpx.Response]]


async def _events(http: httpx.AsyncClient, actor: Actor, _: str) -> httpx.Response:
    # A stream that was let in stays open: its status is all this needs.
    async with http.stream("GET", "/api/events", headers=actor.headers()) as response:
        return response


def _get(path: str) -> Call:
    return lambda http, actor, approval_id: http.get(path.format(approval_id=approval_id), headers=actor.headers())


def _post(path: str, body: dict[str, Any]) -> Call:
    return lambda http, actor, approval_id: http.post(path.format(approval_id=approval_id), json=body,
                                                      headers=actor.headers())


# How each route is tried, and which approval it is given: one readable by the tenant, or a fresh one
# in the state the route acts on (so each caller meets the same object, never one changed by another).
HTTP_CALLS: dict[str, tuple[Call, str]] = {
    "GET /health": (_get("/health"), "shared"),
    "GET /metrics": (_get("/metrics"), "shared"),
    "GET /console/config.json": (_get("/console/config.json"), "shared"),
    "POST /console/auth/token": (_post("/console/auth/token", {
        "grant_type": "authorization_code", "code": "c", "code_verifier": "v" * 43,
        "redirect_uri": "http://127.0.0.1/console/"}), "shared"),
    "GET /console/me": (_get("/console/me"), "shared"),
    "POST /console/dev-token": (_post("/console/dev-token", {"role": "admin", "sub": "mallory", "tenant": "acme"}),
                                "shared"),
    "GET /api/events": (_events, "shared"),
    "GET /console": (_get("/console"), "shared"),
    "GET /console/": (_get("/console/"), "shared"),
    "GET /console/assets/{name}": (_get("/console/assets/app.js"), "shared"),
    "POST /api/slack/interactions": (lambda http, actor, approval_id: http.post(
        "/api/slack/interactions", headers=actor.headers(),
        data={"payload": json.dumps({"type": "block_actions", "actions": [
            {"action_id": "approve", "value": approval_id}]})}), "shared"),
    "POST /api/pj/execute": (lambda http, actor, _: http.post(
        "/api/pj/execute", json={"actionId": ACTION, "payload": {"n": uuid.uuid4().hex}},
        headers=actor.headers()), "shared"),
    "GET /api/approvals": (_get("/api/approvals?limit=200"), "shared"),
    "GET /api/approvals/count/pending": (_get("/api/approvals/count/pending"), "shared"),
    "GET /api/approvals/{approval_id}": (_get("/api/approvals/{approval_id}"), "shared"),
    "GET /api/approvals/{approval_id}/chain": (_get("/api/approvals/{approval_id}/chain"), "shared"),
    "POST /api/approvals/{approval_id}/decide": (_post("/api/approvals/{approval_id}/decide",
                                                       {"status": "approved"}), "pending"),
    "POST /api/approvals/{approval_id}/dispatch": (_post("/api/approvals/{approval_id}/dispatch", {}), "approved"),
}


def gateway_routes() -> set[str]:
    """Every route of the gateway's routers, those left out of the OpenAPI document included."""
    found = set()
    for module in pkgutil.iter_modules(gateway_routers.__path__):
        router = importlib.import_module(f"{gateway_routers.__name__}.{module.name}").router
        for route in router.routes:
            if isinstance(route, APIRoute):
                found |= {f"{method} {route.path}" for method in route.methods if method != "HEAD"}
    return found


async def test_every_route_has_a_row(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    documented = {f"{method.upper()} {path}" for path, operations in spec["paths"].items() for method in operations}
    routes = gateway_routes()
    assert documented <= routes  # the app serves nothing but its routers' routes (and its own docs)
    assert routes == set(HTTP_MATRIX) == set(HTTP_CALLS)


async def test_every_route_as_every_caller(http: httpx.AsyncClient) -> None:
    shared = await pending(http)
    got: dict[str, dict[str, Any]] = {}
    listed: dict[str, bool] = {}
    for row, (call, needs) in HTTP_CALLS.items():
        got[row] = {}
        for name, actor in ACTORS.items():
            approval_id = shared if needs == "shared" else await (pending if needs == "pending" else approved)(http)
            response = await call(http, actor, approval_id)
            got[row][name] = response.status_code
            if row == "GET /api/approvals" and response.status_code == 200:
                listed[name] = shared in {a["id"] for a in response.json()["data"]["approvals"]}
    assert mismatches(HTTP_MATRIX, got) == []
    assert {name for name, seen in listed.items() if seen} == LIST_SHOWS


async def test_the_pending_count_counts_only_what_the_caller_may_read(http: httpx.AsyncClient) -> None:
    """One more pending approval of acme moves the count of exactly those who may read it."""
    async def counts() -> dict[str, int]:
        found = {}
        for name, actor in ACTORS.items():
            r = await http.get("/api/approvals/count/pending", headers=actor.headers())
            if r.status_code == 200:
                found[name] = r.json()["data"]["pendingCount"]
        return found

    before = await counts()
    await pending(http)
    after = await counts()
    assert {name for name in after if after[name] != before[name]} == LIST_SHOWS


async def _approvals_seen(http: httpx.AsyncClient, actor: Actor, ready: asyncio.Event, seen: set[str], *,
                         arrived: asyncio.Event, until: float) -> None:
    """Read the caller's event stream until `until`, adding every approval id it is shown to `seen`
    (and setting `arrived`)."""
    async with http.stream("GET", "/api/events", headers=actor.headers()) as response:
        assert response.status_code == 200
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
                if event == "ready":
                    ready.set()
            elif line.startswith("data:") and event == "approval":
                seen.add(ApprovalEvent.model_validate_json(line.partition(":")[2]).approval_id)
                arrived.set()
            if asyncio.get_running_loop().time() > until:
                return


async def test_the_event_stream_shows_an_approval_to_exactly_who_may_read_it(http: httpx.AsyncClient) -> None:
    """Every caller with a token listens; one approval of acme is requested: only its readers hear of it,
    never another tenant, an operator who did not request it or a service."""
    listeners = {name: actor for name, actor in ACTORS.items() if actor.role is not None}
    ready = {name: asyncio.Event() for name in listeners}
    seen: dict[str, set[str]] = {name: set() for name in listeners}
    arrived = asyncio.Event()
    until = asyncio.get_running_loop().time() + 20
    readers = [asyncio.create_task(_approvals_seen(http, actor, ready[name], seen[name], arrived=arrived,
                                                   until=until))
               for name, actor in listeners.items()]
    try:
        async with asyncio.timeout(5):
            await asyncio.gather(*(event.wait() for event in ready.values()))
        approval_id = await pending(http)
        async with asyncio.timeout(10):  # the event relay looks every 0.2 s: ample on a busy machine
            while True:
                arrived.clear()
                if all(approval_id in seen[name] for name in LIST_SHOWS):
                    break
                await arrived.wait()
        # Those who may read it have it: time enough for one who may not to be shown it all the same.
        await asyncio.sleep(1)
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    assert {name for name in listeners if approval_id in seen[name]} == LIST_SHOWS


# ---------------------------------------------------------------- AMQP, straight to the commands queue

# The command each row sends; `{id}` is its approval's id.
AMQP_COMMANDS: dict[str, tuple[Callable[[str], Any], str]] = {
    "health": (lambda _: CheckHealth(), "shared"),
    "metrics": (lambda _: ReadMetrics(), "shared"),
    "get_dispatch_plan": (lambda i: GetDispatchPlan(approval_id=i, claim_token=str(uuid.uuid4()), holder="x"),
                          "shared"),
    "renew_lease": (lambda i: RenewLease(approval_id=i, claim_token=str(uuid.uuid4()), holder="x"), "shared"),
    "execute": (lambda _: ExecuteRequest(action_id=ACTION, payload={"n": uuid.uuid4().hex}), "shared"),
    "list_approvals": (lambda _: ListApprovals(), "shared"),
    "count_pending": (lambda _: CountPending(), "shared"),
    "get_approval": (lambda i: GetApproval(approval_id=i), "shared"),
    "get_chain": (lambda i: GetChain(approval_id=i), "shared"),
    "decide": (lambda i: DecideRequest(approval_id=i, status="approved"), "pending"),
    "dispatch": (lambda i: DispatchRequest(approval_id=i), "approved"),
}


def command_names() -> set[str]:
    union = typing.get_args(Command)[0]
    return {member.model_fields["name"].default for member in typing.get_args(union)}


def test_every_command_has_a_row() -> None:
    assert command_names() == set(AMQP_MATRIX) == set(AMQP_COMMANDS)


@pytest.fixture
async def rpc(matrix_system: System, amqp_url: str) -> AsyncIterator[RpcClient]:
    topology = Topology(matrix_system.env["PJ_AMQP_PREFIX"])
    client = RpcClient.to(topology, topology.commands)
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        await client.attach(connection)
        yield client


async def test_every_command_as_every_caller(http: httpx.AsyncClient, rpc: RpcClient) -> None:
    shared = await pending(http)
    got: dict[str, dict[str, Any]] = {}
    for row, (build, needs) in AMQP_COMMANDS.items():
        got[row] = {}
        for name, actor in ACTORS.items():
            approval_id = shared if needs == "shared" else await (pending if needs == "pending" else approved)(http)
            envelope = CommandEnvelope(token=actor.token(), command=build(approval_id))
            got[row][name] = outcome(await rpc.call(envelope.to_json(), correlation_id=envelope.correlation_id,
                                                    timeout=10))
    assert mismatches(AMQP_MATRIX, got) == []


async def test_decisions_on_behalf_of_a_person_as_every_sender(http: httpx.AsyncClient, rpc: RpcClient) -> None:
    got: dict[str, dict[str, Any]] = {}
    for row, person in ON_BEHALF.items():
        got[row] = {}
        for name, actor in ACTORS.items():
            command = DecideRequest(approval_id=await pending(http), status="approved")
            envelope = CommandEnvelope(token=actor.token(), command=command, on_behalf=person)
            got[row][name] = outcome(await rpc.call(envelope.to_json(), correlation_id=envelope.correlation_id,
                                                    timeout=10))
    assert mismatches(ON_BEHALF_MATRIX, got) == []


def outcome(body: bytes) -> str:
    """`ok`, or the error code of a reply."""
    reply = Reply[Any].model_validate_json(body)
    return OK if reply.ok else reply.error.code if reply.error else "no error"
