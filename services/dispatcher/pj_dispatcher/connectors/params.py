"""A step's params, read the same way by every connector: a missing or malformed param is a permanent
`invalid_params` that names it, raised before any request is made."""

from typing import Any

from .base import ConnectorError, permanent


def _invalid(what: str, name: str, wanted: str) -> ConnectorError:
    return permanent("invalid_params", f"{what}: param {name!r} is required ({wanted})")


def required_str(params: dict[str, Any], name: str, *, what: str, wanted: str = "a non-empty string") -> str:
    """`params[name]`, a string with something besides blanks in it."""
    value = params.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _invalid(what, name, wanted)
    return value


def optional_str(params: dict[str, Any], name: str, *, what: str) -> str | None:
    """`params[name]` when given (absent, null and "" count as not given), then a non-empty string."""
    if params.get(name) in (None, ""):
        return None
    value = params[name]
    if not isinstance(value, str) or not value.strip():
        raise permanent("invalid_params", f"{what}: param {name!r} must be a non-empty string")
    return value


def required_value(params: dict[str, Any], name: str, *, what: str) -> Any:
    """`params[name]`, any JSON value but null."""
    if params.get(name) is None:
        raise _invalid(what, name, "any value but null")
    return params[name]


def optional_object(params: dict[str, Any], name: str, *, what: str) -> dict[str, Any] | None:
    """`params[name]` when given, then a JSON object."""
    value = params.get(name)
    if value is not None and not isinstance(value, dict):
        raise permanent("invalid_params", f"{what}: param {name!r} must be an object")
    return value


def required_object(params: dict[str, Any], name: str, *, what: str) -> dict[str, Any]:
    """`params[name]`, a JSON object."""
    value = optional_object(params, name, what=what)
    if value is None:
        raise _invalid(what, name, "an object")
    return value


def optional_list(params: dict[str, Any], name: str, *, what: str) -> list[Any] | None:
    """`params[name]` when given, then a JSON array."""
    value = params.get(name)
    if value is not None and not isinstance(value, list):
        raise permanent("invalid_params", f"{what}: param {name!r} must be a list")
    return value
