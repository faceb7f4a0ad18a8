"""Decisions from Slack's buttons: Slack's signature, the interaction payload, who the Slack user is here,
and the few Web API calls the endpoint makes.

Approve decides at once; Reject opens a modal asking for the note, whose submission then rejects. Every
decision goes to approvals as the same `decide` command the API sends, by the gateway's service identity
on behalf of the mapped person (`CommandEnvelope.onBehalf`), so approvals applies every rule (tenants,
stages, N-of-M, separation of duties) as for that person, and notes in the audit trail that it came from
Slack. The notifier updates the Slack message itself on the decision's event, so nothing here edits it.
"""

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs

import httpx
from prometheus_client import Counter

from pj_common.auth import mint_token
from pj_common.errors import ErrorCode, GateError
from pj_common.messages import ApprovalView, DecideRequest, Decision, OnBehalf
from pj_common.principal import Role

from .rpc import call
from .settings import SlackIdentity, SlackSettings
from .state import GatewayState

log = logging.getLogger("pj.gateway.slack")

# Slack's own rule: a request whose timestamp is more than five minutes off may be a replay.
MAX_AGE_S = 300
SIGNATURE_VERSION = "v0"
APPROVE_ACTION, REJECT_ACTION = "pj_approve", "pj_reject"
REJECT_VIEW = "pj_reject"  # the modal's callback_id
NOTE_BLOCK = NOTE_INPUT = "note"
# Within DecideRequest's 4000 characters once approvals marks the note as coming from Slack.
MAX_NOTE = 3000
SERVICE_TOKEN_TTL_S = 60


def signature_problem(secret: str, *, body: bytes, timestamp: str | None, signature: str | None,
                      now: float) -> str | None:
    """Why this request is not one Slack signed in the last five minutes, or None when it is.

    Slack signs `v0:<timestamp>:<raw body>` with HMAC-SHA256 and the app's signing secret; the timestamp
    bounds a replay, and the comparison takes the same time whatever the signature."""
    if not timestamp or not signature:
        return "X-Slack-Request-Timestamp and X-Slack-Signature are required"
    if not timestamp.isascii() or not timestamp.isdigit():
        return "X-Slack-Request-Timestamp is not a Unix time"
    if abs(now - int(timestamp)) > MAX_AGE_S:
        return "the request is more than five minutes old (or in the future)"
    base = f"{SIGNATURE_VERSION}:{timestamp}:".encode() + body
    expected = f"{SIGNATURE_VERSION}=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        return "the signature does not match"
    return None


class Kind(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"  # a button: open the note's modal
    REJECT_WITH_NOTE = "reject_with_note"  # the modal submitted


@dataclass(frozen=True, slots=True)
class Interaction:
    """What a Slack user asked for, from one interaction payload."""

    kind: Kind
    user_id: str
    approval_id: str
    channel: str | None = None  # where to answer with an ephemeral message
    trigger_id: str | None = None  # opens the modal (valid for three seconds)
    note: str | None = None


def _bad(message: str) -> GateError:
    return GateError(ErrorCode.VALIDATION_ERROR, f"Slack interaction: {message}")


def parse_interaction(body: bytes) -> Interaction | None:
    """The interaction in a form body `payload=<JSON>`; None for one this endpoint does not act on
    (another app's button, a modal closed)."""
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=8)
        payload = json.loads(form["payload"][-1])
    except (UnicodeDecodeError, ValueError, KeyError) as exc:
        raise _bad("the body is not a form with a JSON `payload`") from exc
    if not isinstance(payload, dict):
        raise _bad("the payload is not an object")
    user_id = _text(payload.get("user"), "id")
    if payload.get("type") == "block_actions":
        return _button(payload, user_id)
    if payload.get("type") == "view_submission":
        return _submission(payload, user_id)
    return None


def _text(container: object, key: str) -> str:
    value = container.get(key) if isinstance(container, dict) else None
    if not isinstance(value, str) or not value:
        raise _bad(f"`{key}` is missing")
    return value


def _button(payload: dict[str, Any], user_id: str) -> Interaction | None:
    actions = payload.get("actions")
    action = actions[0] if isinstance(actions, list) and actions else None
    kinds = {APPROVE_ACTION: Kind.APPROVE, REJECT_ACTION: Kind.REJECT}
    if not isinstance(action, dict) or action.get("action_id") not in kinds:
        return None
    channel = payload.get("channel") or payload.get("container") or {}
    channel_id = channel.get("id") or channel.get("channel_id") if isinstance(channel, dict) else None
    return Interaction(kind=kinds[action["action_id"]], user_id=user_id, approval_id=_text(action, "value"),
                       channel=channel_id if isinstance(channel_id, str) else None,
                       trigger_id=payload.get("trigger_id") if isinstance(payload.get("trigger_id"), str) else None)


def _submission(payload: dict[str, Any], user_id: str) -> Interaction | None:
    view = payload.get("view")
    if not isinstance(view, dict) or view.get("callback_id") != REJECT_VIEW:
        return None
    try:
        context = json.loads(_text(view, "private_metadata"))
        note = view["state"]["values"][NOTE_BLOCK][NOTE_INPUT]["value"]
    except (ValueError, KeyError, TypeError) as exc:
        raise _bad("the modal's submission is not the one this gateway opened") from exc
    channel = context.get("channel") if isinstance(context, dict) else None
    return Interaction(kind=Kind.REJECT_WITH_NOTE, user_id=user_id, approval_id=_text(context, "approvalId"),
                       channel=channel if isinstance(channel, str) else None,
                       note=note.strip()[:MAX_NOTE] if isinstance(note, str) and note.strip() else None)


def reject_modal(approval_id: str, channel: str | None) -> dict[str, Any]:
    """The modal Reject opens: the note, required; the approval and the channel ride in its metadata."""
    return {
        "type": "modal", "callback_id": REJECT_VIEW,
        "private_metadata": json.dumps({"approvalId": approval_id, "channel": channel}),
        "title": {"type": "plain_text", "text": "Reject the request"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [{"type": "input", "block_id": NOTE_BLOCK,
                    "label": {"type": "plain_text", "text": "Why? (the requester reads this)"},
                    "element": {"type": "plain_text_input", "action_id": NOTE_INPUT, "multiline": True,
                                "min_length": 1, "max_length": MAX_NOTE}}],
    }


class SlackApiError(Exception):
    """A Web API call that failed (transport, HTTP status or `ok: false`)."""


class SlackApi:
    """The bot's Web API calls this endpoint needs: users.info, views.open, chat.postEphemeral."""

    def __init__(self, http: httpx.AsyncClient, *, base_url: str, token: str | None) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._token = token

    async def email_of(self, user_id: str) -> str | None:
        """The Slack user's email address (users:read and users:read.email), if Slack shows one."""
        answer = await self._call("users.info", {"user": user_id}, form=True)
        profile = (answer.get("user") or {}).get("profile") or {}
        email = profile.get("email")
        return email.strip().lower() if isinstance(email, str) and email.strip() else None

    async def open_view(self, trigger_id: str, view: dict[str, Any]) -> None:
        await self._call("views.open", {"trigger_id": trigger_id, "view": view})

    async def tell(self, channel: str, user_id: str, text: str) -> None:
        """A message only `user_id` sees, in `channel`."""
        await self._call("chat.postEphemeral", {"channel": channel, "user": user_id, "text": text})

    async def _call(self, method: str, args: dict[str, Any], *, form: bool = False) -> dict[str, Any]:
        if not self._token:
            raise SlackApiError("SLACK_BOT_TOKEN is not set")
        headers = {"Authorization": f"Bearer {self._token}"}
        url = f"{self._base}/{method}"
        try:
            response = await (self._http.post(url, data=args, headers=headers) if form
                              else self._http.post(url, json=args, headers=headers))
            answer = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise SlackApiError(f"slack {method}: {type(exc).__name__}") from exc
        if response.status_code != 200 or not isinstance(answer, dict) or not answer.get("ok"):
            error = answer.get("error") if isinstance(answer, dict) else None
            raise SlackApiError(f"slack {method}: HTTP {response.status_code} {error or ''}".strip())
        return answer


class Outcome(StrEnum):
    """What became of one interaction (the `outcome` label of pj_gateway_slack_interactions_total)."""

    DECIDED = "decided"
    MODAL_OPENED = "modal_opened"
    REFUSED = "refused"  # approvals refused the decision (role, stage, separation of duties, state)
    UNMAPPED = "unmapped"
    UNAUTHORIZED = "unauthorized"  # not signed by Slack, or stale
    INVALID = "invalid"
    IGNORED = "ignored"
    SLACK_FAILED = "slack_failed"  # the modal did not open (Slack's Web API failed)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the endpoint answers Slack: nothing (200, empty), or a modal's errors shown under its field."""

    outcome: Outcome
    view_errors: dict[str, str] | None = None

    def body(self) -> dict[str, Any] | None:
        if self.view_errors is None:
            return None
        return {"response_action": "errors", "errors": self.view_errors}


NOT_MAPPED = ("Your Slack user is not linked to anyone in the approval gate, so you cannot decide here. "
              "Ask an admin to add you (PJ_SLACK_USER_MAP), or decide in the console.")


class SlackDecisions:
    """Acts on verified interactions: map the user, open the note's modal, send the decision."""

    def __init__(self, settings: SlackSettings, api: SlackApi, *, interactions: Counter) -> None:
        self.settings = settings
        self.api = api
        self.interactions = interactions  # by outcome

    async def identity(self, user_id: str) -> SlackIdentity | None:
        """The person behind a Slack user: by user id, else by the email Slack has for them."""
        found = self.settings.slack_user_map.get(user_id)
        if found is not None or not any("@" in key for key in self.settings.slack_user_map):
            return found
        try:
            email = await self.api.email_of(user_id)
        except SlackApiError as exc:
            log.warning("Slack user not looked up: %s", exc, extra={"scope": "gateway.slack.lookup_failed"})
            return None
        return self.settings.slack_user_map.get(email) if email else None

    async def act(self, interaction: Interaction, gateway: GatewayState, *, correlation_id: str) -> Answer:
        """Do what the interaction asks, if its user may; tell them otherwise. Nothing changes on a refusal."""
        who = await self.identity(interaction.user_id)
        if who is None:
            log.info("Slack user not mapped", extra={"scope": "gateway.slack.unmapped",
                                                     "slackUser": interaction.user_id})
            return await self._refuse(interaction, NOT_MAPPED, Outcome.UNMAPPED)
        if interaction.kind is Kind.REJECT:
            return Answer(await self._open_note(interaction))
        status: Decision = "approved" if interaction.kind is Kind.APPROVE else "rejected"
        command = DecideRequest(approval_id=interaction.approval_id, status=status, note=interaction.note)
        try:
            view = await call(gateway, command, ApprovalView, token=self._service_token(gateway, who.tenant),
                              correlation_id=correlation_id,
                              on_behalf=OnBehalf(subject=who.sub, role=who.role, tenant=who.tenant, via="slack"))
        except GateError as exc:
            log.info("Slack decision refused: %s", exc.code, extra={
                "scope": "gateway.slack.refused", "slackUser": interaction.user_id, "code": exc.code,
                "approvalId": interaction.approval_id, "correlationId": correlation_id})
            return await self._refuse(interaction, f"Not decided: {exc.message} ({exc.code}).", Outcome.REFUSED)
        log.info("Slack decision recorded", extra={
            "scope": "gateway.slack.decided", "slackUser": interaction.user_id, "sub": who.sub,
            "approvalId": view.id, "decision": status, "correlationId": correlation_id})
        await self._tell(interaction, f"Recorded: you {status} {view.action_id} ({view.id}); "
                                      f"it is now {view.approval_status}.")
        return Answer(Outcome.DECIDED)

    def _service_token(self, gateway: GatewayState, tenant: str) -> str:
        """The gateway's service identity: the configured token, else one minted for this decision with
        the HS256 secret (only where the gateway holds one)."""
        if self.settings.slack_service_token is not None:
            return self.settings.slack_service_token.get_secret_value()
        token_settings = gateway.settings
        if token_settings.jwt_secret is None:
            raise GateError(ErrorCode.FORBIDDEN, "Slack decisions need PJ_SLACK_SERVICE_TOKEN: this gateway "
                                                 "cannot mint tokens (no PJ_JWT_SECRET)")
        return mint_token(token_settings.jwt_key, subject=self.settings.slack_service_subject, tenant=tenant,
                          role=Role.SERVICE, issuer=token_settings.jwt_issuer,
                          audience=token_settings.jwt_audience, ttl_s=SERVICE_TOKEN_TTL_S)

    async def _open_note(self, interaction: Interaction) -> Outcome:
        if interaction.trigger_id is None:
            raise _bad("`trigger_id` is missing")
        try:
            await self.api.open_view(interaction.trigger_id, reject_modal(interaction.approval_id,
                                                                          interaction.channel))
        except SlackApiError as exc:
            log.warning("reject modal not opened: %s", exc, extra={"scope": "gateway.slack.modal_failed"})
            await self._tell(interaction, "The note's dialog did not open; try again, or reject in the console.")
            return Outcome.SLACK_FAILED
        return Outcome.MODAL_OPENED

    async def _refuse(self, interaction: Interaction, text: str, outcome: Outcome) -> Answer:
        if interaction.kind is Kind.REJECT_WITH_NOTE:  # the modal is open: show it there
            return Answer(outcome, view_errors={NOTE_BLOCK: text})
        await self._tell(interaction, text)
        return Answer(outcome)

    async def _tell(self, interaction: Interaction, text: str) -> None:
        if interaction.channel is None:
            return
        try:
            await self.api.tell(interaction.channel, interaction.user_id, text)
        except SlackApiError as exc:
            log.warning("ephemeral message not sent: %s", exc, extra={"scope": "gateway.slack.tell_failed"})
