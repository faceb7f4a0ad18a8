"""The Kubernetes manifests in ops/k8s agree with the code, docker-compose.yml and each other.

There is no cluster in the test environment, so the manifests are parsed, not applied.
"""

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from pj_approvals.settings import ApprovalsSettings
from pj_common.broker_access import Service, url_key
from pj_common.settings import MIN_SECRET_LENGTH, CommonSettings
from pj_common.topology import Topology
from pj_dispatcher.settings import DispatcherSettings
from pj_gateway.settings import GatewaySettings
from pj_notifier.settings import NotifierSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "ops" / "k8s"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
# The real Secret an operator makes from the example lives next to it (git-ignored): never read it.
REAL_SECRET = K8S / "secret.yaml"
SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (CommonSettings, GatewaySettings, ApprovalsSettings,
                                                    DispatcherSettings, NotifierSettings)
PLACEHOLDER = "REPLACE_ME"

# What each workload runs, and the settings it cannot start without (PJ_ENV=prod requires a token key of the
# processes that verify tokens; the dispatcher verifies none).
EXPECTED_COMMANDS = {
    "gateway": ["python", "-m", "pj_gateway"],
    "approvals": ["python", "-m", "pj_approvals"],
    "dispatcher": ["python", "-m", "pj_dispatcher"],
    "migrate": ["python", "-m", "pj_approvals", "migrate"],
    "notifier": ["python", "-m", "pj_notifier"],
}
REQUIRED_SECRETS = {
    "gateway": {"PJ_JWT_SECRET", "PJ_AMQP_URL"},
    "approvals": {"PJ_JWT_SECRET", "PJ_AMQP_URL", "PJ_DATABASE_URL"},
    "dispatcher": {"PJ_DISPATCH_SIGNING_KEY", "PJ_AMQP_URL"},
    "migrate": {"PJ_JWT_SECRET", "PJ_DATABASE_URL"},
    "notifier": {"PJ_AMQP_URL", "PJ_DATABASE_URL"},
}
# A URL that carries a password: scheme://user:password@host
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s@:]+:[^/\s@]+@", re.IGNORECASE)

Doc = dict[str, Any]


# --- the code's settings, read from the classes (nothing is instantiated) --------------------------


def env_names(name: str, field: Any) -> list[str]:
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    if isinstance(alias, str):
        return [alias]
    return [f"PJ_{name.upper()}"]


def settings_fields() -> dict[str, tuple[str, Any]]:
    """Environment name -> (field name, field) over every service's settings class."""
    fields: dict[str, tuple[str, Any]] = {}
    for cls in SETTINGS_CLASSES:
        for name, field in cls.model_fields.items():
            for env in env_names(name, field):
                fields[env] = (name, field)
    return fields


SETTINGS = settings_fields()
KNOWN = set(SETTINGS)
# Each service's broker URL (pj_common.broker_access): a Deployment reads its own as PJ_AMQP_URL.
BROKER_USERS = {"gateway": "PJ_AMQP_URL_GATEWAY", "approvals": "PJ_AMQP_URL_APPROVALS",
                "dispatcher": "PJ_AMQP_URL_DISPATCHER", "notifier": "PJ_AMQP_URL_NOTIFIER"}
SECRET_SETTINGS = {env for env, (_, field) in SETTINGS.items() if "SecretStr" in str(field.annotation)}
# Plain strings that embed credentials.
SENSITIVE = SECRET_SETTINGS | {"PJ_DATABASE_URL", "PJ_AMQP_URL", *BROKER_USERS.values()}
# Secrets may be given as a mounted file named by <ENV_NAME>_FILE (CommonSettings._secrets_from_files).
FILE_VARIANTS = {f"{env}_FILE" for env in SECRET_SETTINGS}


def test_settings_are_collected() -> None:
    # Guards the collection itself: a change in how fields map to variables must not empty these sets.
    assert {"PJ_ENV", "PJ_AMQP_PREFIX", "PJ_GATEWAY_PORT", "PJ_DATABASE_URL", "PJ_APPROVALS_METRICS_PORT",
            "PJ_DISPATCHER_METRICS_PORT", "PJ_DISPATCHER_CONCURRENCY", "GITHUB_DISPATCH_TOKEN"} <= KNOWN
    assert "PJ_CONCURRENCY" not in KNOWN and "PJ_GITHUB_TOKEN" not in KNOWN, "aliases replace the PJ_ name"
    assert {"PJ_JWT_SECRET", "PJ_WEBHOOK_SECRET", "GITHUB_DISPATCH_TOKEN", "MS_CLIENT_SECRET",
            "SLACK_BOT_TOKEN", "PJ_METRICS_TOKEN"} <= SECRET_SETTINGS


# --- the manifests -----------------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p != REAL_SECRET)


@pytest.fixture(scope="module")
def docs_by_file() -> dict[str, list[Doc]]:
    files = manifest_files()
    assert files, f"no manifests in {K8S}"
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d is not None] for p in files}


@pytest.fixture(scope="module")
def docs(docs_by_file: dict[str, list[Doc]]) -> list[Doc]:
    return [d for file_docs in docs_by_file.values() for d in file_docs]


def of_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    found = [d for d in docs if d["kind"] == kind]
    by_name = {d["metadata"]["name"]: d for d in found}
    assert len(by_name) == len(found), f"two {kind} objects share a name"
    return by_name


def workloads(docs: list[Doc]) -> dict[str, Doc]:
    return {**of_kind(docs, "Deployment"), **of_kind(docs, "Job")}


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def only_container(workload: Doc) -> Doc:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    container: Doc = containers[0]
    return container


def argv(container: Doc) -> list[str]:
    return [str(part) for part in [*container.get("command", []), *container.get("args", [])]]


def container_port(container: Doc, port: int | str) -> int:
    """A probe's or Service's port (number or name) as the container port it reaches."""
    ports = container.get("ports", [])
    if isinstance(port, str):
        matches = [p["containerPort"] for p in ports if p.get("name") == port]
        assert matches, f"no container port named {port!r}"
        return int(matches[0])
    assert any(p["containerPort"] == port for p in ports), f"{port} is not a container port"
    return port


def secret_refs(container: Doc) -> dict[str, Doc]:
    """Env name -> its secretKeyRef."""
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}


def walk_strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in walk_strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in walk_strings(item)]
    return [node] if isinstance(node, str) else []


@pytest.fixture(scope="module")
def config(docs: list[Doc]) -> dict[str, str]:
    configmaps = of_kind(docs, "ConfigMap")
    assert list(configmaps) == ["pj-config"]
    data: dict[str, str] = configmaps["pj-config"]["data"]
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings (quote numbers)"
    return data


@pytest.fixture(scope="module")
def secret(docs_by_file: dict[str, list[Doc]]) -> Doc:
    secrets = [d for d in docs_by_file["secret.example.yaml"] if d["kind"] == "Secret"]
    assert len(secrets) == 1
    return secrets[0]


def compose_image() -> str:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    images: set[str] = {svc["image"] for svc in compose["services"].values() if "build" in svc}
    assert len(images) == 1, f"docker-compose.yml builds several images: {images}"
    return images.pop()


def dockerfile_uid() -> int:
    match = re.search(r"useradd\b[^\n]*--uid\s+(\d+)", (ROOT / "Dockerfile").read_text())
    assert match, "the Dockerfile creates its user with a fixed --uid"
    return int(match.group(1))


# --- tests -------------------------------------------------------------------------------------------


def test_every_object_is_in_the_namespace(docs: list[Doc]) -> None:
    namespaces = of_kind(docs, "Namespace")
    assert list(namespaces) == ["puddlejumper"]
    for doc in docs:
        assert doc.get("apiVersion") and doc["metadata"].get("name"), doc
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "puddlejumper", f"{doc['kind']}/{doc['metadata']['name']}"


def test_expected_objects_exist(docs: list[Doc]) -> None:
    assert set(of_kind(docs, "Deployment")) == {"gateway", "approvals", "dispatcher", "notifier"}
    assert set(of_kind(docs, "Job")) == {"migrate"}
    assert set(of_kind(docs, "Service")) == {"gateway", "approvals", "dispatcher", "notifier"}
    assert len(of_kind(docs, "ScaledObject")) == 1
    assert len(of_kind(docs, "TriggerAuthentication")) == 1


def test_workloads_use_the_compose_image(docs: list[Doc]) -> None:
    image = compose_image()
    assert image == "puddlejumper-gate:latest"
    for name, workload in workloads(docs).items():
        for container in pod_spec(workload)["containers"]:
            assert container["image"] == image, f"{name} runs {container['image']}, compose builds {image}"


def test_commands_run_modules_of_the_repo(docs: list[Doc]) -> None:
    found = {name: argv(only_container(w)) for name, w in workloads(docs).items()}
    assert found == EXPECTED_COMMANDS
    for command in found.values():
        module = command[2]
        mains = list((ROOT / "services").glob(f"*/{module}/__main__.py"))
        assert len(mains) == 1, f"{module} has no __main__.py under services/"
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None
        assert Path(spec.origin).resolve().parent == mains[0].resolve().parent, f"{module} is not the repo's"


def test_configmap_holds_real_non_secret_settings(config: dict[str, str]) -> None:
    unknown = set(config) - KNOWN
    assert not unknown, f"ConfigMap keys no settings class reads: {sorted(unknown)}"
    leaked = set(config) & SENSITIVE
    assert not leaked, f"secrets belong in the Secret, not the ConfigMap: {sorted(leaked)}"
    assert config["PJ_ENV"] == "prod"
    for key in ("PJ_GATEWAY_HOST", "PJ_APPROVALS_METRICS_HOST", "PJ_DISPATCHER_METRICS_HOST"):
        assert config[key] == "0.0.0.0", f"{key}: other pods cannot reach 127.0.0.1"
    for key in ("PJ_GATEWAY_PORT", "PJ_APPROVALS_METRICS_PORT", "PJ_DISPATCHER_METRICS_PORT"):
        assert config[key].isdigit() and int(config[key]) > 0, key
    for key in ("PJ_GITHUB_API_URL", "PJ_GRAPH_API_URL", "PJ_GRAPH_LOGIN_URL", "PJ_SLACK_API_URL"):
        assert config[key].startswith("https://"), key


def test_containers_set_only_real_settings(docs: list[Doc], config: dict[str, str], secret: Doc) -> None:
    for name, workload in workloads(docs).items():
        container = only_container(workload)
        assert container.get("envFrom") == [{"configMapRef": {"name": "pj-config"}}], name
        for env in container.get("env", []):
            assert env["name"] in KNOWN | FILE_VARIANTS, f"{name} sets {env['name']}, which nothing reads"
    unknown = set(secret["stringData"]) - KNOWN - {url_key(service) for service in Service}
    assert not unknown, f"Secret keys no settings class reads: {sorted(unknown)}"


def test_secret_references_resolve(docs: list[Doc], secret: Doc) -> None:
    keys = set(secret["stringData"])
    for name, workload in workloads(docs).items():
        refs = secret_refs(only_container(workload))
        for env, ref in refs.items():
            assert ref["name"] == secret["metadata"]["name"], f"{name}: {env} reads Secret {ref['name']}"
            assert ref["key"] in keys, f"{name}: {env} reads key {ref['key']}, not in the Secret"
            own = BROKER_USERS[name] if env == "PJ_AMQP_URL" else env  # its own broker user's URL
            assert ref["key"] == own, f"{name}: {env} reads {ref['key']}"
        for env in REQUIRED_SECRETS[name]:
            assert env in refs, f"{name} cannot start without {env}"
            assert not refs[env].get("optional", False), f"{name}: {env} is required, not optional"


def test_the_dispatcher_gets_no_token_settings(docs: list[Doc], config: dict[str, str]) -> None:
    """It talks to hostile upstream servers and verifies no token: a JWT secret there could mint admin."""
    dispatcher = only_container(workloads(docs)["dispatcher"])
    leaked = sorted(env["name"] for env in dispatcher.get("env", []) if env["name"].startswith("PJ_JWT"))
    assert not leaked, f"the dispatcher must not receive {leaked}"
    notifier = only_container(workloads(docs)["notifier"])  # it calls Slack and webhooks, and verifies no token
    assert not [env["name"] for env in notifier.get("env", []) if env["name"].startswith("PJ_JWT")]
    # Every workload reads the ConfigMap: a token key there would reach the dispatcher too.
    assert not [key for key in config if key.startswith("PJ_JWT_SECRET")]


def test_gateway_probes_hit_health_on_the_container_port(docs: list[Doc], config: dict[str, str]) -> None:
    gateway = only_container(of_kind(docs, "Deployment")["gateway"])
    port = int(config["PJ_GATEWAY_PORT"])
    ready = gateway["readinessProbe"]
    assert ready["httpGet"]["path"] == "/health"
    assert container_port(gateway, ready["httpGet"]["port"]) == port
    # /health waits up to health_timeout_s for approvals before it answers "degraded".
    health_timeout = float(config.get("PJ_HEALTH_TIMEOUT_S", GatewaySettings.model_fields["health_timeout_s"].default))
    assert ready.get("timeoutSeconds", 1) > health_timeout, "the probe would give up before /health answers"
    live = gateway["livenessProbe"]
    # /health is 503 whenever the broker is away: restarting the gateway for that would not help.
    assert "tcpSocket" in live or live["httpGet"]["path"] != "/health"
    probe = live.get("tcpSocket") or live["httpGet"]
    assert container_port(gateway, probe["port"]) == port
    service = of_kind(docs, "Service")["gateway"]
    (service_port,) = service["spec"]["ports"]
    assert container_port(gateway, service_port["targetPort"]) == port == service_port["port"]


@pytest.mark.parametrize("name, port_key", [("approvals", "PJ_APPROVALS_METRICS_PORT"),
                                            ("dispatcher", "PJ_DISPATCHER_METRICS_PORT"),
                                            ("notifier", "PJ_NOTIFIER_METRICS_PORT")])
def test_metrics_are_exposed_by_a_headless_service(docs: list[Doc], config: dict[str, str],
                                                   name: str, port_key: str) -> None:
    container = only_container(of_kind(docs, "Deployment")[name])
    service = of_kind(docs, "Service")[name]
    assert service["spec"].get("clusterIP") == "None", f"{name}: headless, so each pod is scraped"
    (port,) = service["spec"]["ports"]
    assert container_port(container, port["targetPort"]) == int(config[port_key]) == port["port"]


def test_selectors_match_pod_labels(docs: list[Doc]) -> None:
    deployments = of_kind(docs, "Deployment")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    for name, service in of_kind(docs, "Service").items():
        selector = service["spec"]["selector"].items()
        selected = [d for d, dep in deployments.items()
                    if selector <= dep["spec"]["template"]["metadata"]["labels"].items()]
        assert selected == [name], f"Service {name} selects {selected}"


def test_replicas(docs: list[Doc]) -> None:
    deployments = of_kind(docs, "Deployment")
    assert deployments["gateway"]["spec"]["replicas"] == 2
    assert deployments["approvals"]["spec"]["replicas"] == 2
    assert "replicas" not in deployments["dispatcher"]["spec"], "KEDA owns the dispatcher replica count"
    assert deployments["notifier"]["spec"]["replicas"] == 2


def test_keda_scales_the_dispatcher_on_the_dispatch_queue(docs: list[Doc], config: dict[str, str],
                                                          secret: Doc) -> None:
    (scaled,) = of_kind(docs, "ScaledObject").values()
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    dispatcher = of_kind(docs, "Deployment")[target["name"]]
    assert argv(only_container(dispatcher)) == EXPECTED_COMMANDS["dispatcher"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] == 10
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    meta = trigger["metadata"]
    assert meta["queueName"] == Topology(config["PJ_AMQP_PREFIX"]).dispatch == Topology("pj").dispatch
    assert meta["mode"] == "QueueLength"
    assert isinstance(meta["value"], str) and float(meta["value"]) > 0
    assert not {"host", "hostFromEnv"} & set(meta), "the broker URL comes from the TriggerAuthentication"
    auth = of_kind(docs, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "host"
    # The dispatcher's own URL: a passive look at the queue's length needs no permission.
    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "PJ_AMQP_URL_DISPATCHER")
    assert ref["key"] in secret["stringData"]


def test_dispatcher_grace_period_covers_a_step(docs: list[Doc], config: dict[str, str]) -> None:
    def setting(env: str) -> float:
        _name, field = SETTINGS[env]
        return float(config.get(env, field.default))

    attempts = setting("PJ_CONNECTOR_MAX_ATTEMPTS")
    worst_step = (attempts * (setting("PJ_CONNECT_TIMEOUT_S") + setting("PJ_READ_TIMEOUT_S"))
                  + (attempts - 1) * setting("PJ_CONNECTOR_RETRY_MAX_S"))
    grace = pod_spec(of_kind(docs, "Deployment")["dispatcher"])["terminationGracePeriodSeconds"]
    assert grace >= worst_step, f"grace period {grace}s < worst-case step {worst_step}s"
    resources = only_container(of_kind(docs, "Deployment")["dispatcher"])["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]


def test_containers_run_unprivileged(docs: list[Doc]) -> None:
    uid = dockerfile_uid()
    for name, workload in workloads(docs).items():
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == uid, f"{name}: not the image's user {uid}"
        # Service links would inject e.g. GATEWAY_PORT=tcp://...; a Service named pj-* would clash with PJ_*.
        assert pod.get("enableServiceLinks") is False, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name


def test_no_literal_secrets(docs_by_file: dict[str, list[Doc]], config: dict[str, str]) -> None:
    for file, file_docs in docs_by_file.items():
        if file == SECRET_EXAMPLE.name:
            continue
        for doc in file_docs:
            assert doc["kind"] != "Secret", f"{file}: a Secret outside the example template"
            for text in walk_strings(doc):
                assert not URL_WITH_PASSWORD.search(text), f"{file}: a URL with a password"
                assert PLACEHOLDER not in text, f"{file}: a placeholder outside the Secret template"
            if doc["kind"] in ("Deployment", "Job"):
                for container in pod_spec(doc)["containers"]:
                    for env in container.get("env", []):
                        if env["name"] in SENSITIVE:
                            assert "value" not in env and "valueFrom" in env, f"{file}: literal {env['name']}"


def test_secret_example_holds_only_placeholders(secret: Doc) -> None:
    assert "data" not in secret, "base64 data would hide whether a value is a placeholder"
    values = secret["stringData"]
    assert {"PJ_JWT_SECRET", "PJ_DATABASE_URL", "PJ_WEBHOOK_SECRET", "GITHUB_DISPATCH_TOKEN",
            "MS_CLIENT_SECRET", "SLACK_BOT_TOKEN", *BROKER_USERS.values()} <= set(values)
    for key, value in values.items():
        assert PLACEHOLDER in value, f"{key} holds something other than a placeholder"
    # A forgotten replacement must stop the services, not run them with a published key.
    assert len(values["PJ_JWT_SECRET"]) < MIN_SECRET_LENGTH
    ignored = (K8S / ".gitignore").read_text().split()
    assert REAL_SECRET.name in ignored, "the real Secret must be git-ignored"


def test_readme_names_existing_manifests() -> None:
    text = (K8S / "README.md").read_text()
    assert "kubectl apply -f namespace.yaml -f configmap.yaml -f secret.yaml -f migrate-job.yaml" in text
    named = set(re.findall(r"\b([\w.-]+\.yaml)\b", text)) - {REAL_SECRET.name}
    missing = {n for n in named if not (K8S / n).is_file() and not (ROOT / n).is_file()}
    assert not missing, f"README names files that do not exist: {sorted(missing)}"
    assert {p.name for p in manifest_files()} <= named | {SECRET_EXAMPLE.name}, "README misses a manifest"
    assert (ROOT / "ops" / "prometheus" / "prometheus.yml").is_file() and "ops/prometheus/prometheus.yml" in text
