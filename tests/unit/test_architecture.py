"""Rules of the code base that keep the services apart and the contract visible."""

import ast
from pathlib import Path

import httpx
import pytest

from pj_common.connectors import CONNECTOR_OPERATIONS
from pj_common.schemas import schemas
from pj_dispatcher.connectors.registry import build_connectors
from pj_dispatcher.settings import DispatcherSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PACKAGES = {"pj_gateway", "pj_approvals", "pj_dispatcher", "pj_notifier"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _sources(pattern: str) -> list[Path]:
    return sorted(ROOT.glob(pattern))


@pytest.mark.parametrize("service", sorted(SERVICE_PACKAGES))
def test_services_never_import_each_other(service: str) -> None:
    files = _sources(f"services/*/{service}/**/*.py")
    assert files, service
    for path in files:
        others = (_imports(path) & SERVICE_PACKAGES) - {service}
        assert not others, f"{path.relative_to(ROOT)} imports {others}: services share only libs/common"


def test_common_imports_no_service() -> None:
    for path in _sources("libs/common/pj_common/**/*.py"):
        assert not _imports(path) & SERVICE_PACKAGES, path


def test_only_the_approvals_service_talks_to_the_database() -> None:
    """Approvals owns the approvals' state; the notifier keeps its own tables, all in its store.py."""
    for path in _sources("services/*/pj_*/**/*.py") + _sources("libs/common/pj_common/**/*.py"):
        if "psycopg" in _imports(path):
            notifier_store = path.parent.name == "pj_notifier" and path.name == "store.py"
            assert path.parent.name == "pj_approvals" or notifier_store, f"{path.relative_to(ROOT)} imports psycopg"


def test_sql_statements_live_in_store_py() -> None:
    for path in _sources("services/approvals/pj_approvals/*.py"):
        if path.name == "store.py":
            continue
        text = path.read_text()
        for keyword in ("SELECT ", "UPDATE approvals", "INSERT INTO", "DELETE FROM"):
            assert keyword not in text, f"{path.name} contains SQL ({keyword.strip()}): it belongs in store.py"


def test_notifier_sql_statements_live_in_its_store_py() -> None:
    files = [p for p in _sources("services/notifier/pj_notifier/**/*.py") if p.name != "store.py"]
    assert files
    for path in files:
        text = path.read_text()
        for keyword in ("SELECT ", "UPDATE notifier", "INSERT INTO", "DELETE FROM", "CREATE TABLE"):
            assert keyword not in text, f"{path.name} contains SQL ({keyword.strip()}): it belongs in store.py"


@pytest.mark.parametrize("name", sorted(schemas()))
def test_contract_schemas_match_the_committed_files(name: str) -> None:
    committed = ROOT / "docs" / "schemas" / name
    assert committed.exists(), f"run `make schemas` and commit docs/schemas/{name}"
    assert committed.read_text() == schemas()[name], (
        f"the message contract changed: run `make schemas`, review and commit docs/schemas/{name}")


async def test_dispatcher_has_exactly_the_connectors_the_catalog_may_name() -> None:
    async with httpx.AsyncClient() as client:
        assert set(build_connectors(DispatcherSettings(env="dev"), client)) == set(CONNECTOR_OPERATIONS)


# Paths whose tests belong in tests/ops (the deployment files), however a test spells them.
OPS_FILES = {"ops", "docker-compose.yml", "Dockerfile", "Makefile"}


def _reads_ops_files(path: Path) -> bool:
    """`ROOT / "ops"`-style path joins or "ops/..." strings in a test module."""
    for node in ast.walk(ast.parse(path.read_text())):
        joined = (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
                  and isinstance(node.right, ast.Constant) and node.right.value in OPS_FILES)
        spelled = (isinstance(node, ast.Constant) and isinstance(node.value, str)
                   and node.value.startswith(("ops/", "docker-compose.yml", "Dockerfile")))
        if joined or spelled:
            return True
    return False


def test_tests_of_ops_files_live_in_tests_ops() -> None:
    elsewhere = [path.relative_to(ROOT) for path in _sources("tests/**/*.py")
                 if path.parent.name != "ops" and path != Path(__file__).resolve() and _reads_ops_files(path)]
    assert not elsewhere, f"tests of ops/, Compose, the Dockerfile or the Makefile belong in tests/ops: {elsewhere}"
