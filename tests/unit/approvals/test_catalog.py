"""The action catalog: hashing, plan rendering, payload checks and loading (pj_approvals.catalog)."""

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from pj_approvals.catalog import (
    Action,
    ApprovalRule,
    Catalog,
    CatalogError,
    StageSpec,
    build_plan,
    canonical_json,
    check_payload,
    load_catalog,
    plan_document,
    plan_hash,
    request_hash,
)
from pj_approvals.domain import Rule, Stage
from pj_approvals.settings import DEFAULT_CATALOG
from pj_common.auth import Role
from pj_common.errors import ErrorCode, GateError
from pj_common.messages import PlanStep

# ---------------------------------------------------------------- canonical_json


def test_canonical_json_sorts_keys_at_every_level() -> None:
    a = {"b": 1, "a": {"z": [1, {"y": 2, "x": 3}], "c": None}}
    b = {"a": {"c": None, "z": [1, {"x": 3, "y": 2}]}, "b": 1}
    assert canonical_json(a) == canonical_json(b)
    assert canonical_json(a) == b'{"a":{"c":null,"z":[1,{"x":3,"y":2}]},"b":1}'


def test_canonical_json_has_no_insignificant_whitespace() -> None:
    out = canonical_json({"k": [1, 2, {"a": "b"}], "m": True})
    assert out == b'{"k":[1,2,{"a":"b"}],"m":true}'
    assert b" " not in out and b"\n" not in out


def test_canonical_json_keeps_whitespace_inside_strings() -> None:
    assert canonical_json({"t": "a b\tc"}) == b'{"t":"a b\\tc"}'


def test_canonical_json_keeps_non_ascii_as_utf8() -> None:
    out = canonical_json({"name": "Zoë ✓ 東京"})
    assert isinstance(out, bytes)
    assert out == '{"name":"Zoë ✓ 東京"}'.encode()
    assert b"\\u" not in out
    assert json.loads(out.decode("utf-8")) == {"name": "Zoë ✓ 東京"}


def test_canonical_json_list_order_is_significant() -> None:
    assert canonical_json([1, 2]) != canonical_json([2, 1])


# ---------------------------------------------------------------- plan_hash / request_hash

PLAN: list[dict[str, Any]] = [
    {"stepId": "post-webhook", "connector": "webhook", "operation": "post", "params": {"body": {"n": 1}}},
    {"stepId": "announce", "connector": "slack", "operation": "post_message",
     "params": {"text": "hi", "channel": "#ops"}},
]


def test_plan_hash_known_vector() -> None:
    expected_bytes = (
        b'[{"connector":"webhook","operation":"post","params":{"body":{"n":1}},"stepId":"post-webhook"},'
        b'{"connector":"slack","operation":"post_message","params":{"channel":"#ops","text":"hi"},'
        b'"stepId":"announce"}]'
    )
    assert canonical_json(PLAN) == expected_bytes
    assert plan_hash(PLAN) == hashlib.sha256(expected_bytes).hexdigest()


def test_plan_hash_is_hex_sha256_and_stable() -> None:
    h = plan_hash(PLAN)
    assert len(h) == 64
    assert all(c in "0123456789abcdef" for c in h)
    assert plan_hash(copy.deepcopy(PLAN)) == h
    assert plan_hash(PLAN) == h


def test_plan_hash_ignores_key_order() -> None:
    reordered = [
        {"params": {"body": {"n": 1}}, "operation": "post", "connector": "webhook", "stepId": "post-webhook"},
        {"params": {"channel": "#ops", "text": "hi"}, "operation": "post_message", "connector": "slack",
         "stepId": "announce"},
    ]
    assert plan_hash(reordered) == plan_hash(PLAN)


def _variants() -> list[tuple[str, list[dict[str, Any]]]]:
    out: list[tuple[str, list[dict[str, Any]]]] = []

    def variant(name: str, change: Callable[[list[dict[str, Any]]], object]) -> None:
        plan = copy.deepcopy(PLAN)
        change(plan)
        out.append((name, plan))

    variant("step_id", lambda p: p[0].__setitem__("stepId", "post-webhook-2"))
    variant("connector", lambda p: p[0].__setitem__("connector", "webhook2"))
    variant("operation", lambda p: p[1].__setitem__("operation", "post_ephemeral"))
    variant("nested_param_value", lambda p: p[0]["params"]["body"].__setitem__("n", 2))
    variant("nested_param_type", lambda p: p[0]["params"]["body"].__setitem__("n", "1"))
    variant("param_value", lambda p: p[1]["params"].__setitem__("text", "hi!"))
    variant("param_added", lambda p: p[1]["params"].__setitem__("extra", None))
    variant("param_removed", lambda p: p[1]["params"].pop("channel"))
    variant("step_order", lambda p: p.reverse())
    variant("step_removed", lambda p: p.pop())
    return out


@pytest.mark.parametrize(("name", "changed"), _variants(), ids=[n for n, _ in _variants()])
def test_plan_hash_changes_with_any_change(name: str, changed: list[dict[str, Any]]) -> None:
    assert changed != PLAN
    assert plan_hash(changed) != plan_hash(PLAN)


def test_plan_document_uses_wire_names_and_hashes_like_the_dict() -> None:
    steps = [PlanStep(step_id="post-webhook", connector="webhook", operation="post",
                      params={"body": {"n": 1}})]
    doc = plan_document(steps)
    assert doc == [{"stepId": "post-webhook", "connector": "webhook", "operation": "post",
                    "params": {"body": {"n": 1}}}]
    assert plan_hash(doc) == plan_hash(PLAN[:1])


def test_request_hash_known_vector() -> None:
    expected = hashlib.sha256(b'{"actionId":"notify.webhook","payload":{"a":1,"b":"\xc3\xa9"}}').hexdigest()
    assert request_hash("notify.webhook", {"b": "é", "a": 1}) == expected


def test_request_hash_sensitivity() -> None:
    base = request_hash("environment.create", {"name": "dev", "config": {"x": 1}})
    assert request_hash("environment.create", {"config": {"x": 1}, "name": "dev"}) == base
    assert request_hash("environment.update", {"name": "dev", "config": {"x": 1}}) != base
    assert request_hash("environment.create", {"name": "dev2", "config": {"x": 1}}) != base
    assert request_hash("environment.create", {"name": "dev", "config": {"x": 2}}) != base
    assert request_hash("environment.create", {"name": "dev"}) != base
    assert request_hash("environment.create", {}) != request_hash("environment.create", {"x": None})


# ---------------------------------------------------------------- build_plan


def _action(params: dict[str, Any], **extra: Any) -> Action:
    return Action.model_validate(
        {"plan": [{"stepId": "s1", "connector": "c", "operation": "op", "params": params}], **extra}
    )


def _render(params: dict[str, Any], payload: dict[str, Any], tenant: dict[str, Any] | None = None,
            action_id: str = "a.b") -> dict[str, Any]:
    steps = build_plan(action_id, _action(params), payload, tenant={"id": "acme"} if tenant is None else tenant)
    assert len(steps) == 1
    return steps[0].params


@pytest.mark.parametrize(
    "value",
    [5, 2.5, True, False, None, "text", [1, "two", {"three": 3}], {"nested": {"deep": [1]}}],
    ids=["int", "float", "true", "false", "null", "str", "list", "dict"],
)
def test_whole_string_placeholder_keeps_json_type(value: Any) -> None:
    params = _render({"v": "{{ payload.v }}", "tight": "{{payload.v}}", "spaced": "{{   payload.v   }}"},
                     {"v": value})
    assert params == {"v": value, "tight": value, "spaced": value}
    assert type(params["v"]) is type(value)


def test_whole_payload_placeholder() -> None:
    payload = {"a": 1, "b": [True]}
    assert _render({"body": "{{ payload }}"}, payload) == {"body": payload}


def test_tenant_and_action_placeholders() -> None:
    params = _render({"t": "{{ tenant.id }}", "a": "{{ action.id }}",
                      "both": "{{ action.id }}@{{ tenant.id }}"},
                     {}, tenant={"id": "acme"}, action_id="environment.create")
    assert params == {"t": "acme", "a": "environment.create", "both": "environment.create@acme"}


def test_inline_interpolation() -> None:
    params = _render(
        {"branch": "env/{{ payload.name }}", "msg": "{{ payload.name }} has {{payload.n}} items",
         "deep": "x-{{ payload.cfg.region }}-y"},
        {"name": "dev", "n": 3, "cfg": {"region": "eu"}},
    )
    assert params == {"branch": "env/dev", "msg": "dev has 3 items", "deep": "x-eu-y"}


def test_missing_path_whole_is_none_inline_is_empty() -> None:
    params = _render(
        {"whole": "{{ payload.missing }}", "inline": "env/{{ payload.missing }}",
         "too_deep": "{{ payload.name.sub }}", "too_deep_inline": "a{{ payload.name.sub }}b",
         "no_root": "{{ nothing.here }}"},
        {"name": "dev"},
    )
    assert params == {"whole": None, "inline": "env/", "too_deep": None, "too_deep_inline": "ab",
                      "no_root": None}


def test_inline_none_value_becomes_empty_string() -> None:
    assert _render({"m": "x{{ payload.v }}y"}, {"v": None}) == {"m": "xy"}


def test_render_walks_nested_lists_and_dicts_and_leaves_other_values() -> None:
    params = _render(
        {"fields": {"Title": "{{ payload.name }}", "List": ["{{ payload.n }}", "n={{ payload.n }}", 7, None]},
         "flag": True, "num": 1.5, "plain": "no placeholders", "braces": "{ payload.name }"},
        {"name": "dev", "n": 4},
    )
    assert params == {"fields": {"Title": "dev", "List": [4, "n=4", 7, None]},
                      "flag": True, "num": 1.5, "plain": "no placeholders", "braces": "{ payload.name }"}


def test_invalid_placeholder_characters_are_left_alone() -> None:
    assert _render({"p": "{{ payload.na-me }}"}, {"na-me": "x"}) == {"p": "{{ payload.na-me }}"}


def test_placeholder_does_not_index_into_lists() -> None:
    assert _render({"p": "{{ payload.items.0 }}"}, {"items": ["a"]}) == {"p": None}


def test_whole_string_placeholder_with_trailing_newline_is_inline() -> None:
    # "{{ x }}\n" is not a placeholder that is the whole string: it must be interpolated, keeping the
    # newline, like any other string with text around the placeholder.
    assert _render({"p": "{{ payload.n }}\n"}, {"n": 5}) == {"p": "5\n"}


def test_build_plan_keeps_step_order_and_fields_and_does_not_mutate_inputs() -> None:
    action = Action.model_validate({
        "plan": [
            {"stepId": "one", "connector": "github", "operation": "create_branch",
             "params": {"branch": "env/{{ payload.name }}"}},
            {"stepId": "two", "connector": "slack", "operation": "post_message", "params": {}},
            {"stepId": "three", "connector": "webhook", "operation": "post"},
        ]
    })
    payload = {"name": "dev"}
    steps = build_plan("environment.create", action, payload, tenant={"id": "acme"})
    assert steps == [
        PlanStep(step_id="one", connector="github", operation="create_branch", params={"branch": "env/dev"}),
        PlanStep(step_id="two", connector="slack", operation="post_message", params={}),
        PlanStep(step_id="three", connector="webhook", operation="post", params={}),
    ]
    assert payload == {"name": "dev"}
    assert action.plan[0].params == {"branch": "env/{{ payload.name }}"}


def test_build_plan_is_deterministic() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    action = catalog.action("environment.create")
    payload = {"name": "dev", "config": {"b": 1, "a": [1, 2]}}
    acme = catalog.tenant_settings("acme")
    first = plan_hash(plan_document(build_plan("environment.create", action, payload, tenant=acme)))
    second = plan_hash(plan_document(build_plan("environment.create", action, dict(reversed(payload.items())),
                                                tenant=catalog.tenant_settings("acme"))))
    assert first == second
    other = catalog.tenant_settings("other")
    assert plan_hash(plan_document(build_plan("environment.create", action, payload, tenant=other))) != first


def test_build_plan_on_default_environment_create() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    steps = build_plan("environment.create", catalog.action("environment.create"),
                       {"name": "dev", "config": {"replicas": 2}}, tenant=catalog.tenant_settings("acme"))
    by_id = {s.step_id: s for s in steps}
    assert [s.step_id for s in steps] == [
        "create-branch", "write-config", "open-pull-request", "record-in-sharepoint", "announce",
    ]
    repo = {"repo": "example-org/environments"}
    assert by_id["create-branch"].params == {**repo, "branch": "env/dev", "base": "main"}
    assert by_id["write-config"].params == {
        **repo, "branch": "env/dev", "path": "environments/dev.json",
        "content": {"name": "dev", "config": {"replicas": 2}}, "message": "Create environment dev",
    }
    assert by_id["open-pull-request"].params == {
        **repo, "head": "env/dev", "base": "main", "title": "Create environment dev"}
    assert by_id["record-in-sharepoint"].params["fields"] == {"Title": "dev", "Tenant": "acme"}
    assert by_id["record-in-sharepoint"].params["listId"] == "Environments"
    assert by_id["announce"].params == {"channel": "C0000000000", "text": "Environment dev created for acme"}


def test_json_filter_renders_a_value_as_a_json_string() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    steps = build_plan("environment.update", catalog.action("environment.update"),
                       {"environmentId": "e1", "patch": {"b": 1, "a": [True]}}, tenant=catalog.tenant_settings("acme"))
    assert steps[0].params["inputs"] == {"environmentId": "e1", "patch": '{"a":[true],"b":1}'}


# ---------------------------------------------------------------- check_payload

SCHEMA_ACTION = _action(
    {},
    payload_schema={
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z]+$"},
            "count": {"type": "integer", "minimum": 1},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    },
)


def test_check_payload_accepts_valid() -> None:
    check_payload("x.y", SCHEMA_ACTION, {"name": "dev"})  # valid: no error
    check_payload("x.y", SCHEMA_ACTION, {"name": "dev", "count": 3, "tags": ["a"]})  # valid: no error


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({}, "payload"),
        ({"name": 5}, "name"),
        ({"name": "DEV"}, "name"),
        ({"name": "dev", "count": 0}, "count"),
        ({"name": "dev", "count": "3"}, "count"),
        ({"name": "dev", "other": 1}, "payload"),
        ({"name": "dev", "tags": ["a", 2]}, "tags/1"),
    ],
    ids=["missing-required", "wrong-type", "pattern", "minimum", "int-as-string", "additional", "array-item"],
)
def test_check_payload_rejects_schema_violations(payload: dict[str, Any], where: str) -> None:
    with pytest.raises(GateError) as info:
        check_payload("x.y", SCHEMA_ACTION, payload)
    assert info.value.code is ErrorCode.INVALID_PAYLOAD
    assert info.value.message.startswith(f"x.y: {where}: ")


def test_check_payload_reports_the_first_violation_by_path() -> None:
    # Root-level problems (empty path) sort before field-level ones.
    with pytest.raises(GateError) as info:
        check_payload("x.y", SCHEMA_ACTION, {"count": 0})
    assert info.value.message.startswith("x.y: payload: ")
    assert "'name' is a required property" in info.value.message


def test_check_payload_default_schema_accepts_any_object() -> None:
    action = _action({})
    assert action.payload_schema == {"type": "object"}
    check_payload("x.y", action, {"anything": [1, {"goes": None}]})  # valid: no error


def test_check_payload_on_default_catalog() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    create = catalog.action("environment.create")
    check_payload("environment.create", create, {"name": "dev-1"})  # valid: no error
    for bad in ({"name": "Dev"}, {"name": "-dev"}, {}, {"name": "dev", "x": 1}, {"name": "a" * 64}):
        with pytest.raises(GateError) as info:
            check_payload("environment.create", create, bad)
        assert info.value.code is ErrorCode.INVALID_PAYLOAD


# ---------------------------------------------------------------- Catalog


def _catalog() -> Catalog:
    step = [{"stepId": "s", "connector": "c", "operation": "o"}]
    return Catalog.model_validate({
        "version": 1,
        "actions": {
            "only.admin": {"plan": step},
            "approvers": {"plan": step, "approval": {"roles": ["approver", "admin"]}},
            "approver.only": {"plan": step, "approval": {"roles": ["approver"]}},
            "nobody": {"plan": step, "approval": {"roles": []}},
        },
    })


def test_catalog_action_known_and_unknown() -> None:
    catalog = _catalog()
    assert catalog.action("approvers") is catalog.actions["approvers"]
    with pytest.raises(GateError) as info:
        catalog.action("does.not.exist")
    assert info.value.code is ErrorCode.UNKNOWN_ACTION
    assert "'does.not.exist'" in info.value.message


def test_catalog_rules_per_action() -> None:
    catalog = _catalog()
    assert catalog.action("only.admin").rule(60) == Rule(
        stages=(Stage("approval", frozenset({Role.ADMIN}), 1),), dispatch_window_s=60)
    assert catalog.action("approvers").rule(60).stages == (
        Stage("approval", frozenset({Role.APPROVER, Role.ADMIN}), 1),)
    assert catalog.action("approver.only").rule(60).stages == (Stage("approval", frozenset({Role.APPROVER}), 1),)
    assert catalog.action("nobody").rule(60).stages == (Stage("approval", frozenset(), 1),)


def test_action_defaults() -> None:
    action = _action({})
    assert action.description == ""
    assert action.tier == "governed"
    assert action.requesters == frozenset({Role.ADMIN, Role.OPERATOR})
    assert action.approval.stages == [StageSpec(name="approval", roles=frozenset({Role.ADMIN}), approvals_required=1)]
    assert action.pending_ttl is None
    assert action.dispatch_window is None


def test_action_default_rule_is_not_shared_between_actions() -> None:
    assert _action({}).approval is not _action({}).approval
    assert _action({}).approval == _action({}).approval


@pytest.mark.parametrize("tier", ["governed", "launch"])
def test_action_tiers(tier: str) -> None:
    assert _action({}, tier=tier).tier == tier


@pytest.mark.parametrize("tier", ["instant", "", "Governed", None])
def test_action_unknown_tier_is_refused(tier: Any) -> None:
    with pytest.raises(ValidationError) as info:
        _action({}, tier=tier)
    assert info.value.errors()[0]["loc"] == ("tier",)


# ---------------------------------------------------------------- ApprovalRule


def test_approval_shorthand_is_one_stage_named_approval() -> None:
    rule = ApprovalRule.model_validate({"roles": ["approver", "admin"], "approvals_required": 2})
    assert rule.stages == [StageSpec(name="approval", roles=frozenset({Role.APPROVER, Role.ADMIN}),
                                     approvals_required=2)]


def test_approval_shorthand_defaults() -> None:
    assert ApprovalRule.model_validate({}).stages == [StageSpec(name="approval")]
    assert ApprovalRule.model_validate({"roles": ["approver"]}).stages == [
        StageSpec(name="approval", roles=frozenset({Role.APPROVER}), approvals_required=1)]
    assert StageSpec(name="x").roles == frozenset({Role.ADMIN})
    assert StageSpec(name="x").approvals_required == 1


def test_approval_shorthand_in_an_action_gives_a_one_stage_rule() -> None:
    action = _action({}, approval={"roles": ["approver"], "approvals_required": 3})
    assert action.rule(10.0) == Rule(stages=(Stage("approval", frozenset({Role.APPROVER}), 3),),
                                     dispatch_window_s=10.0)


def test_approval_explicit_stages_keep_their_order() -> None:
    action = _action({}, approval={"stages": [
        {"name": "review", "roles": ["approver"]},
        {"name": "signoff", "roles": ["admin"], "approvals_required": 2},
        {"name": "audit", "roles": ["admin", "approver"]},
    ]})
    assert action.rule(5.0).stages == (
        Stage("review", frozenset({Role.APPROVER}), 1),
        Stage("signoff", frozenset({Role.ADMIN}), 2),
        Stage("audit", frozenset({Role.ADMIN, Role.APPROVER}), 1),
    )


def _approval_errors(data: Any) -> list[ErrorDetails]:
    with pytest.raises(ValidationError) as info:
        ApprovalRule.model_validate(data)
    return info.value.errors(include_url=False)


def test_approval_stage_names_must_be_unique() -> None:
    errors = _approval_errors({"stages": [{"name": "a"}, {"name": "b"}, {"name": "a"}]})
    assert len(errors) == 1
    assert "stage names must be unique" in errors[0]["msg"]


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"stages": []}, ("stages",)),
        ({"stages": [{"roles": ["admin"]}]}, ("stages", 0, "name")),
        ({"stages": [{"name": ""}]}, ("stages", 0, "name")),
        ({"stages": [{"name": "a", "approvals_required": 0}]}, ("stages", 0, "approvals_required")),
        ({"approvals_required": 0}, ("stages", 0, "approvals_required")),
        ({"approvals_required": -1}, ("stages", 0, "approvals_required")),
        ({"roles": ["root"]}, ("stages", 0, "roles", 0)),
        ({"stages": [{"name": "a", "roles": ["admin", "root"]}]}, ("stages", 0, "roles", 1)),
        ({"stages": [{"name": "a", "quorum": 2}]}, ("stages", 0, "quorum")),
        ({"roles": ["admin"], "quorum": 2}, ("stages", 0, "quorum")),
        # Shorthand and stages do not mix: with `stages` present, `roles` is an unknown key.
        ({"stages": [{"name": "a"}], "roles": ["admin"]}, ("roles",)),
    ],
    ids=["no-stages", "stage-without-name", "empty-name", "zero-approvals", "shorthand-zero-approvals",
         "shorthand-negative-approvals", "shorthand-unknown-role", "unknown-role", "unknown-stage-key",
         "shorthand-unknown-key", "shorthand-mixed-with-stages"],
)
def test_approval_rule_validation_errors(data: dict[str, Any], loc: tuple[Any, ...]) -> None:
    assert [e["loc"] for e in _approval_errors(data)] == [loc]


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90.0), (2.5, 2.5), ("90s", 90.0), ("30m", 1800.0), ("48h", 172800.0), ("7d", 604800.0),
     ("1.5h", 5400.0), (" 2 d ", 172800.0), ("0.5s", 0.5)],
)
@pytest.mark.parametrize("field", ["pending_ttl", "dispatch_window"])
def test_durations(field: str, value: Any, seconds: float) -> None:
    action = _action({}, **{field: value})
    assert getattr(action, field) == seconds
    assert isinstance(getattr(action, field), float)


@pytest.mark.parametrize(
    "value",
    ["5 weeks", "10x", "h", "", "-5s", "30M", "1h30m", "s10", "ten s"],
)
@pytest.mark.parametrize("field", ["pending_ttl", "dispatch_window"])
def test_invalid_duration_strings_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as info:
        _action({}, **{field: value})
    errors = info.value.errors(include_url=False)
    assert [e["loc"] for e in errors] == [(field,)]
    assert "invalid duration" in errors[0]["msg"]


@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, "0s", "0m", "0d"])
@pytest.mark.parametrize("field", ["pending_ttl", "dispatch_window"])
def test_durations_must_be_positive(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        _action({}, **{field: value})
    errors = info.value.errors(include_url=False)
    assert [e["loc"] for e in errors] == [(field,)]
    assert errors[0]["type"] == "greater_than"


def test_rule_uses_the_default_dispatch_window_unless_the_action_has_one() -> None:
    assert _action({}).rule(86400.0).dispatch_window_s == 86400.0
    assert _action({}, dispatch_window="2h").rule(86400.0).dispatch_window_s == 7200.0
    # pending_ttl is not part of the rule.
    assert _action({}, pending_ttl="1h").rule(30.0).dispatch_window_s == 30.0


def test_rule_round_trips_through_json() -> None:
    action = _action({}, dispatch_window="30m", approval={"stages": [
        {"name": "review", "roles": ["approver"], "approvals_required": 2}, {"name": "signoff"}]})
    rule = action.rule(1.0)
    assert Rule.from_json(json.loads(json.dumps(rule.to_json()))) == rule
    assert rule.to_json()["dispatchWindowS"] == 1800.0


# ---------------------------------------------------------------- tenant settings


def _tenants(tenants: dict[str, Any]) -> Catalog:
    return Catalog.model_validate({"actions": {"a.b": {"plan": [{"stepId": "s", "connector": "c", "operation": "o"}]}},
                                   "tenants": tenants})


def test_tenant_settings_without_tenants_is_just_the_id() -> None:
    catalog = _tenants({})
    assert catalog.tenants == {}
    assert catalog.tenant_settings("acme") == {"id": "acme"}
    assert Catalog.model_validate({"actions": {}}).tenant_settings("x") == {"id": "x"}


def test_tenant_settings_unknown_tenant_gets_the_defaults() -> None:
    catalog = _tenants({"default": {"github": {"repo": "org/envs", "base": "main"}, "region": "eu"}})
    assert catalog.tenant_settings("nobody") == {"github": {"repo": "org/envs", "base": "main"}, "region": "eu",
                                                  "id": "nobody"}


def test_tenant_settings_merge_one_level_deep() -> None:
    catalog = _tenants({
        "default": {"github": {"repo": "org/envs", "base": "main", "opts": {"a": 1, "b": 2}},
                    "slack": {"channel": "#ops"}, "region": "eu", "flag": True},
        "acme": {"github": {"repo": "acme/envs", "opts": {"c": 3}}, "region": "us",
                 "sharepoint": {"site": "acme.sharepoint.com"}},
    })
    assert catalog.tenant_settings("acme") == {
        # github: merged key by key; the nested "opts" is replaced, not merged (one level only).
        "github": {"repo": "acme/envs", "base": "main", "opts": {"c": 3}},
        "slack": {"channel": "#ops"},  # from the defaults
        "region": "us",  # the tenant's own scalar wins
        "flag": True,
        "sharepoint": {"site": "acme.sharepoint.com"},  # only the tenant has it
        "id": "acme",
    }


def test_tenant_settings_non_dict_values_replace() -> None:
    catalog = _tenants({"default": {"slack": {"channel": "#ops"}, "x": 1, "tags": ["a"]},
                        "acme": {"slack": None, "x": {"nested": True}, "tags": ["b"]}})
    assert catalog.tenant_settings("acme") == {"slack": None, "x": {"nested": True}, "tags": ["b"], "id": "acme"}


def test_tenant_settings_id_is_always_the_tenant_id() -> None:
    catalog = _tenants({"default": {"id": "wrong"}, "acme": {"id": "also-wrong"}})
    assert catalog.tenant_settings("acme")["id"] == "acme"
    assert catalog.tenant_settings("other")["id"] == "other"


def test_tenant_settings_of_the_default_tenant_and_other_tenants_are_separate() -> None:
    catalog = _tenants({"default": {"github": {"repo": "org/envs"}}, "acme": {"github": {"repo": "acme/envs"}},
                        "beta": {"github": {"base": "dev"}}})
    assert catalog.tenant_settings("default") == {"github": {"repo": "org/envs"}, "id": "default"}
    assert catalog.tenant_settings("beta") == {"github": {"repo": "org/envs", "base": "dev"}, "id": "beta"}
    assert catalog.tenant_settings("acme") == {"github": {"repo": "acme/envs"}, "id": "acme"}


def test_tenant_settings_do_not_change_the_catalog() -> None:
    catalog = _tenants({"default": {"github": {"repo": "org/envs"}}, "acme": {"github": {"base": "dev"}}})
    before = copy.deepcopy(catalog.tenants)
    catalog.tenant_settings("acme")
    catalog.tenant_settings("default")
    assert catalog.tenants == before


@pytest.mark.parametrize("tenants", [{"acme": 5}, {"acme": ["a"]}, {"default": "x"}, ["acme"]])
def test_tenant_settings_must_be_mappings(tenants: Any) -> None:
    with pytest.raises(ValidationError) as info:
        _tenants(tenants)
    assert info.value.errors()[0]["loc"][0] == "tenants"


# ---------------------------------------------------------------- build_plan with tenant settings


TENANT_ACTION = {
    "repo": "{{ tenant.github.repo }}",
    "github": "{{ tenant.github }}",
    "url": "https://{{ tenant.sharepoint.site }}/sites/envs",
    "channel": "{{ tenant.slack.channel }}",
    "text": "{{ tenant.id }}: {{ payload.name }} on {{ tenant.github.base }}",
    "optional": "{{ payload.absent }}",
}


def test_build_plan_reads_tenant_settings() -> None:
    catalog = _tenants({"default": {"github": {"repo": "org/envs", "base": "main"}, "slack": {"channel": "#ops"}},
                        "acme": {"github": {"repo": "acme/envs"}, "sharepoint": {"site": "acme.example"}}})
    params = _render(TENANT_ACTION, {"name": "dev"}, tenant=catalog.tenant_settings("acme"))
    assert params == {
        "repo": "acme/envs",
        "github": {"repo": "acme/envs", "base": "main"},
        "url": "https://acme.example/sites/envs",
        "channel": "#ops",
        "text": "acme: dev on main",
        "optional": None,  # an absent payload field is null: the payload schema says what is required
    }
    # A connector target the tenant does not have is a configuration error, never an empty value.
    with pytest.raises(GateError) as err:
        _render(TENANT_ACTION, {"name": "dev"}, tenant=catalog.tenant_settings("other"))
    assert err.value.code == ErrorCode.TENANT_NOT_CONFIGURED
    assert "'other' has no sharepoint.site" in err.value.message


def test_build_plan_tenant_settings_change_the_plan_hash() -> None:
    catalog = _tenants({"default": {"github": {"repo": "org/envs"}}, "acme": {"github": {"repo": "acme/envs"}}})
    action = _action({"repo": "{{ tenant.github.repo }}"})
    acme = plan_hash(plan_document(build_plan("a.b", action, {}, tenant=catalog.tenant_settings("acme"))))
    beta = plan_hash(plan_document(build_plan("a.b", action, {}, tenant=catalog.tenant_settings("beta"))))
    gamma = plan_hash(plan_document(build_plan("a.b", action, {}, tenant=catalog.tenant_settings("gamma"))))
    assert acme != beta
    # Only what the plan reads counts: beta and gamma differ in id, which this plan does not use.
    assert beta == gamma


def test_inline_placeholders_render_values_as_compact_json() -> None:
    params = _render(
        {"n": "n={{ payload.n }}", "f": "f={{ payload.f }}", "b": "{{ payload.b }}!", "no": "{{ payload.no }}!",
         "list": "l={{ payload.list }}", "obj": "o={{ payload.obj }}", "s": "s={{ payload.s }}",
         "u": "u={{ payload.u }}"},
        {"n": 3, "f": 2.5, "b": True, "no": False, "list": [1, "a", None], "obj": {"z": 1, "a": [True]},
         "s": 'say "hi"', "u": "Zoë"},
    )
    assert params == {"n": "n=3", "f": "f=2.5", "b": "true!", "no": "false!", "list": 'l=[1,"a",null]',
                      "obj": 'o={"a":[true],"z":1}', "s": 's=say "hi"', "u": "u=Zoë"}


def test_inline_tenant_settings_render_as_json() -> None:
    params = _render({"t": "t={{ tenant.github }}"}, {}, tenant={"id": "acme", "github": {"repo": "a/b", "n": 1}})
    assert params == {"t": 't={"n":1,"repo":"a/b"}'}


# ---------------------------------------------------------------- load_catalog: the shipped default


def test_default_catalog_loads_with_expected_actions() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    assert DEFAULT_CATALOG.name == "default_catalog.yaml"
    assert catalog.version == 1
    expected = {"environment.create", "environment.update", "environment.promote", "environment.snapshot",
                "notify.webhook"}
    assert expected <= set(catalog.actions)
    for action_id in expected:
        action = catalog.action(action_id)
        assert len(action.plan) >= 1
        assert action.description


def test_default_catalog_notify_webhook() -> None:
    action = load_catalog(DEFAULT_CATALOG).action("notify.webhook")
    steps = build_plan("notify.webhook", action, {"hello": ["world"]}, tenant={"id": "acme"})
    assert steps == [PlanStep(step_id="post-webhook", connector="webhook", operation="post",
                              params={"body": {"hello": ["world"]}})]


# ---------------------------------------------------------------- load_catalog: errors

GOOD = """\
version: 1
actions:
  a.b:
    plan:
      - stepId: s1
        connector: webhook
        operation: post
"""


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "catalog.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_load_catalog_good_minimal(tmp_path: Path) -> None:
    catalog = load_catalog(_write(tmp_path, GOOD))
    assert set(catalog.actions) == {"a.b"}
    assert catalog.actions["a.b"].plan[0].step_id == "s1"


def _assert_catalog_error(path: Path, *fragments: str) -> CatalogError:
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_load_catalog_missing_file(tmp_path: Path) -> None:
    _assert_catalog_error(tmp_path / "nope.yaml")


def test_load_catalog_bad_yaml(tmp_path: Path) -> None:
    _assert_catalog_error(_write(tmp_path, "version: 1\nactions: {a.b: [unclosed\n"))


def test_load_catalog_non_utf8_file(tmp_path: Path) -> None:
    # The docstring promises a CatalogError naming the file for any unusable file.
    _assert_catalog_error(_write(tmp_path, b"\xff\xfe\x00version: 1\n"))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "invalid catalog"),
        ("- just\n- a list\n", "invalid catalog"),
        ("version: 2\nactions: {}\n", "invalid catalog"),
        ("version: 1\n", "actions"),
        ("version: 1\nactions:\n  a.b:\n    plan: []\n", "plan"),
        ("version: 1\nactions:\n  a.b: {description: x}\n", "plan"),
        (GOOD + "    surprise: 1\n", "surprise"),
        (GOOD + "extra_top: 1\n", "extra_top"),
        (GOOD.replace("stepId: s1", "stepId: S1"), "stepId"),
        (GOOD.replace("stepId: s1", "step_id: s1"), "step_id"),
        (GOOD.replace("        operation: post\n", ""), "operation"),
        (GOOD + "    requesters: [superuser]\n", "requesters"),
        (GOOD + "    approval: {roles: [root]}\n", "approval"),
        (GOOD + "    approval: {roles: [admin], quorum: 2}\n", "quorum"),
        (GOOD + "    approval: {stages: []}\n", "approval.stages"),
        (GOOD + "    approval: {stages: [{name: a}, {name: a}]}\n", "stage names must be unique"),
        (GOOD + "    approval: {stages: [{roles: [admin]}]}\n", "approval.stages.0.name"),
        (GOOD + "    approval: {approvals_required: 0}\n", "approvals_required"),
        (GOOD + "    tier: instant\n", "tier"),
        (GOOD + "    pending_ttl: 5 weeks\n", "invalid duration"),
        (GOOD + "    dispatch_window: 0s\n", "dispatch_window"),
        (GOOD + "tenants: {acme: 5}\n", "tenants.acme"),
        (GOOD + "tenants: [acme]\n", "tenants"),
    ],
    ids=["empty", "list", "version-2", "no-actions", "empty-plan", "no-plan", "unknown-action-key",
         "unknown-top-key", "bad-step-id", "snake-step-id", "no-operation", "unknown-requester-role",
         "unknown-approver-role", "unknown-approval-key", "no-stages", "duplicate-stage-names",
         "stage-without-name", "zero-approvals", "unknown-tier", "bad-duration", "zero-duration",
         "tenant-not-a-mapping", "tenants-not-a-mapping"],
)
def test_load_catalog_invalid_structure(tmp_path: Path, text: str, fragment: str) -> None:
    _assert_catalog_error(_write(tmp_path, text), fragment)


def test_load_catalog_duplicate_step_ids(tmp_path: Path) -> None:
    text = GOOD + "      - stepId: s1\n        connector: slack\n        operation: post_message\n"
    _assert_catalog_error(_write(tmp_path, text), "a.b", "step ids must be unique")


@pytest.mark.parametrize(
    "schema",
    ["{type: nonsense}", "{type: object, required: notalist}", "{type: object, minProperties: -1}"],
)
def test_load_catalog_invalid_payload_schema(tmp_path: Path, schema: str) -> None:
    path = _write(tmp_path, GOOD + f"    payload_schema: {schema}\n")
    line = len(GOOD.splitlines()) + 1  # the payload_schema line just appended
    _assert_catalog_error(path, f"{path}:{line}: actions.a.b.payload_schema: invalid JSON Schema")


def test_inline_placeholder_renders_non_strings_as_json() -> None:
    from pj_approvals.catalog import _render

    context = {"payload": {"flag": True, "obj": {"b": 1, "a": None}}}
    assert _render("x {{ payload.flag }}", context) == "x true"
    assert _render("o={{ payload.obj }}", context) == 'o={"a":null,"b":1}'


def test_duplicate_action_ids_are_refused_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(
        "version: 1\nactions:\n"
        "  a.b:\n    plan: [{stepId: s, connector: webhook, operation: post}]\n"
        "  a.b:\n    plan: [{stepId: t, connector: webhook, operation: post}]\n")
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    assert str(path) in str(err.value) and "duplicate key 'a.b'" in str(err.value) and "line 5" in str(err.value)


# ---------------------------------------------------------------- load_catalog: a full catalog

FULL = """\
version: 1
tenants:
  default:
    github: {repo: org/envs, base: main}
    slack: {channel: "#ops"}
  acme:
    github: {repo: acme/envs}
actions:
  env.delete:
    description: Delete an environment.
    tier: governed
    pending_ttl: 2d
    dispatch_window: 30m
    approval:
      stages:
        - {name: review, roles: [approver]}
        - {name: signoff, roles: [admin], approvals_required: 2}
    plan:
      - stepId: delete
        connector: github
        operation: dispatch_workflow
        params: {repo: "{{ tenant.github.repo }}", branch: "env/{{ payload.name }}"}
  env.restart:
    tier: launch
    approval: {roles: [operator, admin], approvals_required: 1}
    pending_ttl: 600
    plan:
      - {stepId: restart, connector: slack, operation: post_message, params: {channel: "{{ tenant.slack.channel }}"}}
"""


def test_load_catalog_full(tmp_path: Path) -> None:
    catalog = load_catalog(_write(tmp_path, FULL))
    delete, restart = catalog.action("env.delete"), catalog.action("env.restart")
    assert (delete.tier, delete.pending_ttl, delete.dispatch_window) == ("governed", 172800.0, 1800.0)
    assert (restart.tier, restart.pending_ttl, restart.dispatch_window) == ("launch", 600.0, None)
    assert delete.rule(99.0) == Rule(stages=(Stage("review", frozenset({Role.APPROVER}), 1),
                                             Stage("signoff", frozenset({Role.ADMIN}), 2)), dispatch_window_s=1800.0)
    assert restart.rule(99.0) == Rule(stages=(Stage("approval", frozenset({Role.OPERATOR, Role.ADMIN}), 1),),
                                      dispatch_window_s=99.0)
    assert catalog.tenant_settings("acme") == {"github": {"repo": "acme/envs", "base": "main"},
                                               "slack": {"channel": "#ops"}, "id": "acme"}
    [step] = build_plan("env.delete", delete, {"name": "dev"}, tenant=catalog.tenant_settings("acme"))
    assert step.params == {"repo": "acme/envs", "branch": "env/dev"}
    [step] = build_plan("env.restart", restart, {}, tenant=catalog.tenant_settings("zeta"))
    assert step.params == {"channel": "#ops"}


def test_default_catalog_rules_are_valid() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    for action_id, action in catalog.actions.items():
        rule = action.rule(3600.0)
        assert rule.stages, action_id
        assert Rule.from_json(json.loads(json.dumps(rule.to_json()))) == rule
    assert catalog.tenant_settings("acme")["id"] == "acme"


# ---------------------------------------------------------------- load_catalog: error line numbers

LINES = """\
# A catalog with comments first, so line numbers are not just offsets from "version".

version: 1
actions:
  a.b:
    description: first
    approval:
      stages:
        - name: review
          roles: [approver]
        - name: signoff
          roles: [admin, {bad}]
    pending_ttl: {ttl}
    plan:
      - stepId: s1
        connector: webhook
        operation: post
      - stepId: {step}
        connector: webhook
        operation: post
  c.d:
    tier: {tier}
    plan: [{{stepId: s1, connector: webhook, operation: post}}]
tenants:
  default: {{github: {{repo: a/b}}}}
  acme: {tenant}
"""
LINES_OK = {"bad": "approver", "ttl": "2h", "step": "s2", "tier": "launch", "tenant": "{x: 1}"}


def _lines_catalog(tmp_path: Path, **bad: str) -> Path:
    return _write(tmp_path, LINES.format(**{**LINES_OK, **bad}))


def test_lines_catalog_is_good_without_changes(tmp_path: Path) -> None:
    catalog = load_catalog(_lines_catalog(tmp_path))
    assert set(catalog.actions) == {"a.b", "c.d"}


@pytest.mark.parametrize(
    ("bad", "line", "loc"),
    [
        ({"bad": "root"}, 12, "actions.a.b.approval.stages.1.roles.1"),
        ({"ttl": "5 weeks"}, 13, "actions.a.b.pending_ttl"),
        ({"ttl": "0"}, 13, "actions.a.b.pending_ttl"),
        ({"step": "BAD"}, 18, "actions.a.b.plan.1.stepId"),
        ({"tier": "instant"}, 22, "actions.c.d.tier"),
        ({"tenant": "5"}, 26, "tenants.acme"),
    ],
    ids=["role-in-second-stage", "bad-duration", "zero-duration", "step-id-in-second-step", "tier",
         "tenant"],
)
def test_load_catalog_errors_name_the_line(tmp_path: Path, bad: dict[str, str], line: int, loc: str) -> None:
    path = _lines_catalog(tmp_path, **bad)
    err = _assert_catalog_error(path, f"{path}:{line}: {loc}: ")
    assert str(err).startswith("invalid catalog:\n")


def test_load_catalog_reports_every_error_with_its_own_line(tmp_path: Path) -> None:
    path = _lines_catalog(tmp_path, bad="root", step="BAD", tier="instant")
    err = _assert_catalog_error(path)
    lines = str(err).splitlines()
    assert lines[0] == "invalid catalog:"
    assert sorted(lines[1:]) == sorted([
        f"{path}:12: actions.a.b.approval.stages.1.roles.1: Input should be 'admin', 'approver', 'operator', "
        "'viewer' or 'service'",
        f"{path}:18: actions.a.b.plan.1.stepId: String should match pattern '^[a-z0-9][a-z0-9._-]*$'",
        f"{path}:22: actions.c.d.tier: Input should be 'governed' or 'launch'",
    ])


def test_load_catalog_line_of_a_top_level_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "# comment\nversion: 2\nactions: {}\n")
    _assert_catalog_error(path, f"{path}:2: version: ")


def test_load_catalog_line_of_an_unknown_key(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD + "    surprise: 1\n")
    _assert_catalog_error(path, f"{path}:8: actions.a.b.surprise: Extra inputs are not permitted")


def test_load_catalog_line_of_a_shorthand_approval_error(tmp_path: Path) -> None:
    # The shorthand has no `stages` node in the file: the error points at the approval itself.
    path = _write(tmp_path, GOOD + "    description: x\n    approval: {roles: [root]}\n")
    _assert_catalog_error(path, f"{path}:9: actions.a.b.approval.stages.0.roles.0: ")


def test_load_catalog_line_of_a_missing_field_is_where_its_parent_is(tmp_path: Path) -> None:
    path = _write(tmp_path, "version: 1\nactions:\n  a.b: {description: x}\n  c.d:\n    plan: []\n")
    _assert_catalog_error(path, f"{path}:3: actions.a.b.plan: Field required",
                          f"{path}:5: actions.c.d.plan: List should have at least 1 item")


def test_load_catalog_error_without_a_node_has_no_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    _assert_catalog_error(path, f"{path}:?: (top level): ")


@pytest.mark.parametrize("connector, operation", [("githb", "create_branch"), ("github", "delete_branch")])
def test_unknown_connector_operations_are_refused_at_load(tmp_path: Path, connector: str, operation: str) -> None:
    text = FULL.replace("connector: github\n        operation: dispatch_workflow",
                        f"connector: {connector}\n        operation: {operation}")
    assert text != FULL
    with pytest.raises(CatalogError) as err:
        load_catalog(_write(tmp_path, text))
    assert f"no connector operation {connector}.{operation}" in str(err.value)


# ---------------------------------------------------------------- tenants the catalog does not list


def test_a_tenant_without_an_entry_is_refused_by_default() -> None:
    catalog = Catalog.model_validate({"actions": {}, "tenants": {"default": {"x": 1}, "acme": {}}})
    catalog.check_tenant("acme")
    for unlisted in ("globex", "default"):  # `default` holds shared targets: it is no tenant of its own
        with pytest.raises(GateError) as err:
            catalog.check_tenant(unlisted)
        assert err.value.code == ErrorCode.TENANT_NOT_CONFIGURED


def test_unlisted_tenants_are_let_in_only_when_the_catalog_says_so() -> None:
    catalog = Catalog.model_validate({"actions": {}, "unlisted_tenants": "default",
                                      "tenants": {"default": {"x": 1}}})
    catalog.check_tenant("globex")
    assert catalog.tenant_settings("globex") == {"x": 1, "id": "globex"}
    with pytest.raises(ValidationError):
        Catalog.model_validate({"actions": {}, "unlisted_tenants": "any"})


def test_tenant_keys_meet_tokens_tenants_in_canonical_form() -> None:
    catalog = Catalog.model_validate({"actions": {}, "tenants": {" ACME ": {"slack": {"channel": "C1"}}}})
    catalog.check_tenant("acme")  # a token's tenant is canonical: case-folded and trimmed
    assert catalog.tenant_settings("acme") == {"slack": {"channel": "C1"}, "id": "acme"}
    strict = Catalog.model_validate({"actions": {}, "tenants": {"Acme": {}}})
    strict.check_tenant("Acme", case_insensitive=False)
    with pytest.raises(GateError):
        strict.check_tenant("acme", case_insensitive=False)


def test_two_keys_of_one_tenant_are_refused() -> None:
    with pytest.raises(ValidationError, match="name the same tenant"):
        Catalog.model_validate({"actions": {}, "tenants": {"Acme": {"a": 1}, "acme": {"a": 2}}})
    with pytest.raises(ValidationError, match="not a usable tenant id"):
        Catalog.model_validate({"actions": {}, "tenants": {"  ": {}}})


def test_the_shipped_catalog_lets_unlisted_tenants_in_explicitly() -> None:
    assert "unlisted_tenants: default" in DEFAULT_CATALOG.read_text()
    load_catalog(DEFAULT_CATALOG).check_tenant("anyone")
