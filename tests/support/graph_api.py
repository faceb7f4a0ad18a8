"""A stateful fake of the Microsoft identity platform token endpoint and the Microsoft Graph subset the
SharePoint connector uses, on 127.0.0.1.

Token endpoint: POST /{tenant}/oauth2/v2.0/token (client credentials, form-encoded), answering 401
invalid_client for a wrong secret the way Entra ID does. Graph (under /v1.0), with `Authorization: Bearer
<issued token>` checked on every call:
- GET  /v1.0/sites/{site}/lists/{list}/items?$expand=fields&$filter=fields/<F> eq '<value>'
  (a filter on a non-indexed column needs `Prefer: HonorNonIndexedQueriesWarningMayFailRandomly`, like Graph)
- POST /v1.0/sites/{site}/lists/{list}/items  {"fields": {...}}  -> 201 listItem
- GET  /v1.0/drives/{drive}/root:/{path}  -> driveItem or 404 itemNotFound
- PUT  /v1.0/drives/{drive}/root:/{path}:/content  -> 201 created / 200 replaced
Errors use Graph's shape {"error": {"code", "message"}}. `graph_faults` / `token_faults` answer errors first
(with Retry-After when given), `graph_delay_s` / `token_delay_s` answer late, and every request is recorded.
"""

import base64
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

NON_INDEXED_PREFER = "HonorNonIndexedQueriesWarningMayFailRandomly"
FILTER_RE = re.compile(r"^fields/(\w+) eq '((?:[^']|'')*)'$")


@dataclass
class Fault:
    """One error answer: a status, an optional Retry-After (seconds) and Graph error code."""

    status: int
    retry_after: str | None = None
    code: str = "serviceNotAvailable"


@dataclass
class Recorded:
    method: str
    path: str  # without the query string, still percent-encoded
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}


@dataclass
class SharePointList:
    columns: set[str] | None = None  # None: any field name is accepted
    indexed: set[str] = field(default_factory=set)
    items: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class DriveFile:
    item_id: str
    content: bytes
    created: str


@dataclass
class GraphState:
    tenant_id: str
    client_id: str
    client_secret: str
    expires_in: int = 3599
    store_sha256: bool = True  # consumer drives report sha256Hash; business drives only quickXorHash
    lists: dict[tuple[str, str], SharePointList] = field(default_factory=dict)
    drives: dict[str, dict[str, DriveFile]] = field(default_factory=dict)
    valid_tokens: set[str] = field(default_factory=set)
    token_requests: int = 0
    requests: list[Recorded] = field(default_factory=list)
    graph_faults: list[Fault] = field(default_factory=list)
    token_faults: list[Fault] = field(default_factory=list)
    # Answered instead of the success AFTER a create/upload took effect: a response lost on the way back.
    faults_after_effect: list[Fault] = field(default_factory=list)
    graph_delay_s: float = 0.0
    token_delay_s: float = 0.0
    items_created: int = 0
    uploads: int = 0
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)  # releases delayed answers at shutdown
    _next_id: int = 0

    @property
    def graph_url(self) -> str:
        return f"{self.base_url}/v1.0"

    @property
    def login_url(self) -> str:
        return self.base_url

    def add_list(self, site_id: str, list_id: str, columns: set[str] | None = None,
                 indexed: set[str] | None = None) -> SharePointList:
        self.lists[(site_id, list_id)] = sp_list = SharePointList(columns, indexed or set())
        return sp_list

    def add_drive(self, drive_id: str) -> dict[str, DriveFile]:
        return self.drives.setdefault(drive_id, {})

    def revoke_tokens(self) -> None:
        with self.lock:
            self.valid_tokens.clear()

    def graph_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.startswith("/v1.0/")]

    def new_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def quick_xor_placeholder(content: bytes) -> str:
    """Stands in for quickXorHash (a different algorithm); only its presence matters to the connector."""
    return base64.b64encode(hashlib.sha1(content).digest()[:20]).decode()


def make_handler(state: GraphState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            raw = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                pass

        def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
            self._send(status, {"error": {"code": code, "message": message,
                                          "innerError": {"date": _now(), "request-id": secrets.token_hex(8)}}},
                       headers)

        def _fault(self, fault: Fault) -> None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            self._error(fault.status, fault.code, f"fault injected: HTTP {fault.status}", headers)

        def _handle(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            parts = urlsplit(self.path)
            with state.lock:
                state.requests.append(Recorded(self.command, parts.path, parse_qs(parts.query, keep_blank_values=True),
                                               dict(self.headers), raw))
            if parts.path.endswith("/oauth2/v2.0/token"):
                self._token(parts.path, raw)
            elif parts.path.startswith("/v1.0/"):
                self._graph(parts.path[len("/v1.0"):], parse_qs(parts.query), raw)
            else:
                self._error(404, "notFound", f"no route {parts.path}")

        do_GET = do_POST = do_PUT = _handle

        # --- identity platform -------------------------------------------------------------------------

        def _token(self, path: str, raw: bytes) -> None:
            if state.token_delay_s:
                state.stop.wait(state.token_delay_s)
            with state.lock:
                state.token_requests += 1
                fault = state.token_faults.pop(0) if state.token_faults else None
            if fault is not None:
                self._fault(fault)
                return
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            tenant = unquote(path.split("/")[1])
            if tenant != state.tenant_id:
                self._send(400, {"error": "invalid_request",
                                 "error_description": f"AADSTS90002: Tenant '{tenant}' not found.\r\nTrace ID: x"})
            elif form.get("grant_type") != "client_credentials":
                self._send(400, {"error": "unsupported_grant_type",
                                 "error_description": "AADSTS70003: The app requested an unsupported grant type."})
            elif form.get("scope") != "https://graph.microsoft.com/.default":
                self._send(400, {"error": "invalid_scope",
                                 "error_description": "AADSTS1002012: The provided value for scope is not valid."})
            elif form.get("client_id") != state.client_id or form.get("client_secret") != state.client_secret:
                self._send(401, {"error": "invalid_client",
                                 "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the "
                                                      "secret being sent in the request is the client secret value."
                                                      "\r\nTrace ID: 1234"})
            else:
                token = "eyJ0eXAi." + secrets.token_urlsafe(24)
                with state.lock:
                    state.valid_tokens.add(token)
                self._send(200, {"token_type": "Bearer", "expires_in": state.expires_in,
                                 "ext_expires_in": state.expires_in, "access_token": token})

        # --- Graph ---------------------------------------------------------------------------------------

        def _graph(self, path: str, query: dict[str, list[str]], raw: bytes) -> None:
            if state.graph_delay_s:
                state.stop.wait(state.graph_delay_s)
            auth = self.headers.get("Authorization", "")
            with state.lock:
                authorized = auth.startswith("Bearer ") and auth[len("Bearer "):] in state.valid_tokens
                fault = state.graph_faults.pop(0) if state.graph_faults and authorized else None
            if not authorized:
                self._error(401, "InvalidAuthenticationToken",
                            "Access token is empty." if not auth else "Access token validation failure.")
                return
            if fault is not None:
                self._fault(fault)
                return
            segments = path.split("/")
            if len(segments) == 6 and segments[1] == "sites" and segments[3] == "lists" and segments[5] == "items":
                key = (unquote(segments[2]), unquote(segments[4]))
                if self.command == "GET":
                    self._list_items(key, query)
                elif self.command == "POST":
                    self._create_item(key, raw)
                else:
                    self._error(405, "methodNotAllowed", f"{self.command} not allowed")
            elif len(segments) >= 4 and segments[1] == "drives" and segments[3].startswith("root:"):
                self._drive(unquote(segments[2]), "/".join(segments[3:])[len("root:"):], raw)
            else:
                self._error(400, "invalidRequest", f"Invalid request: {path}")

        def _list_items(self, key: tuple[str, str], query: dict[str, list[str]]) -> None:
            sp_list = state.lists.get(key)
            if sp_list is None:
                self._error(404, "itemNotFound", "The requested resource doesn't exist.")
                return
            expand = "fields" in query.get("$expand", [""])[0].split(",")
            items = list(sp_list.items)
            filters = query.get("$filter")
            if filters:
                match = FILTER_RE.match(filters[0])
                if match is None:
                    self._error(400, "invalidRequest", f"Invalid filter clause: {filters[0]}")
                    return
                name, value = match.group(1), match.group(2).replace("''", "'")
                if sp_list.columns is not None and name not in sp_list.columns:
                    self._error(400, "invalidRequest", f"Field '{name}' is not recognized")
                    return
                if name not in sp_list.indexed and NON_INDEXED_PREFER not in self.headers.get("Prefer", ""):
                    self._error(400, "invalidRequest",
                                f"Field '{name}' cannot be referenced in filter or orderby as it is not indexed. "
                                f"Provide the 'Prefer: {NON_INDEXED_PREFER}' header to allow this, but be "
                                "warned that such queries may fail on large lists.")
                    return
                items = [i for i in items if i["fields"].get(name) == value]
            self._send(200, {"value": [i if expand else {k: v for k, v in i.items() if k != "fields"}
                                       for i in items]})

        def _create_item(self, key: tuple[str, str], raw: bytes) -> None:
            sp_list = state.lists.get(key)
            if sp_list is None:
                self._error(404, "itemNotFound", "The requested resource doesn't exist.")
                return
            try:
                fields = json.loads(raw)["fields"]
            except (ValueError, KeyError, TypeError):
                fields = None
            if not isinstance(fields, dict):
                self._error(400, "invalidRequest", "Invalid request: a listItem needs 'fields'")
                return
            unknown = [n for n in fields if sp_list.columns is not None and n not in sp_list.columns]
            if unknown:
                self._error(400, "invalidRequest", f"Field '{unknown[0]}' is not recognized")
                return
            with state.lock:
                item_id = state.new_id()
                site, list_id = key
                item = {"id": item_id, "createdDateTime": _now(),
                        "webUrl": f"https://contoso.sharepoint.com/sites/{site}/Lists/{list_id}/{item_id}_.000",
                        "fields": {**fields, "id": item_id}}
                sp_list.items.append(item)
                state.items_created += 1
                lost = state.faults_after_effect.pop(0) if state.faults_after_effect else None
            if lost is not None:
                self._fault(lost)
                return
            self._send(201, item)

        def _drive(self, drive_id: str, rest: str, raw: bytes) -> None:
            files = state.drives.get(drive_id)
            if files is None:
                self._error(404, "itemNotFound", "The resource could not be found.")
                return
            content_call = rest.endswith(":/content")
            path = unquote(rest[:-len(":/content")] if content_call else rest.rstrip(":")).strip("/")
            if self.command == "GET" and not content_call:
                existing = files.get(path)
                if existing is None:
                    self._error(404, "itemNotFound", "The resource could not be found.")
                else:
                    self._send(200, self._drive_item(drive_id, path, existing))
            elif self.command == "PUT" and content_call:
                if len(raw) > 4 * 1024 * 1024:
                    self._error(413, "requestTooLarge", "Maximum request length exceeded.")
                    return
                with state.lock:
                    existing = files.get(path)
                    if existing is None:
                        files[path] = entry = DriveFile(state.new_id(), raw, _now())
                    else:
                        existing.content = raw
                        entry = existing
                    state.uploads += 1
                    lost = state.faults_after_effect.pop(0) if state.faults_after_effect else None
                if lost is not None:
                    self._fault(lost)
                    return
                self._send(201 if existing is None else 200, self._drive_item(drive_id, path, entry))
            else:
                self._error(400, "invalidRequest", f"{self.command} on {rest} is not supported here")

        def _drive_item(self, drive_id: str, path: str, entry: DriveFile) -> dict[str, Any]:
            hashes = {"quickXorHash": quick_xor_placeholder(entry.content)}
            if state.store_sha256:
                hashes["sha256Hash"] = hashlib.sha256(entry.content).hexdigest().upper()
            folder, _, name = path.rpartition("/")
            return {"id": entry.item_id, "name": name, "size": len(entry.content), "createdDateTime": entry.created,
                    "webUrl": f"https://contoso.sharepoint.com/sites/team/Shared%20Documents/{path}",
                    "parentReference": {"driveId": drive_id, "path": f"/drives/{drive_id}/root:/{folder}".rstrip("/")},
                    "file": {"mimeType": self.headers.get("Content-Type", "application/octet-stream"),
                             "hashes": hashes}}

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def start_graph_api(tenant_id: str = "tenant-1", client_id: str = "client-1",
                    client_secret: str = "s3cr3t-value-never-logged") -> tuple[ThreadingHTTPServer, GraphState]:
    """Serve on a free port of 127.0.0.1 in a daemon thread; stop with `stop_graph_api`."""
    state = GraphState(tenant_id=tenant_id, client_id=client_id, client_secret=client_secret)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, state


def stop_graph_api(server: ThreadingHTTPServer, state: GraphState) -> None:
    state.stop.set()
    server.shutdown()
    server.server_close()
