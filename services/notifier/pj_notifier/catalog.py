"""What the notifier reads from the approvals catalog: each action's stages, time to live and plan in
brief, and each tenant's `notifications` settings (channels, people, approvers, reminders).

The notifier reads the same file as approvals (PJ_CATALOG) but parses it with its own lenient models:
services never import each other, and only the parts named here matter to it. Approvals' catalog
forbids unknown keys at the top and in actions, so the notification settings live in the free-form
`tenants` section: `tenants.<tenant>.notifications`, the `default` tenant's applying to every tenant
(merged key by key, as approvals merges connector targets), with per-action overrides under
`notifications.actions.<actionId>`.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pj_common.durations import Duration
from pj_common.identity import IdentityError, canonical_identity

Channel = Literal["slack", "email", "webhook"]
DEFAULT_REMIND_AFTER_S = 4 * 3600.0
DEFAULT_ESCALATE_AFTER_S = 8 * 3600.0


class CatalogError(Exception):
    """The catalog's notification settings are unusable; the notifier refuses to start with this message."""


class _Lenient(BaseModel):
    """Approvals validates the action catalog; the notifier reads only what it needs from it."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class _Strict(BaseModel):
    """The notification settings are the notifier's own: a misspelt key is an error, not a silent default."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class StageInfo(_Lenient):
    name: str
    roles: tuple[str, ...] = ("admin",)
    approvals_required: int = 1


class StepInfo(_Lenient):
    step_id: str = Field(alias="stepId")
    connector: str
    operation: str


class ActionInfo(_Lenient):
    description: str = ""
    stages: tuple[StageInfo, ...] = (StageInfo(name="approval"),)
    pending_ttl: Duration | None = None
    dispatch_window: Duration | None = None
    plan: tuple[StepInfo, ...] = ()

    def plan_in_brief(self) -> str:
        """`connector.operation` of each step, in order."""
        return ", ".join(f"{s.step_id} ({s.connector}.{s.operation})" for s in self.plan) or "(no steps)"


def _action_info(raw: Any) -> dict[str, Any]:
    """Approvals' action entry as ActionInfo's fields (its stage shorthand included)."""
    if not isinstance(raw, dict):
        return {}
    approval = raw.get("approval") or {}
    stages = approval.get("stages") if isinstance(approval, dict) else None
    if stages is None and isinstance(approval, dict) and approval:
        stages = [{"name": "approval", **approval}]
    return {**raw, **({"stages": stages} if stages else {})}


class Person(_Strict):
    """How to reach one person (a token subject): an email address and/or a Slack user id."""

    email: str | None = None
    slack: str | None = None


class SlackTarget(_Strict):
    channel: str | None = None  # a channel id for the approvers' messages
    direct: bool = False  # also a direct message to each approver (and the requester's outcomes)


class QuietHours(_Strict):
    """No reminders or escalations between `start` and `end` in the tenant's time zone."""

    start: time
    end: time
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class Route(_Strict):
    """The notification settings that apply to one action of one tenant (defaults, tenant, action merged)."""

    channels: tuple[Channel, ...] = ("slack", "email", "webhook")
    slack: SlackTarget = SlackTarget()
    webhooks: tuple[str, ...] = ()
    people: dict[str, Person] = Field(default_factory=dict)
    approvers: dict[str, tuple[str, ...]] = Field(default_factory=dict)  # role -> subjects
    groups: dict[str, tuple[str, ...]] = Field(default_factory=dict)  # group name -> subjects
    escalate_to: str | None = None  # a group name
    remind_after: Duration = DEFAULT_REMIND_AFTER_S
    escalate_after: Duration = DEFAULT_ESCALATE_AFTER_S
    quiet_hours: QuietHours | None = None
    actions: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-action overrides (read by `route`)

    @field_validator("webhooks")
    @classmethod
    def _http_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            if not re.match(r"https?://[^/\s]+", url):
                raise ValueError(f"webhook {url!r} is not an http(s) URL")
        return urls

    def person(self, subject: str) -> Person:
        """How to reach `subject`: the people map, else the subject itself when it is an email address."""
        found = self.people.get(subject)
        if found is not None:
            return found
        return Person(email=subject) if "@" in subject else Person()

    def approvers_of(self, stage: StageInfo) -> tuple[str, ...]:
        """The subjects who may decide `stage` (its roles' approvers), in a stable order."""
        subjects: dict[str, None] = {}
        for role in stage.roles:
            subjects.update(dict.fromkeys(self.approvers.get(role, ())))
        return tuple(subjects)

    def escalation_group(self) -> tuple[str, ...]:
        return self.groups.get(self.escalate_to, ()) if self.escalate_to else ()


@dataclass(frozen=True)
class NotifyCatalog:
    actions: Mapping[str, ActionInfo]
    tenants: Mapping[str, dict[str, Any]]  # tenant -> its raw `notifications` mapping

    def action(self, action_id: str) -> ActionInfo:
        """The action as the catalog describes it; an action it no longer has gets one default stage."""
        return self.actions.get(action_id) or ActionInfo()

    def route(self, tenant_id: str, action_id: str) -> Route:
        """The settings for this tenant and action: default tenant, then the tenant, then the action."""
        merged: dict[str, Any] = {**self.tenants.get("default", {}), **self.tenants.get(tenant_id, {})}
        override = (merged.get("actions") or {}).get(action_id) or {}
        return Route.model_validate({**merged, **override, "actions": {}})


def parse_catalog(raw: Any, *, source: str = "catalog") -> NotifyCatalog:
    """The notifier's view of a parsed catalog document; `CatalogError` names what is wrong."""
    if not isinstance(raw, dict):
        raise CatalogError(f"{source}: not a mapping")
    try:
        actions = {name: ActionInfo.model_validate(_action_info(entry))
                   for name, entry in (raw.get("actions") or {}).items()}
    except ValidationError as exc:
        raise CatalogError(f"{source}: actions: {exc}") from exc
    tenants: dict[str, dict[str, Any]] = {}
    for tenant, entry in (raw.get("tenants") or {}).items():
        notifications = entry.get("notifications") if isinstance(entry, dict) else None
        if notifications is None:
            continue
        if not isinstance(notifications, dict):
            raise CatalogError(f"{source}: tenants.{tenant}.notifications: not a mapping")
        # Tenants from tokens (and so in events) are canonical: the catalog's keys are compared the same way.
        try:
            tenants[canonical_identity(str(tenant))] = notifications
        except IdentityError as exc:
            raise CatalogError(f"{source}: tenants.{tenant}: {exc}") from exc
    catalog = NotifyCatalog(actions=actions, tenants=tenants)
    _check_every_route(catalog, source)
    return catalog


def _check_every_route(catalog: NotifyCatalog, source: str) -> None:
    """Validate each tenant's settings for each action now, so a typo stops the start, not a notification."""
    for tenant, notifications in catalog.tenants.items():
        for action_id in ("", *(notifications.get("actions") or {}), *catalog.actions):
            try:
                route = catalog.route(tenant, action_id)
            except ValidationError as exc:
                where = f"tenants.{tenant}.notifications" + (f" (action {action_id})" if action_id else "")
                raise CatalogError(f"{source}: {where}: {exc}") from exc
            if route.escalate_to and route.escalate_to not in route.groups:
                raise CatalogError(f"{source}: tenants.{tenant}.notifications: escalate_to names group "
                                   f"{route.escalate_to!r}, which `groups` does not define")


def load_catalog(path: Path | None) -> NotifyCatalog:
    """Read the catalog file (None: no catalog, so nothing is configured and nothing is sent)."""
    if path is None:
        return NotifyCatalog(actions={}, tenants={})
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    return parse_catalog(raw, source=str(path))
