"""Structured JSON logs (pj_common.logging): one object per line, the scope and extra fields as keys."""

import json
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from pj_common.logging import JsonFormatter, configure_logging

if TYPE_CHECKING:
    from _typeshed import OptExcInfo


def _record(msg: str, *args: object, exc_info: "OptExcInfo | None" = None, **extra: object) -> logging.LogRecord:
    return logging.getLogger("pj.test").makeRecord("pj.test", logging.WARNING, __file__, 1, msg, args, exc_info,
                                                   extra=extra)


def test_a_record_is_one_json_object_with_its_scope_and_fields() -> None:
    line = JsonFormatter("approvals").format(_record("expired %d approvals", 3, scope="sweeper.expired",
                                                     approvalId="a-1"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["service"] == "approvals"
    assert entry["logger"] == "pj.test"
    assert entry["level"] == "warning"
    assert entry["msg"] == "expired 3 approvals"
    assert (entry["scope"], entry["approvalId"]) == ("sweeper.expired", "a-1")
    assert entry["ts"].endswith("+00:00")
    assert "exc" not in entry


def test_an_exception_is_rendered_and_odd_values_become_strings() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = _record("failed", exc_info=sys.exc_info(), scope="x.failed", when=object())
    entry = json.loads(JsonFormatter("gateway").format(record))
    assert "RuntimeError: boom" in entry["exc"]
    assert entry["when"].startswith("<object object")


@pytest.fixture
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_logging_sends_json_to_stderr_and_quiets_chatty_libraries(
        _restore_root: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("dispatcher", "debug")
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("aiormq").level == logging.ERROR
    assert logging.getLogger("httpx").level == logging.WARNING
    logging.getLogger("pj.test").info("hello", extra={"scope": "test.hello"})
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert (entry["service"], entry["msg"], entry["scope"]) == ("dispatcher", "hello", "test.hello")
