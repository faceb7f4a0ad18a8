"""Decisions from Slack in the running system: Slack's signed interactions reach the gateway's
POST /api/slack/interactions, which decides through approvals as the Slack user's mapped identity.

Its own system (gateway, approvals, one dispatcher, the notifier; own database and broker prefix): approvals
must know the gateway's service identity (PJ_SERVICE_PRINCIPALS) from its start, which the session's shared
system does not.
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pj_common.broker_access import Service
from tests.e2e.conftest import EXTRA_ACTIONS, METRICS_TOKEN, headers, request_approval, system_env, write_catalog
from tests.support.slack_api import SlackState, send_interaction, start_slack_api, stop_slack_api
from tests.support.system import System, free_port, fresh_database, running_system
from tests.support.webhook_sink import SinkState

pytestmark = pytest.mark.e2e

TENANT = "acme-slack"
SIGNING_SECRET = "e2e-slack-signing-secret-0123456789"
BOT_TOKEN = "xoxb-e2e-slack-decisions"
CHANNEL = "C0E2EDECIDE"
INTERACTIONS = "/api/slack/interactions"
USER_MAP = {
    "U0ALICE": {"sub": "alice", "role": "admin", "tenant": TENANT},  # by Slack user id
    "bob@example.com": {"sub": "bob", "role": "approver", "tenant": TENANT},  # by email, through users.info
    "U0OLGA": {"sub": "olga", "role": "admin", "tenant": TENANT},  # the requester of every approval here
    "U0VERA": {"sub": "vera", "role": "viewer", "tenant": TENANT},  # may read, never decide
    "U0EVE": {"sub": "eve", "role": "admin", "tenant": "globex"},  # a tenant the gateway's grant lacks
}


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackState]:
    server, state = start_slack_api(BOT_TOKEN)
    state.add_channel(CHANNEL, "approvals")
    for user_id, email in (("U0ALICE", "alice@example.com"), ("U0BOB", "bob@example.com"),
                           ("U0OLGA", "olga@example.com"), ("U0VERA", "vera@example.com"),
                           ("U0MALLORY", "mallory@example.com"), ("U0EVE", "eve@example.com")):
        state.add_user(user_id, email)
    yield state
    stop_slack_api(server, state)


@pytest.fixture(scope="module")
async def slack_system(pg_admin_url: str, amqp_url: str, sink: SinkState, slack: SlackState,
                       broker_users: dict[Service, str], tmp_path_factory: pytest.TempPathFactory
                       ) -> AsyncIterator[System]:
    """Gateway with the Slack settings, approvals that lets `pj-slack` decide on behalf of TENANT's people."""
    prefix = f"pjs-{uuid.uuid4().hex[:10]}"
    port = free_port()
    async with fresh_database(pg_admin_url, "pj_e2e_slack") as database_url:
        env = system_env(database_url, amqp_url, prefix, port, sink.url)
        catalog = tmp_path_factory.mktemp("slack-catalog") / "catalog.yaml"
        write_catalog(catalog, EXTRA_ACTIONS)
        env.update(PJ_CATALOG=str(catalog), PJ_APPROVALS_METRICS_PORT=str(free_port()),
                   PJ_DISPATCHER_METRICS_PORT=str(free_port()),
                   PJ_SERVICE_PRINCIPALS=json.dumps({"pj-slack": {"commands": ["decide_on_behalf"],
                                                                  "tenants": [TENANT]}}))
        notified = with_notifications(catalog, catalog.with_name("notified.yaml"))

        def notifier(system: System) -> None:
            """Posts the messages whose buttons are clicked, and updates them after a decision."""
            system.start("notifier", "pj_notifier", PJ_CATALOG=str(notified), SLACK_BOT_TOKEN=BOT_TOKEN,
                         PJ_SLACK_API_URL=slack.url, PJ_CONSOLE_URL=system.base_url)

        slack_gateway = {"PJ_SLACK_SIGNING_SECRET": SIGNING_SECRET, "PJ_SLACK_USER_MAP": json.dumps(USER_MAP),
                         "SLACK_BOT_TOKEN": BOT_TOKEN, "PJ_SLACK_API_URL": slack.url}
        # A shared machine may be slow to start five processes.
        async with running_system(env, amqp_url=amqp_url, logdir=tmp_path_factory.mktemp("e2e-slack-logs"),
                                  broker_users=broker_users, gateway_env=slack_gateway, also=notifier,
                                  timeout=60) as system:
            yield system


def with_notifications(catalog: Path, to: Path) -> Path:
    """The catalog plus Slack notifications of TENANT's approvals to CHANNEL (alice decides its admin stages)."""
    document: dict[str, Any] = yaml.safe_load(catalog.read_text())
    document.setdefault("tenants", {})[TENANT] = {"notifications": {
        "channels": ["slack"], "slack": {"channel": CHANNEL, "direct": False},
        "people": {"alice": {"email": "alice@example.com"}}, "approvers": {"admin": ["alice"]}}}
    to.write_text(yaml.safe_dump(document, sort_keys=False))
    return to


@pytest.fixture
async def client(slack_system: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=slack_system.base_url, timeout=30, trust_env=False) as c:
        yield c


async def pending(client: httpx.AsyncClient, action: str = "notify.webhook") -> str:
    """A new approval that olga requested."""
    return await request_approval(client, TENANT, action, sub="olga", request_id=f"slack-{uuid.uuid4().hex}")


async def approval(client: httpx.AsyncClient, approval_id: str) -> dict[str, Any]:
    r = await client.get(f"/api/approvals/{approval_id}", headers=headers("admin", "alice", TENANT))
    assert r.status_code == 200, r.text
    return dict(r.json()["data"])


async def click(client: httpx.AsyncClient, slack: SlackState, *, user_id: str, action: str, approval_id: str,
                secret: str = SIGNING_SECRET, timestamp: int | None = None) -> httpx.Response:
    payload = slack.button_click(user_id=user_id, action_id=action, value=approval_id, channel_id=CHANNEL)
    return await send_interaction(client, INTERACTIONS, payload, secret=secret, timestamp=timestamp)


async def test_approve_in_slack_approves_and_the_audit_says_slack(client: httpx.AsyncClient,
                                                                   slack: SlackState) -> None:
    aid = await pending(client)
    r = await click(client, slack, user_id="U0ALICE", action="pj_approve", approval_id=aid)
    assert r.status_code == 200, r.text
    seen = await approval(client, aid)
    assert seen["approval_status"] == "approved" and seen["approver_id"] == "alice"
    [decided] = [entry for entry in seen["audit"] if entry["event"] == "approval.decided"]
    assert (decided["actor"], decided["role"], decided["note"]) == ("alice", "admin", "via Slack")
    assert any(aid in text and "approved" in text for text in slack.told("U0ALICE"))


@pytest.mark.parametrize("forgery", ["another secret", "an old timestamp", "no signature"])
async def test_an_unsigned_or_stale_interaction_is_401_and_changes_nothing(
        client: httpx.AsyncClient, slack: SlackState, forgery: str) -> None:
    aid = await pending(client)
    told_before = len(slack.ephemeral)
    payload = slack.button_click(user_id="U0ALICE", action_id="pj_approve", value=aid, channel_id=CHANNEL)
    if forgery == "no signature":
        r = await client.post(INTERACTIONS, data={"payload": json.dumps(payload)})
    else:
        secret = SIGNING_SECRET + "-guess" if forgery == "another secret" else SIGNING_SECRET
        stamp = int(time.time()) - 600 if forgery == "an old timestamp" else None
        r = await send_interaction(client, INTERACTIONS, payload, secret=secret, timestamp=stamp)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "unauthorized"
    assert (await approval(client, aid))["approval_status"] == "pending"
    assert len(slack.ephemeral) == told_before  # not even a message: nothing happened


async def test_an_unmapped_slack_user_is_told_and_nothing_changes(client: httpx.AsyncClient,
                                                                  slack: SlackState) -> None:
    aid = await pending(client)
    r = await click(client, slack, user_id="U0MALLORY", action="pj_approve", approval_id=aid)
    assert r.status_code == 200, r.text
    assert any("not linked" in text for text in slack.told("U0MALLORY"))
    assert (await approval(client, aid))["approval_status"] == "pending"
    views_before = len(slack.views)
    r = await click(client, slack, user_id="U0MALLORY", action="pj_reject", approval_id=aid)
    assert r.status_code == 200, r.text
    assert len(slack.views) == views_before and len(slack.told("U0MALLORY")) == 2  # told again, no modal


async def test_the_requester_clicking_approve_is_refused(client: httpx.AsyncClient, slack: SlackState) -> None:
    """olga requested it; her Slack user maps to an admin, who could approve anyone else's request."""
    aid = await pending(client)
    r = await click(client, slack, user_id="U0OLGA", action="pj_approve", approval_id=aid)
    assert r.status_code == 200, r.text
    assert any("self_approval_forbidden" in text for text in slack.told("U0OLGA"))
    assert (await approval(client, aid))["approval_status"] == "pending"


async def test_a_role_that_may_not_decide_is_refused(client: httpx.AsyncClient, slack: SlackState) -> None:
    aid = await pending(client)
    r = await click(client, slack, user_id="U0VERA", action="pj_approve", approval_id=aid)
    assert r.status_code == 200, r.text
    assert any("forbidden" in text for text in slack.told("U0VERA"))
    assert (await approval(client, aid))["approval_status"] == "pending"


async def test_reject_opens_a_modal_whose_note_rejects(client: httpx.AsyncClient, slack: SlackState) -> None:
    """bob is found by his email (users.info); an approver may decide release.production's first stage."""
    aid = await pending(client, "release.production")
    views_before = len(slack.views)
    r = await click(client, slack, user_id="U0BOB", action="pj_reject", approval_id=aid)
    assert r.status_code == 200, r.text
    assert len(slack.views) == views_before + 1
    view = slack.views[-1]
    assert (await approval(client, aid))["approval_status"] == "pending"  # nothing decided before the note

    submission = slack.submit_view(view, user_id="U0BOB", values={"note": "Not during the freeze."})
    r = await send_interaction(client, INTERACTIONS, submission, secret=SIGNING_SECRET)
    assert r.status_code == 200, r.text
    assert not r.content  # an empty answer closes the modal
    seen = await approval(client, aid)
    assert seen["approval_status"] == "rejected" and seen["approver_id"] == "bob"
    [decided] = [entry for entry in seen["audit"] if entry["event"] == "approval.decided"]
    assert decided["note"] == "via Slack: Not during the freeze."
    assert [c.body["user"] for c in slack.calls("users.info")][-1:] == ["U0BOB"]


async def test_a_refused_note_shows_in_the_modal(client: httpx.AsyncClient, slack: SlackState) -> None:
    """The requester's own Reject, submitted: the modal stays open with the reason under the note."""
    aid = await pending(client)
    await click(client, slack, user_id="U0OLGA", action="pj_reject", approval_id=aid)
    submission = slack.submit_view(slack.views[-1], user_id="U0OLGA", values={"note": "changed my mind"})
    r = await send_interaction(client, INTERACTIONS, submission, secret=SIGNING_SECRET)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["response_action"] == "errors" and "self_approval_forbidden" in answer["errors"]["note"]
    assert (await approval(client, aid))["approval_status"] == "pending"


async def test_interactions_are_counted_by_outcome(client: httpx.AsyncClient, slack: SlackState) -> None:
    aid = await pending(client)
    await click(client, slack, user_id="U0ALICE", action="pj_approve", approval_id=aid, secret="forged")
    await click(client, slack, user_id="U0MALLORY", action="pj_approve", approval_id=aid)
    r = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200, r.text
    counted = {line.split("outcome=")[1].split("}")[0].strip('"'): float(line.rsplit(" ", 1)[1])
               for line in r.text.splitlines() if line.startswith("pj_gateway_slack_interactions_total{")}
    assert counted.get("unauthorized", 0) >= 1 and counted.get("unmapped", 0) >= 1


def message_of(slack: SlackState, approval_id: str) -> dict[str, Any] | None:
    """The notifier's channel message about `approval_id` (its blocks carry the approval's id)."""
    found = [m for m in slack.posted(CHANNEL) if approval_id in json.dumps(m.get("blocks", []))]
    assert len(found) <= 1, "one message per approval, updated in place"
    return found[0] if found else None


async def eventually(check: Callable[[], Any], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"not within {timeout}s: {what}")


async def test_the_posted_button_decides_and_the_message_is_updated_in_place(
        client: httpx.AsyncClient, slack: SlackState) -> None:
    """The whole loop: the notifier's message, its Approve button clicked, the same message updated."""
    aid = await pending(client)
    await eventually(lambda: message_of(slack, aid), "the notifier posted the pending approval")
    posted = message_of(slack, aid)
    assert posted is not None
    [button] = [e for b in posted["blocks"] if b["type"] == "actions" for e in b["elements"]
                if e["action_id"] == "pj_approve"]
    payload = slack.button_click(user_id="U0ALICE", action_id=button["action_id"], value=button["value"],
                                 channel_id=CHANNEL, message_ts=posted["ts"])
    r = await send_interaction(client, INTERACTIONS, payload, secret=SIGNING_SECRET)
    assert r.status_code == 200, r.text

    def updated() -> bool:
        message = message_of(slack, aid)
        return message is not None and message.get("edits", 0) >= 1 and "alice" in json.dumps(message["blocks"])

    await eventually(updated, "the message says who decided")
    message = message_of(slack, aid)
    assert message is not None and message["ts"] == posted["ts"]
    buttons = {e.get("action_id") for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]}
    assert not buttons & {"pj_approve", "pj_reject"}  # nothing left to decide
    assert "via Slack" in json.dumps(message["blocks"])


async def test_stages_and_distinct_deciders_hold_through_slack(client: httpx.AsyncClient, slack: SlackState) -> None:
    """release.production: bob (approver) passes the security stage but may not decide the operations stage
    (admins only), which needs two distinct admins: alice counts once however often she clicks."""
    aid = await pending(client, "release.production")
    r = await click(client, slack, user_id="U0BOB", action="pj_approve", approval_id=aid)
    assert r.status_code == 200, r.text
    assert (await approval(client, aid))["approval_status"] == "pending"  # on to the next stage
    await click(client, slack, user_id="U0BOB", action="pj_approve", approval_id=aid)
    [told] = slack.told("U0BOB")[-1:]
    assert "operations" in told and "(forbidden)" in told
    await click(client, slack, user_id="U0ALICE", action="pj_approve", approval_id=aid)
    await click(client, slack, user_id="U0ALICE", action="pj_approve", approval_id=aid)
    assert "(already_decided)" in slack.told("U0ALICE")[-1]
    seen = await approval(client, aid)
    assert seen["approval_status"] == "pending"  # one admin of two
    assert [e["actor"] for e in seen["audit"] if e["event"] == "approval.decided"] == ["bob", "alice"]


async def test_a_person_of_a_tenant_outside_the_grant_is_refused(client: httpx.AsyncClient,
                                                                  slack: SlackState) -> None:
    """eve is an admin, of globex: the gateway's service identity may not act for that tenant."""
    aid = await pending(client)
    r = await click(client, slack, user_id="U0EVE", action="pj_approve", approval_id=aid)
    assert r.status_code == 200, r.text
    assert any("forbidden" in text for text in slack.told("U0EVE"))
    assert (await approval(client, aid))["approval_status"] == "pending"
