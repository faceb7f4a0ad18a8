"""The Makefile and ops/dev/run.sh: `make help` names every target, `make run`/`make up` serve the metrics
ports ops/prometheus/prometheus.yml scrapes, and `make up` keeps the previous run's logs."""

import asyncio
import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml

from pj_common.broker_access import remove
from pj_common.topology import Topology
from tests.support.system import delete_topology, free_port

ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = ROOT / "Makefile"
RUN_SH = ROOT / "ops" / "dev" / "run.sh"
PROMETHEUS = ROOT / "ops" / "prometheus" / "prometheus.yml"
# A rule's target at the start of a line; `NAME := value` and `$(VENV)/...` file targets are not ones.
RULE = re.compile(r"^([a-z][a-z0-9-]*)\s*:(?!=)", re.MULTILINE)
# The tests run from this venv: a `make` they call must not re-sync it under the other tests' feet.
MAKE_ENV = {"MAKEFLAGS": "-o .venv/.synced"}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any PJ_ setting (the Makefile's defaults apply), plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PJ_")}, **MAKE_ENV, **extra}


def phony_targets() -> set[str]:
    text = MAKEFILE.read_text()
    return {name for line in re.findall(r"^\.PHONY:(.*)$", text, re.MULTILINE) for name in line.split()}


def rule_targets() -> set[str]:
    return set(RULE.findall(MAKEFILE.read_text()))


def test_every_rule_is_phony_and_every_phony_a_rule() -> None:
    assert rule_targets() == phony_targets()


def test_make_help_names_every_target() -> None:
    result = subprocess.run(["make", "-s", "help"], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                            timeout=60, check=True)
    listed = re.findall(r"^make (\S+)", result.stdout, re.MULTILINE)
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    missing = rule_targets() - set(listed)
    assert not missing, f"`make help` does not list: {sorted(missing)}"
    assert not set(listed) - rule_targets(), "`make help` lists targets that do not exist"
    assert {"lint", "schemas", "bench", "test-ops"} <= set(listed)
    assert result.stdout.splitlines()[0].startswith("make help"), "`make` alone (the default goal) shows help"


# --- metrics ports: what run.sh starts is what prometheus.yml scrapes --------------------------------


def scrape_ports() -> dict[str, int]:
    """Job name -> the port its targets are scraped on."""
    config = yaml.safe_load(PROMETHEUS.read_text())
    ports: dict[str, int] = {}
    for job in config["scrape_configs"]:
        found = {int(target.rsplit(":", 1)[1]) for static in job.get("static_configs", [])
                 for target in static["targets"]}
        found |= {int(sd["port"]) for sd in job.get("dns_sd_configs", [])}
        assert len(found) == 1, f"{job['job_name']}: one port per job, found {found}"
        ports[job["job_name"]] = found.pop()
    return ports


def planned_processes(dispatchers: int, **env: str) -> dict[str, dict[str, str]]:
    """`run.sh plan`: process name -> the PJ_ variables set on its command line."""
    result = subprocess.run(["bash", str(RUN_SH), "plan", str(dispatchers)], cwd=ROOT, env=clean_env(**env),
                            capture_output=True, text=True, timeout=30, check=True)
    plan = {}
    for line in result.stdout.splitlines():
        name, _, command = line.partition(" ")
        plan[name] = dict(re.findall(r"\b(PJ_[A-Z_]+)=(\S+)", command))
    return plan


def makefile_default(name: str) -> str:
    match = re.search(rf"^export {name} \?= (\S+)$", MAKEFILE.read_text(), re.MULTILINE)
    assert match, f"the Makefile sets no default for {name}"
    return match.group(1)


def test_make_run_serves_the_ports_prometheus_scrapes() -> None:
    ports = scrape_ports()
    assert set(ports) == {"pj-gateway", "pj-approvals", "pj-dispatchers"}
    plan = planned_processes(3)
    assert int(makefile_default("PJ_GATEWAY_PORT")) == ports["pj-gateway"]
    assert int(plan["approvals"]["PJ_APPROVALS_METRICS_PORT"]) == ports["pj-approvals"]
    dispatcher_ports = [int(plan[f"dispatcher-{i}"]["PJ_DISPATCHER_METRICS_PORT"]) for i in (1, 2, 3)]
    assert dispatcher_ports[0] == ports["pj-dispatchers"]
    # Processes on one host need a port each.
    assert dispatcher_ports == [ports["pj-dispatchers"] + i for i in range(3)]
    assert ports["pj-approvals"] not in dispatcher_ports
    # The Compose services listen where the same jobs look for them.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert int(compose["approvals"]["environment"]["PJ_APPROVALS_METRICS_PORT"]) == ports["pj-approvals"]
    assert int(compose["dispatcher"]["environment"]["PJ_DISPATCHER_METRICS_PORT"]) == ports["pj-dispatchers"]


def test_metrics_ports_follow_the_environment_and_zero_turns_them_off() -> None:
    plan = planned_processes(2, PJ_APPROVALS_METRICS_PORT="19101", PJ_DISPATCHER_METRICS_PORT="0")
    assert plan["approvals"]["PJ_APPROVALS_METRICS_PORT"] == "19101"
    assert {plan[f"dispatcher-{i}"]["PJ_DISPATCHER_METRICS_PORT"] for i in (1, 2)} == {"0"}


# --- make up / make down, for real on this run's database and broker prefix --------------------------


@pytest.fixture
async def up_env(database_url: str, amqp_url: str, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """Settings for a `make up` of its own (ports, run directory, database, broker prefix); `make down` after."""
    prefix = f"pjup-{uuid.uuid4().hex[:10]}"
    sink_port = free_port()
    env = clean_env(
        PJ_RUN_DIR=str(tmp_path / "run"), PJ_DATABASE_URL=database_url, PJ_AMQP_URL=amqp_url,
        PJ_AMQP_PREFIX=prefix, PJ_GATEWAY_PORT=str(free_port()), PJ_APPROVALS_METRICS_PORT=str(free_port()),
        PJ_DISPATCHER_METRICS_PORT=str(free_port()), PJ_WEBHOOK_SINK_PORT=str(sink_port),
        PJ_WEBHOOK_URL=f"http://127.0.0.1:{sink_port}/hook")
    yield env
    down = await asyncio.create_subprocess_exec("make", "-s", "down", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.DEVNULL)
    await asyncio.wait_for(down.wait(), 60)
    await delete_topology(amqp_url, Topology(prefix))
    await asyncio.to_thread(remove, prefix)


def assert_each_service_is_its_own_broker_user(up_env: dict[str, str]) -> None:
    """Each process connected as its own user (made by `make up`, its URL kept 0600), none with a password
    on its command line."""
    users_file = Path(up_env["PJ_RUN_DIR"]) / "broker-users.env"
    assert users_file.stat().st_mode & 0o777 == 0o600
    prefix = up_env["PJ_AMQP_PREFIX"]
    listed = subprocess.run(["rabbitmqctl", "-q", "list_connections", "user"], capture_output=True, text=True,
                            timeout=60, check=True).stdout
    users = {line.strip() for line in listed.splitlines() if line.startswith(f"{prefix}-")}
    assert {f"{prefix}-{s}" for s in ("approvals", "dispatcher", "gateway", "notifier")} <= users
    gateway_pid = (Path(up_env["PJ_RUN_DIR"]) / "gateway.pid").read_text().strip()
    assert "amqp://" not in Path(f"/proc/{gateway_pid}/cmdline").read_text(errors="replace")


def make_up(env: dict[str, str]) -> None:
    result = subprocess.run(["make", "-s", "up"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=100, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_make_up_serves_metrics_connects_each_service_as_its_own_broker_user_and_keeps_the_previous_logs(
        up_env: dict[str, str]) -> None:
    logs = Path(up_env["PJ_RUN_DIR"]) / "logs"
    make_up(up_env)
    with httpx.Client(timeout=10, trust_env=False) as client:
        for key, metric in (("PJ_APPROVALS_METRICS_PORT", "approval_pending_gauge"),
                            ("PJ_DISPATCHER_METRICS_PORT", "dispatch_orders_in_flight")):
            r = client.get(f"http://127.0.0.1:{up_env[key]}/metrics")
            assert r.status_code == 200 and metric in r.text, key
    first = {name: (logs / f"{name}.log").read_text() for name in ("gateway", "approvals", "dispatcher-1")}
    assert all(first.values()), "every process logged something"
    assert_each_service_is_its_own_broker_user(up_env)

    make_up(up_env)  # a second `make up` stops the first and starts over
    for name, text in first.items():
        kept = logs / f"{name}.log.1"
        assert kept.is_file(), f"the previous run's {name}.log was lost"
        assert kept.read_text().startswith(text), name
        assert (logs / f"{name}.log").read_text(), f"{name}.log of the new run"
    assert not list(logs.glob("*.log.1.1")), "one generation is kept, not renamed twice"
