"""The github connector against a local fake of the GitHub REST API (tests/support/github_api.py)."""

import base64
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from pj_common.messages import DispatchOrder, PlanStep, StepReport
from pj_dispatcher.connectors.base import ConnectorError, StepContext
from pj_dispatcher.connectors.github import GitHubConnector, git_blob_sha
from pj_dispatcher.runner import PlanRunner
from pj_dispatcher.settings import DispatcherSettings
from tests.support.github_api import GitHubState, start_github_api

TOKEN = "ghp_fake0123456789abcdefTOKEN"
REPO = "acme/site"
# Every branch a step of `tenant-1` (the tenant of `step`) writes is under this.
OWN = "pj/tenant-1/"


@pytest.fixture
def gh() -> Iterator[GitHubState]:
    server, state = start_github_api(TOKEN)
    state.add_repo(REPO, {"README.md": "# site\n", "config/app.json": '{"a": 1}\n'},
                   workflows={"deploy.yml": {"environment", "version"}})
    # The tenant's own copy of main: the branch a step that names `main` writes to.
    state.repo(REPO).refs[OWN + "main"] = state.repo(REPO).refs["main"]
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as c:
        yield c


@pytest.fixture
def connector(gh: GitHubState, client: httpx.AsyncClient) -> GitHubConnector:
    return GitHubConnector(client, api_url=gh.url, token=SecretStr(TOKEN))


def step(operation: str, params: dict[str, Any], step_id: str = "s1", approval: str = "appr-1") -> StepContext:
    return StepContext(approval, "tenant-1", "act-1",
                       PlanStep(step_id=step_id, connector="github", operation=operation, params=params))


async def fails(connector: GitHubConnector, ctx: StepContext) -> ConnectorError:
    with pytest.raises(ConnectorError) as info:
        await connector.run(ctx)
    assert TOKEN not in info.value.message
    return info.value


def assert_github_headers(headers: dict[str, str]) -> None:
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["accept"] == "application/vnd.github+json"
    assert headers["x-github-api-version"] == "2022-11-28"


def main_sha(gh: GitHubState) -> str:
    return gh.repo(REPO).refs["main"]


def file_on(gh: GitHubState, branch: str, path: str) -> bytes:
    return gh.repo(REPO).files(branch)[path]


# ---------------------------------------------------------------------- configuration


async def test_missing_token_is_reported(client: httpx.AsyncClient) -> None:
    for token, missing in ((None, ["GITHUB_DISPATCH_TOKEN"]), (SecretStr(""), ["GITHUB_DISPATCH_TOKEN"]),
                           (SecretStr("x"), [])):
        assert GitHubConnector(client, api_url="http://127.0.0.1:1", token=token).missing_settings() == missing


async def test_unknown_operation_is_permanent(connector: GitHubConnector, gh: GitHubState) -> None:
    error = await fails(connector, step("delete_repo", {"repo": REPO}))
    assert (error.code, error.retryable) == ("unsupported_operation", False)
    assert gh.requests == []


@pytest.mark.parametrize(("operation", "params", "missing"), [
    ("create_branch", {"repo": REPO}, "branch"),
    ("create_branch", {"branch": "x"}, "repo"),
    ("put_file", {"repo": REPO, "branch": "main", "content": "x"}, "path"),
    ("put_file", {"repo": REPO, "branch": "main", "path": "a.txt"}, "content"),
    ("open_pull_request", {"repo": REPO, "head": "feature"}, "title"),
    ("dispatch_workflow", {"repo": REPO}, "workflow"),
])
async def test_missing_params_are_named(connector: GitHubConnector, gh: GitHubState, operation: str,
                                        params: dict[str, Any], missing: str) -> None:
    error = await fails(connector, step(operation, params))
    assert (error.code, error.retryable) == ("invalid_params", False)
    assert repr(missing) in error.message
    assert gh.requests == []


@pytest.mark.parametrize("params", [
    {"repo": "not-a-repo", "branch": "x"},
    {"repo": "acme/site/extra", "branch": "x"},
    {"repo": REPO, "branch": "bad..name"},
    {"repo": REPO, "branch": "has space"},
])
async def test_invalid_names_are_refused_before_any_call(connector: GitHubConnector, gh: GitHubState,
                                                         params: dict[str, Any]) -> None:
    error = await fails(connector, step("create_branch", params))
    assert error.code == "invalid_params"
    assert gh.requests == []


async def test_wrong_token_is_auth_failed_and_names_the_scope(gh: GitHubState, client: httpx.AsyncClient) -> None:
    connector = GitHubConnector(client, api_url=gh.url, token=SecretStr("ghp_wrong_token_value"))
    error = await fails(connector, step("create_branch", {"repo": REPO, "branch": "feature"}))
    assert (error.code, error.retryable, error.http_status) == ("auth_failed", False, 401)
    assert "`repo` scope" in error.message and "Bad credentials" in error.message
    assert "ghp_wrong_token_value" not in error.message
    assert len(gh.requests) == 1


async def test_token_echoed_by_a_server_is_redacted(connector: GitHubConnector, gh: GitHubState) -> None:
    gh.fail_next(500, body={"message": f"proxy error for Authorization: Bearer {TOKEN}"})
    error = await fails(connector, step("create_branch", {"repo": REPO, "branch": "feature"}))
    assert (error.code, error.retryable) == ("http_retryable", True)
    assert "Bearer ***" in error.message


async def test_non_json_answer_is_bad_response(connector: GitHubConnector, gh: GitHubState) -> None:
    gh.fail_next(200, raw=b"<html>sign in</html>")
    error = await fails(connector, step("create_branch", {"repo": REPO, "branch": "feature"}))
    assert (error.code, error.retryable) == ("bad_response", True)  # one rule for every connector: retried


async def test_unexpected_shape_is_bad_response(connector: GitHubConnector, gh: GitHubState) -> None:
    gh.fail_next(200, body={"ref": "refs/heads/feature"})  # no object.sha
    error = await fails(connector, step("create_branch", {"repo": REPO, "branch": "feature"}))
    assert (error.code, error.retryable) == ("bad_response", True)
    gh.fail_next(200, body={"number": "7", "html_url": "x", "state": "open"}, method="GET")
    error = await fails(connector, step("open_pull_request", {"repo": REPO, "head": "feature", "title": "t"}))
    assert error.code == "bad_response"


# ---------------------------------------------------------------------- create_branch


async def test_create_branch(connector: GitHubConnector, gh: GitHubState) -> None:
    output = await connector.run(step("create_branch", {"repo": REPO, "branch": "release/1.2"}))
    assert output.result == {"branch": OWN + "release/1.2", "sha": main_sha(gh), "created": True}
    assert output.http_status == 201
    assert gh.repo(REPO).refs[OWN + "release/1.2"] == main_sha(gh)
    assert [(r.method, r.path) for r in gh.requests] == [
        ("GET", "/repos/acme/site/git/ref/heads/pj/tenant-1/release/1.2"),
        ("GET", "/repos/acme/site/git/ref/heads/main"),
        ("POST", "/repos/acme/site/git/refs"),
    ]
    for recorded in gh.requests:
        assert_github_headers(recorded.headers)
    assert gh.requests[-1].body == {"ref": "refs/heads/pj/tenant-1/release/1.2", "sha": main_sha(gh)}


async def test_create_branch_from_another_base(connector: GitHubConnector, gh: GitHubState) -> None:
    await connector.run(step("create_branch", {"repo": REPO, "branch": "dev"}))
    await connector.run(step("put_file", {"repo": REPO, "branch": "dev", "path": "x.txt", "content": "x"}))
    output = await connector.run(step("create_branch", {"repo": REPO, "branch": "topic", "base": OWN + "dev"}))
    assert output.result["sha"] == gh.repo(REPO).refs[OWN + "dev"] != main_sha(gh)


async def test_create_branch_redelivered_creates_it_once(connector: GitHubConnector, gh: GitHubState) -> None:
    ctx = step("create_branch", {"repo": REPO, "branch": "feature"})
    first = await connector.run(ctx)
    second = await connector.run(ctx)  # the dispatcher crashed before checkpointing the first
    assert len(gh.calls("POST", "/git/refs")) == 1
    assert first.result["created"] is True and second.result["created"] is False
    assert second.result["sha"] == first.result["sha"]


async def test_create_branch_answers_a_concurrent_create_by_reading_it(connector: GitHubConnector,
                                                                       gh: GitHubState) -> None:
    # The branch exists already, but the first read does not see it (an attempt running at the same time).
    gh.repo(REPO).refs[OWN + "feature"] = main_sha(gh)
    gh.fail_next(404, method="GET", body={"message": "Not Found"})
    output = await connector.run(step("create_branch", {"repo": REPO, "branch": "feature"}))
    assert output.result == {"branch": OWN + "feature", "sha": main_sha(gh), "created": False}
    post = gh.calls("POST", "/git/refs")
    assert len(post) == 1  # answered 422 "Reference already exists"
    assert [r.method for r in gh.requests] == ["GET", "GET", "POST", "GET"]


async def test_create_branch_unknown_repo_or_base_is_permanent(connector: GitHubConnector, gh: GitHubState) -> None:
    error = await fails(connector, step("create_branch", {"repo": "acme/nope", "branch": "feature"}))
    assert (error.code, error.retryable, error.http_status) == ("not_found", False, 404)
    error = await fails(connector, step("create_branch", {"repo": REPO, "branch": "feature", "base": "develop"}))
    assert error.code == "not_found" and "'develop'" in error.message
    assert gh.calls("POST") == []


async def test_create_branch_forbidden_write_is_auth_failed(connector: GitHubConnector, gh: GitHubState) -> None:
    gh.write_forbidden = True
    error = await fails(connector, step("create_branch", {"repo": REPO, "branch": "feature"}))
    assert (error.code, error.retryable, error.http_status) == ("auth_failed", False, 403)
    assert "not accessible" in error.message and "`repo` scope" in error.message


async def test_create_branch_primary_rate_limit_waits_for_reset(connector: GitHubConnector, gh: GitHubState) -> None:
    gh.primary_rate_limit(reset_in_s=120)
    error = await fails(connector, step("create_branch", {"repo": REPO, "branch": "feature"}))
    assert (error.code, error.retryable, error.http_status) == ("rate_limited", True, 403)
    assert error.retry_after is not None and 117 <= error.retry_after <= 121
    output = await connector.run(step("create_branch", {"repo": REPO, "branch": "feature"}))
    assert output.result["created"] is True


async def test_create_branch_server_errors_retried_by_the_runner(connector: GitHubConnector,
                                                                 gh: GitHubState) -> None:
    gh.fail_next(502, count=2)
    reports = await run_order(connector, [PlanStep(step_id="s1", connector="github", operation="create_branch",
                                                   params={"repo": REPO, "branch": "feature"})])
    final = reports[-1]
    assert final.plan_status == "dispatched"
    assert final.step.status == "succeeded" and final.step.attempts == 3
    assert final.step.result == {"branch": OWN + "feature", "sha": main_sha(gh), "created": True}
    assert len(gh.calls("POST", "/git/refs")) == 1


async def test_create_branch_slow_answer_times_out_retryable_and_is_not_repeated(gh: GitHubState) -> None:
    gh.slow(0.6, method="POST")  # GitHub creates the ref, but the answer comes after our timeout
    ctx = step("create_branch", {"repo": REPO, "branch": "feature"})
    async with httpx.AsyncClient(timeout=0.2) as client:
        connector = GitHubConnector(client, api_url=gh.url, token=SecretStr(TOKEN))
        error = await fails(connector, ctx)
        assert (error.code, error.retryable) == ("network_error", True)
        assert "ReadTimeout" in error.message
        gh.wait_idle()
        output = await connector.run(ctx)
    assert output.result == {"branch": OWN + "feature", "sha": main_sha(gh), "created": False}
    assert len(gh.calls("POST", "/git/refs")) == 1


async def test_connection_refused_is_retryable(client: httpx.AsyncClient) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    connector = GitHubConnector(client, api_url=f"http://127.0.0.1:{port}", token=SecretStr(TOKEN))
    for operation, params in [("create_branch", {"repo": REPO, "branch": "f"}),
                              ("dispatch_workflow", {"repo": REPO, "workflow": "deploy.yml"})]:
        error = await fails(connector, step(operation, params))
        assert (error.code, error.retryable) == ("network_error", True)


# ---------------------------------------------------------------------- put_file


async def test_put_file_creates_a_file(connector: GitHubConnector, gh: GitHubState) -> None:
    await connector.run(step("create_branch", {"repo": REPO, "branch": "feature"}))
    gh.requests.clear()
    output = await connector.run(step("put_file", {"repo": REPO, "branch": "feature", "path": "docs/notes.md",
                                                   "content": "# Notes\nhéllo\n", "message": "Add notes"}))
    data = "# Notes\nhéllo\n".encode()
    head = gh.repo(REPO).refs[OWN + "feature"]
    assert output.result == {"path": "docs/notes.md", "sha": git_blob_sha(data), "commitSha": head, "changed": True}
    assert output.http_status == 201
    assert file_on(gh, OWN + "feature", "docs/notes.md") == data
    assert "docs/notes.md" not in gh.repo(REPO).files("main")
    get, put = gh.requests
    assert (get.method, get.path, get.query) == ("GET", "/repos/acme/site/contents/docs/notes.md",
                                                 {"ref": OWN + "feature"})
    assert (put.method, put.path) == ("PUT", "/repos/acme/site/contents/docs/notes.md")
    assert_github_headers(put.headers)
    assert put.body == {"message": "Add notes", "content": base64.b64encode(data).decode(),
                        "branch": OWN + "feature"}
    assert gh.repo(REPO).commit_log[-1]["message"] == "Add notes"


async def test_put_file_updates_with_the_existing_sha_and_writes_json(connector: GitHubConnector,
                                                                      gh: GitHubState) -> None:
    old = file_on(gh, "main", "config/app.json")
    output = await connector.run(step("put_file", {"repo": REPO, "branch": "main", "path": "config/app.json",
                                                   "content": {"b": [1, 2], "a": {"z": True, "y": None}}}))
    expected = b'{\n  "a": {\n    "y": null,\n    "z": true\n  },\n  "b": [\n    1,\n    2\n  ]\n}\n'
    assert file_on(gh, OWN + "main", "config/app.json") == expected
    assert output.result["changed"] is True and output.http_status == 200
    put = gh.calls("PUT")[0]
    assert put.body["sha"] == git_blob_sha(old)
    assert put.body["message"] == "Update config/app.json (approval appr-1)"  # the default message


async def test_put_file_identical_content_is_not_committed(connector: GitHubConnector, gh: GitHubState) -> None:
    output = await connector.run(step("put_file", {"repo": REPO, "branch": "main", "path": "README.md",
                                                   "content": "# site\n"}))
    assert output.result == {"path": "README.md", "sha": git_blob_sha(b"# site\n"), "commitSha": None,
                             "changed": False}
    assert gh.calls("PUT") == []


async def test_put_file_redelivered_commits_once(connector: GitHubConnector, gh: GitHubState) -> None:
    ctx = step("put_file", {"repo": REPO, "branch": "main", "path": "VERSION", "content": "1.2.0\n"})
    first = await connector.run(ctx)
    second = await connector.run(ctx)
    assert len(gh.calls("PUT")) == 1 and len(gh.repo(REPO).commit_log) == 1
    assert first.result["changed"] is True and second.result["changed"] is False
    assert second.result["sha"] == first.result["sha"] and second.result["path"] == first.result["path"]


async def test_put_file_on_a_missing_branch_is_permanent(connector: GitHubConnector, gh: GitHubState) -> None:
    error = await fails(connector, step("put_file", {"repo": REPO, "branch": "nope", "path": "a.txt",
                                                     "content": "a"}))
    assert (error.code, error.retryable, error.http_status) == ("not_found", False, 404)
    assert f"Branch {OWN}nope not found" in error.message
    assert gh.repo(REPO).commit_log == []


async def test_put_file_on_a_directory_is_invalid(connector: GitHubConnector, gh: GitHubState) -> None:
    error = await fails(connector, step("put_file", {"repo": REPO, "branch": "main", "path": "config",
                                                     "content": "a"}))
    assert (error.code, error.retryable) == ("invalid_params", False)
    assert gh.calls("PUT") == []


async def test_put_file_concurrent_write_is_retryable_then_reads_again(connector: GitHubConnector,
                                                                       gh: GitHubState) -> None:
    ctx = step("put_file", {"repo": REPO, "branch": "main", "path": "README.md", "content": "# new\n"})
    gh.fail_next(409, method="PUT", body={"message": "README.md does not match 0123abcd"})
    error = await fails(connector, ctx)
    assert (error.code, error.retryable, error.http_status) == ("conflict", True, 409)
    output = await connector.run(ctx)
    assert output.result["changed"] is True and file_on(gh, OWN + "main", "README.md") == b"# new\n"


async def test_put_file_429_retry_after_is_honoured(connector: GitHubConnector, gh: GitHubState) -> None:
    ctx = step("put_file", {"repo": REPO, "branch": "main", "path": "a.txt", "content": "a"})
    gh.rate_limit(retry_after=7, method="PUT")
    error = await fails(connector, ctx)
    assert (error.code, error.retryable, error.retry_after, error.http_status) == ("rate_limited", True, 7.0, 429)
    output = await connector.run(ctx)
    assert output.result["changed"] is True
    assert len(gh.repo(REPO).commit_log) == 1


async def test_put_file_slow_answer_times_out_retryable_and_is_not_repeated(gh: GitHubState) -> None:
    ctx = step("put_file", {"repo": REPO, "branch": "main", "path": "a.txt", "content": "a"})
    gh.slow(0.6, method="PUT")
    async with httpx.AsyncClient(timeout=0.2) as client:
        connector = GitHubConnector(client, api_url=gh.url, token=SecretStr(TOKEN))
        error = await fails(connector, ctx)
        assert (error.code, error.retryable) == ("network_error", True)
        gh.wait_idle()
        output = await connector.run(ctx)
    assert output.result == {"path": "a.txt", "sha": git_blob_sha(b"a"), "commitSha": None, "changed": False}
    assert len(gh.calls("PUT")) == 1


# ---------------------------------------------------------------------- open_pull_request


async def branch_with_change(connector: GitHubConnector, branch: str = "feature") -> None:
    await connector.run(step("create_branch", {"repo": REPO, "branch": branch}))
    await connector.run(step("put_file", {"repo": REPO, "branch": branch, "path": "CHANGE.md", "content": branch}))


async def test_open_pull_request(connector: GitHubConnector, gh: GitHubState) -> None:
    await branch_with_change(connector)
    gh.requests.clear()
    output = await connector.run(step("open_pull_request", {"repo": REPO, "head": "feature", "title": "Ship it",
                                                            "body": "Approved as appr-1"}))
    assert output.result == {"number": 1, "url": "https://github.com/acme/site/pull/1", "state": "open",
                             "created": True}
    assert output.http_status == 201
    listing, create = gh.requests
    assert (listing.method, listing.path, listing.query) == (
        "GET", "/repos/acme/site/pulls", {"head": "acme:pj/tenant-1/feature", "base": "main", "state": "all"})
    assert (create.method, create.path) == ("POST", "/repos/acme/site/pulls")
    assert_github_headers(create.headers)
    assert create.body == {"title": "Ship it", "head": OWN + "feature", "base": "main", "body": "Approved as appr-1"}
    assert gh.repo(REPO).pulls[0]["head"]["label"] == "acme:pj/tenant-1/feature"


async def test_open_pull_request_redelivered_opens_one(connector: GitHubConnector, gh: GitHubState) -> None:
    await branch_with_change(connector)
    ctx = step("open_pull_request", {"repo": REPO, "head": "feature", "title": "Ship it"})
    first = await connector.run(ctx)
    second = await connector.run(ctx)
    assert len(gh.calls("POST", "/pulls")) == 1 and len(gh.repo(REPO).pulls) == 1
    assert second.result == {**first.result, "created": False}


async def test_open_pull_request_returns_a_closed_earlier_one(connector: GitHubConnector, gh: GitHubState) -> None:
    await branch_with_change(connector)
    ctx = step("open_pull_request", {"repo": REPO, "head": "feature", "title": "Ship it"})
    await connector.run(ctx)
    gh.close_pull(REPO, 1)
    output = await connector.run(ctx)
    assert output.result == {"number": 1, "url": "https://github.com/acme/site/pull/1", "state": "closed",
                             "created": False}


async def test_open_pull_request_without_commits_is_permanent(connector: GitHubConnector, gh: GitHubState) -> None:
    await connector.run(step("create_branch", {"repo": REPO, "branch": "empty"}))
    error = await fails(connector, step("open_pull_request", {"repo": REPO, "head": "empty", "title": "t"}))
    assert (error.code, error.retryable, error.http_status) == ("validation_failed", False, 422)
    assert f"No commits between main and {OWN}empty" in error.message


async def test_open_pull_request_secondary_rate_limit(connector: GitHubConnector, gh: GitHubState) -> None:
    await branch_with_change(connector)
    ctx = step("open_pull_request", {"repo": REPO, "head": "feature", "title": "t"})
    gh.secondary_rate_limit(retry_after=3, method="POST")
    error = await fails(connector, ctx)
    assert (error.code, error.retryable, error.retry_after, error.http_status) == ("rate_limited", True, 3.0, 403)
    gh.secondary_rate_limit(method="POST")  # no Retry-After: GitHub says wait at least a minute
    error = await fails(connector, ctx)
    assert (error.code, error.retry_after) == ("rate_limited", 60.0)
    assert (await connector.run(ctx)).result["created"] is True


async def test_open_pull_request_forbidden_is_auth_failed(connector: GitHubConnector, gh: GitHubState) -> None:
    await branch_with_change(connector)
    gh.write_forbidden = True
    error = await fails(connector, step("open_pull_request", {"repo": REPO, "head": "feature", "title": "t"}))
    assert (error.code, error.retryable, error.http_status) == ("auth_failed", False, 403)
    assert "pull" in error.message.lower() and "`repo` scope" in error.message


async def test_open_pull_request_slow_answer_times_out_retryable_and_is_not_repeated(gh: GitHubState) -> None:
    ctx = step("open_pull_request", {"repo": REPO, "head": "feature", "title": "t"})
    async with httpx.AsyncClient(timeout=0.2) as client:
        connector = GitHubConnector(client, api_url=gh.url, token=SecretStr(TOKEN))
        await branch_with_change(connector)
        gh.slow(0.6, method="POST")
        error = await fails(connector, ctx)
        assert (error.code, error.retryable) == ("network_error", True)
        gh.wait_idle()
        output = await connector.run(ctx)
    assert output.result == {"number": 1, "url": "https://github.com/acme/site/pull/1", "state": "open",
                             "created": False}
    assert len(gh.calls("POST", "/pulls")) == 1


# ---------------------------------------------------------------------- dispatch_workflow


async def test_dispatch_workflow(connector: GitHubConnector, gh: GitHubState) -> None:
    output = await connector.run(step("dispatch_workflow", {"repo": REPO, "workflow": "deploy.yml",
                                                            "inputs": {"environment": "staging"}}))
    assert output.result == {"workflow": "deploy.yml", "ref": "main", "dispatched": True}
    assert output.http_status == 204
    (post,) = gh.requests
    assert (post.method, post.path) == ("POST", "/repos/acme/site/actions/workflows/deploy.yml/dispatches")
    assert_github_headers(post.headers)
    assert post.body == {"ref": "main", "inputs": {"environment": "staging"}}
    assert gh.repo(REPO).dispatches == [{"workflow": "deploy.yml", "ref": "main",
                                         "inputs": {"environment": "staging"}}]


async def test_dispatch_workflow_by_id_on_a_branch(connector: GitHubConnector, gh: GitHubState) -> None:
    await connector.run(step("create_branch", {"repo": REPO, "branch": "release"}))
    workflow_id = gh.repo(REPO).workflows["deploy.yml"].id
    output = await connector.run(step("dispatch_workflow", {"repo": REPO, "workflow": workflow_id,
                                                            "ref": OWN + "release"}))
    assert output.result == {"workflow": workflow_id, "ref": OWN + "release", "dispatched": True}
    assert gh.calls("POST", "/dispatches")[0].body == {"ref": OWN + "release", "inputs": {}}
    assert gh.repo(REPO).dispatches == [{"workflow": "deploy.yml", "ref": OWN + "release", "inputs": {}}]


async def test_dispatch_workflow_unknown_workflow_or_input_is_permanent(connector: GitHubConnector,
                                                                       gh: GitHubState) -> None:
    error = await fails(connector, step("dispatch_workflow", {"repo": REPO, "workflow": "nope.yml"}))
    assert (error.code, error.retryable, error.http_status) == ("not_found", False, 404)
    error = await fails(connector, step("dispatch_workflow", {"repo": REPO, "workflow": "deploy.yml",
                                                              "inputs": {"force": "yes"}}))
    assert (error.code, error.retryable, error.http_status) == ("validation_failed", False, 422)
    assert "Unexpected inputs provided" in error.message
    assert gh.repo(REPO).dispatches == []


async def test_dispatch_workflow_429_retry_after_is_honoured(connector: GitHubConnector, gh: GitHubState) -> None:
    ctx = step("dispatch_workflow", {"repo": REPO, "workflow": "deploy.yml"})
    gh.rate_limit(retry_after=11)
    error = await fails(connector, ctx)
    assert (error.code, error.retryable, error.retry_after) == ("rate_limited", True, 11.0)
    await connector.run(ctx)
    assert len(gh.repo(REPO).dispatches) == 1


async def test_dispatch_workflow_server_errors_retried_by_the_runner(connector: GitHubConnector,
                                                                     gh: GitHubState) -> None:
    gh.fail_next(503, count=2, retry_after=0)
    reports = await run_order(connector, [PlanStep(step_id="deploy", connector="github",
                                                   operation="dispatch_workflow",
                                                   params={"repo": REPO, "workflow": "deploy.yml"})])
    assert reports[-1].step.status == "succeeded" and reports[-1].step.attempts == 3
    assert len(gh.repo(REPO).dispatches) == 1


async def test_dispatch_workflow_unanswered_request_is_not_retried(gh: GitHubState) -> None:
    """GitHub may have run the workflow: an earlier dispatch cannot be found, so no blind retry."""
    gh.slow(0.6)
    async with httpx.AsyncClient(timeout=0.2) as client:
        connector = GitHubConnector(client, api_url=gh.url, token=SecretStr(TOKEN))
        error = await fails(connector, step("dispatch_workflow", {"repo": REPO, "workflow": "deploy.yml"}))
    assert (error.code, error.retryable) == ("outcome_unknown", False)
    gh.wait_idle()
    assert len(gh.repo(REPO).dispatches) == 1


# ---------------------------------------------------------------------- a whole plan through the runner


async def run_order(connector: GitHubConnector, steps: list[PlanStep]) -> list[StepReport]:
    settings = DispatcherSettings(env="dev", PJ_CONNECTOR_RETRY_BASE_S=0, PJ_CONNECTOR_RETRY_MAX_S=0.05)
    reports: list[StepReport] = []

    async def publish(report: StepReport) -> None:
        reports.append(report)

    order = DispatchOrder(approval_id="appr-9", tenant_id="tenant-1", action_id="act-1", claim_token="claim",
                          steps=steps)
    await PlanRunner(settings, {"github": connector}, publish_report=publish).run_order(order)
    return reports


async def test_a_release_plan_runs_end_to_end_through_the_runner(connector: GitHubConnector,
                                                                 gh: GitHubState) -> None:
    def plan_step(step_id: str, operation: str, **params: Any) -> PlanStep:
        return PlanStep(step_id=step_id, connector="github", operation=operation, params={"repo": REPO, **params})

    steps = [
        plan_step("branch", "create_branch", branch="release-7"),
        plan_step("file", "put_file", branch="release-7", path="release.json", content={"version": 7}),
        plan_step("pr", "open_pull_request", head="release-7", title="Release 7"),
        plan_step("deploy", "dispatch_workflow", workflow="deploy.yml", ref=OWN + "release-7", inputs={"version": "7"}),
    ]
    gh.secondary_rate_limit(retry_after=0.01, method="PUT")  # the server's wait is honoured
    gh.fail_next(502, method="POST")
    started = time.monotonic()
    reports = await run_order(connector, steps)
    assert time.monotonic() - started < 5
    final = reports[-1]
    assert final.plan_status == "dispatched"
    assert [(r.step_id, r.status, r.attempts) for r in final.results] == [
        ("branch", "succeeded", 2), ("file", "succeeded", 2), ("pr", "succeeded", 1), ("deploy", "succeeded", 1)]
    results = {r.step_id: r.result for r in final.results}
    assert results["pr"] == {"number": 1, "url": "https://github.com/acme/site/pull/1", "state": "open",
                             "created": True}
    assert json.loads(file_on(gh, OWN + "release-7", "release.json")) == {"version": 7}
    assert gh.repo(REPO).dispatches == [{"workflow": "deploy.yml", "ref": OWN + "release-7",
                                         "inputs": {"version": "7"}}]
    json.dumps([r.result for r in final.results])  # results are JSON-serializable



# ---------------------------------------------------------------------- one repository, two tenants


def tenant_step(tenant: str, operation: str, params: dict[str, Any], approval: str) -> StepContext:
    return StepContext(approval, tenant, "environment.create",
                       PlanStep(step_id=operation, connector="github", operation=operation,
                                params={"repo": REPO, **params}))


async def run_environment_create(connector: GitHubConnector, tenant: str, approval: str, content: str
                                 ) -> dict[str, dict[str, Any]]:
    """The default catalog's environment.create, as one tenant's plan asks for `env/dev`."""
    results = {}
    for operation, params in (("create_branch", {"branch": "env/dev"}),
                              ("put_file", {"branch": "env/dev", "path": "environments/dev.json", "content": content}),
                              ("open_pull_request", {"head": "env/dev", "title": f"dev for {tenant}"})):
        results[operation] = (await connector.run(tenant_step(tenant, operation, params, approval))).result
    return results


async def test_tenants_sharing_a_repository_never_write_or_report_each_others_branch(
        connector: GitHubConnector, gh: GitHubState) -> None:
    acme = await run_environment_create(connector, "acme", "appr-a", "acme's")
    globex = await run_environment_create(connector, "globex", "appr-g", "globex's")
    assert (acme["create_branch"]["branch"], globex["create_branch"]["branch"]) == ("pj/acme/env/dev",
                                                                                  "pj/globex/env/dev")
    assert globex["create_branch"]["created"] is True  # not acme's branch reported as globex's
    assert file_on(gh, "pj/acme/env/dev", "environments/dev.json") == b"acme's"
    assert file_on(gh, "pj/globex/env/dev", "environments/dev.json") == b"globex's"
    assert "env/dev" not in gh.repo(REPO).refs
    assert (acme["open_pull_request"]["number"], globex["open_pull_request"]["number"]) == (1, 2)
    assert globex["open_pull_request"]["created"] is True
    assert [p["head"]["ref"] for p in gh.repo(REPO).pulls] == ["pj/acme/env/dev", "pj/globex/env/dev"]


async def test_a_tenant_naming_anothers_branch_in_full_stays_in_its_own(connector: GitHubConnector,
                                                                        gh: GitHubState) -> None:
    await run_environment_create(connector, "acme", "appr-a", "acme's")
    for operation, params in (("create_branch", {"branch": "pj/acme/env/dev"}),
                              ("put_file", {"branch": "pj/acme/env/dev", "path": "environments/dev.json",
                                            "content": "globex was here"}),
                              ("open_pull_request", {"head": "acme:pj/acme/env/dev", "title": "t"})):
        await connector.run(tenant_step("globex", operation, params, "appr-g"))
    assert file_on(gh, "pj/acme/env/dev", "environments/dev.json") == b"acme's"
    assert file_on(gh, "pj/globex/pj/acme/env/dev", "environments/dev.json") == b"globex was here"
    assert gh.repo(REPO).pulls[1]["head"]["ref"] == "pj/globex/pj/acme/env/dev"


@pytest.mark.parametrize(("operation", "params"), [
    ("create_branch", {"branch": "mine", "base": "pj/acme/env/dev"}),  # would copy acme's work
    ("open_pull_request", {"head": "mine", "base": "pj/acme/env/dev", "title": "t"}),  # would merge into it
    ("dispatch_workflow", {"workflow": "deploy.yml", "ref": "pj/acme/env/dev"}),  # would run on it
])
async def test_a_tenant_cannot_read_from_or_run_on_anothers_branch(
        connector: GitHubConnector, gh: GitHubState, operation: str, params: dict[str, Any]) -> None:
    await run_environment_create(connector, "acme", "appr-a", "acme's")
    gh.requests.clear()
    error = await fails(connector, tenant_step("globex", operation, params, "appr-g"))
    assert (error.code, error.retryable) == ("invalid_params", False)
    assert "another tenant's" in error.message
    assert gh.requests == []  # refused before anything was sent
