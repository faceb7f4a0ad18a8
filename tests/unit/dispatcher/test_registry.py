"""The connectors a dispatcher builds (pj_dispatcher.connectors.registry, .base): exactly the catalog's
connectors and operations, one way of picking an operation and of scrubbing secrets."""

from collections.abc import Mapping

import httpx
import pytest

from pj_common.connectors import CONNECTOR_OPERATIONS
from pj_common.messages import PlanStep
from pj_dispatcher.connectors.base import ApiConnector, ConnectorError, Operation, StepContext, StepOutput, retryable
from pj_dispatcher.connectors.registry import build_connectors, check_operations
from pj_dispatcher.settings import DispatcherSettings


async def test_each_connector_performs_exactly_the_catalogs_operations() -> None:
    async with httpx.AsyncClient() as client:
        connectors = build_connectors(DispatcherSettings(env="dev"), client)
    assert set(connectors) == set(CONNECTOR_OPERATIONS)
    for name, connector in connectors.items():
        assert isinstance(connector, ApiConnector)
        assert frozenset(connector.operations()) == CONNECTOR_OPERATIONS[name], name


class Echo(ApiConnector):
    """Raises an error that quotes its secret, as an API echoing a request might."""

    name = "webhook"

    def __init__(self, operations: tuple[str, ...] = ("post",)) -> None:
        self._names = operations

    def operations(self) -> Mapping[str, Operation]:
        return dict.fromkeys(self._names, self._fail)

    def missing_settings(self) -> list[str]:
        return []

    def secrets(self) -> tuple[str | None, ...]:
        return ("tok-123", None)

    async def _fail(self, ctx: StepContext) -> StepOutput:
        raise retryable("http_retryable", "proxy said: Authorization: Bearer tok-123")


def test_a_connector_that_differs_from_the_catalog_is_refused() -> None:
    check_operations(Echo())
    with pytest.raises(RuntimeError, match="CONNECTOR_OPERATIONS"):
        check_operations(Echo(("post", "delete")))
    with pytest.raises(RuntimeError, match="CONNECTOR_OPERATIONS"):
        check_operations(Echo(()))


def ctx(operation: str) -> StepContext:
    return StepContext(approval_id="a", tenant_id="t", action_id="x",
                       step=PlanStep(step_id="s", connector="webhook", operation=operation))


async def test_errors_leave_a_connector_with_its_secrets_scrubbed() -> None:
    with pytest.raises(ConnectorError) as info:
        await Echo().run(ctx("post"))
    assert info.value.message == "proxy said: Authorization: Bearer ***" and "tok-123" not in str(info.value)


async def test_an_unknown_operation_is_permanent_and_names_the_known_ones() -> None:
    with pytest.raises(ConnectorError) as info:
        await Echo(("post", "put")).run(ctx("delete"))
    assert (info.value.code, info.value.retryable) == ("unsupported_operation", False)
    assert "'delete'" in info.value.message and "post, put" in info.value.message
