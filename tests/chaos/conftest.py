"""The chaos suite's backends (a private PostgreSQL cluster and RabbitMQ node, started once and removed
afterwards), its sizes, and its table: printed at the end of the run and written as JSON.

`make chaos` runs every scenario with PJ_CHAOS_LIFECYCLES=1000 and PJ_CHAOS_ALL=1; `make test` runs the
short version (50 lifecycles) of the scenarios in `test_chaos.IN_MAKE_TEST`. PJ_CHAOS_REPORT names the
JSON file (default .run/chaos-report.json).
"""

import os
from collections.abc import Iterator

import pytest

from tests.support.backends import PrivatePostgres, PrivateRabbit, missing_binaries

from .audit import RESULTS, table, write_report
from .harness import Backends
from .scenarios import current_size, run_all


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from .test_chaos import IN_MAKE_TEST

    s = current_size()
    budget = s.lifecycles + 4 * s.lifecycle_timeout_s + 120  # a safety net: scenarios bound their own waits
    for item in items:
        if item.get_closest_marker("chaos") is None:
            continue
        item.add_marker(pytest.mark.timeout(budget))
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("name") if callspec is not None else None
        if name not in IN_MAKE_TEST and not run_all():
            item.add_marker(pytest.mark.skip(
                reason="runs under `make chaos` (the short version in `make test` takes one scenario of each kind)"))


@pytest.fixture(scope="session")
def backends() -> Iterator[Backends]:
    why = missing_binaries()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    pg, mq = PrivatePostgres(), PrivateRabbit()
    try:
        pg.init()
        mq.start()
        yield Backends(pg=pg, mq=mq)
    finally:
        mq.remove()
        pg.remove()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    path = write_report(RESULTS, current_size().__dict__)
    terminalreporter.write_sep("=", "chaos")
    terminalreporter.write_line(table(RESULTS))
    terminalreporter.write_line(f"(JSON: {path})")
