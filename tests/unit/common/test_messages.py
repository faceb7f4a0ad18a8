"""The wire contract between services (pj_common.messages)."""

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError

from pj_common.messages import (
    CONTRACT_MODELS,
    ApprovalEvent,
    ApprovalPage,
    ApprovalStatus,
    ApprovalView,
    AuditEntry,
    ChainDecision,
    ChainStage,
    ChainView,
    CheckHealth,
    Command,
    CommandEnvelope,
    ComponentHealth,
    CountPending,
    DecideRequest,
    DispatchOrder,
    DispatchOutcome,
    DispatchPlan,
    DispatchRequest,
    DryRunPlan,
    ErrorBody,
    ExecuteAccepted,
    ExecuteRequest,
    GetApproval,
    HealthReport,
    LeaseGrant,
    ListApprovals,
    MetricsText,
    PendingCount,
    PlanStep,
    ReadMetrics,
    Reply,
    ReplyAddress,
    StepReport,
    StepResult,
)

# (command, the exact JSON object expected on the wire for it)
COMMANDS: list[tuple[Any, dict[str, Any]]] = [
    (
        ExecuteRequest(action_id="environment.create", mode="dry-run", request_id="req-1",
                       payload={"name": "dev", "config": {"snake_case_key": 1}}),
        {"name": "execute", "actionId": "environment.create", "mode": "dry-run", "requestId": "req-1",
         "payload": {"name": "dev", "config": {"snake_case_key": 1}}},
    ),
    (
        ExecuteRequest(action_id="notify.webhook"),
        {"name": "execute", "actionId": "notify.webhook", "mode": "execute", "requestId": None,
         "payload": {}},
    ),
    (
        ListApprovals(status="dispatch_failed", limit=10, offset=20, full=True),
        {"name": "list_approvals", "status": "dispatch_failed", "limit": 10, "offset": 20, "full": True},
    ),
    (
        ListApprovals(),
        {"name": "list_approvals", "status": None, "limit": 50, "offset": 0, "full": False},
    ),
    (GetApproval(approval_id="ap-1"), {"name": "get_approval", "approvalId": "ap-1"}),
    (
        DecideRequest(approval_id="ap-2", status="approved", note="looks good"),
        {"name": "decide", "approvalId": "ap-2", "status": "approved", "note": "looks good"},
    ),
    (
        DecideRequest(status="rejected"),
        {"name": "decide", "approvalId": "", "status": "rejected", "note": None},
    ),
    (
        DispatchRequest(approval_id="ap-3", dry_run=True),
        {"name": "dispatch", "approvalId": "ap-3", "dryRun": True},
    ),
    (CountPending(), {"name": "count_pending"}),
    (CheckHealth(), {"name": "health"}),
    (ReadMetrics(), {"name": "metrics"}),
]


def _ids() -> list[str]:
    return [f"{type(c).__name__}-{i}" for i, (c, _) in enumerate(COMMANDS)]


@pytest.mark.parametrize(("command", "wire"), COMMANDS, ids=_ids())
def test_command_envelope_round_trip(command: Any, wire: dict[str, Any]) -> None:
    envelope = CommandEnvelope(token="tok", command=command)
    raw = envelope.to_json()
    assert isinstance(raw, bytes)
    doc = json.loads(raw)
    assert doc == {"schemaVersion": 1, "messageId": envelope.message_id,
                   "correlationId": envelope.correlation_id, "token": "tok", "command": wire}
    parsed = CommandEnvelope.model_validate_json(raw)
    assert parsed == envelope
    assert type(parsed.command) is type(command)


@pytest.mark.parametrize(("command", "wire"), COMMANDS, ids=_ids())
def test_command_parsed_from_hand_written_wire_json(command: Any, wire: dict[str, Any]) -> None:
    raw = json.dumps({"messageId": "m-1", "correlationId": "c-1", "command": wire})
    parsed = CommandEnvelope.model_validate_json(raw)
    assert parsed.command == command
    assert (parsed.message_id, parsed.correlation_id, parsed.token, parsed.schema_version) == ("m-1", "c-1",
                                                                                                None, 1)


def test_envelope_ids_are_fresh_uuids() -> None:
    a, b = CommandEnvelope(command=CheckHealth()), CommandEnvelope(command=CheckHealth())
    assert a.message_id != b.message_id
    assert a.correlation_id != b.correlation_id
    assert a.message_id != a.correlation_id
    assert len(a.message_id) == 36 and a.message_id.count("-") == 4


def test_unknown_command_name_rejected() -> None:
    with pytest.raises(ValidationError):
        CommandEnvelope.model_validate_json(json.dumps({"command": {"name": "launch_missiles"}}))


def test_unknown_envelope_key_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        CommandEnvelope.model_validate_json(json.dumps({"command": {"name": "health"}, "sneaky": 1}))
    assert "sneaky" in str(info.value)


@pytest.mark.parametrize(
    "command",
    [
        {"name": "execute", "actionId": "a.b", "extra": 1},
        {"name": "dispatch", "approvalId": "x", "dryRun": False, "force": True},
        {"name": "health", "verbose": True},
        {"name": "decide", "status": "approved", "reason": "typo for note"},
    ],
)
def test_unknown_command_key_rejected(command: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CommandEnvelope.model_validate_json(json.dumps({"command": command}))


def test_unknown_key_rejected_in_direct_construction() -> None:
    with pytest.raises(ValidationError):
        ExecuteRequest(action_id="a.b", surprise=1)  # type: ignore[call-arg]  # the unknown key under test


def test_schema_version_other_than_1_rejected() -> None:
    with pytest.raises(ValidationError):
        CommandEnvelope.model_validate_json(json.dumps({"schemaVersion": 2, "command": {"name": "health"}}))


def test_models_are_frozen() -> None:
    request = ExecuteRequest(action_id="a.b")
    with pytest.raises(ValidationError):
        request.action_id = "c.d"  # type: ignore[misc]  # the frozen assignment under test


# ---------------------------------------------------------------- ExecuteRequest validation


def test_execute_request_action_id_bounds() -> None:
    assert ExecuteRequest(action_id="a").action_id == "a"
    assert ExecuteRequest(action_id="a" * 200).action_id == "a" * 200
    for bad in ("", "a" * 201):
        with pytest.raises(ValidationError):
            ExecuteRequest(action_id=bad)


def test_execute_request_action_id_required() -> None:
    with pytest.raises(ValidationError):
        ExecuteRequest.model_validate({"name": "execute"})


def test_execute_request_request_id_bounds() -> None:
    assert ExecuteRequest(action_id="a", request_id=None).request_id is None
    assert ExecuteRequest(action_id="a", request_id="r").request_id == "r"
    assert ExecuteRequest(action_id="a", request_id="r" * 200).request_id == "r" * 200
    for bad in ("", "r" * 201):
        with pytest.raises(ValidationError):
            ExecuteRequest(action_id="a", request_id=bad)


def test_execute_request_mode() -> None:
    assert ExecuteRequest(action_id="a").mode == "execute"
    assert ExecuteRequest(action_id="a", mode="dry-run").mode == "dry-run"
    for bad in ("dry_run", "run", "EXECUTE"):
        with pytest.raises(ValidationError):
            ExecuteRequest(action_id="a", mode=bad)


def test_execute_request_payload_must_be_an_object() -> None:
    for bad in ([1, 2], "x", 3):
        with pytest.raises(ValidationError):
            ExecuteRequest.model_validate({"actionId": "a", "payload": bad})


def test_execute_request_name_is_fixed() -> None:
    with pytest.raises(ValidationError):
        ExecuteRequest.model_validate({"name": "decide", "actionId": "a"})


# ---------------------------------------------------------------- ListApprovals / DecideRequest


@pytest.mark.parametrize("limit", [1, 2, 50, 199, 200])
def test_list_approvals_limit_in_bounds(limit: int) -> None:
    assert ListApprovals(limit=limit).limit == limit


@pytest.mark.parametrize("limit", [-1, 0, 201, 10_000])
def test_list_approvals_limit_out_of_bounds(limit: int) -> None:
    with pytest.raises(ValidationError):
        ListApprovals(limit=limit)


def test_list_approvals_offset_and_status() -> None:
    assert ListApprovals(offset=0).offset == 0
    with pytest.raises(ValidationError):
        ListApprovals(offset=-1)
    with pytest.raises(ValidationError):
        ListApprovals(status="done")


def test_decide_request_validation() -> None:
    with pytest.raises(ValidationError):
        DecideRequest(status="pending")
    with pytest.raises(ValidationError):
        DecideRequest.model_validate({"approvalId": "x"})  # status is required
    assert DecideRequest(status="approved", note="n" * 4000).note == "n" * 4000
    with pytest.raises(ValidationError):
        DecideRequest(status="approved", note="n" * 4001)


def test_snake_case_names_are_also_accepted_on_input() -> None:
    # populate_by_name: Python names work as well as the wire aliases.
    assert DispatchRequest.model_validate({"approval_id": "x", "dry_run": True}) == DispatchRequest(
        approval_id="x", dry_run=True)


# ---------------------------------------------------------------- dispatch contract

T0 = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
T1 = T0 + timedelta(seconds=2)


def _step_result(status: str = "succeeded") -> StepResult:
    return StepResult(
        step_id="post-webhook", connector="webhook", operation="post", status=status,
        attempts=2, started_at=T0, finished_at=T1, http_status=200, duration_ms=2000.5,
        result={"status": 200}, error=None,
    )


def test_dispatch_order_round_trip() -> None:
    order = DispatchOrder(
        approval_id="ap-1", tenant_id="acme", action_id="notify.webhook", claim_token="claim-1",
        steps=[PlanStep(step_id="post-webhook", connector="webhook", operation="post",
                        params={"body": {"a": 1}}),
               PlanStep(step_id="announce", connector="slack", operation="post_message")],
        completed=[_step_result()],
        notify=ReplyAddress(reply_to="amq.rabbitmq.reply-to.xyz", correlation_id="c-1"),
    )
    raw = order.to_json()
    doc = json.loads(raw)
    assert set(doc) == {"schemaVersion", "messageId", "approvalId", "tenantId", "actionId", "claimToken",
                        "attempt", "leaseExpiresAt", "steps", "completed", "notify"}
    assert doc["steps"][0] == {"stepId": "post-webhook", "connector": "webhook", "operation": "post",
                               "params": {"body": {"a": 1}}}
    assert doc["steps"][1]["params"] == {}
    assert doc["notify"] == {"replyTo": "amq.rabbitmq.reply-to.xyz", "correlationId": "c-1"}
    assert doc["completed"][0]["stepId"] == "post-webhook"
    assert doc["completed"][0]["httpStatus"] == 200
    assert doc["completed"][0]["durationMs"] == 2000.5
    assert doc["completed"][0]["startedAt"].startswith("2024-05-01T12:00:00.123")
    parsed = DispatchOrder.model_validate_json(raw)
    assert parsed == order
    assert parsed.completed[0].started_at == T0


def test_dispatch_order_defaults() -> None:
    order = DispatchOrder(approval_id="a", tenant_id="t", action_id="x", claim_token="c", steps=[])
    assert order.completed == [] and order.notify is None and order.schema_version == 1
    assert DispatchOrder.model_validate_json(order.to_json()) == order


def test_dispatch_order_unknown_key_rejected() -> None:
    order = DispatchOrder(approval_id="a", tenant_id="t", action_id="x", claim_token="c", steps=[])
    doc = json.loads(order.to_json())
    doc["steps"] = [{"stepId": "s", "connector": "c", "operation": "o", "retries": 3}]
    with pytest.raises(ValidationError):
        DispatchOrder.model_validate(doc)


def test_step_report_round_trip() -> None:
    failed = StepResult(step_id="announce", connector="slack", operation="post_message", status="failed",
                        attempts=4, error=ErrorBody(code="http_retryable", message="slack: HTTP 503"),
                        http_status=503)
    report = StepReport(
        approval_id="ap-1", tenant_id="acme", claim_token="claim-1", step=failed,
        plan_status="dispatch_failed",
        results=[_step_result(), failed],
        notify=ReplyAddress(reply_to="r", correlation_id="c"),
    )
    raw = report.to_json()
    doc = json.loads(raw)
    assert doc["planStatus"] == "dispatch_failed"
    assert doc["claimToken"] == "claim-1"
    assert doc["step"]["error"] == {"code": "http_retryable", "message": "slack: HTTP 503"}
    assert doc["step"]["startedAt"] is None
    assert [r["status"] for r in doc["results"]] == ["succeeded", "failed"]
    parsed = StepReport.model_validate_json(raw)
    assert parsed == report


def test_step_report_keeps_timezone_offsets() -> None:
    plus2 = timezone(timedelta(hours=2))
    result = StepResult(step_id="s", connector="c", operation="o", status="simulated",
                        started_at=datetime(2024, 1, 1, 14, 0, tzinfo=plus2))
    report = StepReport(approval_id="a", tenant_id="t", claim_token="c", step=result, plan_status="running")
    parsed = StepReport.model_validate_json(report.to_json())
    assert parsed.step.started_at == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert parsed.step.started_at.utcoffset() == timedelta(hours=2)


def test_step_report_rejects_bad_statuses() -> None:
    with pytest.raises(ValidationError):
        StepReport(approval_id="a", tenant_id="t", claim_token="c", step=_step_result(),
                   plan_status="done")
    with pytest.raises(ValidationError):
        _step_result(status="crashed")


def test_reply_round_trip() -> None:
    reply: Reply[None] = Reply(ok=False, error=ErrorBody(code="not_found", message="no such approval"),
                               follow_up=True)
    doc = json.loads(reply.to_json())
    assert doc == {"schemaVersion": 1, "ok": False, "data": None,
                   "error": {"code": "not_found", "message": "no such approval"}, "followUp": True}
    assert Reply.model_validate_json(reply.to_json()) == reply


# ---------------------------------------------------------------- every contract model

_PLAN = [PlanStep(step_id="s", connector="webhook", operation="post", params={"body": {"a": 1}})]
_VIEW = ApprovalView(
    id="ap-1", request_id="r-1", tenant_id="acme", operator_id="olga", action_id="notify.webhook",
    approval_status=ApprovalStatus.APPROVED, approver_id="adam", approval_note="fine", payload={"snake_key": 1},
    plan=_PLAN, plan_hash="h" * 64, dispatch_result=None, created_at=T0, updated_at=T1, decided_at=T1,
    dispatched_at=None, finished_at=None, expires_at=T1 + timedelta(hours=1),
    audit=[AuditEntry(event="approval.decided", actor="adam", role="admin", from_status=ApprovalStatus.PENDING,
                      to_status=ApprovalStatus.APPROVED, note="fine", correlation_id="c-1", at=T1)])

# One instance of each model in CONTRACT_MODELS, with every optional part filled in where it has one.
SAMPLES: dict[type[BaseModel], BaseModel] = {
    CommandEnvelope: CommandEnvelope(token="tok", command=DispatchRequest(approval_id="ap-1", dry_run=True)),
    Reply: Reply[PendingCount](ok=True, data=PendingCount(pending_count=2), follow_up=True),
    DispatchOrder: DispatchOrder(approval_id="ap-1", tenant_id="acme", action_id="notify.webhook", claim_token="c",
                                 steps=_PLAN, completed=[_step_result()],
                                 notify=ReplyAddress(reply_to="r", correlation_id="c")),
    StepReport: StepReport(approval_id="ap-1", tenant_id="acme", claim_token="c", step=_step_result(),
                           plan_status="dispatched", results=[_step_result()]),
    ApprovalEvent: ApprovalEvent(type="approval.decided", approval_id="ap-1", tenant_id="acme",
                                 action_id="notify.webhook", actor="adam", from_status=ApprovalStatus.PENDING,
                                 to_status=ApprovalStatus.APPROVED, occurred_at=T0, correlation_id="c", note="n"),
    ApprovalView: _VIEW,
    ApprovalPage: ApprovalPage(approvals=[_VIEW.model_copy(update={"audit": None})], total=1, pending_count=0,
                               limit=50, offset=0),
    PendingCount: PendingCount(pending_count=3),
    ExecuteAccepted: ExecuteAccepted(approval_id="ap-1", approval_required=True,
                                     approval_status=ApprovalStatus.PENDING, plan_hash="h", request_id="r",
                                     created=True),
    DryRunPlan: DryRunPlan(action_id="notify.webhook", plan=_PLAN, plan_hash="h"),
    DispatchOutcome: DispatchOutcome(approval_id="ap-1", approval_status=ApprovalStatus.DISPATCHED,
                                     dispatch_result=[_step_result()]),
    ChainView: ChainView(approval_id="ap-1", approval_status=ApprovalStatus.PENDING, current_stage="review",
                         stages=[ChainStage(name="review", roles=["approver"], approvals_required=1, state="current",
                                            approvals=0, decisions=[ChainDecision(
                                                approver_id="amy", role="approver", stage_index=0, stage="review",
                                                decision="approved", note=None, decided_at=T0)])]),
    HealthReport: HealthReport(database=ComponentHealth(status="error", detail="OperationalError")),
    MetricsText: MetricsText(text="# HELP x\n"),
    DispatchPlan: DispatchPlan(stale=False, steps=_PLAN, completed=[_step_result()], lease_expires_at=T1),
    LeaseGrant: LeaseGrant(granted=True, lease_expires_at=T1),
}


def test_every_contract_model_has_a_sample() -> None:
    assert set(SAMPLES) == set(CONTRACT_MODELS)


def test_every_reply_model_is_a_contract_model() -> None:
    for command in get_args(get_args(Command)[0]):
        members = get_args(command.reply_model) or (command.reply_model,)
        assert set(members) <= set(CONTRACT_MODELS), command


@pytest.mark.parametrize("model", CONTRACT_MODELS, ids=[m.__name__ for m in CONTRACT_MODELS])
def test_contract_model_round_trips_and_is_strict(model: type[BaseModel]) -> None:
    sample = SAMPLES[model]
    raw = sample.to_json()  # type: ignore[attr-defined]  # every contract model has to_json
    parsed = (Reply[PendingCount] if model is Reply else model).model_validate_json(raw)
    assert parsed == sample
    doc = json.loads(raw)
    with pytest.raises(ValidationError):  # unknown keys are refused
        model.model_validate({**doc, "surprise": 1})
    with pytest.raises(ValidationError):  # and nothing changes a model once made
        setattr(parsed, next(iter(model.model_fields)), None)


def test_approval_view_keeps_runbook_names_and_leaves_out_unread_audit() -> None:
    doc = json.loads(_VIEW.to_json())
    assert {"approval_status", "plan_hash", "request_id", "expires_at"} <= set(doc)
    assert doc["plan"][0]["stepId"] == "s" and doc["payload"] == {"snake_key": 1}
    assert doc["audit"][0] == {"event": "approval.decided", "actor": "adam", "role": "admin", "from": "pending",
                               "to": "approved", "note": "fine", "correlationId": "c-1",
                               "at": "2024-05-01T12:00:02.123000Z"}
    assert json.loads(Reply(ok=True, data=_VIEW).to_json())["data"] == doc  # the same inside a reply
    assert "audit" not in json.loads(_VIEW.model_copy(update={"audit": None}).to_json())


def test_a_reply_is_read_straight_into_its_model() -> None:
    raw = Reply(ok=True, data=DispatchOutcome(approval_id="a", approval_status=ApprovalStatus.DISPATCHING)).to_json()
    assert json.loads(raw)["data"] == {"approvalId": "a", "approvalStatus": "dispatching", "dispatchResult": None,
                                       "dryRun": False}
    parsed = Reply[DispatchOutcome].model_validate_json(raw)
    assert isinstance(parsed.data, DispatchOutcome) and parsed.data.approval_status is ApprovalStatus.DISPATCHING
    with pytest.raises(ValidationError):
        Reply[PendingCount].model_validate_json(raw)


def test_a_step_result_never_carries_a_nul_character_postgresql_cannot_store() -> None:
    wire = json.dumps({"stepId": "s\u0000", "connector": "webhook", "operation": "post", "status": "failed",
                       "result": {"body\u0000": ["a\u0000b", {"n": 1, "t": "\u0000"}]},
                       "error": {"code": "bad\u0000", "message": "upstream said \u0000"}})
    step = StepResult.model_validate_json(wire)
    assert "\x00" not in step.model_dump_json()
    assert step.result == {"body\ufffd": ["a\ufffdb", {"n": 1, "t": "\ufffd"}]}
    assert step.error == ErrorBody(code="bad\ufffd", message="upstream said \ufffd")
    assert step.step_id == "s\ufffd"
