from datetime import UTC, datetime

import yaml

from pj_common.messages import ApprovalStatus
from pj_notifier.catalog import parse_catalog
from pj_notifier.domain import Notice, NoticeKind, Tracked
from pj_notifier.recipients import Target, targets_of
from tests.unit.notifier.catalog_text import CATALOG

CAT = parse_catalog(yaml.safe_load(CATALOG))
ACTION = CAT.action("environment.create")
ROUTE = CAT.route("acme", "environment.create")


def tracked(requester: str = "erin") -> Tracked:
    at = datetime(2026, 11, 2, tzinfo=UTC)
    return Tracked(approval_id="a-1", tenant_id="acme", action_id="environment.create", status=ApprovalStatus.PENDING,
                   requester=requester, created_at=at, expires_at=at, stage_index=0, stage_votes=0, decided_by=(),
                   last_note=None, updated_at=at, remind_at=None, escalate_at=None)


def test_a_stage_goes_to_the_channel_and_each_approver_of_its_roles() -> None:
    assert targets_of(Notice(NoticeKind.PENDING, 0), tracked(), action=ACTION, route=ROUTE) == [
        Target("email", "carol@example.com"), Target("slack", "#C0APPROVALS"), Target("slack", "@carol"),
        Target("webhook", "http://127.0.0.1:9/hook")]
    second = targets_of(Notice(NoticeKind.REMINDER, 1), tracked(), action=ACTION, route=ROUTE)
    assert {t.recipient for t in second} >= {"alice@example.com", "bob@example.com", "@alice", "@bob"}


def test_the_requester_is_never_asked_to_approve_their_own_request() -> None:
    targets = targets_of(Notice(NoticeKind.PENDING, 1), tracked(requester="alice"), action=ACTION, route=ROUTE)
    assert "@alice" not in {t.recipient for t in targets} and "alice@example.com" not in {t.recipient for t in targets}


def test_outcomes_go_to_the_requester_and_escalations_to_the_group() -> None:
    outcome = targets_of(Notice(NoticeKind.DISPATCHED, 1), tracked(requester="bob"), action=ACTION, route=ROUTE)
    assert outcome == [Target("email", "bob@example.com"), Target("slack", "@bob"),
                       Target("webhook", "http://127.0.0.1:9/hook")]
    escalation = targets_of(Notice(NoticeKind.ESCALATION, 0), tracked(), action=ACTION, route=ROUTE)
    assert {t.recipient for t in escalation} == {"dave@example.com", "@dave", "http://127.0.0.1:9/hook"}


def test_only_the_configured_channels_are_used() -> None:
    route = CAT.route("acme", "notify.webhook")  # channels: [email]
    targets = targets_of(Notice(NoticeKind.PENDING, 0), tracked(), action=CAT.action("notify.webhook"), route=route)
    assert targets == [Target("email", "alice@example.com"), Target("email", "bob@example.com")]
    nobody = CAT.route("acme", "x").model_copy(update={"approvers": {}})
    assert [t.channel for t in targets_of(Notice(NoticeKind.PENDING, 0), tracked(), action=ACTION,
                                          route=nobody)] == ["slack", "webhook"]
