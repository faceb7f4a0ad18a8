"""The action catalog: which actions exist, who may request them, and the plan each one runs.

Pure: loading parses a file, everything else is a function of its arguments.
"""

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import jsonschema  # type: ignore[import-untyped]  # no type stubs in the locked dependencies
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pj_common.auth import Role
from pj_common.connectors import CONNECTOR_OPERATIONS
from pj_common.durations import Duration
from pj_common.errors import ErrorCode, GateError
from pj_common.identity import IdentityError, canonical_identity
from pj_common.messages import PlanStep

from .domain import Rule, Stage


class CatalogError(Exception):
    """The catalog file is unusable; the service refuses to start with this message."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StepTemplate(_Strict):
    step_id: str = Field(alias="stepId", pattern=r"^[a-z0-9][a-z0-9._-]*$")
    connector: str
    operation: str
    params: dict[str, Any] = Field(default_factory=dict)


class StageSpec(_Strict):
    name: str = Field(min_length=1)
    roles: frozenset[Role] = frozenset({Role.ADMIN})
    approvals_required: int = Field(default=1, ge=1)


class ApprovalRule(_Strict):
    """Sequential stages; `{roles, approvals_required}` alone is shorthand for one stage."""

    stages: list[StageSpec] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _one_stage_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "stages" not in data:
            return {"stages": [{"name": "approval", **data}]}
        return data

    @model_validator(mode="after")
    def _unique_stage_names(self) -> "ApprovalRule":
        names = [s.name for s in self.stages]
        if len(names) != len(set(names)):
            raise ValueError("stage names must be unique")
        return self


def _default_rule() -> ApprovalRule:
    return ApprovalRule(stages=[StageSpec(name="approval")])


class Action(_Strict):
    description: str = ""
    # governed: nothing runs until the rule is satisfied; launch: runs at once, recorded like the rest.
    tier: Literal["governed", "launch"] = "governed"
    requesters: frozenset[Role] = frozenset({Role.ADMIN, Role.OPERATOR})
    approval: ApprovalRule = Field(default_factory=_default_rule)
    pending_ttl: Duration | None = None
    dispatch_window: Duration | None = None
    payload_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    plan: list[StepTemplate] = Field(min_length=1)

    def rule(self, default_dispatch_window_s: float) -> Rule:
        """The rule each new approval of this action keeps for its whole life."""
        return Rule(stages=tuple(Stage(s.name, s.roles, s.approvals_required) for s in self.approval.stages),
                    dispatch_window_s=self.dispatch_window or default_dispatch_window_s)


# The `tenants` entry whose targets every tenant inherits; it names no tenant of its own.
DEFAULT_TENANT_ENTRY = "default"


class Catalog(_Strict):
    version: Literal[1] = 1
    actions: dict[str, Action]
    # Connector targets per tenant (repo, site, channel, ...); "default" applies to every tenant.
    tenants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # A tenant without its own entry in `tenants` is refused (`tenant_not_configured`): a token of a
    # tenant nobody set up must not run plans against the shared default targets. "default" lets such
    # a tenant in on the `default` entry alone (a development or single-tenant catalog says so explicitly).
    unlisted_tenants: Literal["refuse", "default"] = "refuse"

    @model_validator(mode="after")
    def _tenant_keys_are_identities(self) -> "Catalog":
        """Tenant keys meet tokens' tenants in canonical form: two keys of one canonical form (`Acme`,
        `acme`) would make one tenant's targets depend on which entry wins."""
        seen: dict[str, str] = {}
        for key in self.tenants:
            try:
                canonical = canonical_identity(key)
            except IdentityError as exc:
                raise ValueError(f"tenants: {key!r} is not a usable tenant id: it {exc}") from None
            if canonical in seen:
                raise ValueError(f"tenants: {seen[canonical]!r} and {key!r} name the same tenant")
            seen[canonical] = key
        return self

    def action(self, action_id: str) -> Action:
        """The action, or `unknown_action`: the catalog fails closed."""
        found = self.actions.get(action_id)
        if found is None:
            raise GateError(ErrorCode.UNKNOWN_ACTION, f"unknown action {action_id!r}")
        return found

    def _entry(self, tenant_id: str, *, case_insensitive: bool) -> dict[str, Any] | None:
        """The tenant's own entry, its key compared in the canonical form tokens' tenants have."""
        if tenant_id == DEFAULT_TENANT_ENTRY:
            return None
        for key, entry in self.tenants.items():
            if key != DEFAULT_TENANT_ENTRY and canonical_identity(key, case_insensitive=case_insensitive) == tenant_id:
                return entry
        return None

    def check_tenant(self, tenant_id: str, *, case_insensitive: bool = True) -> None:
        """Raise `tenant_not_configured` for a tenant without its own entry, unless the catalog lets
        unlisted tenants in (`unlisted_tenants: default`). `tenant_id` is canonical (from a token)."""
        if self.unlisted_tenants == "default" or self._entry(tenant_id, case_insensitive=case_insensitive) is not None:
            return
        raise GateError(ErrorCode.TENANT_NOT_CONFIGURED,
                        f"tenant {tenant_id!r} has no entry in the catalog's tenants section")

    def tenant_settings(self, tenant_id: str, *, case_insensitive: bool = True) -> dict[str, Any]:
        """The tenant's connector targets over the defaults, and its id."""
        merged: dict[str, Any] = {}
        own = self._entry(tenant_id, case_insensitive=case_insensitive)
        for source in (self.tenants.get(DEFAULT_TENANT_ENTRY, {}), own or {}):
            for key, value in copy.deepcopy(source).items():
                merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(
                    merged.get(key), dict) else value
        return {**merged, "id": tenant_id}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys without a word; a catalog must not (two actions, one id)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at a pydantic error location (as deep as the path goes)."""
    node, line = root, None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _describe(path: Path, text: str, exc: ValidationError) -> str:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        line = _line_of(root, loc)
        where = ".".join(str(p) for p in loc) or "(top level)"
        lines.append(f"{path}:{line or '?'}: {where}: {err['msg']}")
    return "invalid catalog:\n" + "\n".join(lines)


def load_catalog(path: Path) -> Catalog:
    """Parse and validate the catalog file; raise `CatalogError` naming the file and the problem."""
    try:
        text = path.read_text()
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    try:
        catalog = Catalog.model_validate(raw)
    except ValidationError as exc:
        raise CatalogError(_describe(path, text, exc)) from exc
    root = yaml.compose(text, Loader=yaml.SafeLoader)

    def refuse(loc: tuple[Any, ...], reason: str) -> CatalogError:
        return CatalogError(f"{path}:{_line_of(root, loc) or '?'}: {'.'.join(map(str, loc))}: {reason}")

    for action_id, action in catalog.actions.items():
        where = ("actions", action_id)
        try:
            jsonschema.Draft202012Validator.check_schema(action.payload_schema)
        except jsonschema.SchemaError as exc:
            raise refuse((*where, "payload_schema"), f"invalid JSON Schema: {exc.message}") from exc
        ids = [step.step_id for step in action.plan]
        if len(ids) != len(set(ids)):
            raise refuse((*where, "plan"), "step ids must be unique")
        for index, step in enumerate(action.plan):
            operations = CONNECTOR_OPERATIONS.get(step.connector)
            if operations is None or step.operation not in operations:
                raise refuse((*where, "plan", index), f"no connector operation {step.connector}.{step.operation} "
                              f"(known: {_known_operations()})")
    return catalog


def _known_operations() -> str:
    return ", ".join(f"{c}.{o}" for c, ops in sorted(CONNECTOR_OPERATIONS.items()) for o in sorted(ops))


def check_payload(action_id: str, action: Action, payload: dict[str, Any]) -> None:
    """Raise `invalid_payload` with the first schema violation."""
    errors = sorted(jsonschema.Draft202012Validator(action.payload_schema).iter_errors(payload),
                    key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "payload"
        raise GateError(ErrorCode.INVALID_PAYLOAD, f"{action_id}: {where}: {errors[0].message}")


# `{{ path }}` or `{{ path | json }}` (the value as a JSON string, e.g. for GitHub workflow inputs).
_PLACEHOLDER = r"\{\{\s*([a-zA-Z0-9_.]+)\s*(\|\s*json\s*)?\}\}"
_PLACEHOLDER_RE = re.compile(_PLACEHOLDER)


def _lookup(context: dict[str, Any], path: str) -> Any:
    """The value at a dotted path: None for an absent payload field (the schema says which are
    required), but an error for an absent tenant setting (a connector target nobody configured)."""
    value: Any = context
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            if path.startswith("tenant."):
                raise GateError(ErrorCode.TENANT_NOT_CONFIGURED,
                                f"tenant {context['tenant'].get('id')!r} has no {path[len('tenant.'):]} "
                                "in the catalog's tenants section")
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
        whole = _PLACEHOLDER_RE.fullmatch(value)
        if whole:
            found = _lookup(context, whole.group(1))
            return json.dumps(found, sort_keys=True, separators=(",", ":")) if whole.group(2) else found
        return _PLACEHOLDER_RE.sub(lambda m: _inline_text(_lookup(context, m.group(1))), value)
    if isinstance(value, dict):
        return {k: _render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, context) for v in value]
    return value


def build_plan(action_id: str, action: Action, payload: dict[str, Any], *, tenant: dict[str, Any]) -> list[PlanStep]:
    """The ordered steps this request would run; deterministic, so its hash can be re-checked.

    `tenant` is `Catalog.tenant_settings(tenant_id)`: steps read targets like `{{ tenant.github.repo }}`.
    """
    context = {"payload": payload, "tenant": tenant, "action": {"id": action_id}}
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
