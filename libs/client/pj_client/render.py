"""How `pj` shows the reply models to people: rich tables and lines. Scripts use `--json` instead."""

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.json import JSON
from rich.table import Table
from rich.text import Text

from pj_common.messages import (
    ApprovalEvent,
    ApprovalPage,
    ApprovalStatus,
    ApprovalView,
    AuditEntry,
    ChainView,
    DispatchOutcome,
    DryRunPlan,
    ExecuteAccepted,
    PlanStep,
    StepResult,
)

from .api import GatewayHealth

if TYPE_CHECKING:  # importing it loads aio_pika: only `pj dlq` needs that, and only when it runs
    from pj_common.deadletters import DeadLetter

STATUS_STYLE: dict[str, str] = {
    ApprovalStatus.PENDING: "yellow",
    ApprovalStatus.APPROVED: "cyan",
    ApprovalStatus.REJECTED: "red",
    ApprovalStatus.DISPATCHING: "blue",
    ApprovalStatus.DISPATCHED: "green",
    ApprovalStatus.DISPATCH_FAILED: "bold red",
    ApprovalStatus.EXPIRED: "dim",
    "succeeded": "green", "failed": "red", "skipped": "dim", "not_run": "dim", "simulated": "cyan",
    "ok": "green", "degraded": "yellow", "error": "red", "unknown": "dim",
    "current": "yellow", "waiting": "dim", "not_reached": "dim",
}


def status_text(status: str) -> Text:
    """A status word in its colour."""
    return Text(str(status), style=STATUS_STYLE.get(status, ""))


def when(moment: datetime | None) -> str:
    """A timestamp to the second, in its own zone (UTC from the services)."""
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def approvals_table(page: ApprovalPage) -> Table:
    """One page of approvals, newest first."""
    table = Table(title="Approvals", caption=f"{len(page.approvals)} of {page.total} "
                  f"(offset {page.offset}); {page.pending_count} pending", caption_justify="left")
    for column in ("ID", "STATUS", "ACTION", "REQUESTER", "APPROVER", "CREATED (UTC)"):
        # The id is copied from here whole; in a narrow terminal the other cells wrap rather than lose letters.
        table.add_column(column, no_wrap=column in ("ID", "STATUS"), overflow="fold")
    for approval in page.approvals:
        created = approval.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(approval.id, status_text(approval.approval_status), approval.action_id,
                      approval.operator_id, approval.approver_id or "", created)
    return table


def _fields(rows: Sequence[tuple[str, RenderableType | str | None]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        if value not in (None, ""):
            table.add_row(name, value)
    return table


def plan_table(steps: Sequence[PlanStep], *, title: str = "Plan") -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("#", "STEP", "CONNECTOR", "OPERATION"):
        table.add_column(column)
    for number, step in enumerate(steps, start=1):
        table.add_row(str(number), step.step_id, step.connector, step.operation)
    return table


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)


def _step_detail(step: StepResult) -> str:
    if step.error is not None:
        return f"{step.error.code}: {step.error.message}"
    if step.result:
        # Links first: a pull request's URL is what a reader looks for.
        links = [str(v) for k, v in step.result.items() if k.lower().endswith("url")]
        return " ".join(links) or ", ".join(f"{k}={_compact(v)}" for k, v in list(step.result.items())[:4])
    return ""


def steps_table(steps: Sequence[StepResult], *, title: str = "Dispatch result") -> Table:
    """Each step's outcome: status, attempts, HTTP status, time, and its link or error."""
    table = Table(title=title, title_justify="left")
    for column in ("STEP", "OPERATION", "STATUS", "ATTEMPTS", "HTTP", "MS", "RESULT"):
        table.add_column(column)
    for step in steps:
        table.add_row(step.step_id, f"{step.connector}.{step.operation}", status_text(step.status),
                      str(step.attempts), "" if step.http_status is None else str(step.http_status),
                      "" if step.duration_ms is None else f"{step.duration_ms:.0f}", _step_detail(step))
    return table


def _audit_line(entry: AuditEntry) -> tuple[str, str, str, str, str]:
    change = f"{entry.from_status or '—'} → {entry.to_status}"
    who = f"{entry.actor} ({entry.role})" if entry.actor else "system"
    # "approval." starts every event: left out, the column stays narrow enough for a laptop's terminal.
    return when(entry.at), entry.event.removeprefix("approval."), change, who, entry.note or ""


def audit_table(audit: Sequence[AuditEntry]) -> Table:
    table = Table(title="Audit trail", title_justify="left")
    for column in ("AT", "EVENT", "CHANGE", "BY", "NOTE"):
        table.add_column(column)
    for entry in audit:
        table.add_row(*_audit_line(entry))
    return table


def chain_table(chain: ChainView) -> Table:
    """The approval rule's stages, who decided each, when and with what note."""
    table = Table(title="Approval chain", title_justify="left")
    for column in ("STAGE", "ROLES", "STATE", "APPROVALS", "DECISIONS"):
        table.add_column(column)
    for stage in chain.stages:
        decisions = "\n".join(f"{d.decision} by {d.approver_id} ({d.role}) {when(d.decided_at)}"
                              + (f": {d.note}" if d.note else "") for d in stage.decisions)
        table.add_row(stage.name, ", ".join(stage.roles), status_text(stage.state),
                      f"{stage.approvals}/{stage.approvals_required}", decisions)
    return table


def approval_detail(approval: ApprovalView, chain: ChainView | None = None) -> Group:
    """Everything about one approval: who, what, the plan and its hash, the chain, the result, the audit."""
    summary = _fields([
        ("Approval", approval.id), ("Status", status_text(approval.approval_status)),
        ("Action", approval.action_id), ("Tenant", approval.tenant_id), ("Requester", approval.operator_id),
        ("Request id", approval.request_id), ("Approver", approval.approver_id), ("Note", approval.approval_note),
        ("Plan hash", approval.plan_hash), ("Created", when(approval.created_at)),
        ("Decided", when(approval.decided_at)), ("Dispatched", when(approval.dispatched_at)),
        ("Finished", when(approval.finished_at)), ("Expires", when(approval.expires_at)),
    ])
    # An approval read on its own (get_approval) always has its payload and plan; a list page's has neither.
    parts: list[RenderableType] = [summary, Text("Payload", style="bold"), JSON.from_data(approval.payload or {}),
                                   plan_table(approval.plan or [])]
    if chain is not None:
        parts.append(chain_table(chain))
    if approval.dispatch_result:
        parts.append(steps_table(approval.dispatch_result))
    if approval.audit:
        parts.append(audit_table(approval.audit))
    return Group(*parts)


def decided(approval: ApprovalView) -> Text:
    """After a decision: where the approval stands now."""
    line = Text(f"{approval.id} is now ")
    line.append_text(status_text(approval.approval_status))
    if approval.approval_status == ApprovalStatus.PENDING:
        line.append(" (more decisions are due)")
    return line


def accepted(reply: ExecuteAccepted) -> Group:
    first = "Stored" if reply.created else "Already stored under this request id"
    then = "it waits for approval." if reply.approval_required else "it runs at once (launch tier)."
    return Group(_fields([("Approval", reply.approval_id), ("Status", status_text(reply.approval_status)),
                          ("Request id", reply.request_id), ("Plan hash", reply.plan_hash)]),
                 Text(f"{first}; {then}"))


def dry_run(plan: DryRunPlan) -> Group:
    return Group(plan_table(plan.plan, title=f"Plan of {plan.action_id} (dry run, nothing stored)"),
                 Text(f"Plan hash {plan.plan_hash}"))


def outcome(result: DispatchOutcome) -> Group:
    """A dispatch's outcome, a dry run's simulated steps, or that it still runs."""
    head = Text(f"{result.approval_id}: ")
    head.append_text(status_text(result.approval_status))
    if result.dry_run:
        head.append(" (dry run: nothing changed)")
    parts: list[RenderableType] = [head]
    if result.dispatch_result:
        parts.append(steps_table(result.dispatch_result, title="Steps" if result.dry_run else "Dispatch result"))
    return Group(*parts)


def event_line(event: ApprovalEvent) -> Text:
    """One event as a line: time, type, approval, the change, who, tenant, note."""
    line = Text(f"{when(event.occurred_at)}  ")
    line.append(f"{event.type.removeprefix('approval.'):<19}", style="bold")
    line.append(f" {event.approval_id}  {event.action_id}  ")
    line.append_text(status_text(event.from_status or "—"))
    line.append(" → ")
    line.append_text(status_text(event.to_status))
    line.append(f"  by {event.actor or 'system'}  [{event.tenant_id}]")
    if event.note:
        line.append(f"  {event.note}")
    return line


def health_table(health: GatewayHealth) -> Table:
    table = Table(title="Health: " + health.status)
    for column in ("CHECK", "STATUS", "DETAIL"):
        table.add_column(column)
    checks: dict[str, Any] = dict(health.checks)
    for name, check in checks.items():
        detail = check.detail or ""
        if name == "dispatchers" and check.consumers is not None:
            detail = f"{check.consumers} consuming, {check.queueDepth} queued " + detail
        table.add_row(name, status_text(check.status), detail.strip())
    return table


def dead_letters_table(letters: Sequence["DeadLetter"], *, now: float) -> Table:
    table = Table(title="Dead letters", caption=f"{len(letters)} dead letter(s)", caption_justify="left")
    for column in ("ID", "ORIGINAL QUEUE", "REASON", "DELIVERIES", "AGE", "LAST ERROR"):
        table.add_column(column)
    for letter in letters:
        age = letter.age_s(now)
        table.add_row(letter.id, letter.original_queue or "?", letter.reason or "?",
                      "?" if letter.delivery_count is None else str(letter.delivery_count),
                      "?" if age is None else f"{age:.0f}s", (letter.last_error or "")[:80])
    return table
