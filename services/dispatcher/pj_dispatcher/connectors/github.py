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

Tenants: a repository may be shared by several tenants, so every branch a step writes (`branch` of
`create_branch` and `put_file`, `head` of `open_pull_request`) is put under `pj/<tenant>/` (see
`tenancy`): `env/dev` of tenant acme is `pj/acme/env/dev`, and tenant globex asking for `env/dev` gets
its own branch and pull request, never acme's. A branch only read or run on (`base`, `ref`) may be a
shared one such as `main`, but never another tenant's `pj/` branch.

Errors: 429 and rate-limit 403s (primary: `x-ratelimit-remaining: 0`, wait until `x-ratelimit-reset`;
secondary: "secondary rate limit" in the message, wait `Retry-After` or 60 s) and 5xx are retryable;
401 and other 403s are `auth_failed`; 404 is `not_found` (GitHub also answers 404 for a repository
the token cannot see); 422 is `validation_failed`; a non-JSON or unexpected answer is `bad_response`
(retried, as with every connector: see `http_errors.bad_response`).
The token never appears in a result or an error message.
"""

import base64
import hashlib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from .base import ApiConnector, ConnectorError, Operation, StepContext, StepOutput, permanent, retryable
from .files import file_content
from .http_errors import bad_response, classify_status, classify_transport, json_body, json_field, retry_after_s
from .params import optional_object, optional_str, required_str, required_value
from .tenancy import check_not_anothers, own_name

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


def _github_message(response: httpx.Response) -> str:
    """GitHub's `message` (with the messages of its `errors` list), else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:300]
    if not isinstance(data, dict) or not isinstance(data.get("message"), str):
        return response.text[:300]
    message: str = data["message"]
    errors = data.get("errors")
    if isinstance(errors, list):
        details = [e.get("message") or f"{e.get('field')} {e.get('code')}" if isinstance(e, dict) else str(e)
                   for e in errors]
        if details:
            message += ": " + "; ".join(str(d) for d in details)
    return message[:500]


def _rate_limit(response: httpx.Response, what: str, message: str) -> ConnectorError | None:
    """A 429 or rate-limit 403 as `rate_limited` with GitHub's wait; None for any other answer."""
    status = response.status_code
    if status not in (403, 429):
        return None
    if response.headers.get("x-ratelimit-remaining") == "0":
        kind = "primary rate limit exhausted"
    elif status == 429 or "secondary rate limit" in message.lower():
        kind = "secondary rate limit"
    else:
        return None
    wait = retry_after_s(response)
    return retryable("rate_limited", f"{what}: HTTP {status}: {kind}: {message}",
                     retry_after=SECONDARY_RATE_LIMIT_WAIT_S if wait is None else wait, http_status=status)


def classify_github(response: httpx.Response, what: str) -> ConnectorError:
    """GitHub's failures: rate limits (429 and some 403s) are retryable, permission problems are not."""
    status = response.status_code
    message = _github_message(response)
    limited = _rate_limit(response, what, message)
    if limited is not None:
        return limited
    if status == 403:
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


class GitHubConnector(ApiConnector):
    name = "github"

    def __init__(self, client: httpx.AsyncClient, *, api_url: str, token: SecretStr | None) -> None:
        self._client = client
        self._api_url = api_url.rstrip("/")
        self._token = token

    def operations(self) -> Mapping[str, Operation]:
        return {
            "create_branch": self._create_branch,
            "put_file": self._put_file,
            "open_pull_request": self._open_pull_request,
            "dispatch_workflow": self._dispatch_workflow,
        }

    def missing_settings(self) -> list[str]:
        if self._token is None or not self._token.get_secret_value():
            return ["GITHUB_DISPATCH_TOKEN"]
        return []

    def secrets(self) -> tuple[str | None, ...]:
        return (self._token.get_secret_value() if self._token is not None else None,)

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
        data = json_body(response, what)
        ref = json_field(data, "ref", str, what=what, http_status=response.status_code)
        if ref != f"refs/heads/{branch}":
            raise bad_response(what, f"asked for refs/heads/{branch}, got {ref!r}", response.status_code)
        sha: str = json_field(data, "object.sha", str, what=what, http_status=response.status_code)
        return sha

    # ------------------------------------------------------------------ operations

    async def _create_branch(self, ctx: StepContext) -> StepOutput:
        p, op = ctx.step.params, "github create_branch"
        repo, branch, base = _repo(p, op), _own_branch(ctx, "branch", what=op), _shared_ref(ctx, "base", what=op)
        what = f"github create_branch {repo}:{branch}"
        sha = await self._read_ref(repo, branch, what)
        if sha is not None:
            return StepOutput({"branch": branch, "sha": sha, "created": False}, 200)
        base_sha = await self._read_ref(repo, base, what)
        if base_sha is None:
            raise permanent("not_found", f"{what}: base branch {base!r} not found in {repo} (or the token cannot "
                                         "see the repository)", 404)
        response = await self._request("POST", f"/repos/{repo}/git/refs", what,
                                       body={"ref": f"refs/heads/{branch}", "sha": base_sha})
        if response.status_code == 422 and "reference already exists" in _github_message(response).lower():
            sha = await self._read_ref(repo, branch, what)
            if sha is None:
                raise bad_response(what, "GitHub says the branch exists but it cannot be read", 422)
            return StepOutput({"branch": branch, "sha": sha, "created": False}, 200)
        if not response.is_success:
            raise classify_github(response, what)
        sha = json_field(json_body(response, what), "object.sha", str, what=what, http_status=response.status_code)
        return StepOutput({"branch": branch, "sha": sha, "created": True}, response.status_code)

    async def _put_file(self, ctx: StepContext) -> StepOutput:
        p, op = ctx.step.params, "github put_file"
        repo, branch, path = _repo(p, op), _own_branch(ctx, "branch", what=op), _path_param(p, op)
        data = file_content(required_value(p, "content", what=op)).data
        message = optional_str(p, "message", what=op) or f"Update {path} (approval {ctx.approval_id})"
        what = f"github put_file {repo}:{branch}:{path}"
        url = f"/repos/{repo}/contents/{quote(path, safe='/')}"

        body: dict[str, Any] = {"message": message, "content": base64.b64encode(data).decode(), "branch": branch}
        stored = await self._stored_file(url, branch, data, what=what)
        if stored is not None:
            sha, unchanged = stored
            if unchanged:
                return StepOutput({"path": path, "sha": sha, "commitSha": None, "changed": False}, 200)
            body["sha"] = sha
        response = await self._request("PUT", url, what, body=body)
        if response.status_code == 409 or (response.status_code == 422
                                           and "wasn't supplied" in _github_message(response)
                                           and '"sha"' in _github_message(response)):
            raise retryable("conflict", f"{what}: the file changed between read and write (HTTP "
                                        f"{response.status_code}: {_github_message(response)}); reading again",
                            http_status=response.status_code)
        if not response.is_success:
            raise classify_github(response, what)
        answer = json_body(response, what)
        status = response.status_code
        return StepOutput({"path": path, "sha": json_field(answer, "content.sha", str, what=what, http_status=status),
                           "commitSha": json_field(answer, "commit.sha", str, what=what, http_status=status),
                           "changed": True}, status)

    async def _stored_file(self, url: str, branch: str, data: bytes, *, what: str) -> tuple[str, bool] | None:
        """The blob sha of the file stored at `url` on `branch`, and whether it holds `data` already;
        None when there is no such file."""
        response = await self._request("GET", url, what, params={"ref": branch})
        if response.status_code == 404:
            return None
        if not response.is_success:
            raise classify_github(response, what)
        current = json_body(response, what)
        status = response.status_code
        if isinstance(current, list):
            raise permanent("invalid_params", f"{what}: the path is a directory", 400)
        kind = json_field(current, "type", str, what=what, http_status=status)
        if kind != "file":
            raise permanent("invalid_params", f"{what}: the path is a {kind}, not a file", 400)
        sha: str = json_field(current, "sha", str, what=what, http_status=status)
        return sha, sha == git_blob_sha(data) or _decoded(current) == data

    async def _open_pull_request(self, ctx: StepContext) -> StepOutput:
        p, op = ctx.step.params, "github open_pull_request"
        repo, base = _repo(p, op), _shared_ref(ctx, "base", what=op)
        title = required_str(p, "title", what=op)
        description = optional_str(p, "body", what=op)
        # `owner:branch` names a fork's branch; either way the branch is the tenant's own.
        head_owner, _, head_branch = required_str(p, "head", what=op).rpartition(":")
        head_branch = _check_ref(own_name(ctx, head_branch), "head", what=op)
        head = f"{head_owner}:{head_branch}" if head_owner else head_branch
        qualified_head = f"{head_owner or repo.split('/')[0]}:{head_branch}"
        what = f"github open_pull_request {repo}:{head}->{base}"

        existing = await self._find_pull(repo, qualified_head, base, what=what)
        if existing is not None:
            return StepOutput(existing, 200)
        body: dict[str, Any] = {"title": title, "head": head, "base": base}
        if description is not None:
            body["body"] = description
        response = await self._request("POST", f"/repos/{repo}/pulls", what, body=body)
        if response.status_code == 422 and "already exists" in _github_message(response).lower():
            existing = await self._find_pull(repo, qualified_head, base, what=what)
            if existing is not None:
                return StepOutput(existing, 200)
        if not response.is_success:
            raise classify_github(response, what)
        pull = _pull(json_body(response, what), what, response.status_code)
        return StepOutput({**pull, "created": True}, response.status_code)

    async def _find_pull(self, repo: str, head: str, base: str, *, what: str) -> dict[str, Any] | None:
        response = await self._request("GET", f"/repos/{repo}/pulls", what,
                                       params={"head": head, "base": base, "state": "all"})
        if not response.is_success:
            raise classify_github(response, what)
        pulls = json_body(response, what)
        if not isinstance(pulls, list):
            raise bad_response(what, "the pull request list is not a list", response.status_code)
        if not pulls:
            return None
        return {**_pull(pulls[0], what, response.status_code), "created": False}

    async def _dispatch_workflow(self, ctx: StepContext) -> StepOutput:
        p, op = ctx.step.params, "github dispatch_workflow"
        repo, ref = _repo(p, op), _shared_ref(ctx, "ref", what=op)
        workflow = p.get("workflow")
        if isinstance(workflow, bool) or not isinstance(workflow, str | int) or not str(workflow).strip():
            raise permanent("invalid_params", f"{op}: param 'workflow' is required "
                                              "(a workflow file name such as deploy.yml, or its id)")
        inputs = optional_object(p, "inputs", what=op) or {}
        what = f"github dispatch_workflow {repo}:{workflow}@{ref}"
        response = await self._request("POST", f"/repos/{repo}/actions/workflows/{quote(str(workflow), safe='')}"
                                                "/dispatches", what, body={"ref": ref, "inputs": inputs},
                                       sent_is_final=True)
        if not response.is_success:
            raise classify_github(response, what)
        return StepOutput({"workflow": workflow, "ref": ref, "dispatched": True}, response.status_code)


# ---------------------------------------------------------------------- params and answers


def _repo(params: dict[str, Any], what: str) -> str:
    repo = required_str(params, "repo", what=what, wanted="'owner/name'")
    if not _REPO.match(repo) or repo.split("/")[1] in (".", ".."):
        raise permanent("invalid_params", f"{what}: param 'repo' must be 'owner/name', got {repo!r}")
    return repo


def _check_ref(value: str, name: str, *, what: str) -> str:
    if not value or _BAD_REF.search(value):
        raise permanent("invalid_params", f"{what}: param {name!r} is not a valid branch name: {value!r}")
    return value


def _ref_param(params: dict[str, Any], name: str, default: str | None = None, *, what: str) -> str:
    if default is None:
        return _check_ref(required_str(params, name, what=what, wanted="a branch name"), name, what=what)
    return _check_ref(optional_str(params, name, what=what) or default, name, what=what)


def _own_branch(ctx: StepContext, name: str, *, what: str) -> str:
    """A branch the step writes: the param inside the tenant's `pj/<tenant>/` corner."""
    return _check_ref(own_name(ctx, _ref_param(ctx.step.params, name, what=what)), name, what=what)


def _shared_ref(ctx: StepContext, name: str, *, what: str) -> str:
    """A branch the step only reads or runs on (default `main`): any but another tenant's."""
    return check_not_anothers(ctx, _ref_param(ctx.step.params, name, "main", what=what), param=name, what=what)


def _path_param(params: dict[str, Any], what: str) -> str:
    path = required_str(params, "path", what=what, wanted="a file path").strip("/")
    if not path or any(part in ("", ".", "..") for part in path.split("/")):
        raise permanent("invalid_params", f"{what}: param 'path' is not a file path: {params.get('path')!r}")
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
    return {"number": json_field(data, "number", int, what=what, http_status=status),
            "url": json_field(data, "html_url", str, what=what, http_status=status),
            "state": json_field(data, "state", str, what=what, http_status=status)}
