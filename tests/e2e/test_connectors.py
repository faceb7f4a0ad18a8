"""`environment.create` from the default catalog, end to end: the dispatcher runs GitHub branch, file
and pull request, a SharePoint list item and a Slack message against local servers that speak those
APIs; a failed step stops the plan, and a re-dispatch skips what was done."""

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from pj_approvals.settings import DEFAULT_CATALOG
from pj_common.broker_access import Service
from tests.support.github_api import GitHubState, start_github_api
from tests.support.graph_api import GraphState, start_graph_api, stop_graph_api
from tests.support.slack_api import SlackState, start_slack_api, stop_slack_api
from tests.support.system import System, free_port, running_system

from .conftest import approve, headers, request_approval, system_env

GH_TOKEN, SLACK_TOKEN = "ghp-e2e-token", "xoxb-e2e-token"
REPO, SITE, LIST, CHANNEL = "acme/environments", "site-1", "Environments", "C0OPS0001"


@dataclass
class Apis:
    github: GitHubState
    graph: GraphState
    slack: SlackState


@pytest.fixture(scope="module")
def apis() -> Iterator[Apis]:
    gh_server, github = start_github_api(GH_TOKEN)
    github.add_repo(REPO)
    graph_server, graph = start_graph_api()
    graph.add_list(SITE, LIST, columns={"Title", "Tenant", "PJStepKey"}, indexed={"PJStepKey"})
    slack_server, slack = start_slack_api(SLACK_TOKEN)
    slack.add_channel(CHANNEL, "ops")
    yield Apis(github, graph, slack)
    gh_server.shutdown()
    gh_server.server_close()
    stop_graph_api(graph_server, graph)
    stop_slack_api(slack_server, slack)


@pytest.fixture(scope="module")
async def connected(module_database: str, amqp_url: str, apis: Apis, broker_users: dict[Service, str],
                    tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    """The system with every connector configured against the local API servers."""
    catalog = yaml.safe_load(DEFAULT_CATALOG.read_text())
    catalog["tenants"] = {"default": {"github": {"repo": REPO, "base": "main"},
                                      "sharepoint": {"siteId": SITE, "listId": LIST},
                                      "slack": {"channel": CHANNEL}}}
    folder = tmp_path_factory.mktemp("connected")
    (folder / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    prefix, port = f"pjc-{uuid.uuid4().hex[:10]}", free_port()
    env = system_env(module_database, amqp_url, prefix, port, "http://127.0.0.1:9/unused")
    env.update({
        "PJ_CATALOG": str(folder / "catalog.yaml"),
        "GITHUB_DISPATCH_TOKEN": GH_TOKEN, "PJ_GITHUB_API_URL": apis.github.url,
        "MS_TENANT_ID": apis.graph.tenant_id, "MS_CLIENT_ID": apis.graph.client_id,
        "MS_CLIENT_SECRET": apis.graph.client_secret, "PJ_GRAPH_API_URL": apis.graph.graph_url,
        "PJ_GRAPH_LOGIN_URL": apis.graph.login_url,
        "SLACK_BOT_TOKEN": SLACK_TOKEN, "PJ_SLACK_API_URL": apis.slack.url,
    })
    async with running_system(env, amqp_url=amqp_url, logdir=folder, broker_users=broker_users) as system:
        yield system


async def approved_environment(client: httpx.AsyncClient, tenant: str, name: str) -> str:
    approval_id = await request_approval(client, tenant, "environment.create",
                                         {"name": name, "config": {"replicas": 2}})
    await approve(client, tenant, approval_id)
    return approval_id


async def dispatch(client: httpx.AsyncClient, tenant: str, approval_id: str) -> dict[str, Any]:
    r = await client.post(f"/api/approvals/{approval_id}/dispatch", headers=headers("admin", "alice", tenant),
                          json={})
    assert r.status_code == 200, r.text
    return dict(r.json()["data"])


async def test_environment_create_runs_every_connector(connected: System, apis: Apis) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(base_url=connected.base_url, timeout=30) as client:
        approval_id = await approved_environment(client, tenant, "staging")
        data = await dispatch(client, tenant, approval_id)
    assert data["approvalStatus"] == "dispatched", json.dumps(data, indent=1)
    steps = {s["stepId"]: s for s in data["dispatchResult"]}
    assert all(s["status"] == "succeeded" for s in steps.values())
    repo = apis.github.repo(REPO)
    branch = f"pj/{tenant}/env/staging"  # the connector keeps each tenant's branches apart
    assert branch in repo.refs
    written = json.loads(repo.files(branch)["environments/staging.json"])
    assert written == {"config": {"replicas": 2}, "name": "staging"}
    assert len(repo.pulls) == 1 and repo.pulls[0]["head"]["ref"] == branch
    assert steps["open-pull-request"]["result"]["url"] == repo.pulls[0]["html_url"]
    items = apis.graph.lists[(SITE, LIST)].items
    assert [i["fields"]["Title"] for i in items] == ["staging"]
    assert items[0]["fields"]["PJStepKey"] == f"{approval_id}:record-in-sharepoint"
    posted = apis.slack.posted(CHANNEL)
    assert len(posted) == 1 and posted[0]["text"] == f"Environment staging created for {tenant}"
    assert steps["announce"]["result"]["ts"] == posted[0]["ts"]


async def test_failed_step_stops_the_plan_and_redispatch_skips_done_steps(connected: System, apis: Apis) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:6]}"
    before_items = len(apis.graph.lists[(SITE, LIST)].items)
    apis.graph.revoke_tokens()
    async with httpx.AsyncClient(base_url=connected.base_url, timeout=30) as client:
        approval_id = await approved_environment(client, tenant, "qa")
        apis.graph.client_secret, secret = "rotated", apis.graph.client_secret  # the token request now fails
        try:
            data = await dispatch(client, tenant, approval_id)
        finally:
            apis.graph.client_secret = secret
        assert data["approvalStatus"] == "dispatch_failed"
        statuses = [(s["stepId"], s["status"]) for s in data["dispatchResult"]]
        assert statuses == [("create-branch", "succeeded"), ("write-config", "succeeded"),
                            ("open-pull-request", "succeeded"), ("record-in-sharepoint", "failed"),
                            ("announce", "not_run")]
        failed = data["dispatchResult"][3]
        assert failed["error"]["code"] == "auth_failed" and secret not in failed["error"]["message"]
        github_calls = len(apis.github.requests)

        again = await dispatch(client, tenant, approval_id)
    assert again["approvalStatus"] == "dispatched", json.dumps(again, indent=1)
    assert len(apis.github.requests) == github_calls  # the done GitHub steps were not even looked at
    assert len(apis.graph.lists[(SITE, LIST)].items) == before_items + 1
    assert [m["text"] for m in apis.slack.posted(CHANNEL)].count(f"Environment qa created for {tenant}") == 1
