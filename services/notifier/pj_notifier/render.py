"""The words of each notice: an email's subject and body, a Slack message's blocks, a webhook's JSON.

Pure. Every message says who asked for what, the plan in brief and its hash, the stage, when it expires and links
to the console's page. Slack's pending message carries Approve and Reject buttons whose value is the
approval id (`pj_approve` / `pj_reject`), for the interaction endpoint to act on.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pj_common.messages import ApprovalStatus

from .catalog import ActionInfo
from .domain import NoticeKind, Tracked

APPROVE_ACTION = "pj_approve"
REJECT_ACTION = "pj_reject"

HEADLINES: dict[NoticeKind, str] = {
    NoticeKind.PENDING: "Approval requested",
    NoticeKind.REMINDER: "Reminder: approval still waiting",
    NoticeKind.ESCALATION: "Escalation: approval waiting too long",
    NoticeKind.APPROVED: "Approved",
    NoticeKind.REJECTED: "Rejected",
    NoticeKind.DISPATCHED: "Dispatched",
    NoticeKind.DISPATCH_FAILED: "Dispatch failed",
    NoticeKind.EXPIRED: "Expired",
}

STATUS_WORDS: dict[ApprovalStatus, str] = {
    ApprovalStatus.PENDING: "waiting for approval",
    ApprovalStatus.APPROVED: "approved, ready to dispatch",
    ApprovalStatus.REJECTED: "rejected",
    ApprovalStatus.DISPATCHING: "dispatching",
    ApprovalStatus.DISPATCHED: "dispatched",
    ApprovalStatus.DISPATCH_FAILED: "dispatch failed",
    ApprovalStatus.EXPIRED: "expired",
}


@dataclass(frozen=True)
class View:
    """One approval as every channel words it."""

    state: Tracked
    action: ActionInfo
    console_url: str

    @property
    def link(self) -> str:
        return f"{self.console_url.rstrip('/')}/console/approvals/{self.state.approval_id}"

    @property
    def requester(self) -> str:
        return self.state.requester or "(unknown)"

    def stage_line(self) -> str:
        stages = self.action.stages
        stage = self.state.stage(self.action)
        if stage is None:
            return f"all {len(stages)} stage(s) decided"
        return (f"{stage.name} ({self.state.stage_index + 1} of {len(stages)}; "
                f"{self.state.stage_votes} of {stage.approvals_required} approvals; roles: {', '.join(stage.roles)})")

    def expires_line(self) -> str:
        status = self.state.status
        if status is ApprovalStatus.PENDING:
            return _when(self.state.expires_at)
        if status in (ApprovalStatus.APPROVED, ApprovalStatus.DISPATCH_FAILED):
            return f"{_when(self.state.expires_at)} unless dispatched by then"
        return "no longer pending"

    def facts(self) -> list[tuple[str, str]]:
        """(label, value) lines shared by every channel."""
        lines = [
            ("Requested by", self.requester),
            ("Action", self.state.action_id + (f" - {self.action.description}" if self.action.description else "")),
            ("Tenant", self.state.tenant_id),
            ("Plan", self.action.plan_in_brief()),
            ("Plan hash", self.state.plan_hash or "(not known yet)"),
            ("Status", STATUS_WORDS.get(self.state.status, self.state.status.value)),
            ("Stage", self.stage_line()),
            ("Expires", self.expires_line()),
        ]
        if self.state.decided_by:
            lines.append(("Decided by", ", ".join(self.state.decided_by)))
        if self.state.last_note:
            lines.append(("Note", self.state.last_note))
        lines.append(("Approval", self.state.approval_id))
        return lines


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC") if at is not None else "(unknown)"


def subject(kind: NoticeKind, view: View) -> str:
    """One line (a header never takes a line break, whatever a token's subject holds)."""
    text = f"[approval] {HEADLINES[kind]}: {view.state.action_id} requested by {view.requester}"
    return " ".join(text.split())


def email_body(kind: NoticeKind, view: View) -> str:
    """A plain-text email."""
    lines = [f"{HEADLINES[kind]}: {view.requester} asked for {view.state.action_id}.", ""]
    lines += [f"{label}: {value}" for label, value in view.facts()]
    lines += ["", f"Open it in the console: {view.link}", ""]
    return "\n".join(lines)


def slack_text(kind: NoticeKind, view: View) -> str:
    """The notification text (what Slack shows in a notification and where blocks cannot be shown)."""
    return (f"{HEADLINES[kind]}: {view.requester} asked for {view.state.action_id} "
            f"({STATUS_WORDS.get(view.state.status, view.state.status.value)})")


def slack_blocks(kind: NoticeKind, view: View) -> list[dict[str, Any]]:
    """The approval's Slack message; Approve and Reject buttons while it is pending."""
    facts = "\n".join(f"*{label}:* {value}" for label, value in view.facts())
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{HEADLINES[kind]}: {view.state.action_id}"[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": facts[:3000]}},
    ]
    elements: list[dict[str, Any]] = []
    if view.state.status is ApprovalStatus.PENDING:
        elements += [
            {"type": "button", "action_id": APPROVE_ACTION, "style": "primary", "value": view.state.approval_id,
             "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "action_id": REJECT_ACTION, "style": "danger", "value": view.state.approval_id,
             "text": {"type": "plain_text", "text": "Reject"}},
        ]
    elements.append({"type": "button", "action_id": "pj_open", "url": view.link,
                     "text": {"type": "plain_text", "text": "Open in console"}})
    blocks.append({"type": "actions", "block_id": f"approval:{view.state.approval_id}", "elements": elements})
    return blocks


def webhook_body(kind: NoticeKind, view: View, *, event_id: str) -> dict[str, Any]:
    """The JSON an outgoing notification webhook carries."""
    state = view.state
    return {
        "notice": kind.value, "eventId": event_id, "approvalId": state.approval_id, "tenantId": state.tenant_id,
        "actionId": state.action_id, "requester": state.requester, "status": state.status.value,
        "stage": view.stage_line(), "plan": view.action.plan_in_brief(),
        "expiresAt": state.expires_at.isoformat() if state.expires_at else None,
        "decidedBy": list(state.decided_by), "note": state.last_note, "url": view.link,
        "text": f"{HEADLINES[kind]}: {view.requester} asked for {state.action_id}",
    }
