"""Each governance rule against the real database: stages, distinct approvers under concurrency,
per-action TTLs, and rules that stay with an approval across a catalog reload."""

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from pj_approvals.catalog import load_catalog
from pj_approvals.service import ApprovalService
from pj_approvals.settings import DEFAULT_CATALOG
from pj_common.auth import Principal, Role
from pj_common.errors import ErrorCode, GateError
from pj_common.messages import ApprovalView, DecideRequest, ExecuteAccepted, ExecuteRequest

CHAINED = {
    "description": "security, then two admins",
    "pending_ttl": "10m",
    "dispatch_window": "1h",
    "approval": {"stages": [{"name": "security", "roles": ["approver"]},
                            {"name": "ops", "roles": ["admin"], "approvals_required": 2}]},
    "plan": [{"stepId": "s", "connector": "webhook", "operation": "post", "params": {"body": "{{ payload }}"}}],
}


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    data = yaml.safe_load(DEFAULT_CATALOG.read_text())
    data["actions"]["release.chained"] = CHAINED
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def svc(make_service: Any, catalog_path: Path) -> ApprovalService:
    service: ApprovalService = make_service()
    service.reload_catalog(load_catalog(catalog_path))
    return service


def who(role: Role, tenant: str, sub: str) -> Principal:
    return Principal(subject=sub, tenant=tenant, role=role)


async def code_of(coro: Any) -> Any:
    try:
        return await coro
    except GateError as exc:
        return exc.code


async def new_chained(svc: ApprovalService, tenant: str) -> str:
    created = await svc.execute(who(Role.OPERATOR, tenant, "olga"),
                                ExecuteRequest(action_id="release.chained", payload={"v": 1}), "c")
    assert isinstance(created, ExecuteAccepted)
    return created.approval_id


async def test_stages_advance_in_order_with_distinct_approvers(svc: ApprovalService) -> None:
    t = f"t-{uuid.uuid4().hex[:8]}"
    aid = await new_chained(svc, t)
    decide = DecideRequest(approval_id=aid, status="approved")
    assert await code_of(svc.decide(who(Role.ADMIN, t, "adam"), decide, "c")) == ErrorCode.FORBIDDEN
    assert (await svc.decide(who(Role.APPROVER, t, "sam"), decide, "c")).approval_status == "pending"
    assert await code_of(svc.decide(who(Role.APPROVER, t, "ann"), decide, "c")) == ErrorCode.FORBIDDEN
    assert (await svc.decide(who(Role.ADMIN, t, "adam"), decide, "c")).approval_status == "pending"
    assert await code_of(svc.decide(who(Role.ADMIN, t, "adam"), decide, "c")) == ErrorCode.ALREADY_DECIDED
    final = await svc.decide(who(Role.ADMIN, t, "alice"), decide, "c")
    assert final.approval_status == "approved" and final.approver_id == "alice"
    chain = await svc.chain(who(Role.VIEWER, t, "vic"), aid)
    assert [(s.name, s.state, s.approvals) for s in chain.stages] == [
        ("security", "approved", 1), ("ops", "approved", 2)]
    assert [e.event for e in final.audit or []] == ["approval.created"] + ["approval.decided"] * 3


async def test_one_person_deciding_twice_at_once_counts_once(svc: ApprovalService) -> None:
    t = f"t-{uuid.uuid4().hex[:8]}"
    aid = await new_chained(svc, t)
    decide = DecideRequest(approval_id=aid, status="approved")
    await svc.decide(who(Role.APPROVER, t, "sam"), decide, "c")
    results = await asyncio.gather(*(code_of(svc.decide(who(Role.ADMIN, t, "adam"), decide, f"c{i}"))
                                     for i in range(10)))
    wins = [r for r in results if isinstance(r, ApprovalView)]
    assert len(wins) == 1
    assert [r for r in results if not isinstance(r, ApprovalView)] == [ErrorCode.ALREADY_DECIDED] * 9
    view = await svc.get_approval(who(Role.ADMIN, t, "x"), aid)
    assert view.approval_status == "pending"  # ops needs a second, different admin
    chain = await svc.chain(who(Role.ADMIN, t, "x"), aid)
    assert chain.stages[1].approvals == 1


async def test_per_action_ttl_and_dispatch_window(svc: ApprovalService, clock: Any) -> None:
    t = f"t-{uuid.uuid4().hex[:8]}"
    aid = await new_chained(svc, t)
    view = await svc.get_approval(who(Role.ADMIN, t, "x"), aid)
    created = clock.now
    assert view.expires_at == created + timedelta(minutes=10)
    for sub, role in (("sam", Role.APPROVER), ("adam", Role.ADMIN), ("alice", Role.ADMIN)):
        await svc.decide(who(role, t, sub), DecideRequest(approval_id=aid, status="approved"), "c")
    view = await svc.get_approval(who(Role.ADMIN, t, "x"), aid)
    assert view.expires_at == created + timedelta(hours=1)
    clock.now += timedelta(hours=1, seconds=1)
    assert await svc.expire_due() >= 1
    assert (await svc.get_approval(who(Role.ADMIN, t, "x"), aid)).approval_status == "expired"


async def test_a_reload_never_changes_the_rule_of_existing_approvals(svc: ApprovalService, tmp_path: Path) -> None:
    t = f"t-{uuid.uuid4().hex[:8]}"
    aid = await new_chained(svc, t)
    data = yaml.safe_load(DEFAULT_CATALOG.read_text())
    data["actions"]["release.chained"] = {**CHAINED, "approval": {"roles": ["admin"]}}
    relaxed = tmp_path / "relaxed.yaml"
    relaxed.write_text(yaml.safe_dump(data))
    svc.reload_catalog(load_catalog(relaxed))
    decide = DecideRequest(approval_id=aid, status="approved")
    # The approval keeps its two-stage rule: an admin still cannot decide the security stage.
    assert await code_of(svc.decide(who(Role.ADMIN, t, "adam"), decide, "c")) == ErrorCode.FORBIDDEN
    fresh = await new_chained(svc, t)
    assert (await svc.decide(who(Role.ADMIN, t, "adam"), DecideRequest(approval_id=fresh, status="approved"),
                             "c")).approval_status == "approved"
