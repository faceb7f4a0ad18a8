"""Slack: post a message with chat.postMessage, at most once per step.

Idempotency: every message carries Slack message metadata
`{"event_type": "pj_step", "event_payload": {"key": "<approvalId>:<stepId>", "tenant": ..., ...}}`. Before
posting, the connector reads the channel's latest 100 messages (conversations.history with
include_all_metadata=true) and, when one carries this step's key and tenant, returns it instead of posting
again (`created: false`). A channel may be shared by several tenants: the key holds the approval's id (a
UUID approvals made and signed into the order) and the message its tenant, so one tenant's step never
reports another's message as its own.

Limits of that lookup, which follow from Slack's API:
- conversations.history only accepts a channel *ID* (C…, G…, D…). The lookup uses the `channel` param as
  given, so a step must name its channel by ID: for a name like "#ops" Slack answers channel_not_found to the
  lookup, and the connector then fails the step permanently (`slack_channel_not_found`, saying to use the ID)
  rather than post a message it could not de-duplicate. The result's `channel` is always the ID.
- Only the newest 100 messages are searched: if more than 100 messages arrive in the channel between a
  crashed attempt and its redelivery, the earlier message is not seen.
- The bot token needs chat:write to post and channels:history (groups:history for private channels,
  im:history / mpim:history for DMs) for the lookup, and the bot must be a member of the channel.

Slack answers most errors with HTTP 200 and `{"ok": false, "error": "..."}`; those are classified here:
rate limits and Slack-side failures are retryable, everything else is permanent as `slack_<error>`. An
answer without Slack's JSON envelope is `bad_response` (retried: whether a post happened is unknown, and
the next attempt looks for it before posting again).
"""

import json
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import SecretStr

from .base import ApiConnector, ConnectorError, Operation, StepContext, StepOutput, permanent, retryable
from .http_errors import bad_response, classify_status, classify_transport, json_object, retry_after_s
from .params import optional_list, required_str

EVENT_TYPE = "pj_step"
HISTORY_LIMIT = 100

# Slack `error` values worth another attempt: the same request may well succeed later.
RETRYABLE_ERRORS = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable",
                              "request_timeout"})
AUTH_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
                         "no_permission", "not_allowed_token_type"})
SCOPES_HINT = ("the bot token needs chat:write to post and channels:history (groups:history for private "
               "channels) for the idempotency lookup")


def _looks_like_channel_id(channel: str) -> bool:
    """Slack conversation IDs: C… (channels), G… (private/group), D… (DMs), upper-case alphanumerics."""
    return len(channel) >= 9 and channel[0] in "CGD" and channel.isalnum() and channel.isupper()


class SlackConnector(ApiConnector):
    name = "slack"

    def __init__(self, client: httpx.AsyncClient, *, api_url: str, token: SecretStr | None) -> None:
        self._client = client
        self._api_url = api_url.rstrip("/")
        self._token = token

    def operations(self) -> Mapping[str, Operation]:
        return {"post_message": self._post_message}

    def missing_settings(self) -> list[str]:
        return [] if self._token is not None and self._token.get_secret_value() else ["SLACK_BOT_TOKEN"]

    def secrets(self) -> tuple[str | None, ...]:
        return (self._token.get_secret_value() if self._token is not None else None,)

    # ---------------------------------------------------------------- post_message

    async def _post_message(self, ctx: StepContext) -> StepOutput:
        params, what = ctx.step.params, "slack post_message"
        channel = required_str(params, "channel", what=what, wanted="a channel ID, e.g. C0123ABCD").strip()
        text = required_str(params, "text", what=what)
        blocks = optional_list(params, "blocks", what=what)  # Block Kit blocks

        key = ctx.idempotency_key
        earlier, status = await self._find_earlier(channel, key, ctx.tenant_id)
        if earlier is not None:
            return StepOutput(result={"channel": channel, "ts": earlier["ts"], "created": False}, http_status=status)

        body: dict[str, Any] = {
            "channel": channel,
            "text": text,
            "metadata": {"event_type": EVENT_TYPE,
                         "event_payload": {"key": key, "tenant": ctx.tenant_id, "approvalId": ctx.approval_id,
                                           "stepId": ctx.step.step_id}},
        }
        if blocks is not None:
            body["blocks"] = blocks
        response, data = await self._call("POST", "chat.postMessage", channel,
                                          content=json.dumps(body, separators=(",", ":")).encode(),
                                          headers={"Content-Type": "application/json; charset=utf-8"})
        ts = data.get("ts")
        if not isinstance(ts, str):
            raise bad_response("slack chat.postMessage", "ok answer without a message ts", response.status_code)
        return StepOutput(result={"channel": str(data.get("channel") or channel), "ts": ts, "created": True},
                          http_status=response.status_code)

    async def _find_earlier(self, channel: str, key: str, tenant: str) -> tuple[dict[str, Any] | None, int]:
        """The channel's recent message carrying this step's key and tenant, if an earlier attempt posted one
        (a message of an older version, without a tenant, is matched by its key alone)."""
        try:
            response, data = await self._call("GET", "conversations.history", channel, params={
                "channel": channel, "limit": str(HISTORY_LIMIT), "include_all_metadata": "true"})
        except ConnectorError as exc:
            if exc.code == "slack_channel_not_found" and not _looks_like_channel_id(channel):
                raise permanent(
                    "slack_channel_not_found",
                    f"slack conversations.history: channel {channel!r} looks like a name, and Slack reads history "
                    "only by channel ID: put the channel's ID (e.g. C0123ABCD, shown in the channel's details) in "
                    "the step's 'channel' param so an earlier attempt's message can be found before posting",
                    exc.http_status) from exc
            raise
        messages = data.get("messages")
        for message in messages if isinstance(messages, list) else []:
            if not isinstance(message, dict):
                continue
            metadata = message.get("metadata")
            if not isinstance(metadata, dict) or metadata.get("event_type") != EVENT_TYPE:
                continue
            payload = metadata.get("event_payload")
            if (isinstance(payload, dict) and payload.get("key") == key and payload.get("tenant", tenant) == tenant
                    and isinstance(message.get("ts"), str)):
                return message, response.status_code
        return None, response.status_code

    # ---------------------------------------------------------------- one Web API call

    async def _call(self, method: str, api_method: str, channel: str, **kwargs: Any
                    ) -> tuple[httpx.Response, dict[str, Any]]:
        """One request to `api_method`; the decoded body when Slack says ok, else a classified error."""
        assert self._token is not None  # checked by missing_settings
        what = f"slack {api_method}"
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}", **kwargs.pop("headers", {})}
        try:
            response = await self._client.request(method, f"{self._api_url}/{api_method}", headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise classify_transport(exc, what) from exc
        if response.status_code == 429:
            raise retryable("slack_ratelimited", f"{what}: rate limited (HTTP 429)",
                            retry_after=retry_after_s(response), http_status=429)
        if not response.is_success:
            raise classify_status(response, what)
        data = json_object(response, what)
        if "ok" not in data:
            raise bad_response(what, f"HTTP {response.status_code} without Slack's JSON envelope: "
                                     f"{response.text[:200]}", response.status_code)
        if data.get("ok") is True:
            return response, data
        raise _classify_slack_error(response, data, what=what, channel=channel)


def _classify_slack_error(response: httpx.Response, data: dict[str, Any], *, what: str, channel: str
                          ) -> ConnectorError:
    """Slack's `{"ok": false, "error": ...}` as a connector error."""
    error = str(data.get("error") or "unknown_error")
    status = response.status_code
    code = f"slack_{error}"
    if error in RETRYABLE_ERRORS:
        return retryable(code, f"{what}: {error}", retry_after=retry_after_s(response), http_status=status)
    if error == "missing_scope":
        needed = data.get("needed") or ("chat:write" if what.endswith("chat.postMessage") else "channels:history")
        provided = data.get("provided")
        message = (f"{what}: missing_scope: the bot token lacks {needed}"
                   + (f" (it has {provided})" if provided else "")
                   + f"; {SCOPES_HINT}: add the scope to the Slack app and reinstall it")
    elif error == "not_in_channel":
        message = (f"{what}: not_in_channel: the bot is not a member of {channel!r}: invite it "
                   "(/invite @<bot> in the channel); posting and the idempotency lookup both need membership")
    elif error in AUTH_ERRORS:
        message = (f"{what}: {error}: SLACK_BOT_TOKEN is not a valid, active bot token: set a bot token (xoxb-…); "
                   f"{SCOPES_HINT}")
    elif error == "channel_not_found":
        message = (f"{what}: channel_not_found: no channel {channel!r} visible to the bot (use the channel ID; "
                   "private channels need the bot invited)")
    else:
        message = f"{what}: {error}"
    details = _details(data)
    if details:
        message += f" ({details})"
    return permanent(code, message, status)


def _details(data: dict[str, Any]) -> str:
    """Slack's own explanation, when it gives one (`response_metadata.messages`, e.g. for invalid_arguments)."""
    metadata = data.get("response_metadata")
    messages = metadata.get("messages") if isinstance(metadata, dict) else None
    if isinstance(messages, list):
        return "; ".join(str(m) for m in messages[:5])[:300]
    return ""

