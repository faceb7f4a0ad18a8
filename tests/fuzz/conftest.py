"""A real system for the fuzzer: approvals, a dispatcher and the gateway as subprocesses, on a database and
broker prefix of their own, with a local webhook receiver."""

import uuid
from collections.abc import AsyncIterator

import pytest

from pj_common.broker_access import Service
from tests.support.system import (
    System,
    SystemSecrets,
    free_port,
    fresh_database,
    running_system,
    service_env,
)
from tests.support.webhook_sink import serving_sink

SECRET = "fuzz-jwt-secret-0123456789abcdef0123456789"
SIGNING_KEY = "fuzz-dispatch-signing-key-0123456789abcdef"
WEBHOOK_SECRET = "fuzz-webhook-secret"
METRICS_TOKEN = "fuzz-metrics-token"
TENANT = "default"  # the shipped catalog's tenant


@pytest.fixture(scope="session")
async def fuzz_system(pg_admin_url: str, amqp_url: str, broker_users: dict[Service, str],
                      tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    prefix = f"pjf-{uuid.uuid4().hex[:10]}"
    port = free_port()
    with serving_sink(WEBHOOK_SECRET) as sink:
        async with fresh_database(pg_admin_url, "pj_fuzz") as database_url:
            env = service_env(
                database_url=database_url, amqp_url=amqp_url, prefix=prefix, port=port, webhook_url=sink.url,
                secrets=SystemSecrets(jwt=SECRET, signing_key=SIGNING_KEY, webhook=WEBHOOK_SECRET),
                PJ_METRICS_TOKEN=METRICS_TOKEN, PJ_DISPATCH_WAIT_S="1", PJ_LOG_LEVEL="WARNING",
                # The fuzzer sends thousands of requests a minute from one address and caller: the rate
                # limits would answer most of them 429 (which the spec documents) and hide the routes.
                PJ_RATE_LIMIT_PER_MIN="1000000", PJ_AUTH_FAILURES_PER_MIN="1000000")
            async with running_system(env, amqp_url=amqp_url, logdir=tmp_path_factory.mktemp("fuzz"),
                                      broker_users=broker_users) as system:
                yield system
