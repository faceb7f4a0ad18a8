"""docker-compose.yml and the Dockerfile agree with each other and with the workspace.

There is no Docker engine in the test environment, so the files are parsed, not run.
"""

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

APP_SERVICES = {"gateway", "approvals", "dispatcher", "migrate", "webhook-sink", "notifier", "broker-users"}
EXPECTED_SERVICES = APP_SERVICES | {"rabbitmq", "postgres"}
SERVICE_MODULES = {"gateway": "pj_gateway", "approvals": "pj_approvals", "dispatcher": "pj_dispatcher",
                   "migrate": "pj_approvals", "notifier": "pj_notifier"}
# Module -> the workspace member that provides it.
MODULE_DIRS = {"pj_gateway": "services/gateway", "pj_approvals": "services/approvals",
               "pj_dispatcher": "services/dispatcher", "pj_notifier": "services/notifier"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs


def argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def module_of(command: list[str]) -> str | None:
    """`python -m X ...` -> X."""
    if len(command) >= 3 and command[0] == "python" and command[1] == "-m":
        return command[2]
    return None


def env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {str(k): str(v) for k, v in environment.items()}


def test_expected_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= EXPECTED_SERVICES, f"missing: {EXPECTED_SERVICES - set(services)}"
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3.13-management")
    assert services["postgres"]["image"].startswith("postgres:16")
    for name in ("rabbitmq", "postgres"):
        assert "healthcheck" in services[name], f"{name} needs a healthcheck for depends_on"


def test_every_built_service_names_the_one_image(services: dict[str, dict[str, Any]]) -> None:
    built = {name: svc for name, svc in services.items() if "build" in svc}
    assert set(built) == APP_SERVICES
    for name, svc in built.items():
        context = svc["build"] if isinstance(svc["build"], str) else svc["build"].get("context", ".")
        assert (COMPOSE.parent / context / "Dockerfile").resolve() == DOCKERFILE, name
    images = {svc.get("image") for svc in built.values()}
    assert images == {"puddlejumper-gate:latest"}, f"built services name different images: {images}"


def test_dockerfile_builds_the_workspace(dockerfile: list[tuple[str, str]]) -> None:
    assert DOCKERFILE.is_file()
    assert dockerfile[0] == ("FROM", "python:3.11-slim")
    runs = [args for instruction, args in dockerfile if instruction == "RUN"]
    assert any("pip install" in r and "uv" in r for r in runs), "uv is installed with pip"
    assert any("uv sync --frozen --no-dev" in r and "--no-install" not in r for r in runs), \
        "the workspace itself is installed with uv sync --frozen --no-dev"
    copies = [args for instruction, args in dockerfile if instruction == "COPY"]
    assert ". ." in copies, "the whole workspace is copied"
    envs = " ".join(args for instruction, args in dockerfile if instruction == "ENV")
    assert re.search(r"PATH=/app/\.venv/bin:", envs)
    assert "PJ_GATEWAY_HOST=0.0.0.0" in envs
    workdirs = [args for instruction, args in dockerfile if instruction == "WORKDIR"]
    assert workdirs and workdirs[-1] == "/app", "the venv path /app/.venv assumes WORKDIR /app"


def test_dockerignore_keeps_what_the_services_need() -> None:
    ignore = ROOT / ".dockerignore"
    patterns = [p.strip().rstrip("/") for p in ignore.read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert ".venv" in patterns, "a host virtualenv must not be copied over the image's"
    for needed in ("libs", "services", "tests", "tests/support", "uv.lock", "pyproject.toml"):
        assert needed not in patterns, f".dockerignore drops {needed}"


def test_commands_run_workspace_modules(services: dict[str, dict[str, Any]],
                                        dockerfile: list[tuple[str, str]]) -> None:
    members = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]["members"]
    for name, module in SERVICE_MODULES.items():
        command = argv(services[name])
        assert module_of(command) == module, f"{name} runs {command}"
        assert MODULE_DIRS[module] in members, f"{module} is not installed by uv sync"
        assert (ROOT / MODULE_DIRS[module] / module / "__main__.py").is_file()
    assert argv(services["migrate"])[3:] == ["migrate"]
    # The image's default command is one of the same modules.
    cmd = [args for instruction, args in dockerfile if instruction == "CMD"]
    assert cmd, "the Dockerfile has a default CMD"
    default = yaml.safe_load(cmd[-1])
    assert module_of(default) in MODULE_DIRS


def test_webhook_sink_is_reachable_by_the_dispatchers(services: dict[str, dict[str, Any]]) -> None:
    command = argv(services["webhook-sink"])
    script = next(part for part in command if part.endswith("webhook_sink.py"))
    assert (ROOT / script).is_file()
    port = command[command.index("--port") + 1]
    target = urlsplit(env(services["dispatcher"])["PJ_WEBHOOK_URL"])
    assert (target.hostname, str(target.port)) == ("webhook-sink", port)
    assert env(services["dispatcher"])["PJ_WEBHOOK_ALLOW_PRIVATE"] == "1"
    sink_secret = env(services["webhook-sink"])["PJ_WEBHOOK_SECRET"]
    assert sink_secret == env(services["dispatcher"])["PJ_WEBHOOK_SECRET"], "the sink verifies signatures"


def test_dispatcher_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    dispatcher = services["dispatcher"]
    assert "container_name" not in dispatcher
    for port in dispatcher.get("ports", []):
        # "9000" publishes on a random host port; "9000:9000" or {published: 9000} collide when scaled.
        fixed = "published" in port if isinstance(port, dict) else ":" in str(port)
        assert not fixed, f"dispatcher publishes a fixed host port ({port}); --scale would collide"


def test_gateway_publishes_8080(services: dict[str, dict[str, Any]]) -> None:
    gateway = services["gateway"]
    assert any(str(p).endswith("8080:8080") for p in gateway.get("ports", []))
    assert env(gateway).get("PJ_GATEWAY_HOST", "0.0.0.0") == "0.0.0.0"


def test_services_share_prod_settings(services: dict[str, dict[str, Any]]) -> None:
    for name in ("gateway", "approvals", "dispatcher", "migrate", "notifier"):
        variables = env(services[name])
        assert variables["PJ_ENV"] == "prod", name
        if name != "migrate":  # the migrate job uses no broker, and gets no broker password
            assert urlsplit(variables["PJ_AMQP_URL"]).hostname == "rabbitmq", name
        else:
            assert "PJ_AMQP_URL" not in variables
        assert urlsplit(variables["PJ_DATABASE_URL"]).hostname == "postgres", name
    for name in ("gateway", "approvals", "migrate"):
        assert env(services[name])["PJ_JWT_SECRET"].startswith("${PJ_JWT_SECRET:?"), f"{name} must require the secret"
    secrets = {env(services[name])["PJ_JWT_SECRET"] for name in ("gateway", "approvals")}
    assert len(secrets) == 1, "gateway and approvals must verify tokens with the same secret"


def test_each_service_connects_as_its_own_broker_user(services: dict[str, dict[str, Any]]) -> None:
    """The user of each PJ_AMQP_URL is the service's own, with the password the broker-users job sets
    (the management plugin it uses is in the rabbitmq image)."""
    job = env(services["broker-users"])
    assert "management" in services["rabbitmq"]["image"]
    command = argv(services["broker-users"])
    assert command[:4] == ["python", "-m", "pj_common.broker_access", "apply"] and "--management-url" in command
    assert (ROOT / "libs" / "common" / "pj_common" / "broker_access.py").is_file()
    for name in ("approvals", "gateway", "dispatcher", "notifier"):
        url = env(services[name])["PJ_AMQP_URL"]
        assert urlsplit(url).username == f"pj-{name}", name
        assert job[f"PJ_AMQP_URL_{name.upper()}"] == url, name
    assert urlsplit(job["PJ_AMQP_URL"]).username == "pj"  # the administrator creates the users


def test_the_dispatcher_gets_no_token_settings(services: dict[str, dict[str, Any]]) -> None:
    """It talks to hostile upstream servers and verifies no token: a JWT secret there could mint admin."""
    leaked = sorted(name for name in env(services["dispatcher"]) if name.startswith("PJ_JWT"))
    assert not leaked, f"the dispatcher must not receive {leaked}"
    assert not [name for name in env(services["notifier"]) if name.startswith("PJ_JWT")], "nor the notifier"


def test_startup_order(services: dict[str, dict[str, Any]]) -> None:
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["approvals"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("approvals", "gateway", "dispatcher", "notifier"):
        assert services[name]["depends_on"]["rabbitmq"]["condition"] == "service_healthy", name
    # Each connects as its own broker user, which the broker-users job creates first.
    for name in ("approvals", "gateway", "dispatcher", "notifier"):
        assert services[name]["depends_on"]["broker-users"]["condition"] == "service_completed_successfully", name
    assert services["broker-users"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    # The notifier keeps its own tables in the database the migrate job made ready.
    assert services["notifier"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
