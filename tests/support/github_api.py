"""A stateful fake of the GitHub REST API subset the github connector uses, on 127.0.0.1.

It keeps repositories with branches (refs to commits), file trees per commit, pull requests and a
log of workflow dispatches, and answers like GitHub: same paths, methods, JSON shapes and status codes
(404 `{"message": "Not Found"}` for unknown repositories, refs and files, 422 for an existing ref, 409
for a stale file sha, 401 "Bad credentials" without the right bearer token). Every request is recorded.

Faults for the next requests (optionally only those of one method): `fail_next` answers a status
without acting (a burst of 5xx, a 429, a 403 secondary rate limit with Retry-After, a primary rate
limit with `x-ratelimit-reset`); `slow` acts and then answers late, the way a request whose answer
is lost in a timeout has still taken effect at GitHub.

Run alone: `GITHUB_DISPATCH_TOKEN=... python tests/support/github_api.py --port 9098 --repo acme/site`.
"""

import argparse
import base64
import binascii
import hashlib
import itertools
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

API_VERSION = "2022-11-28"
DOCS = "https://docs.github.com/rest"
SECONDARY_MESSAGE = ("You have exceeded a secondary rate limit. Please wait a few minutes before you try again. "
                     "If you reach out to GitHub Support for help, please include the request ID 0000:0000.")


def blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


@dataclass
class Recorded:
    method: str
    path: str  # decoded, without the query
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any


@dataclass
class Fault:
    status: int | None  # None: act normally but answer after `delay_s`
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    raw: bytes | None = None  # a non-JSON body
    delay_s: float = 0.0
    method: str | None = None  # only requests of this method take the fault


@dataclass
class Workflow:
    id: int
    inputs: set[str]


@dataclass
class Repo:
    full_name: str
    default_branch: str
    commits: dict[str, dict[str, bytes]]  # commit sha -> the whole tree (path -> bytes)
    refs: dict[str, str]  # branch -> commit sha
    workflows: dict[str, Workflow] = field(default_factory=dict)  # file name -> workflow
    pulls: list[dict[str, Any]] = field(default_factory=list)
    dispatches: list[dict[str, Any]] = field(default_factory=list)
    commit_log: list[dict[str, Any]] = field(default_factory=list)  # commits made through the contents API

    def files(self, branch: str) -> dict[str, bytes]:
        return self.commits[self.refs[branch]]


@dataclass
class GitHubState:
    token: str
    repos: dict[str, Repo] = field(default_factory=dict)  # lower-case full name -> repo
    requests: list[Recorded] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    write_forbidden: bool = False  # writes answer 403 "Resource not accessible by personal access token"
    url: str = ""
    html_url: str = "https://github.com"
    lock: threading.Lock = field(default_factory=threading.Lock)
    idle: threading.Condition = field(default_factory=threading.Condition)
    active: int = 0
    _counter: itertools.count = field(default_factory=itertools.count)

    # -------------------------------------------------------------- set-up

    def add_repo(self, full_name: str, files: dict[str, str | bytes] | None = None, default_branch: str = "main",
                 workflows: dict[str, set[str]] | None = None) -> Repo:
        tree = {path: data.encode() if isinstance(data, str) else data for path, data in (files or {}).items()}
        sha = self._commit_sha()
        repo = Repo(full_name, default_branch, {sha: tree}, {default_branch: sha})
        for index, (name, inputs) in enumerate((workflows or {}).items()):
            repo.workflows[name] = Workflow(id=1000 + index, inputs=set(inputs))
        self.repos[full_name.lower()] = repo
        return repo

    def repo(self, full_name: str) -> Repo:
        return self.repos[full_name.lower()]

    def close_pull(self, full_name: str, number: int) -> None:
        with self.lock:
            self.repo(full_name).pulls[number - 1]["state"] = "closed"

    def fail_next(self, status: int, count: int = 1, *, retry_after: float | None = None, body: Any = None,
                  headers: dict[str, str] | None = None, raw: bytes | None = None, method: str | None = None) -> None:
        """Answer `status` to the next `count` requests (of `method`) without acting."""
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = str(retry_after)
        payload = body if body is not None else {"message": f"HTTP {status}", "documentation_url": DOCS}
        with self.lock:
            self.faults += [Fault(status, extra, payload, raw, method=method) for _ in range(count)]

    def rate_limit(self, retry_after: float | None = None, method: str | None = None) -> None:
        """A 429, as GitHub answers some secondary rate limits."""
        self.fail_next(429, retry_after=retry_after, method=method, body={"message": SECONDARY_MESSAGE,
                                                                          "documentation_url": DOCS})

    def secondary_rate_limit(self, retry_after: float | None = None, method: str | None = None) -> None:
        self.fail_next(403, retry_after=retry_after, method=method, body={"message": SECONDARY_MESSAGE,
                                                                          "documentation_url": DOCS})

    def primary_rate_limit(self, reset_in_s: float, method: str | None = None) -> None:
        reset = str(int(time.time() + reset_in_s))
        self.fail_next(403, method=method, headers={"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "0",
                                                    "x-ratelimit-used": "5000", "x-ratelimit-reset": reset},
                       body={"message": "API rate limit exceeded for user ID 1.", "documentation_url": DOCS})

    def slow(self, delay_s: float, count: int = 1, method: str | None = None) -> None:
        """The next `count` requests (of `method`) act at once but answer `delay_s` later."""
        with self.lock:
            self.faults += [Fault(None, delay_s=delay_s, method=method) for _ in range(count)]

    # -------------------------------------------------------------- inspection

    def calls(self, method: str, path_suffix: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until no request is being answered (a slow one has finished)."""
        with self.idle:
            if not self.idle.wait_for(lambda: self.active == 0, timeout):
                raise TimeoutError("the fake GitHub API is still answering a request")

    # -------------------------------------------------------------- internals

    def _commit_sha(self) -> str:
        return hashlib.sha1(f"commit {next(self._counter)} {id(self)}".encode()).hexdigest()

    def _take_fault(self, method: str) -> Fault | None:
        for index, fault in enumerate(self.faults):
            if fault.method is None or fault.method == method:
                return self.faults.pop(index)
        return None


Answer = tuple[int, Any, dict[str, str]]


def _not_found() -> Answer:
    return 404, {"message": "Not Found", "documentation_url": DOCS, "status": "404"}, {}


def _invalid(message: str, status: int = 422) -> Answer:
    return status, {"message": message, "documentation_url": DOCS, "status": str(status)}, {}


def _validation(*errors: dict[str, Any]) -> Answer:
    return 422, {"message": "Validation Failed", "errors": list(errors), "documentation_url": DOCS,
                 "status": "422"}, {}


class Api:
    """The routes, called with the state's lock held."""

    def __init__(self, state: GitHubState) -> None:
        self.s = state

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> Answer:
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)(/.*)", path)
        if not m:
            return _not_found()
        repo = self.s.repos.get(f"{m[1]}/{m[2]}".lower())
        if repo is None:
            return _not_found()
        rest = m[3]
        if method in ("POST", "PUT", "PATCH", "DELETE") and self.s.write_forbidden:
            return _invalid("Resource not accessible by personal access token", 403)
        if (r := re.fullmatch(r"/git/ref/heads/(.+)", rest)) and method == "GET":
            return self.get_ref(repo, r[1])
        if rest == "/git/refs" and method == "POST":
            return self.create_ref(repo, body)
        if r := re.fullmatch(r"/contents(?:/(.*))?", rest):
            if method == "GET":
                return self.get_contents(repo, (r[1] or "").strip("/"), query)
            if method == "PUT":
                return self.put_contents(repo, (r[1] or "").strip("/"), body)
        if rest == "/pulls" and method == "GET":
            return self.list_pulls(repo, query)
        if rest == "/pulls" and method == "POST":
            return self.create_pull(repo, body)
        if (r := re.fullmatch(r"/actions/workflows/([^/]+)/dispatches", rest)) and method == "POST":
            return self.dispatch(repo, r[1], body)
        return _not_found()

    # -------------------------------------------------------------- git refs

    def _ref_json(self, repo: Repo, branch: str) -> dict[str, Any]:
        sha = repo.refs[branch]
        api = f"{self.s.url}/repos/{repo.full_name}"
        return {"ref": f"refs/heads/{branch}", "node_id": f"REF_{sha[:8]}", "url": f"{api}/git/refs/heads/{branch}",
                "object": {"sha": sha, "type": "commit", "url": f"{api}/git/commits/{sha}"}}

    def get_ref(self, repo: Repo, branch: str) -> Answer:
        if branch not in repo.refs:
            return _not_found()
        return 200, self._ref_json(repo, branch), {}

    def create_ref(self, repo: Repo, body: Any) -> Answer:
        if not isinstance(body, dict):
            return _invalid("Invalid request.\n\nFor 'links/0/schema', nil is not an object.")
        ref, sha = body.get("ref"), body.get("sha")
        if not isinstance(ref, str):
            return _invalid('Invalid request.\n\n"ref" wasn\'t supplied.')
        if not isinstance(sha, str):
            return _invalid('Invalid request.\n\n"sha" wasn\'t supplied.')
        if not ref.startswith("refs/") or ref.count("/") < 2:
            return _invalid("Reference name must start with 'refs/' and have at least two slashes.")
        if not ref.startswith("refs/heads/"):
            return _invalid("Only branches are supported by this fake")
        if sha not in repo.commits:
            return _invalid("Object does not exist")
        branch = ref.removeprefix("refs/heads/")
        if branch in repo.refs:
            return _invalid("Reference already exists")
        repo.refs[branch] = sha
        return 201, self._ref_json(repo, branch), {}

    # -------------------------------------------------------------- contents

    def _file_json(self, repo: Repo, branch: str, path: str, data: bytes) -> dict[str, Any]:
        sha = blob_sha(data)
        return {"type": "file", "name": path.rsplit("/", 1)[-1], "path": path, "sha": sha, "size": len(data),
                "url": f"{self.s.url}/repos/{repo.full_name}/contents/{path}?ref={branch}",
                "html_url": f"{self.s.html_url}/{repo.full_name}/blob/{branch}/{path}",
                "git_url": f"{self.s.url}/repos/{repo.full_name}/git/blobs/{sha}",
                "download_url": f"https://raw.githubusercontent.com/{repo.full_name}/{branch}/{path}"}

    def get_contents(self, repo: Repo, path: str, query: dict[str, str]) -> Answer:
        branch = query.get("ref") or repo.default_branch
        if branch not in repo.refs:
            return _invalid(f"No commit found for the ref {branch}", 404)
        files = repo.files(branch)
        if path in files:
            data = files[path]
            return 200, {**self._file_json(repo, branch, path, data), "encoding": "base64",
                         "content": base64.encodebytes(data).decode()}, {}
        prefix = f"{path}/" if path else ""
        entries = sorted({p[len(prefix):].split("/", 1)[0] for p in files if p.startswith(prefix)})
        if not entries:
            return _not_found()
        listing = []
        for name in entries:
            full = prefix + name
            if full in files:
                listing.append(self._file_json(repo, branch, full, files[full]))
            else:
                listing.append({"type": "dir", "name": name, "path": full, "sha": blob_sha(full.encode())})
        return 200, listing, {}

    def put_contents(self, repo: Repo, path: str, body: Any) -> Answer:
        if not isinstance(body, dict):
            return _invalid("Invalid request.\n\nFor 'links/1/schema', nil is not an object.")
        for name in ("message", "content"):
            if not isinstance(body.get(name), str):
                return _invalid(f'Invalid request.\n\n"{name}" wasn\'t supplied.')
        try:
            data = base64.b64decode(body["content"], validate=True)
        except (binascii.Error, ValueError):
            return _invalid("content is not valid Base64")
        branch = body.get("branch") or repo.default_branch
        if branch not in repo.refs:
            return _invalid(f"Branch {branch} not found", 404)
        files = repo.files(branch)
        if not path or any(p.startswith(path + "/") for p in files):
            return _invalid(f'Invalid request.\n\n"path" {path!r} is a directory.')
        existed = path in files
        if existed:
            if "sha" not in body:
                return _invalid('Invalid request.\n\n"sha" wasn\'t supplied.')
            if body["sha"] != blob_sha(files[path]):
                return _invalid(f"{path} does not match {body['sha']}", 409)
        commit = self.s._commit_sha()
        repo.commits[commit] = {**files, path: data}
        repo.refs[branch] = commit
        repo.commit_log.append({"sha": commit, "branch": branch, "path": path, "message": body["message"]})
        return (200 if existed else 201), {
            "content": self._file_json(repo, branch, path, data),
            "commit": {"sha": commit, "message": body["message"],
                       "html_url": f"{self.s.html_url}/{repo.full_name}/commit/{commit}",
                       "url": f"{self.s.url}/repos/{repo.full_name}/git/commits/{commit}"}}, {}

    # -------------------------------------------------------------- pull requests

    def list_pulls(self, repo: Repo, query: dict[str, str]) -> Answer:
        state = query.get("state", "open")
        if state not in ("open", "closed", "all"):
            return _validation({"resource": "Issue", "field": "state", "code": "invalid"})
        found = [p for p in reversed(repo.pulls)
                 if (state == "all" or p["state"] == state)
                 and ("head" not in query or p["head"]["label"] == query["head"])
                 and ("base" not in query or p["base"]["ref"] == query["base"])]
        return 200, found, {}

    def create_pull(self, repo: Repo, body: Any) -> Answer:
        if not isinstance(body, dict):
            return _invalid("Invalid request.\n\nFor 'links/2/schema', nil is not an object.")
        owner = repo.full_name.split("/")[0]
        title, head, base = body.get("title"), body.get("head"), body.get("base")
        for name, value in (("title", title), ("head", head), ("base", base)):
            if not isinstance(value, str) or not value:
                return _validation({"resource": "PullRequest", "field": name, "code": "missing_field"})
        assert isinstance(head, str) and isinstance(base, str)
        head_owner, _, head_branch = head.rpartition(":")
        if (head_owner and head_owner.lower() != owner.lower()) or head_branch not in repo.refs:
            return _validation({"resource": "PullRequest", "field": "head", "code": "invalid"})
        if base not in repo.refs:
            return _validation({"resource": "PullRequest", "field": "base", "code": "invalid"})
        label = f"{owner}:{head_branch}"
        if any(p["state"] == "open" and p["head"]["label"] == label and p["base"]["ref"] == base for p in repo.pulls):
            return _validation({"resource": "PullRequest", "code": "custom",
                                "message": f"A pull request already exists for {label}."})
        if repo.refs[head_branch] == repo.refs[base]:
            return _validation({"resource": "PullRequest", "code": "custom",
                                "message": f"No commits between {base} and {head_branch}"})
        number = len(repo.pulls) + 1
        pull = {"id": 5000 + number, "number": number, "state": "open", "title": title, "body": body.get("body"),
                "draft": bool(body.get("draft", False)), "merged": False,
                "url": f"{self.s.url}/repos/{repo.full_name}/pulls/{number}",
                "html_url": f"{self.s.html_url}/{repo.full_name}/pull/{number}",
                "head": {"label": label, "ref": head_branch, "sha": repo.refs[head_branch]},
                "base": {"label": f"{owner}:{base}", "ref": base, "sha": repo.refs[base]}}
        repo.pulls.append(pull)
        return 201, pull, {}

    # -------------------------------------------------------------- actions

    def dispatch(self, repo: Repo, workflow_id: str, body: Any) -> Answer:
        workflow = next((name for name, w in repo.workflows.items() if workflow_id in (name, str(w.id))), None)
        if workflow is None:
            return _not_found()
        if not isinstance(body, dict) or not isinstance(body.get("ref"), str):
            return _invalid('Invalid request.\n\n"ref" wasn\'t supplied.')
        ref = body["ref"].removeprefix("refs/heads/")
        if ref not in repo.refs:
            return _invalid(f"No ref found for: {body['ref']}")
        inputs = body.get("inputs", {})
        if not isinstance(inputs, dict):
            return _invalid("Invalid request.\n\nFor 'properties/inputs', is not an object.")
        unexpected = sorted(set(inputs) - repo.workflows[workflow].inputs)
        if unexpected:
            return _invalid(f"Unexpected inputs provided: {json.dumps(unexpected)}")
        repo.dispatches.append({"workflow": workflow, "ref": ref, "inputs": inputs})
        return 204, None, {}


def make_handler(state: GitHubState, echo: bool = False) -> type[BaseHTTPRequestHandler]:
    api = Api(state)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            with state.idle:
                state.active += 1
            try:
                self._answer(method)
            finally:
                with state.idle:
                    state.active -= 1
                    state.idle.notify_all()

        def _answer(self, method: str) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            try:
                body = json.loads(raw) if raw else None
                bad_json = False
            except ValueError:
                body, bad_json = raw.decode(errors="replace"), True
            delay = 0.0
            headers_in = {k.lower(): v for k, v in self.headers.items()}
            with state.lock:
                state.requests.append(Recorded(method, path, query, headers_in, body))
                fault = state._take_fault(method)
                if fault is not None and fault.status is not None:
                    status, payload, headers = fault.status, fault.body, dict(fault.headers)
                    if fault.raw is not None:
                        payload = fault.raw
                else:
                    delay = fault.delay_s if fault is not None else 0.0
                    status, payload, headers = self._checked(method, path, query, body, bad_json)
            if echo:
                print(json.dumps({"method": method, "path": self.path, "status": status}), flush=True)
            if delay:
                time.sleep(delay)
            self._send(status, payload, headers)

        def _checked(self, method: str, path: str, query: dict[str, str], body: Any, bad_json: bool) -> Answer:
            auth = self.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() not in ("bearer", "token") or token != state.token:
                return 401, {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}, {}
            version = self.headers.get("X-GitHub-Api-Version")
            if version is not None and version != API_VERSION:
                return _invalid(f"Unsupported 'X-GitHub-Api-Version' header: {version}", 400)
            if bad_json:
                return _invalid("Problems parsing JSON", 400)
            status, payload, headers = api.route(method, path, query, body)
            return status, payload, {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "4999",
                                     "x-ratelimit-reset": str(int(time.time()) + 3600), **headers}

        def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
            if isinstance(payload, bytes):
                data, content_type = payload, "text/html"
            elif status == 204 or payload is None:
                data, content_type = b"", None
            else:
                data, content_type = json.dumps(payload).encode(), "application/json; charset=utf-8"
            try:
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("X-GitHub-Api-Version-Selected", API_VERSION)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test): GitHub would have acted all the same

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def start_github_api(token: str, port: int = 0, host: str = "127.0.0.1",
                     echo: bool = False) -> tuple[ThreadingHTTPServer, GitHubState]:
    """Serve on `host`:`port` (0 = any free port) in a daemon thread; stop with shutdown() and server_close()."""
    state = GitHubState(token=token)
    server = ThreadingHTTPServer((host, port), make_handler(state, echo))
    state.url = f"http://{host}:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9098)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 inside a container")
    parser.add_argument("--repo", action="append", default=[], help="owner/name to create (repeatable)")
    parser.add_argument("--workflow", action="append", default=[], help="workflow file name every repo has")
    args = parser.parse_args()
    token = os.environ.get("GITHUB_DISPATCH_TOKEN", "")
    if not token:
        parser.error("set GITHUB_DISPATCH_TOKEN to the token the fake accepts")
    server, state = start_github_api(token, args.port, args.host, echo=True)
    for name in args.repo or ["acme/site"]:
        state.add_repo(name, {"README.md": f"# {name}\n"}, workflows={w: set() for w in args.workflow})
    print(json.dumps({"listening": state.url, "repos": sorted(r.full_name for r in state.repos.values())}),
          file=sys.stderr, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
