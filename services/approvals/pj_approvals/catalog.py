"""The action catalog: which actions exist, who may request them, and the plan each one runs.

Pure: loading parses a file, everything else is a function of its arguments.
"""

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml
from pj_common.auth import Role
from pj_common.errors import ErrorCode, GateError
from pj_common.messages import PlanStep
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class CatalogError(Exception):
    """The catalog file is unusable; the service refuses to start with this message."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StepTemplate(_Strict):
    step_id: str = Field(alias="stepId", pattern=r"^[a-z0-9][a-z0-9._-]*$")
    connector: str
    operation: str
    params: dict[str, Any] = Field(default_factory=dict)


class ApprovalRule(_Strict):
    roles: frozenset[Role] = frozenset({Role.ADMIN})


class Action(_Strict):
    description: str = ""
    requesters: frozenset[Role] = frozenset({Role.ADMIN, Role.OPERATOR})
    approval: ApprovalRule = ApprovalRule()
    payload_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    plan: list[StepTemplate] = Field(min_length=1)


class Catalog(_Strict):
    version: Literal[1] = 1
    actions: dict[str, Action]

    def action(self, action_id: str) -> Action:
        """The action, or `unknown_action`: the catalog fails closed."""
        found = self.actions.get(action_id)
        if found is None:
            raise GateError(ErrorCode.UNKNOWN_ACTION, f"unknown action {action_id!r}")
        return found

    def decidable_by(self, role: Role) -> tuple[str, ...]:
        """Ids of the actions whose approval rule lets `role` decide."""
        return tuple(sorted(a for a, action in self.actions.items() if role in action.approval.roles))

    def rule_roles(self, action_id: str) -> frozenset[Role]:
        """Roles that may decide `action_id`; none for an action no longer in the catalog (fail closed)."""
        found = self.actions.get(action_id)
        return found.approval.roles if found is not None else frozenset()


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys without a word; a catalog must not (two actions, one id)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_catalog(path: Path) -> Catalog:
    """Parse and validate the catalog file; raise `CatalogError` naming the file and the problem."""
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    try:
        catalog = Catalog.model_validate(raw)
    except ValidationError as exc:
        raise CatalogError(f"{path}: invalid catalog:\n{exc}") from exc
    for action_id, action in catalog.actions.items():
        try:
            jsonschema.Draft202012Validator.check_schema(action.payload_schema)
        except jsonschema.SchemaError as exc:
            raise CatalogError(f"{path}: action {action_id}: invalid payload_schema: {exc.message}") from exc
        ids = [step.step_id for step in action.plan]
        if len(ids) != len(set(ids)):
            raise CatalogError(f"{path}: action {action_id}: step ids must be unique")
    return catalog


def check_payload(action_id: str, action: Action, payload: dict[str, Any]) -> None:
    """Raise `invalid_payload` with the first schema violation."""
    errors = sorted(jsonschema.Draft202012Validator(action.payload_schema).iter_errors(payload),
                    key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "payload"
        raise GateError(ErrorCode.INVALID_PAYLOAD, f"{action_id}: {where}: {errors[0].message}")


_WHOLE = re.compile(r"\{\{\s*([a-zA-Z0-9_.]+)\s*\}\}")
_INLINE = re.compile(r"\{\{\s*([a-zA-Z0-9_.]+)\s*\}\}")


def _lookup(context: dict[str, Any], path: str) -> Any:
    value: Any = context
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _inline_text(value: Any) -> str:
    """A value placed inside a string: strings as they are, anything else as JSON (true, not True)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _render(value: Any, context: dict[str, Any]) -> Any:
    """Fill `{{ path }}` placeholders: a whole-string placeholder keeps the value's JSON type."""
    if isinstance(value, str):
        whole = _WHOLE.fullmatch(value)
        if whole:
            return _lookup(context, whole.group(1))
        return _INLINE.sub(lambda m: _inline_text(_lookup(context, m.group(1))), value)
    if isinstance(value, dict):
        return {k: _render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, context) for v in value]
    return value


def build_plan(action_id: str, action: Action, payload: dict[str, Any], tenant_id: str) -> list[PlanStep]:
    """The ordered steps this request would run; deterministic, so its hash can be re-checked."""
    context = {"payload": payload, "tenant": {"id": tenant_id}, "action": {"id": action_id}}
    return [
        PlanStep(step_id=t.step_id, connector=t.connector, operation=t.operation,
                 params=_render(t.params, context))
        for t in action.plan
    ]


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8: equal data always gives equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def plan_document(steps: list[PlanStep]) -> list[dict[str, Any]]:
    """The plan as stored and shown: wire (camelCase) names."""
    return [step.model_dump(by_alias=True) for step in steps]


def plan_hash(plan: list[dict[str, Any]]) -> str:
    """sha256 (hex) of the canonical JSON of the plan's steps."""
    return hashlib.sha256(canonical_json(plan)).hexdigest()


def request_hash(action_id: str, payload: dict[str, Any]) -> str:
    """Fingerprint of a request, to tell a retry (same) from a conflicting reuse of its requestId."""
    return hashlib.sha256(canonical_json({"actionId": action_id, "payload": payload})).hexdigest()
