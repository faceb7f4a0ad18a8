"""GitHub: branches, file commits, pull requests and workflow dispatches over the REST API (v3).

Every operation looks for an earlier attempt's effect before making its own, so a step redelivered
after a crash between GitHub's answer and the dispatcher's checkpoint does not repeat it:

- `create_branch`: the branch is read first and returned when it exists; a 422 "Reference already
  exists" on create (a concurrent earlier attempt) is answered by reading the branch.
- `put_file`: the file is read on the branch first; identical content (same blob sha, or the same
  decoded bytes) is returned with `changed: false` and no commit. A 409 (stale sha) or 422 ("sha"
  wasn't supplied) on the write means someone wrote the file between our read and write: retryable,
  and the next attempt reads again.
- `open_pull_request`: pull requests with the same head and base, in any state, are listed first and
  the newest is returned; a 422 "A pull request already exists" on create is answered by listing again.
- `dispatch_workflow`: GitHub records no caller key for a workflow dispatch and gives no way to find
  an earlier one, so this operation relies on the dispatcher's step checkpoint alone: a crash after
  GitHub accepted the dispatch and before the checkpoint can run the workflow a second time. To not add
  to that risk, a dispatch whose request was sent but got no answer (read timeout, dropped connection)
  fails permanently with `outcome_unknown` instead of being retried: check the workflow's runs before
  dispatching again. Failures before the request left (connection refused, connect timeout) and HTTP
  answers (5xx, rate limits) are retried as usual.

Errors: 429 and rate-limit 403s (primary: `x-ratelimit-remaining: 0`, wait until `x-ratelimit-reset`;
secondary: "secondary rate limit" in the message, wait `Retry-After` or 60 s) and 5xx are retryable;
401 and other 403s are `auth_failed`; 404 is `not_found` (GitHub also answers 404 for a repository
the token cannot see); 422 is `validation_failed`; a non-JSON or unexpected answer is `bad_response`.
The token never appears in a result or an error message.
"""

import base64
import hashlib
import json
import re
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from .base import ConnectorError, StepContext, StepOutput, permanent, retryable
from .http_errors import classify_status, classify_transport, retry_after_s

API_VERSION = "2022-11-28"
SECONDARY_RATE_LIMIT_WAIT_S = 60.0
TOKEN_HELP = ("GITHUB_DISPATCH_TOKEN needs the `repo` scope (classic token) or Contents, Pull requests and "
              "Actions write permission on the repository (fine-grained token)")

_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|^/|/$|^\.|/\.|\.lock$|\.lock/|^@$")

# Transport failures where the request cannot have reached GitHub.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def git_blob_sha(data: bytes) -> str:
    """The sha git (and GitHub's contents API) gives a file with these bytes."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def file_bytes(content: Any) -> bytes:
    """A string is written as is; any other JSON value as pretty JSON with sorted keys and a final newline."""
    if isinstance(content, str):
        return content.encode()
    return (json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _github_message(response: httpx.Response) -> str:
    """GitHub's `message` (with the messages of its `errors` list), else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:300]
    if not isinstance(data, dict) or not isinstance(data.get("message"), str):
        return response.text[:300]
    message = data["message"]
    errors = data.get("errors")
    if isinstance(errors, list):
        details = [e.get("message") or f"{e.get('field')} {e.get('code')}" if isinstance(e, dict) else str(e)
                   for e in errors]
        if details:
            message += ": " + "; ".join(str(d) for d in details)
    return message[:500]


def classify_github(response: httpx.Response, what: str) -> ConnectorError:
    """GitHub's failures: rate limits (429 and some 403s) are retryable, permission problems are not."""
    status = response.status_code
    message = _github_message(response)
    if status in (403, 429):
        if response.headers.get("x-ratelimit-remaining") == "0":
            wait = retry_after_s(response)
            return retryable("rate_limited", f"{what}: HTTP {status}: primary rate limit exhausted: {message}",
                             SECONDARY_RATE_LIMIT_WAIT_S if wait is None else wait, status)
        if status == 429 or "secondary rate limit" in message.lower():
            wait = retry_after_s(response)
            return retryable("rate_limited", f"{what}: HTTP {status}: secondary rate limit: {message}",
                             SECONDARY_RATE_LIMIT_WAIT_S if wait is None else wait, status)
        return permanent("auth_failed", f"{what}: HTTP 403: {message}: the token lacks permission; {TOKEN_HELP}",
                         status)
    if status == 401:
        return permanent("auth_failed", f"{what}: HTTP 401: {message}: the token was refused; {TOKEN_HELP}", status)
    if status == 404:
        return permanent("not_found", f"{what}: HTTP 404: {message} (GitHub also answers 404 for a repository "
                                      "the token cannot see)", status)
    if status == 422:
        return permanent("validation_failed", f"{what}: HTTP 422: {message}", status)
    return classify_status(response, what)


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise permanent("bad_response", f"{what}: HTTP {response.status_code} answer is not JSON: "
                                        f"{response.text[:200]!r}", response.status_code) from None


def _field(data: Any, path: str, kind: type | tuple[type, ...], what: str, status: int) -> Any:
    """`data[a][b]` for `path` "a.b", checked to be of `kind`, else `bad_response`."""
    value = data
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise permanent("bad_response", f"{what}: answer has no {path!r}", status)
        value = value[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise permanent("bad_response", f"{what}: {path!r} in the answer is not a {kind}", status)
    return value


class GitHubConnector:
    name = "github"

    def __init__(self, client: httpx.AsyncClient, api_url: str, token: SecretStr | None) -> None:
        self._client = client
        self._api_url = api_url.rstrip("/")
        self._token = token

    def missing_settings(self) -> list[str]:
        if self._token is None or not self._token.get_secret_value():
            return ["GITHUB_DISPATCH_TOKEN"]
        return []

    async def run(self, ctx: StepContext) -> StepOutput:
        operations = {
            "create_branch": self._create_branch,
            "put_file": self._put_file,
            "open_pull_request": self._open_pull_request,
            "dispatch_workflow": self._dispatch_workflow,
        }
        operation = operations.get(ctx.step.operation)
        if operation is None:
            raise permanent("unsupported_operation", f"github has no operation {ctx.step.operation!r}; "
                                                     f"it has {', '.join(operations)}")
        try:
            result, status = await operation(ctx)
        except ConnectorError as exc:
            exc.redacted(self._token.get_secret_value() if self._token is not None else None)
            raise
        return StepOutput(result=result, http_status=status)

    # ------------------------------------------------------------------ HTTP

    def _headers(self) -> dict[str, str]:
        assert self._token is not None  # checked by missing_settings
        return {
            "Authorization": f"Bearer {self._token.get_secret_value()}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
        }

    async def _request(self, method: str, path: str, what: str, *, params: dict[str, str] | None = None,
                       body: Any = None, sent_is_final: bool = False) -> httpx.Response:
        """One HTTP call; transport failures classified (`sent_is_final`: an unanswered request may have acted)."""
        try:
            return await self._client.request(method, self._api_url + path, params=params, json=body,
                                              headers=self._headers())
        except httpx.HTTPError as exc:
            if sent_is_final and not isinstance(exc, _NOT_SENT):
                raise permanent("outcome_unknown",
                                f"{what}: {type(exc).__name__} after the request was sent: GitHub may have acted; "
                                "not retried because an earlier dispatch cannot be detected: check the workflow's "
                                "runs before dispatching again") from exc
            raise classify_transport(exc, what) from exc

    async def _read_ref(self, repo: str, branch: str, what: str) -> str | None:
        """The commit sha `branch` points at, or None when it does not exist."""
        response = await self._request("GET", f"/repos/{repo}/git/ref/heads/{quote(branch, safe='/')}", what)
        if response.status_code == 404:
            return None
        if not response.is_success:
            raise classify_github(response, what)
        data = _json(response, what)
        ref = _field(data, "ref", str, what, response.status_code)
        if ref != f"refs/heads/{branch}":
            raise permanent("bad_response", f"{what}: asked for refs/heads/{branch}, got {ref!r}", response.status_code)
        return _field(data, "object.sha", str, what, response.status_code)

    # ------------------------------------------------------------------ operations

    async def _create_branch(self, ctx: StepContext) -> tuple[dict[str, Any], int]:
        p = ctx.step.params
        repo, branch, base = _repo(p), _ref_param(p, "branch"), _ref_param(p, "base", "main")
        what = f"github create_branch {repo}:{branch}"
        sha = await self._read_ref(repo, branch, what)
        if sha is not None:
            return {"branch": branch, "sha": sha, "created": False}, 200
        base_sha = await self._read_ref(repo, base, what)
        if base_sha is None:
            raise permanent("not_found", f"{what}: base branch {base!r} not found in {repo} (or the token cannot "
                                         "see the repository)", 404)
        response = await self._request("POST", f"/repos/{repo}/git/refs", what,
                                       body={"ref": f"refs/heads/{branch}", "sha": base_sha})
        if response.status_code == 422 and "reference already exists" in _github_message(response).lower():
            sha = await self._read_ref(repo, branch, what)
            if sha is None:
                raise permanent("bad_response", f"{what}: GitHub says the branch exists but it cannot be read", 422)
            return {"branch": branch, "sha": sha, "created": False}, 200
        if not response.is_success:
            raise classify_github(response, what)
        sha = _field(_json(response, what), "object.sha", str, what, response.status_code)
        return {"branch": branch, "sha": sha, "created": True}, response.status_code

    async def _put_file(self, ctx: StepContext) -> tuple[dict[str, Any], int]:
        p = ctx.step.params
        repo, branch, path = _repo(p), _ref_param(p, "branch"), _path_param(p)
        if "content" not in p or p["content"] is None:
            raise permanent("invalid_params", "github put_file: param 'content' is required")
        data = file_bytes(p["content"])
        message = _str_param(p, "message", f"Update {path} (approval {ctx.approval_id})")
        what = f"github put_file {repo}:{branch}:{path}"
        url = f"/repos/{repo}/contents/{quote(path, safe='/')}"

        response = await self._request("GET", url, what, params={"ref": branch})
        existing_sha: str | None = None
        if response.status_code != 404:
            if not response.is_success:
                raise classify_github(response, what)
            current = _json(response, what)
            if isinstance(current, list):
                raise permanent("invalid_params", f"{what}: {path!r} is a directory", 400)
            kind = _field(current, "type", str, what, response.status_code)
            if kind != "file":
                raise permanent("invalid_params", f"{what}: {path!r} is a {kind}, not a file", 400)
            existing_sha = _field(current, "sha", str, what, response.status_code)
            if existing_sha == git_blob_sha(data) or _decoded(current) == data:
                return {"path": path, "sha": existing_sha, "commitSha": None, "changed": False}, 200

        body: dict[str, Any] = {"message": message, "content": base64.b64encode(data).decode(), "branch": branch}
        if existing_sha is not None:
            body["sha"] = existing_sha
        response = await self._request("PUT", url, what, body=body)
        if response.status_code == 409 or (response.status_code == 422
                                           and "wasn't supplied" in _github_message(response)
                                           and '"sha"' in _github_message(response)):
            raise retryable("conflict", f"{what}: the file changed between read and write (HTTP "
                                        f"{response.status_code}: {_github_message(response)}); reading again",
                            None, response.status_code)
        if not response.is_success:
            raise classify_github(response, what)
        answer = _json(response, what)
        return {"path": path, "sha": _field(answer, "content.sha", str, what, response.status_code),
                "commitSha": _field(answer, "commit.sha", str, what, response.status_code),
                "changed": True}, response.status_code

    async def _open_pull_request(self, ctx: StepContext) -> tuple[dict[str, Any], int]:
        p = ctx.step.params
        repo, head, base = _repo(p), _str_param(p, "head"), _ref_param(p, "base", "main")
        title = _str_param(p, "title")
        description = p.get("body")
        if description is not None and not isinstance(description, str):
            raise permanent("invalid_params", "github open_pull_request: param 'body' must be a string")
        owner = repo.split("/")[0]
        qualified_head = head if ":" in head else f"{owner}:{head}"
        _check_ref(qualified_head.split(":", 1)[1], "head")
        what = f"github open_pull_request {repo}:{head}->{base}"

        existing = await self._find_pull(repo, qualified_head, base, what)
        if existing is not None:
            return existing, 200
        body: dict[str, Any] = {"title": title, "head": head, "base": base}
        if description is not None:
            body["body"] = description
        response = await self._request("POST", f"/repos/{repo}/pulls", what, body=body)
        if response.status_code == 422 and "already exists" in _github_message(response).lower():
            existing = await self._find_pull(repo, qualified_head, base, what)
            if existing is not None:
                return existing, 200
        if not response.is_success:
            raise classify_github(response, what)
        return {**_pull(_json(response, what), what, response.status_code), "created": True}, response.status_code

    async def _find_pull(self, repo: str, head: str, base: str, what: str) -> dict[str, Any] | None:
        response = await self._request("GET", f"/repos/{repo}/pulls", what,
                                       params={"head": head, "base": base, "state": "all"})
        if not response.is_success:
            raise classify_github(response, what)
        pulls = _json(response, what)
        if not isinstance(pulls, list):
            raise permanent("bad_response", f"{what}: the pull request list is not a list", response.status_code)
        if not pulls:
            return None
        return {**_pull(pulls[0], what, response.status_code), "created": False}

    async def _dispatch_workflow(self, ctx: StepContext) -> tuple[dict[str, Any], int]:
        p = ctx.step.params
        repo, ref = _repo(p), _ref_param(p, "ref", "main")
        workflow = p.get("workflow")
        if isinstance(workflow, bool) or not isinstance(workflow, str | int) or not str(workflow).strip():
            raise permanent("invalid_params", "github dispatch_workflow: param 'workflow' is required "
                                              "(a workflow file name such as deploy.yml, or its id)")
        inputs = p.get("inputs")
        inputs = {} if inputs is None else inputs
        if not isinstance(inputs, dict):
            raise permanent("invalid_params", "github dispatch_workflow: param 'inputs' must be an object")
        what = f"github dispatch_workflow {repo}:{workflow}@{ref}"
        response = await self._request("POST", f"/repos/{repo}/actions/workflows/{quote(str(workflow), safe='')}"
                                                "/dispatches", what, body={"ref": ref, "inputs": inputs},
                                       sent_is_final=True)
        if not response.is_success:
            raise classify_github(response, what)
        return {"workflow": workflow, "ref": ref, "dispatched": True}, response.status_code


# ---------------------------------------------------------------------- params and answers


def _str_param(params: dict[str, Any], name: str, default: str | None = None) -> str:
    value = params.get(name)
    if value is None or value == "":
        if default is not None:
            return default
        raise permanent("invalid_params", f"github: param {name!r} is required")
    if not isinstance(value, str) or not value.strip():
        raise permanent("invalid_params", f"github: param {name!r} must be a non-empty string")
    return value


def _repo(params: dict[str, Any]) -> str:
    repo = _str_param(params, "repo")
    if not _REPO.match(repo) or repo.split("/")[1] in (".", ".."):
        raise permanent("invalid_params", f"github: param 'repo' must be 'owner/name', got {repo!r}")
    return repo


def _check_ref(value: str, name: str) -> str:
    if not value or _BAD_REF.search(value):
        raise permanent("invalid_params", f"github: param {name!r} is not a valid branch name: {value!r}")
    return value


def _ref_param(params: dict[str, Any], name: str, default: str | None = None) -> str:
    return _check_ref(_str_param(params, name, default), name)


def _path_param(params: dict[str, Any]) -> str:
    path = _str_param(params, "path").strip("/")
    if not path or any(part in ("", ".", "..") for part in path.split("/")):
        raise permanent("invalid_params", f"github: param 'path' is not a file path: {params.get('path')!r}")
    return path


def _decoded(current: dict[str, Any]) -> bytes | None:
    """The bytes of a contents answer, or None when GitHub left them out (files over 1 MB)."""
    content = current.get("content")
    if current.get("encoding") != "base64" or not isinstance(content, str):
        return None
    try:
        return base64.b64decode(content)  # GitHub wraps the base64 text in lines; newlines are skipped
    except ValueError:
        return None


def _pull(data: Any, what: str, status: int) -> dict[str, Any]:
    return {"number": _field(data, "number", int, what, status), "url": _field(data, "html_url", str, what, status),
            "state": _field(data, "state", str, what, status)}
