"""The action catalog: hashing, plan rendering, payload checks and loading (pj_approvals.catalog)."""

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from pj_approvals.catalog import (
    Action,
    Catalog,
    CatalogError,
    build_plan,
    canonical_json,
    check_payload,
    load_catalog,
    plan_document,
    plan_hash,
    request_hash,
)
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

    def variant(name: str, change) -> None:  # type: ignore[no-untyped-def]
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


def _render(params: dict[str, Any], payload: dict[str, Any], tenant: str = "acme",
            action_id: str = "a.b") -> dict[str, Any]:
    steps = build_plan(action_id, _action(params), payload, tenant)
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
                     {}, tenant="acme", action_id="environment.create")
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
    steps = build_plan("environment.create", action, payload, "acme")
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
    first = plan_hash(plan_document(build_plan("environment.create", action, payload, "acme")))
    second = plan_hash(plan_document(build_plan("environment.create", action, dict(reversed(payload.items())),
                                                "acme")))
    assert first == second
    assert plan_hash(plan_document(build_plan("environment.create", action, payload, "other"))) != first


def test_build_plan_on_default_environment_create() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    steps = build_plan("environment.create", catalog.action("environment.create"),
                       {"name": "dev", "config": {"replicas": 2}}, "acme")
    by_id = {s.step_id: s for s in steps}
    assert [s.step_id for s in steps] == [
        "create-branch", "write-config", "open-pull-request", "record-in-sharepoint", "announce",
    ]
    assert by_id["create-branch"].params == {"branch": "env/dev"}
    assert by_id["write-config"].params == {
        "branch": "env/dev", "path": "environments/dev.json", "content": {"replicas": 2},
        "message": "Create environment dev",
    }
    assert by_id["record-in-sharepoint"].params == {"fields": {"Title": "dev", "Tenant": "acme"}}
    assert by_id["announce"].params == {"text": "Environment dev created for acme"}


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
    assert check_payload("x.y", SCHEMA_ACTION, {"name": "dev"}) is None
    assert check_payload("x.y", SCHEMA_ACTION, {"name": "dev", "count": 3, "tags": ["a"]}) is None


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
    assert check_payload("x.y", action, {"anything": [1, {"goes": None}]}) is None


def test_check_payload_on_default_catalog() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    create = catalog.action("environment.create")
    assert check_payload("environment.create", create, {"name": "dev-1"}) is None
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


def test_catalog_decidable_by() -> None:
    catalog = _catalog()
    assert catalog.decidable_by(Role.ADMIN) == ("approvers", "only.admin")
    assert catalog.decidable_by(Role.APPROVER) == ("approver.only", "approvers")
    assert catalog.decidable_by(Role.OPERATOR) == ()
    assert catalog.decidable_by(Role.VIEWER) == ()


def test_catalog_rule_roles() -> None:
    catalog = _catalog()
    assert catalog.rule_roles("only.admin") == frozenset({Role.ADMIN})
    assert catalog.rule_roles("approvers") == frozenset({Role.APPROVER, Role.ADMIN})
    assert catalog.rule_roles("nobody") == frozenset()
    assert catalog.rule_roles("gone") == frozenset()


def test_action_defaults() -> None:
    action = _action({})
    assert action.description == ""
    assert action.requesters == frozenset({Role.ADMIN, Role.OPERATOR})
    assert action.approval.roles == frozenset({Role.ADMIN})


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
    steps = build_plan("notify.webhook", action, {"hello": ["world"]}, "acme")
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
    ],
    ids=["empty", "list", "version-2", "no-actions", "empty-plan", "no-plan", "unknown-action-key",
         "unknown-top-key", "bad-step-id", "snake-step-id", "no-operation", "unknown-requester-role",
         "unknown-approver-role", "unknown-approval-key"],
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
    _assert_catalog_error(_write(tmp_path, GOOD + f"    payload_schema: {schema}\n"),
                          "action a.b: invalid payload_schema")


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
