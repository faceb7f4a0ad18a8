"""The chaos suite's clients: each runs whole lifecycles (execute, a decision by another admin, dispatch)
through the HTTP API and keeps its own record of what it was told, the way a careful client would.

A client retries what may have failed in transit (a dropped connection, 502/503/504, 500) with the same
requestId, so a retry is never a second request; a 409 on a repeated decision or dispatch means an
earlier attempt took effect, and the client reads the approval to learn where it stands. A dispatch
that ends `dispatch_failed` is dispatched again, as an admin would (steps that succeeded are skipped).
"""

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from pj_common.auth import mint_token

CSRF = {"X-PuddleJumper-Request": "true"}
RETRY_STATUSES = frozenset({500, 502, 503, 504})
FINAL = frozenset({"dispatched", "rejected", "expired"})
MAX_REDISPATCH = 3


@dataclass
class Lifecycle:
    index: int
    request_id: str
    started: float  # time.time() of the first execute attempt
    approval_id: str | None = None
    accepted: bool = False  # execute answered 202 (to any attempt)
    finished: float | None = None  # when the client saw it dispatched
    status: str | None = None  # the last status the client saw
    dispatch_posts: int = 0
    redispatches: int = 0
    give_up: str | None = None  # why the client stopped before the end
    answers: Counter[str] = field(default_factory=Counter)  # "<op> <status>" -> count
    anomalies: list[str] = field(default_factory=list)


@dataclass
class Identity:
    secret: str
    issuer: str
    audience: str
    tenant: str

    def headers(self, role: str, sub: str) -> dict[str, str]:
        token = mint_token(self.secret, subject=sub, tenant=self.tenant, role=role, issuer=self.issuer,
                           audience=self.audience, ttl_s=3600)
        return {"Authorization": f"Bearer {token}", **CSRF}


class Retry(Exception):
    """The outcome of this call is unknown: try it again (same requestId)."""


@dataclass
class Load:
    """`target` lifecycles, started at most `rate` per second by `workers` concurrent clients."""

    base_url: str
    identity: Identity
    action_id: str
    target: int
    rate: float
    workers: int = 64  # lifecycles in flight at most
    lifecycle_timeout_s: float = 120.0
    extend: bool = False  # keep starting lifecycles past `target` while set (through a fault)
    records: list[Lifecycle] = field(default_factory=list)
    _t0: float = 0.0

    @property
    def completed(self) -> int:
        return sum(1 for r in self.records if r.finished is not None)

    async def run(self) -> None:
        """Start each lifecycle at its time (`rate` a second), at most `workers` at once; each is bounded
        by `lifecycle_timeout_s`, so the whole run ends within target / rate + that timeout."""
        self._t0 = time.monotonic()
        limits = httpx.Limits(max_connections=self.workers * 2, max_keepalive_connections=self.workers * 2)
        timeout = httpx.Timeout(30.0, connect=5.0)
        self._slots = asyncio.Semaphore(self.workers)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=timeout, limits=limits,
                                     trust_env=False) as client:
            self._headers = {
                "operator": self.identity.headers("operator", "chaos-operator"),
                "admin": self.identity.headers("admin", "chaos-admin"),
            }
            tasks = []
            index = 0
            while index < self.target or self.extend:
                due = self._t0 + index / self.rate
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                await self._slots.acquire()  # back-pressure: a lifecycle begins when one in flight ends
                record = Lifecycle(index=index, request_id=str(uuid.uuid4()), started=time.time())
                self.records.append(record)
                tasks.append(asyncio.create_task(self._bounded(client, record)))
                index += 1
            await asyncio.gather(*tasks)

    async def _bounded(self, client: httpx.AsyncClient, record: Lifecycle) -> None:
        try:
            await asyncio.wait_for(self._lifecycle(client, record), self.lifecycle_timeout_s)
        except TimeoutError:
            record.give_up = record.give_up or f"lifecycle timed out after {self.lifecycle_timeout_s:g}s"
        finally:
            self._slots.release()

    async def _call(self, client: httpx.AsyncClient, record: Lifecycle, op: str, method: str, path: str,
                    body: dict[str, Any] | None, role: str) -> httpx.Response:
        """One call, retried while its outcome is unknown; returns the first definite answer."""
        delay = 0.05
        while True:
            try:
                response = await client.request(method, path, json=body, headers=self._headers[role])
                record.answers[f"{op} {response.status_code}"] += 1
                if response.status_code not in RETRY_STATUSES:
                    return response
            except httpx.TransportError as exc:
                record.answers[f"{op} {type(exc).__name__}"] += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _status(self, client: httpx.AsyncClient, record: Lifecycle) -> str:
        r = await self._call(client, record, "get", "GET", f"/api/approvals/{record.approval_id}", None, "admin")
        if r.status_code != 200:
            raise AssertionError(f"GET approval answered {r.status_code}: {r.text[:200]}")
        status = str(r.json()["data"]["approval_status"])
        record.status = status
        return status

    async def _lifecycle(self, client: httpx.AsyncClient, record: Lifecycle) -> None:
        try:
            await self._execute(client, record)
            await self._decide(client, record)
            await self._dispatch(client, record)
        except AssertionError as exc:
            record.give_up = str(exc)

    async def _execute(self, client: httpx.AsyncClient, record: Lifecycle) -> None:
        body = {"actionId": self.action_id, "mode": "execute", "requestId": record.request_id,
                "payload": {"n": record.index}}
        r = await self._call(client, record, "execute", "POST", "/api/pj/execute", body, "operator")
        if r.status_code != 202:
            raise AssertionError(f"execute answered {r.status_code}: {r.text[:200]}")
        approval_id = str(r.json()["approvalId"])
        if record.approval_id not in (None, approval_id):
            record.anomalies.append(f"execute retry gave another approval: {record.approval_id} then {approval_id}")
        record.approval_id = approval_id
        record.accepted = True
        record.status = "pending"

    async def _decide(self, client: httpx.AsyncClient, record: Lifecycle) -> None:
        r = await self._call(client, record, "decide", "POST", f"/api/approvals/{record.approval_id}/decide",
                             {"status": "approved", "note": "chaos"}, "admin")
        if r.status_code == 200:
            record.status = str(r.json()["data"]["approval_status"])
            return
        if r.status_code == 409:  # an earlier attempt of ours decided it
            status = await self._status(client, record)
            if status == "approved":
                return
        raise AssertionError(f"decide answered {r.status_code}: {r.text[:200]}")

    async def _dispatch(self, client: httpx.AsyncClient, record: Lifecycle) -> None:
        while True:
            record.dispatch_posts += 1
            r = await self._call(client, record, "dispatch", "POST", f"/api/approvals/{record.approval_id}/dispatch",
                                 {}, "admin")
            status = None
            if r.status_code in (200, 202):
                status = str(r.json()["data"]["approvalStatus"])
            elif r.status_code != 409:  # 409: an earlier attempt claimed it; the approval says how far it got
                raise AssertionError(f"dispatch answered {r.status_code}: {r.text[:200]}")
            if status not in ("dispatched", "dispatch_failed"):
                status = await self._poll(client, record)
            record.status = status
            if status == "dispatched":
                record.finished = time.time()
                return
            if status != "dispatch_failed" or record.redispatches >= MAX_REDISPATCH:
                raise AssertionError(f"dispatch ended {status} after {record.redispatches} re-dispatches")
            record.redispatches += 1

    async def _poll(self, client: httpx.AsyncClient, record: Lifecycle) -> str:
        """Read the approval until its dispatch ends (the lifecycle's own timeout bounds this)."""
        delay = 0.1
        while True:
            status = await self._status(client, record)
            if status in FINAL or status == "dispatch_failed":
                return status
            if status == "approved":  # our dispatch never claimed it (it was refused): dispatch again
                return "dispatch_failed" if record.dispatch_posts <= MAX_REDISPATCH else status
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)


async def wait_started_after(load: Load, since: float, count: int, timeout: float) -> None:
    """Until `count` lifecycles have begun since `since` (time.time()), or `timeout` passed."""
    for _ in range(int(timeout / 0.05)):
        if sum(1 for r in load.records if r.started >= since) >= count:
            return
        await asyncio.sleep(0.05)


async def wait_completed(load: Load, count: int, timeout: float) -> None:
    """Until the clients have finished `count` lifecycles (or `timeout` passed)."""
    for _ in range(int(timeout / 0.05)):
        if load.completed >= count:
            return
        await asyncio.sleep(0.05)

