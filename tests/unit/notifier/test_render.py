from dataclasses import replace
from datetime import UTC, datetime

import yaml

from pj_common.messages import ApprovalStatus
from pj_notifier import render
from pj_notifier.catalog import parse_catalog
from pj_notifier.domain import NoticeKind, Tracked
from tests.unit.notifier.catalog_text import CATALOG

CAT = parse_catalog(yaml.safe_load(CATALOG))
AT = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
STATE = Tracked(approval_id="a-1", tenant_id="acme", action_id="environment.create", status=ApprovalStatus.PENDING,
                requester="erin", created_at=AT, expires_at=AT, stage_index=1, stage_votes=1, decided_by=("carol",),
                last_note="looks fine", updated_at=AT, remind_at=None, escalate_at=None, plan_hash="9f2c0a")
VIEW = render.View(STATE, CAT.action("environment.create"), "https://gate.example/")


def test_an_email_says_who_asked_for_what_the_plan_the_stage_the_expiry_and_links() -> None:
    body = render.email_body(NoticeKind.PENDING, VIEW)
    for expected in ("erin asked for environment.create", "create-branch (github.create_branch)",
                     "sign-off (2 of 2; 1 of 2 approvals; roles: admin)", "2026-11-02 09:00 UTC",
                     "Decided by: carol", "Note: looks fine", "Plan hash: 9f2c0a",
                     "https://gate.example/console/approvals/a-1"):
        assert expected in body
    assert render.subject(NoticeKind.REMINDER, VIEW).startswith("[approval] Reminder")
    odd = render.View(replace(STATE, requester="eve\r\nBcc: all@example.com"), VIEW.action, VIEW.console_url)
    assert "\n" not in render.subject(NoticeKind.PENDING, odd), "no header injection through a subject"


def test_a_pending_slack_message_carries_approve_and_reject_with_the_approval_id() -> None:
    blocks = render.slack_blocks(NoticeKind.PENDING, VIEW)
    buttons = {e["action_id"]: e for e in blocks[-1]["elements"]}
    assert buttons[render.APPROVE_ACTION]["value"] == "a-1" and buttons[render.REJECT_ACTION]["value"] == "a-1"
    assert buttons["pj_open"]["url"] == "https://gate.example/console/approvals/a-1"
    decided = render.View(replace(STATE, status=ApprovalStatus.DISPATCHED), VIEW.action, VIEW.console_url)
    after = {e["action_id"] for e in render.slack_blocks(NoticeKind.DISPATCHED, decided)[-1]["elements"]}
    assert after == {"pj_open"}, "no buttons once it left pending"
    assert "no longer pending" in str(render.slack_blocks(NoticeKind.DISPATCHED, decided))
    approved = render.View(replace(STATE, status=ApprovalStatus.APPROVED), VIEW.action, VIEW.console_url)
    assert approved.expires_line() == "2026-11-02 09:00 UTC unless dispatched by then"


def test_a_webhook_carries_the_notice_as_json() -> None:
    body = render.webhook_body(NoticeKind.PENDING, VIEW, event_id="e-1")
    assert body["notice"] == "pending" and body["eventId"] == "e-1" and body["approvalId"] == "a-1"
    assert body["url"].endswith("/console/approvals/a-1") and body["decidedBy"] == ["carol"]
