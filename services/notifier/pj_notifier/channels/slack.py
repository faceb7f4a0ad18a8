"""Slack's Web API: chat.postMessage, chat.update, users.lookupByEmail and conversations.history, with the
bot token.

Every message the notifier posts carries message metadata (`pj_notification`, with the notification's
key), so a post whose answer never came (a timeout, a crash) is found in the channel's latest messages
instead of being posted twice (`find_post`, with channels:history).

Slack answers API errors with HTTP 200 and `ok: false`; a rate limit with 429 (or `ratelimited`) and
Retry-After. Those and 5xx or transport errors may pass and are retried with the event; any other
`ok: false` (channel_not_found, not_in_channel, invalid_auth, users_not_found, ...) will not.
"""

from typing import Any

import httpx

from . import DeliveryFailed, SlackPost

EVENT_TYPE = "pj_notification"
HISTORY_LIMIT = 100
_RETRYABLE_ERRORS = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable",
                               "request_timeout"})


class SlackClient:
    def __init__(self, http: httpx.AsyncClient, *, base_url: str, token: str | None) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._token = token
        self._users: dict[str, str] = {}  # email -> user id; people rarely change addresses

    async def post(self, channel: str, *, text: str, blocks: list[dict[str, Any]], key: str,
                   thread_ts: str | None = None) -> SlackPost:
        """Post a message marked with `key`; a user id as `channel` posts to the bot's direct message with
        that user."""
        args: dict[str, Any] = {"channel": channel, "text": text, "blocks": blocks, "unfurl_links": False,
                                "metadata": {"event_type": EVENT_TYPE, "event_payload": {"key": key}}}
        if thread_ts is not None:
            args["thread_ts"] = thread_ts
        answer = await self._call("chat.postMessage", args)
        return SlackPost(channel=str(answer.get("channel") or channel), ts=str(answer["ts"]))

    async def update(self, post: SlackPost, *, text: str, blocks: list[dict[str, Any]]) -> None:
        """Replace a posted message's text and blocks in place."""
        await self._call("chat.update", {"channel": post.channel, "ts": post.ts, "text": text, "blocks": blocks})

    async def find_post(self, channel: str, key: str) -> SlackPost | None:
        """The message marked with `key` among the channel's latest ones (a channel id), if any."""
        answer = await self._call("conversations.history", {"channel": channel, "limit": str(HISTORY_LIMIT),
                                                            "include_all_metadata": "true"}, form=True)
        for message in answer.get("messages") or []:
            metadata = message.get("metadata") or {}
            if metadata.get("event_type") == EVENT_TYPE and (metadata.get("event_payload") or {}).get("key") == key:
                return SlackPost(channel=channel, ts=str(message["ts"]))
        return None

    async def user_id(self, email: str) -> str:
        """The Slack user with this email address (users:read.email)."""
        found = self._users.get(email)
        if found is None:
            answer = await self._call("users.lookupByEmail", {"email": email}, form=True)
            found = self._users[email] = str(answer["user"]["id"])
        return found

    async def _call(self, method: str, args: dict[str, Any], *, form: bool = False) -> dict[str, Any]:
        if not self._token:
            raise DeliveryFailed("SLACK_BOT_TOKEN is not set", permanent=True)
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            if form:
                response = await self._http.post(f"{self._base}/{method}", data=args, headers=headers)
            else:
                response = await self._http.post(f"{self._base}/{method}", json=args, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"slack {method}: {type(exc).__name__}: {exc}", permanent=False,
                                 unsure=_maybe_sent(exc)) from exc
        retry_after = _retry_after(response)
        if response.status_code == 429 or response.status_code >= 500:
            raise DeliveryFailed(f"slack {method}: HTTP {response.status_code}", permanent=False,
                                 retry_after=retry_after)
        try:
            answer: dict[str, Any] = response.json()
        except ValueError as exc:
            raise DeliveryFailed(f"slack {method}: HTTP {response.status_code}, not JSON", permanent=False) from exc
        if not answer.get("ok"):
            error = str(answer.get("error") or f"HTTP {response.status_code}")
            raise DeliveryFailed(f"slack {method}: {error}", permanent=error not in _RETRYABLE_ERRORS,
                                 retry_after=retry_after)
        return answer


def _maybe_sent(exc: httpx.HTTPError) -> bool:
    """False only when the request surely never left (no connection was made)."""
    return not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
