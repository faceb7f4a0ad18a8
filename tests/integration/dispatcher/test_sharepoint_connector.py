"""The SharePoint connector against a local fake of the identity platform and Microsoft Graph."""

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from pj_common.messages import DispatchOrder, PlanStep, StepReport
from pj_dispatcher.connectors.base import ConnectorError, StepContext
from pj_dispatcher.connectors.sharepoint import SharePointConnector
from pj_dispatcher.runner import PlanRunner
from pj_dispatcher.settings import DispatcherSettings
from tests.support.graph_api import Fault, GraphState, start_graph_api, stop_graph_api

SITE = "contoso.sharepoint.com,8f1c0a7e-1111-2222-3333-444455556666,0a1b2c3d-aaaa-bbbb-cccc-ddddeeeeffff"
LIST = "Change Requests"
DRIVE = "b!drive-1"
ITEM_PARAMS = {"siteId": SITE, "listId": LIST, "fields": {"Title": "Rotate keys", "Priority": 2}}
FILE_PARAMS = {"driveId": DRIVE, "folder": "reports/2024", "fileName": "summary.json",
               "content": {"zeta": 1, "alpha": ["ü", 2]}}


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def graph() -> Iterator[GraphState]:
    server, state = start_graph_api()
    state.add_list(SITE, LIST)
    state.add_drive(DRIVE)
    yield state
    stop_graph_api(server, state)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as c:
        yield c


def make_connector(client: httpx.AsyncClient, graph: GraphState, *, secret: str | None = None,
                   clock: Any = None) -> SharePointConnector:
    extra = {"clock": clock} if clock is not None else {}
    return SharePointConnector(client, graph_url=graph.graph_url, login_url=graph.login_url,
                               tenant_id=graph.tenant_id, client_id=graph.client_id,
                               client_secret=SecretStr(secret if secret is not None else graph.client_secret), **extra)


def step(operation: str, params: dict[str, Any], step_id: str = "s1", approval_id: str = "apr-1") -> StepContext:
    return StepContext(approval_id, "tenant-a", "act-1",
                       PlanStep(step_id=step_id, connector="sharepoint", operation=operation, params=params))


async def run_error(connector: SharePointConnector, ctx: StepContext) -> ConnectorError:
    with pytest.raises(ConnectorError) as info:
        await connector.run(ctx)
    return info.value


def assert_no_secrets(graph: GraphState, *texts: str) -> None:
    for text in texts:
        assert graph.client_secret not in text
        for token in graph.valid_tokens:
            assert token not in text


# --- configuration and validation --------------------------------------------------------------------------

async def test_missing_settings_names_each_absent_setting(client: httpx.AsyncClient) -> None:
    def connector(tenant_id: str | None, client_id: str | None, client_secret: SecretStr | None
                  ) -> SharePointConnector:
        return SharePointConnector(client, graph_url="https://graph.microsoft.com/v1.0",
                                   login_url="https://login.microsoftonline.com", tenant_id=tenant_id,
                                   client_id=client_id, client_secret=client_secret)

    empty = connector(None, None, None)
    assert empty.missing_settings() == ["MS_TENANT_ID", "MS_CLIENT_ID", "MS_CLIENT_SECRET"]
    only_secret = connector("t", "c", None)
    assert only_secret.missing_settings() == ["MS_CLIENT_SECRET"]
    full = connector("t", "c", SecretStr("x"))
    assert full.missing_settings() == []
    assert full.name == "sharepoint"


@pytest.mark.parametrize(("operation", "params", "code", "mentions"), [
    ("create_list_item", {"listId": LIST, "fields": {}}, "invalid_params", "siteId"),
    ("create_list_item", {"siteId": SITE, "fields": {}}, "invalid_params", "listId"),
    ("create_list_item", {"siteId": SITE, "listId": LIST, "fields": "Title=x"}, "invalid_params", "fields"),
    ("upload_file", {"folder": "", "fileName": "a.txt", "content": "x"}, "invalid_params", "driveId"),
    ("upload_file", {"driveId": DRIVE, "folder": "", "content": "x"}, "invalid_params", "fileName"),
    ("upload_file", {"driveId": DRIVE, "folder": "", "fileName": "a/b.txt", "content": "x"}, "invalid_params",
     "fileName"),
    ("upload_file", {"driveId": DRIVE, "folder": "../x", "fileName": "a.txt", "content": "x"}, "invalid_params",
     "folder"),
    ("upload_file", {"driveId": DRIVE, "folder": "", "fileName": "a.txt"}, "invalid_params", "content"),
    ("upload_file", {"driveId": DRIVE, "folder": "", "fileName": "big.txt", "content": "x" * (4 * 1024 * 1024 + 1)},
     "too_large", "4194304"),
    ("delete_site", {}, "unsupported_operation", "delete_site"),
])
async def test_bad_steps_fail_permanently_without_calling_the_api(
        client: httpx.AsyncClient, graph: GraphState, operation: str, params: dict[str, Any], code: str,
        mentions: str) -> None:
    error = await run_error(make_connector(client, graph), step(operation, params))
    assert (error.code, error.retryable) == (code, False)
    assert mentions in error.message
    assert graph.requests == []


# --- token ---------------------------------------------------------------------------------------------------

async def test_token_is_fetched_once_for_several_steps_and_again_after_expiry(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    graph.expires_in = 301  # usable for 1 s: the connector renews 5 minutes before expiry
    clock = ManualClock()
    connector = make_connector(client, graph, clock=clock)
    for i in range(3):
        await connector.run(step("create_list_item", ITEM_PARAMS, step_id=f"s{i}"))
    assert graph.token_requests == 1
    token_request = graph.requests[0]
    assert (token_request.method, token_request.path) == ("POST", f"/{graph.tenant_id}/oauth2/v2.0/token")
    assert token_request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert token_request.form == {"client_id": graph.client_id, "client_secret": graph.client_secret,
                                  "scope": "https://graph.microsoft.com/.default", "grant_type": "client_credentials"}
    first_auth = {r.headers["Authorization"] for r in graph.graph_requests()}
    assert len(first_auth) == 1

    clock.now += 0.9  # still inside the window
    await connector.run(step("create_list_item", ITEM_PARAMS, step_id="s3"))
    assert graph.token_requests == 1

    clock.now += 0.2  # past expiry - 300 s
    await connector.run(step("create_list_item", ITEM_PARAMS, step_id="s4"))
    assert graph.token_requests == 2
    last_auth = graph.graph_requests()[-1].headers["Authorization"]
    assert last_auth.startswith("Bearer ") and last_auth not in first_auth


async def test_token_with_an_hour_of_life_is_reused_until_five_minutes_before_expiry(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    graph.expires_in = 3600
    clock = ManualClock()
    connector = make_connector(client, graph, clock=clock)
    await connector.run(step("create_list_item", ITEM_PARAMS, step_id="a"))
    clock.now += 3299
    await connector.run(step("create_list_item", ITEM_PARAMS, step_id="b"))
    assert graph.token_requests == 1
    clock.now += 2
    await connector.run(step("create_list_item", ITEM_PARAMS, step_id="c"))
    assert graph.token_requests == 2


async def test_concurrent_steps_fetch_one_token(client: httpx.AsyncClient, graph: GraphState) -> None:
    graph.token_delay_s = 0.3  # every step is waiting for the token at the same time
    connector = make_connector(client, graph)
    outputs = await asyncio.gather(*(connector.run(step("create_list_item", ITEM_PARAMS, step_id=f"s{i}"))
                                     for i in range(8)))
    assert graph.token_requests == 1
    assert graph.items_created == 8
    assert len({o.result["itemId"] for o in outputs}) == 8


async def test_invalid_client_secret_is_permanent_auth_failed_and_never_shows_the_secret(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    wrong = "wrong-secret-0123456789"
    error = await run_error(make_connector(client, graph, secret=wrong), step("create_list_item", ITEM_PARAMS))
    assert (error.code, error.retryable, error.http_status) == ("auth_failed", False, 401)
    assert "invalid_client" in error.message and "AADSTS7000215" in error.message
    assert wrong not in error.message and wrong not in str(error)
    assert graph.graph_requests() == []


async def test_unknown_tenant_is_permanent_auth_failed(client: httpx.AsyncClient, graph: GraphState) -> None:
    connector = SharePointConnector(client, graph_url=graph.graph_url, login_url=graph.login_url,
                                    tenant_id="other-tenant", client_id=graph.client_id,
                                    client_secret=SecretStr(graph.client_secret))
    error = await run_error(connector, step("upload_file", FILE_PARAMS))
    assert (error.code, error.retryable, error.http_status) == ("auth_failed", False, 400)
    assert "AADSTS90002" in error.message
    assert_no_secrets(graph, error.message)


async def test_token_endpoint_outage_is_retryable_with_its_retry_after(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    graph.token_faults = [Fault(503, retry_after="3", code="temporarily_unavailable")]
    connector = make_connector(client, graph)
    error = await run_error(connector, step("create_list_item", ITEM_PARAMS))
    assert (error.retryable, error.retry_after, error.http_status) == (True, 3.0, 503)
    assert_no_secrets(graph, error.message)
    output = await connector.run(step("create_list_item", ITEM_PARAMS))
    assert output.result["created"] is True
    assert graph.token_requests == 2


async def test_graph_401_drops_the_token_and_the_next_attempt_fetches_a_new_one(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    connector = make_connector(client, graph)
    await connector.run(step("create_list_item", ITEM_PARAMS, step_id="a"))
    graph.revoke_tokens()
    error = await run_error(connector, step("create_list_item", ITEM_PARAMS, step_id="b"))
    assert (error.code, error.retryable, error.http_status) == ("auth_expired", True, 401)
    assert "InvalidAuthenticationToken" in error.message
    output = await connector.run(step("create_list_item", ITEM_PARAMS, step_id="b"))
    assert output.result["created"] is True
    assert graph.token_requests == 2
    assert graph.items_created == 2


# --- create_list_item ------------------------------------------------------------------------------------

async def test_create_list_item_looks_up_the_step_key_then_creates_the_item(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    connector = make_connector(client, graph)
    output = await connector.run(step("create_list_item", ITEM_PARAMS))

    lookup, create = graph.graph_requests()
    token = lookup.headers["Authorization"].removeprefix("Bearer ")
    assert token in graph.valid_tokens and create.headers["Authorization"] == f"Bearer {token}"
    items_path = "/v1.0/sites/" + SITE + "/lists/Change%20Requests/items"
    assert (lookup.method, lookup.path) == ("GET", items_path)
    assert lookup.query == {"$expand": ["fields"], "$filter": ["fields/PJStepKey eq 'apr-1:s1'"]}
    assert lookup.headers["Prefer"] == "HonorNonIndexedQueriesWarningMayFailRandomly"
    assert (create.method, create.path) == ("POST", items_path)
    assert create.json() == {"fields": {"Title": "Rotate keys", "Priority": 2, "PJStepKey": "apr-1:s1"}}

    item = graph.lists[(SITE, LIST)].items[0]
    assert output.http_status == 201
    assert output.result == {"itemId": item["id"], "webUrl": item["webUrl"], "created": True}
    assert_no_secrets(graph, json.dumps(output.result))


async def test_create_list_item_redelivered_after_a_crash_returns_the_same_item(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    connector = make_connector(client, graph)
    ctx = step("create_list_item", ITEM_PARAMS)
    first = await connector.run(ctx)
    second = await connector.run(ctx)  # the dispatcher died before checkpointing the first result
    assert graph.items_created == 1
    assert [r.method for r in graph.graph_requests()] == ["GET", "POST", "GET"]
    assert second.result == {**first.result, "created": False}


async def test_create_list_item_whose_response_was_lost_is_found_on_retry(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    graph.faults_after_effect = [Fault(502)]  # the item is created but the answer never arrives
    connector = make_connector(client, graph)
    ctx = step("create_list_item", ITEM_PARAMS)
    error = await run_error(connector, ctx)
    assert error.retryable and error.http_status == 502
    output = await connector.run(ctx)
    assert graph.items_created == 1
    assert output.result["itemId"] == graph.lists[(SITE, LIST)].items[0]["id"]
    assert output.result["created"] is False


async def test_create_list_item_key_with_a_quote_is_escaped_for_odata(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    connector = make_connector(client, graph)
    ctx = step("create_list_item", ITEM_PARAMS, approval_id="o'brien")
    first = await connector.run(ctx)
    second = await connector.run(ctx)
    assert graph.graph_requests()[0].query["$filter"] == ["fields/PJStepKey eq 'o''brien:s1'"]
    assert graph.items_created == 1 and second.result["itemId"] == first.result["itemId"]


async def test_create_list_item_in_an_unknown_list_is_permanent(client: httpx.AsyncClient, graph: GraphState) -> None:
    error = await run_error(make_connector(client, graph),
                            step("create_list_item", {**ITEM_PARAMS, "listId": "Nope"}))
    assert (error.code, error.retryable, error.http_status) == ("http_error", False, 404)
    assert "itemNotFound" in error.message and "doesn't exist" in error.message


async def test_create_list_item_in_a_list_without_the_step_key_column_is_permanent(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    graph.add_list(SITE, "Bare", columns={"Title", "Priority"})
    error = await run_error(make_connector(client, graph), step("create_list_item", {**ITEM_PARAMS, "listId": "Bare"}))
    assert (error.code, error.retryable, error.http_status) == ("http_error", False, 400)
    assert "invalidRequest" in error.message and "PJStepKey" in error.message
    assert graph.items_created == 0


async def test_create_list_item_forbidden_is_permanent(client: httpx.AsyncClient, graph: GraphState) -> None:
    graph.graph_faults = [Fault(403, code="accessDenied")]
    error = await run_error(make_connector(client, graph), step("create_list_item", ITEM_PARAMS))
    assert (error.retryable, error.http_status) == (False, 403)
    assert "accessDenied" in error.message


async def test_create_list_item_retries_through_the_runner_until_graph_recovers(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    graph.graph_faults = [Fault(503, retry_after="0"), Fault(500)]
    reports: list[StepReport] = []

    async def publish(report: StepReport) -> None:
        reports.append(report)

    settings = DispatcherSettings(env="dev", PJ_CONNECTOR_RETRY_BASE_S=0, PJ_CONNECTOR_MAX_ATTEMPTS=4)
    runner = PlanRunner(settings, {"sharepoint": make_connector(client, graph)}, publish_report=publish)
    await runner.run_order(DispatchOrder(
        approval_id="apr-9", tenant_id="tenant-a", action_id="act-1", claim_token="claim",
        steps=[PlanStep(step_id="s1", connector="sharepoint", operation="create_list_item", params=ITEM_PARAMS)]))
    [report] = reports
    assert report.plan_status == "dispatched"
    assert (report.step.status, report.step.attempts) == ("succeeded", 3)
    assert report.step.result is not None and report.step.result["created"] is True
    assert graph.items_created == 1


async def test_create_list_item_rate_limit_retry_after_is_honoured(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    graph.graph_faults = [Fault(429, retry_after="7", code="TooManyRequests")]
    connector = make_connector(client, graph)
    error = await run_error(connector, step("create_list_item", ITEM_PARAMS))
    assert (error.retryable, error.retry_after, error.http_status) == (True, 7.0, 429)
    assert "TooManyRequests" in error.message
    output = await connector.run(step("create_list_item", ITEM_PARAMS))
    assert output.result["created"] is True and graph.items_created == 1


# --- upload_file -----------------------------------------------------------------------------------------

async def test_upload_file_checks_the_path_then_puts_pretty_sorted_json(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    connector = make_connector(client, graph)
    output = await connector.run(step("upload_file", FILE_PARAMS))

    # One rule for files (connectors/files.py): generated JSON ends with a newline, as on GitHub.
    expected = (json.dumps(FILE_PARAMS["content"], indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    assert expected.index(b'"alpha"') < expected.index(b'"zeta"')
    probe, put = graph.graph_requests()
    token = probe.headers["Authorization"].removeprefix("Bearer ")
    assert token in graph.valid_tokens and put.headers["Authorization"] == f"Bearer {token}"
    assert (probe.method, probe.path) == ("GET", "/v1.0/drives/b!drive-1/root:/pj/tenant-a/reports/2024/summary.json")
    assert (put.method, put.path) == ("PUT",
                                      "/v1.0/drives/b!drive-1/root:/pj/tenant-a/reports/2024/summary.json:/content")
    assert put.body == expected
    assert put.headers["Content-Type"] == "application/json"

    stored = graph.drives[DRIVE]["pj/tenant-a/reports/2024/summary.json"]
    assert stored.content == expected
    assert output.http_status == 201
    assert output.result == {"itemId": stored.item_id, "size": len(expected),
                             "webUrl": "https://contoso.sharepoint.com/sites/team/Shared%20Documents/"
                                       "pj/tenant-a/reports/2024/summary.json",
                             "sha256": hashlib.sha256(expected).hexdigest(), "created": True}
    assert_no_secrets(graph, json.dumps(output.result))


async def test_upload_file_writes_a_string_as_utf8_at_the_tenants_root(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    text = "Grüße ✓\nline 2\n"
    output = await make_connector(client, graph).run(
        step("upload_file", {"driveId": DRIVE, "folder": "", "fileName": "notes v1.txt", "content": text}))
    put = graph.graph_requests()[-1]
    assert put.path == "/v1.0/drives/b!drive-1/root:/pj/tenant-a/notes%20v1.txt:/content"
    assert put.body == text.encode("utf-8")
    assert put.headers["Content-Type"].startswith("text/plain")
    assert graph.drives[DRIVE]["pj/tenant-a/notes v1.txt"].content == text.encode()
    assert output.result["size"] == len(text.encode())


async def test_upload_file_redelivered_after_a_crash_skips_the_identical_file(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    connector = make_connector(client, graph)
    ctx = step("upload_file", FILE_PARAMS)
    first = await connector.run(ctx)
    second = await connector.run(ctx)
    assert graph.uploads == 1
    assert [r.method for r in graph.graph_requests()] == ["GET", "PUT", "GET"]
    assert second.result == {**first.result, "created": False}


async def test_upload_file_without_a_stored_sha256_uploads_the_same_bytes_again(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    graph.store_sha256 = False  # like a business drive, which reports only quickXorHash
    connector = make_connector(client, graph)
    ctx = step("upload_file", FILE_PARAMS)
    first = await connector.run(ctx)
    second = await connector.run(ctx)
    assert graph.uploads == 2  # rewrites the same path with the same bytes: the end state is unchanged
    assert len(graph.drives[DRIVE]) == 1
    assert second.http_status == 200
    assert second.result == {**first.result, "created": False}


async def test_upload_file_over_a_different_file_replaces_it(client: httpx.AsyncClient, graph: GraphState) -> None:
    connector = make_connector(client, graph)
    await connector.run(step("upload_file", {**FILE_PARAMS, "content": "old"}, step_id="a"))
    output = await connector.run(step("upload_file", {**FILE_PARAMS, "content": "new!"}, step_id="b"))
    assert graph.uploads == 2
    assert graph.drives[DRIVE]["pj/tenant-a/reports/2024/summary.json"].content == b"new!"
    assert (output.result["created"], output.result["size"]) == (False, 4)


async def test_upload_file_whose_response_was_lost_is_skipped_on_retry(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    graph.faults_after_effect = [Fault(500)]
    connector = make_connector(client, graph)
    ctx = step("upload_file", FILE_PARAMS)
    error = await run_error(connector, ctx)
    assert error.retryable and error.http_status == 500
    output = await connector.run(ctx)
    assert graph.uploads == 1
    assert output.result["itemId"] == graph.drives[DRIVE]["pj/tenant-a/reports/2024/summary.json"].item_id


async def test_upload_file_to_an_unknown_drive_is_permanent(client: httpx.AsyncClient, graph: GraphState) -> None:
    error = await run_error(make_connector(client, graph), step("upload_file", {**FILE_PARAMS, "driveId": "b!gone"}))
    assert (error.code, error.retryable, error.http_status) == ("http_error", False, 404)
    assert "itemNotFound" in error.message
    assert graph.uploads == 0


async def test_upload_file_retry_then_success(client: httpx.AsyncClient, graph: GraphState) -> None:
    graph.graph_faults = [Fault(504, retry_after="2", code="gatewayTimeout")]
    connector = make_connector(client, graph)
    ctx = step("upload_file", FILE_PARAMS)
    error = await run_error(connector, ctx)
    assert (error.code, error.retryable, error.retry_after, error.http_status) == ("http_retryable", True, 2.0, 504)
    output = await connector.run(ctx)
    assert output.result["created"] is True and graph.uploads == 1


async def test_upload_file_rate_limit_retry_after_is_honoured(client: httpx.AsyncClient, graph: GraphState) -> None:
    graph.graph_faults = [Fault(429, retry_after="11", code="activityLimitReached")]
    error = await run_error(make_connector(client, graph), step("upload_file", FILE_PARAMS))
    assert (error.retryable, error.retry_after, error.http_status) == (True, 11.0, 429)
    assert "activityLimitReached" in error.message
    assert graph.uploads == 0


# --- slow Graph -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("operation", "params"), [("create_list_item", ITEM_PARAMS), ("upload_file", FILE_PARAMS)])
async def test_slow_graph_response_is_a_retryable_timeout(graph: GraphState, operation: str,
                                                          params: dict[str, Any]) -> None:
    graph.graph_delay_s = 2.0
    async with httpx.AsyncClient(timeout=0.3) as short:
        error = await run_error(make_connector(short, graph), step(operation, params))
    assert (error.code, error.retryable) == ("network_error", True)
    assert "Timeout" in error.message
    assert_no_secrets(graph, error.message)



async def test_tenants_sharing_a_drive_never_overwrite_or_report_each_others_file(
        client: httpx.AsyncClient, graph: GraphState) -> None:
    connector = make_connector(client, graph)
    params = {"driveId": DRIVE, "folder": "reports", "fileName": "q1.csv", "content": "acme's"}
    acme = await connector.run(StepContext("apr-a", "acme", "act-1", PlanStep(
        step_id="s1", connector="sharepoint", operation="upload_file", params=params)))
    # The same folder and name, and a folder that spells out acme's corner: globex stays in its own.
    globex = [await connector.run(StepContext("apr-g", "globex", "act-1", PlanStep(
        step_id=f"s{i}", connector="sharepoint", operation="upload_file",
        params={**params, "folder": folder, "content": "globex's"})))
        for i, folder in enumerate(("reports", "pj/acme/reports"))]
    assert graph.drives[DRIVE]["pj/acme/reports/q1.csv"].content == b"acme's"
    assert graph.drives[DRIVE]["pj/globex/reports/q1.csv"].content == b"globex's"
    assert graph.drives[DRIVE]["pj/globex/pj/acme/reports/q1.csv"].content == b"globex's"
    assert all(g.result["created"] is True and g.result["itemId"] != acme.result["itemId"] for g in globex)
