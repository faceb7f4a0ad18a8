"""Reading a step's params (pj_dispatcher.connectors.params): a bad one is `invalid_params` naming it."""

from collections.abc import Callable
from typing import Any

import pytest

from pj_dispatcher.connectors.base import ConnectorError
from pj_dispatcher.connectors.params import (
    optional_list,
    optional_object,
    optional_str,
    required_object,
    required_str,
    required_value,
)


def invalid(read: Callable[..., Any], params: dict[str, Any]) -> ConnectorError:
    with pytest.raises(ConnectorError) as info:
        read(params, "p", what="api op")
    assert (info.value.code, info.value.retryable) == ("invalid_params", False)
    assert info.value.message.startswith("api op: param 'p'")
    return info.value


def test_required_str() -> None:
    assert required_str({"p": "x"}, "p", what="api op") == "x"
    for params in ({}, {"p": None}, {"p": ""}, {"p": "  "}, {"p": 3}):
        invalid(required_str, params)
    assert "(a channel ID)" in str(invalid(lambda p, n, what: required_str(p, n, what=what, wanted="a channel ID"),
                                           {}))


def test_optional_str() -> None:
    assert optional_str({}, "p", what="api op") is None
    assert optional_str({"p": ""}, "p", what="api op") is None
    assert optional_str({"p": "x"}, "p", what="api op") == "x"
    invalid(optional_str, {"p": 3})
    invalid(optional_str, {"p": " "})


def test_required_value_takes_anything_but_null() -> None:
    assert required_value({"p": 0}, "p", what="api op") == 0
    assert required_value({"p": ""}, "p", what="api op") == ""
    invalid(required_value, {"p": None})


def test_objects_and_lists() -> None:
    assert optional_object({}, "p", what="api op") is None
    assert required_object({"p": {"a": 1}}, "p", what="api op") == {"a": 1}
    assert optional_list({"p": [1]}, "p", what="api op") == [1]
    invalid(optional_object, {"p": "a=1"})
    invalid(required_object, {})
    invalid(optional_list, {"p": {"a": 1}})
