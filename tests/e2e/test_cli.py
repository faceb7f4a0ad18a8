"""The `pj` command line against the whole system: the installed entry point, run as a subprocess, with
its exit statuses per outcome (0 ok, 2 usage, 3 not found, 4 conflict, 5 forbidden, 6 unavailable)."""

import asyncio
import json
import os
import stat
import sys
import uuid
from pathlib import Path

import pytest

from pj_common.auth import TokenVerifier
from tests.support.pj_cli import Run, pj_in_process
from tests.support.system import System, free_port
from tests.support.webhook_sink import SinkState

from .conftest import AUDIENCE, ISSUER, SECRET, token

PJ = Path(sys.executable).parent / "pj"


@pytest.fixture
def pj_env(system: System, tmp_path: Path) -> dict[str, str]:
    """The test system's URL and broker, and a config directory of the test's own (never the user's)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PJ_")},
            "PJ_URL": system.base_url, "PJ_AMQP_URL": system.env["PJ_AMQP_URL"],
            "PJ_AMQP_PREFIX": system.env["PJ_AMQP_PREFIX"], "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "COLUMNS": "200"}


async def pj(env: dict[str, str], *args: str, as_user: str | None = None, **extra_env: str) -> Run:
    """Run `pj args...`; `as_user` is "role:sub:tenant", passed as PJ_TOKEN."""
    if as_user is not None:
        role, sub, tenant = as_user.split(":")
        extra_env["PJ_TOKEN"] = token(role, sub, tenant)
    proc = await asyncio.create_subprocess_exec(str(PJ), *args, env={**env, **extra_env},
                                                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def pj_here(env: dict[str, str], *args: str, as_user: str | None = None, typed: str | None = None,
                  **extra_env: str | None) -> Run:
    """The same command in this process (`pj_in_process`, no start-up cost). The lifecycle and `watch` run
    the installed entry point; the other checks run here."""
    if as_user is not None:
        role, sub, tenant = as_user.split(":")
        extra_env["PJ_TOKEN"] = token(role, sub, tenant)
    return await pj_in_process({**env, **extra_env}, *args, typed=typed)


def new_tenant() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


async def test_execute_list_show_approve_dispatch(pj_env: dict[str, str], tmp_path: Path, sink: SinkState) -> None:
    t = new_tenant()
    alice, bob, carol = f"admin:alice:{t}", f"admin:bob:{t}", f"admin:carol:{t}"
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"message": "hello from pj"}))
    request_id = str(uuid.uuid4())

    # The installed entry point for the calls that matter most (and each exit status); the rest in process.
    run, missing = await asyncio.gather(
        pj(pj_env, "execute", "notify.webhook", "--payload", f"@{payload}", "--request-id", request_id, "--json",
           as_user=alice),
        pj(pj_env, "show", str(uuid.uuid4()), "--json", as_user=bob))
    assert run.code == 0, run
    accepted = run.json()
    approval_id = accepted["approvalId"]
    assert accepted["approvalStatus"] == "pending" and accepted["requestId"] == request_id
    assert (missing.code, missing.error()["code"]) == (3, "not_found"), missing

    listed = await pj_here(pj_env, "list", "--status", "pending", "--json", as_user=bob)
    assert listed.code == 0 and [a["id"] for a in listed.json()["approvals"]] == [approval_id]
    assert listed.json()["pendingCount"] == 1
    table = await pj_here(pj_env, "list", as_user=bob)
    assert table.code == 0 and approval_id in table.out and "notify.webhook" in table.out
    # The same request id again: the same approval, not a second one.
    again = await pj_here(pj_env, "execute", "notify.webhook", "-p", '{"message": "hello from pj"}',
                          "--request-id", request_id, "--quiet", as_user=alice)
    assert again.code == 0 and again.out.strip() == approval_id

    shown = await pj_here(pj_env, "show", approval_id, as_user=bob)
    assert shown.code == 0, shown
    assert "pending" in shown.out and "post-webhook" in shown.out and "hello from pj" in shown.out

    # Separation of duties: the requester may not approve their own request.
    own = await pj_here(pj_env, "approve", approval_id, "--note", "mine", "--json", as_user=alice)
    assert own.code == 5, own
    assert own.error()["code"] == "self_approval_forbidden"

    approved = await pj_here(pj_env, "approve", approval_id, "--note", "reviewed", "--json", as_user=bob)
    assert approved.code == 0, approved
    assert approved.json()["approval_status"] == "approved" and approved.json()["approver_id"] == "bob"

    late = await pj_here(pj_env, "approve", approval_id, "--json", as_user=carol)
    assert late.code == 4, late
    assert late.error()["code"] == "invalid_state"

    dispatched = await pj(pj_env, "dispatch", approval_id, "--wait", "--json", as_user=bob)
    assert dispatched.code == 0, dispatched
    assert dispatched.json()["approvalStatus"] == "dispatched"
    assert [s["status"] for s in dispatched.json()["dispatchResult"]] == ["succeeded"]

    final = await pj_here(pj_env, "show", approval_id, "--json", as_user=bob)
    assert final.code == 0
    view = final.json()
    assert view["approval_status"] == "dispatched" and view["dispatch_result"][0]["stepId"] == "post-webhook"
    assert [e["to"] for e in view["audit"]] == ["pending", "approved", "dispatching", "dispatched"]
    assert [d for d in sink.deliveries if d.body["approvalId"] == approval_id]


async def test_exit_statuses_per_outcome(pj_env: dict[str, str]) -> None:
    t = new_tenant()
    missing = await pj_here(pj_env, "show", str(uuid.uuid4()), "--json", as_user=f"admin:alice:{t}")
    viewer = await pj_here(pj_env, "execute", "notify.webhook", "--json", as_user=f"viewer:vic:{t}")
    anonymous = await pj_here(pj_env, "list")
    unknown_action = await pj_here(pj_env, "execute", "no.such.action", as_user=f"operator:olga:{t}")
    no_note = await pj_here(pj_env, "reject", str(uuid.uuid4()), as_user=f"admin:alice:{t}")
    away = await pj_here(pj_env, "list", "--json", PJ_URL=f"http://127.0.0.1:{free_port()}", PJ_TOKEN="x")
    assert (missing.code, missing.error()["code"]) == (3, "not_found"), missing
    assert (viewer.code, viewer.error()["code"]) == (5, "forbidden"), viewer
    assert anonymous.code == 5 and "unauthorized" in anonymous.err and "pj login" in anonymous.err, anonymous
    assert unknown_action.code == 2 and "unknown_action" in unknown_action.err, unknown_action
    assert no_note.code == 2 and "--note" in no_note.err, no_note
    assert (away.code, away.error()["code"]) == (6, "gateway_unreachable"), away


async def test_shell_completion_offers_the_approvals_one_may_see(pj_env: dict[str, str]) -> None:
    t = new_tenant()
    mine = await pj_here(pj_env, "execute", "notify.webhook", "-q", as_user=f"operator:olga:{t}")
    assert mine.code == 0, mine
    approval_id = mine.out.strip()

    def completing(words: str) -> dict[str, str]:
        return {"_PJ_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1),
                "PJ_TOKEN": token("admin", "alice", t)}

    ids = await pj_here(pj_env, **completing(f"pj show {approval_id[:4]}"))
    assert ids.code == 0 and ids.out.split() == [approval_id], ids
    commands = await pj_here(pj_env, **completing("pj dis"))
    assert commands.out.split() == ["dispatch"], commands
    nowhere = await pj_here(pj_env, **completing("pj approve "), PJ_URL=f"http://127.0.0.1:{free_port()}")
    assert nowhere.code == 0 and not nowhere.out.strip(), nowhere  # no gateway: nothing offered, no error


async def test_login_keeps_the_token_in_a_private_file(pj_env: dict[str, str], tmp_path: Path) -> None:
    t = new_tenant()
    env = {k: v for k, v in pj_env.items() if k != "PJ_URL"}
    config = tmp_path / "config" / "pj" / "config.json"

    refused = await pj_here(env, "login", "--url", pj_env["PJ_URL"], "--token", "not-a-token")
    assert refused.code == 5 and not config.exists(), refused

    good = token("admin", "alice", t)
    logged_in = await pj_here(env, "login", "--url", pj_env["PJ_URL"], "--token", good, "--json")
    assert logged_in.code == 0, logged_in
    assert logged_in.json()["sub"] == "alice" and logged_in.json()["tenant"] == t
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text()) == {"url": pj_env["PJ_URL"], "token": good}

    listed = await pj_here(env, "list", "--json")  # no flag, no environment: the stored URL and token
    assert listed.code == 0 and listed.json()["total"] == 0, listed

    # Without --token it asks (the device flow is not there yet, and it says so); the new token replaces the old.
    other = token("viewer", "vera", t)
    asked = await pj_here(env, "login", typed=other + "\n")
    assert asked.code == 0, asked
    assert "device flow" in asked.err and other not in asked.out + asked.err
    assert json.loads(config.read_text()) == {"url": pj_env["PJ_URL"], "token": other}

    config.write_text("{damaged")
    damaged = await pj_here(env, "list")
    assert damaged.code == 2 and "not a pj config" in damaged.err, damaged
    named = await pj_here(env, "list", "--json", PJ_URL=pj_env["PJ_URL"], PJ_TOKEN=other)
    assert named.code == 0, named  # URL and token both given: the file is not read


async def test_token_signs_for_the_system_only_with_its_key(pj_env: dict[str, str]) -> None:
    minted = await pj_here(pj_env, "token", "--role", "operator", "--sub", "olga", "--tenant", "acme",
                      PJ_ENV="prod", PJ_JWT_SECRET=SECRET)
    assert minted.code == 0, minted
    principal = TokenVerifier(SECRET, ISSUER, AUDIENCE).verify(minted.out.strip())
    assert (principal.subject, principal.tenant, principal.role) == ("olga", "acme", "operator")
    assert minted.out.count("\n") == 1 and not minted.err  # a bare token: `$(make -s token)` takes it whole

    refused = await pj_here(pj_env, "token", PJ_ENV="prod")
    bad_role = await pj_here(pj_env, "token", "--role", "superuser", PJ_ENV="dev")
    assert refused.code == 5 and not refused.out and "PJ_ENV=dev" in refused.err, refused
    assert bad_role.code == 2 and "superuser" in bad_role.err, bad_role


async def start_watch(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    """`pj watch args...`, returned once it says it is watching (events before that are not its)."""
    watcher = await asyncio.create_subprocess_exec(
        str(PJ), "watch", "--count", "2", "--for", "30", "--json", *args, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert watcher.stderr is not None
    ready = await asyncio.wait_for(watcher.stderr.readline(), 20)
    assert ready.startswith(b"watching "), ready
    return watcher


async def test_watch_prints_each_event_as_it_happens(pj_env: dict[str, str]) -> None:
    """Through the gateway's stream (the token's tenant) and straight from the broker (filtered by tenant)."""
    t = new_tenant()
    watchers = await asyncio.gather(
        start_watch({**pj_env, "PJ_TOKEN": token("viewer", "vera", t)}),
        start_watch(pj_env, "--broker", "--tenant", t))
    try:
        run = await pj_here(pj_env, "execute", "notify.webhook", "-q", as_user=f"operator:olga:{t}")
        approval_id = run.out.strip()
        assert run.code == 0, run
        rejected = await pj_here(pj_env, "reject", approval_id, "--note", "not today", as_user=f"admin:alice:{t}")
        assert rejected.code == 0, rejected
        outputs = await asyncio.wait_for(asyncio.gather(*(w.communicate() for w in watchers)), 30)
    finally:
        for watcher in watchers:
            if watcher.returncode is None:
                watcher.kill()
                await watcher.wait()
    for watcher, (out, _) in zip(watchers, outputs, strict=True):
        assert watcher.returncode == 0
        events = [json.loads(line) for line in out.decode().splitlines()]
        assert [(e["type"], e["toStatus"], e["approvalId"]) for e in events] == [
            ("approval.created", "pending", approval_id), ("approval.decided", "rejected", approval_id)]
        assert events[1]["note"] == "not today" and events[1]["actor"] == "alice"


async def test_dlq_lists_the_systems_dead_letters(pj_env: dict[str, str]) -> None:
    listed = await pj_here(pj_env, "dlq", "list", "--json")
    elsewhere = await pj_here(pj_env, "dlq", "list", "--prefix", f"nothing-{uuid.uuid4().hex[:6]}")
    assert listed.code == 0 and isinstance(listed.json(), list), listed
    assert elsewhere.code == 3 and "has the system run" in elsewhere.err, elsewhere
    absent = await pj_here(pj_env, "dlq", "replay", "--id", f"no-such-letter-{uuid.uuid4()}", "--json")
    assert absent.code == 3 and absent.json()["missing"] and not absent.json()["replayed"], absent
    neither = await pj_here(pj_env, "dlq", "replay")
    assert neither.code == 2 and "--all" in neither.err, neither
