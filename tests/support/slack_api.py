"""A stateful fake of Slack's Web API on 127.0.0.1: chat.postMessage, chat.update, conversations.history,
users.lookupByEmail, users.info, views.open and chat.postEphemeral; and Slack's side of interactivity:
`send_interaction` posts a payload to an app's Request URL as Slack does (form `payload=<JSON>`, signed with
the app's signing secret), `button_click` builds a click on a message's button (with a trigger id that
views.open accepts for three seconds) and `submit_view` the submission of a modal the app opened.

It speaks Slack's protocol: `Authorization: Bearer <token>`, HTTP 200 with `{"ok": false, "error": ...}` for
API errors (not_authed, invalid_auth, channel_not_found, not_in_channel, missing_scope, no_text, ...),
HTTP 429 with Retry-After for rate limits. chat.postMessage takes a channel ID or name ("#ops" / "ops");
conversations.history, like Slack's, takes only the ID. Message metadata is returned by history only when
`include_all_metadata=true`. A user added with `add_user` can be posted to by user id, as Slack allows: the
message lands in the bot's direct-message channel with that user (`D<user id>`), whose id the answer names;
chat.update replaces a message's text and blocks in place (and counts its edits).

Faults for the next N requests (any method), in the order queued: `rate_limit_next` (HTTP 429 +
Retry-After), `ratelimited_next` (HTTP 200, ok:false ratelimited + Retry-After), `error_next` (HTTP 200,
ok:false <error>), `fail_next` (5xx bursts), `pass_next` (served normally, to aim a later fault) and
`slow_next` (served, then answered late: a post that went through but whose answer the client gave up on).
Every request is recorded in `requests`.

Run alone: `python tests/support/slack_api.py --port 9098 --token xoxb-test --channel C0OPS0001:ops`.
"""

import argparse
import hashlib
import hmac
import itertools
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

ALL_SCOPES = frozenset({"chat:write", "channels:history", "groups:history", "users:read", "users:read.email",
                        "im:write"})
MAX_TEXT = 40_000
TRIGGER_TTL_S = 3.0  # Slack's: a trigger id opens a view within three seconds of the click


@dataclass
class Channel:
    id: str
    name: str
    is_private: bool = False
    bot_is_member: bool = True
    messages: list[dict[str, Any]] = field(default_factory=list)  # oldest first


@dataclass
class Request:
    method: str
    path: str  # without the query string
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # decoded JSON or form, None when empty

    @property
    def api_method(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass
class Fault:
    kind: str  # "status" | "ok_false" | "slow"
    status: int = 200
    error: str = ""
    retry_after: str | None = None
    delay_s: float = 0.0
    text: str = "upstream unavailable"  # the body of a non-JSON status fault


@dataclass
class SlackState:
    token: str
    scopes: set[str] = field(default_factory=lambda: set(ALL_SCOPES))
    channels: dict[str, Channel] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)  # user id -> email
    requests: list[Request] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    triggers: dict[str, float] = field(default_factory=dict)  # trigger id -> when it was issued
    views: list[dict[str, Any]] = field(default_factory=list)  # opened by views.open, oldest first
    ephemeral: list[dict[str, Any]] = field(default_factory=list)  # chat.postEphemeral's messages
    lock: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)
    url: str = ""
    _ts: itertools.count = field(default_factory=lambda: itertools.count(1))

    # ------------------------------------------------------------ setup

    def add_channel(self, channel_id: str, name: str, *, is_private: bool = False,
                    bot_is_member: bool = True) -> Channel:
        with self.lock:
            channel = self.channels[channel_id] = Channel(channel_id, name, is_private, bot_is_member)
            return channel

    def add_user(self, user_id: str, email: str) -> None:
        """A workspace member: found by users.lookupByEmail, and reachable by a DM posted to the user id."""
        with self.lock:
            self.users[user_id] = email
            self.channels.setdefault(f"D{user_id}", Channel(f"D{user_id}", f"dm-{user_id.lower()}"))

    def rate_limit_next(self, n: int = 1, retry_after: str = "1") -> None:
        self._add([Fault("status", 429, "ratelimited", retry_after)] * n)

    def ratelimited_next(self, n: int = 1, retry_after: str | None = "1") -> None:
        self._add([Fault("ok_false", 200, "ratelimited", retry_after)] * n)

    def error_next(self, error: str, n: int = 1) -> None:
        self._add([Fault("ok_false", 200, error)] * n)

    def fail_next(self, n: int = 1, status: int = 503, text: str = "upstream unavailable") -> None:
        self._add([Fault("status", status, text=text)] * n)

    def pass_next(self, n: int = 1) -> None:
        """Serve the next N requests normally, so that a fault queued after them hits a later request."""
        self._add([Fault("slow", delay_s=0.0)] * n)

    def slow_next(self, n: int = 1, delay_s: float = 2.0) -> None:
        self._add([Fault("slow", delay_s=delay_s)] * n)

    def _add(self, faults: list[Fault]) -> None:
        with self.lock:
            self.faults.extend(faults)

    # ------------------------------------------------------------ inspection

    def posted(self, channel_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.channels[channel_id].messages)

    def calls(self, api_method: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.api_method == api_method]

    def told(self, user_id: str) -> list[str]:
        """The texts of the ephemeral messages shown to `user_id`."""
        with self.lock:
            return [m["text"] for m in self.ephemeral if m["user"] == user_id]

    # ------------------------------------------------------------ Slack's side of interactivity

    def button_click(self, *, user_id: str, action_id: str, value: str, channel_id: str,
                     message_ts: str = "") -> dict[str, Any]:
        """The block_actions payload of `user_id` clicking a button, with a fresh trigger id."""
        with self.lock:
            trigger_id = f"{next(self._ts)}.{int(time.time())}.trigger"
            self.triggers[trigger_id] = time.monotonic()
        return {"type": "block_actions", "user": {"id": user_id, "username": user_id.lower(), "team_id": "T0FAKE"},
                "api_app_id": "A0FAKEAPP", "trigger_id": trigger_id, "team": {"id": "T0FAKE"},
                "container": {"type": "message", "channel_id": channel_id, "message_ts": message_ts},
                "channel": {"id": channel_id}, "response_url": f"{self.url}/response/{trigger_id}",
                "actions": [{"type": "button", "action_id": action_id, "value": value,
                             "block_id": f"approval:{value}", "action_ts": str(time.time())}]}

    def submit_view(self, view: dict[str, Any], *, user_id: str, values: dict[str, str]) -> dict[str, Any]:
        """The view_submission payload of a modal the app opened, its inputs filled by block id."""
        state: dict[str, dict[str, Any]] = {}
        for block in view.get("blocks", []):
            if block.get("type") == "input" and block["block_id"] in values:
                element = block["element"]
                state[block["block_id"]] = {element["action_id"]: {"type": element["type"],
                                                                    "value": values[block["block_id"]]}}
        return {"type": "view_submission", "user": {"id": user_id}, "team": {"id": "T0FAKE"},
                "view": {**view, "id": view["id"], "state": {"values": state}}}

    def open_view(self, args: dict[str, Any]) -> dict[str, Any]:
        trigger_id, view = args.get("trigger_id"), args.get("view")
        issued = self.triggers.pop(str(trigger_id), None)
        if issued is None:
            return {"ok": False, "error": "invalid_trigger_id"}
        if time.monotonic() - issued > TRIGGER_TTL_S:
            return {"ok": False, "error": "expired_trigger_id"}
        if not isinstance(view, dict) or view.get("type") != "modal" or not view.get("blocks"):
            return {"ok": False, "error": "invalid_arguments"}
        opened = {**view, "id": f"V{next(self._ts):08d}"}
        self.views.append(opened)
        return {"ok": True, "view": opened}

    def post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        scope = self.missing_scope("chat:write")
        if scope:
            return scope
        channel = self.resolve(str(args.get("channel") or ""), names=True)
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        user = str(args.get("user") or "")
        if user not in self.users:
            return {"ok": False, "error": "user_not_in_channel"}
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        self.ephemeral.append({"channel": channel.id, "user": user, "text": str(args.get("text") or "")})
        return {"ok": True, "message_ts": self.next_ts()}

    def user_info(self, args: dict[str, Any]) -> dict[str, Any]:
        scope = self.missing_scope("users:read")
        if scope:
            return scope
        user_id = str(args.get("user") or "")
        if user_id not in self.users:
            return {"ok": False, "error": "user_not_found"}
        profile: dict[str, Any] = {"real_name": user_id.lower()}
        if "users:read.email" in self.scopes:  # Slack leaves the email out without this scope
            profile["email"] = self.users[user_id]
        return {"ok": True, "user": {"id": user_id, "name": user_id.lower(), "profile": profile}}

    # ------------------------------------------------------------ the API

    def resolve(self, ref: str, *, names: bool) -> Channel | None:
        if ref in self.channels:
            return self.channels[ref]
        if ref in self.users:  # a user id: the bot's DM with that user
            return self.channels[f"D{ref}"]
        if names:
            bare = ref.removeprefix("#")
            for channel in self.channels.values():
                if channel.name == bare:
                    return channel
        return None

    def next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def auth_error(self, headers: dict[str, str]) -> str | None:
        authorization = headers.get("authorization", "")
        if not authorization:
            return "not_authed"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or token != self.token:
            return "invalid_auth"
        return None

    def missing_scope(self, *needed: str) -> dict[str, Any] | None:
        if any(scope in self.scopes for scope in needed):
            return None
        return {"ok": False, "error": "missing_scope", "needed": ",".join(needed),
                "provided": ",".join(sorted(self.scopes))}

    def post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        scope = self.missing_scope("chat:write")
        if scope:
            return scope
        ref = args.get("channel")
        if not isinstance(ref, str) or not ref:
            return {"ok": False, "error": "channel_not_found"}
        channel = self.resolve(ref, names=True)
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        if not channel.bot_is_member:
            return {"ok": False, "error": "not_in_channel"}
        text, blocks = args.get("text"), args.get("blocks")
        if not text and not blocks:
            return {"ok": False, "error": "no_text"}
        if blocks is not None and not isinstance(blocks, list):
            return {"ok": False, "error": "invalid_blocks"}
        if isinstance(text, str) and len(text) > MAX_TEXT:
            return {"ok": False, "error": "msg_too_long"}
        metadata = args.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or not isinstance(metadata.get("event_type"), str)
                                     or not isinstance(metadata.get("event_payload"), dict)):
            return {"ok": False, "error": "invalid_metadata_format"}
        message: dict[str, Any] = {"type": "message", "subtype": "bot_message", "bot_id": "B0FAKEBOT",
                                   "text": text or "", "ts": self.next_ts()}
        if blocks is not None:
            message["blocks"] = blocks
        if metadata is not None:
            message["metadata"] = metadata
        channel.messages.append(message)
        return {"ok": True, "channel": channel.id, "ts": message["ts"], "message": message}

    def update_message(self, args: dict[str, Any]) -> dict[str, Any]:
        scope = self.missing_scope("chat:write")
        if scope:
            return scope
        channel = self.resolve(str(args.get("channel") or ""), names=False)
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        found = next((m for m in channel.messages if m["ts"] == args.get("ts")), None)
        if found is None:
            return {"ok": False, "error": "message_not_found"}
        text, blocks = args.get("text"), args.get("blocks")
        if not text and not blocks:
            return {"ok": False, "error": "no_text"}
        if blocks is not None and not isinstance(blocks, list):
            return {"ok": False, "error": "invalid_blocks"}
        found["text"] = text or ""
        if blocks is not None:
            found["blocks"] = blocks
        found["edits"] = found.get("edits", 0) + 1
        return {"ok": True, "channel": channel.id, "ts": found["ts"], "text": found["text"]}

    def lookup_by_email(self, args: dict[str, Any]) -> dict[str, Any]:
        scope = self.missing_scope("users:read.email")
        if scope:
            return scope
        email = str(args.get("email") or "")
        for user_id, known in self.users.items():
            if known.lower() == email.lower():
                return {"ok": True, "user": {"id": user_id, "profile": {"email": known}}}
        return {"ok": False, "error": "users_not_found"}

    def history(self, args: dict[str, str]) -> dict[str, Any]:
        ref = args.get("channel", "")
        channel = self.resolve(ref, names=False)  # Slack reads history by ID only
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        scope = self.missing_scope("groups:history" if channel.is_private else "channels:history")
        if scope:
            return scope
        if not channel.bot_is_member:
            return {"ok": False, "error": "not_in_channel"}
        try:
            limit = max(1, min(999, int(args.get("limit", "100"))))
            offset = int(args.get("cursor") or 0)
        except ValueError:
            return {"ok": False, "error": "invalid_arguments"}
        with_metadata = args.get("include_all_metadata", "").lower() in ("true", "1")
        newest_first = list(reversed(channel.messages))
        page = []
        for message in newest_first[offset:offset + limit]:
            shown = dict(message)
            if not with_metadata:
                shown.pop("metadata", None)
            page.append(shown)
        more = offset + limit < len(newest_first)
        return {"ok": True, "messages": page, "has_more": more, "pin_count": 0,
                "response_metadata": {"next_cursor": str(offset + limit) if more else ""}}


# The methods interactivity needs: API method -> SlackState's method serving it.
_MORE_METHODS = {"users.info": "user_info", "views.open": "open_view", "chat.postEphemeral": "post_ephemeral"}


def sign_interaction(payload: dict[str, Any], *, secret: str, timestamp: int | None = None) -> tuple[bytes,
                                                                                                       dict[str, str]]:
    """The body and headers Slack sends an app's Request URL: form `payload=<JSON>`, and the v0 signature
    (HMAC-SHA256 of `v0:<timestamp>:<body>` with the app's signing secret)."""
    body = urlencode({"payload": json.dumps(payload)}).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = "v0=" + hmac.new(secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": stamp,
                  "X-Slack-Signature": signature}


async def send_interaction(client: httpx.AsyncClient, url: str, payload: dict[str, Any], *, secret: str,
                           timestamp: int | None = None) -> httpx.Response:
    """Post an interaction to `url` as Slack does."""
    body, headers = sign_interaction(payload, secret=secret, timestamp=timestamp)
    return await client.post(url, content=body, headers=headers)


def make_handler(state: SlackState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            content_type = self.headers.get("Content-Type", "")
            body: Any = None
            if raw and content_type.startswith("application/json"):
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"__invalid__": raw.decode(errors="replace")}
            elif raw:
                body = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            with state.lock:
                state.requests.append(Request(method, parts.path, query, headers, body))
                fault = state.faults.pop(0) if state.faults else None
            if fault is not None and fault.kind == "status":
                extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                payload = {"ok": False, "error": fault.error} if fault.error else None
                return self._answer(fault.status, payload, extra, text=fault.text)
            if fault is not None and fault.kind == "ok_false":
                extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                return self._answer(200, {"ok": False, "error": fault.error}, extra)
            with state.lock:
                status, payload = self._dispatch(parts.path, query, headers, body)
            if fault is not None and fault.kind == "slow":
                state.closing.wait(fault.delay_s)  # served already; the answer comes late
            self._answer(status, payload)

        def _dispatch(self, path: str, query: dict[str, str], headers: dict[str, str],
                      body: Any) -> tuple[int, dict[str, Any] | None]:
            api_method = path.removeprefix("/api/").strip("/")
            if api_method not in ("chat.postMessage", "chat.update", "conversations.history", "users.lookupByEmail",
                                  *_MORE_METHODS):
                return 200, {"ok": False, "error": "unknown_method"}
            error = state.auth_error(headers)
            if error:
                return 200, {"ok": False, "error": error}
            if api_method in _MORE_METHODS:
                if isinstance(body, dict) and "__invalid__" in body:
                    return 200, {"ok": False, "error": "invalid_json"}
                args = {**query, **(body if isinstance(body, dict) else {})}
                return 200, getattr(state, _MORE_METHODS[api_method])(args)
            if api_method in ("chat.update", "users.lookupByEmail"):
                if isinstance(body, dict) and "__invalid__" in body:
                    return 200, {"ok": False, "error": "invalid_json"}
                args = {**query, **(body if isinstance(body, dict) else {})}
                return 200, (state.update_message(args) if api_method == "chat.update" else state.lookup_by_email(args))
            if api_method == "chat.postMessage":
                if isinstance(body, dict) and "__invalid__" in body:
                    return 200, {"ok": False, "error": "invalid_json"}
                return 200, state.post_message(body if isinstance(body, dict) else query)
            args = {**query, **(body if isinstance(body, dict) else {})}
            return 200, state.history({k: str(v) for k, v in args.items()})

        def _answer(self, status: int, payload: dict[str, Any] | None, headers: dict[str, str] | None = None,
                    text: str = "") -> None:
            raw = json.dumps(payload).encode() if payload is not None else text.encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8" if payload is not None
                                 else "text/plain")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test): nothing to answer to

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def start_slack_api(token: str, port: int = 0) -> tuple[ThreadingHTTPServer, SlackState]:
    """Serve on 127.0.0.1:`port` (0 = any free port) in a daemon thread; `state.url` is the API base URL."""
    state = SlackState(token=token)
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}/api"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, state


def stop_slack_api(server: ThreadingHTTPServer, state: SlackState) -> None:
    state.closing.set()  # wake slow handlers
    server.shutdown()
    server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9098)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 inside a container")
    parser.add_argument("--token", required=True, help="the bot token to accept")
    parser.add_argument("--channel", action="append", default=[], metavar="ID:NAME",
                        help="a channel the bot is in (repeatable)")
    args = parser.parse_args()
    state = SlackState(token=args.token)
    for spec in args.channel:
        channel_id, _, name = spec.partition(":")
        state.add_channel(channel_id, name or channel_id.lower())
    server = ThreadingHTTPServer((args.host, args.port), make_handler(state))
    print(json.dumps({"listening": f"http://{args.host}:{args.port}/api"}), file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
