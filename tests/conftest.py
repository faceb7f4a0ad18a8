"""Fixtures for the real backends: a fresh PostgreSQL database and a unique RabbitMQ prefix per run.

PJ_TEST_DATABASE_URL / PJ_TEST_AMQP_URL point at the servers (default: this machine's). If one is
unreachable the tests that need it are skipped locally but fail when CI is set. With
PJ_TEST_CONTAINERS=1 and a Docker engine, testcontainers starts both instead.
"""

import asyncio
import gc
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest

from pj_common.broker_access import Service, apply, remove
from pj_common.topology import Topology
from tests.support.system import delete_topology, fresh_database

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def _require(url: str, port: int, what: str) -> None:
    if _reachable(url, port):
        return
    message = f"{what} is not reachable at {url}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: the real service is required)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def _containers() -> Iterator[dict[str, str]]:
    """Backends from testcontainers when asked for (needs a Docker engine), else from the environment."""
    if os.environ.get("PJ_TEST_CONTAINERS") != "1":
        yield {}
        return
    from testcontainers.postgres import PostgresContainer
    from testcontainers.rabbitmq import RabbitMqContainer

    with PostgresContainer("postgres:16", driver=None) as pg, RabbitMqContainer("rabbitmq:3.13") as mq:
        params = mq.get_connection_params()
        yield {
            "pg": pg.get_connection_url(),
            "amqp": f"amqp://guest:guest@{params.host}:{params.port}/",
        }


@pytest.fixture(scope="session")
def pg_admin_url(_containers: dict[str, str]) -> str:
    url = _containers.get("pg") or os.environ.get("PJ_TEST_DATABASE_URL", DEFAULT_PG)
    _require(url, 5432, "PostgreSQL")
    return url


@pytest.fixture(scope="session")
def amqp_url(_containers: dict[str, str]) -> str:
    url = _containers.get("amqp") or os.environ.get("PJ_TEST_AMQP_URL", DEFAULT_AMQP)
    _require(url, 5672, "RabbitMQ")
    return url


# Every prefix the tests give a system or a topology (pjt-, pje-, pjz-, ... and 10 hex digits).
TEST_PREFIXES = "pj[a-z]*-[0-9a-f]+"


@pytest.fixture(scope="session")
def broker_users(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Service, str]]:
    """One RabbitMQ user per service, as `make run` creates them, for every test prefix; each service's
    AMQP URL. Made with rabbitmqctl (which must manage the broker at `amqp_url`), removed afterwards."""
    if shutil.which("rabbitmqctl") is None or os.environ.get("PJ_TEST_CONTAINERS") == "1":
        message = "rabbitmqctl for the broker under test is needed to create the services' users"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: least privilege on the broker must be tested)")
        pytest.skip(message)
    user_prefix = f"pjtest-{uuid.uuid4().hex[:8]}"  # a run of its own: two test runs never share a password
    urls = apply(Topology("pjtest"), amqp_url, user_prefix=user_prefix, prefix_pattern=TEST_PREFIXES,
                 users_file=tmp_path_factory.mktemp("broker-users") / "broker-users.env")
    yield urls
    remove(user_prefix)


@pytest.fixture(scope="session")
async def database_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A migrated database of its own for this test session, dropped afterwards."""
    async with fresh_database(pg_admin_url) as url:
        yield url


@pytest.fixture
async def topology(amqp_url: str) -> AsyncIterator[Topology]:
    """Broker names no other test (or running system) shares; deleted afterwards."""
    topo = Topology(prefix=f"pjt-{uuid.uuid4().hex[:10]}")
    yield topo
    await asyncio.wait_for(delete_topology(amqp_url, topo), 30)


@pytest.fixture(scope="module", autouse=True)
async def _collect_garbage_on_the_loop() -> AsyncIterator[None]:
    """After each module, collect its garbage while the test loop runs.

    An aio-pika connection dropped unclosed (a connect cancelled halfway, a failed test's fixture) closes
    itself when collected by scheduling its close on the running loop; collected later, during a test
    with no running loop, that close is never awaited, and pytest (warnings are errors here) fails that
    unrelated test. Collecting here keeps the failure where it belongs, or gone.
    """
    yield
    gc.collect()
    await asyncio.sleep(0)  # let the closes just scheduled start
