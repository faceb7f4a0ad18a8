"""`--payload`: inline JSON, `@file.json`, or `@-` for standard input; always a JSON object."""

import json
import sys
from pathlib import Path
from typing import Any, TextIO


class PayloadError(ValueError):
    """The payload cannot be used; the message says why (a usage error)."""


def read_payload(value: str | None, *, stdin: TextIO | None = None) -> dict[str, Any]:
    """The payload object `value` names; `{}` when none is given."""
    if value is None or value == "":
        return {}
    if value.startswith("@"):
        source = value[1:]
        text, where = _read_source(source, stdin or sys.stdin)
    else:
        text, where = value, "--payload"
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"{where}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if not isinstance(parsed, dict):
        raise PayloadError(f"{where}: the payload must be a JSON object, not {type(parsed).__name__}")
    return parsed


def _read_source(source: str, stdin: TextIO) -> tuple[str, str]:
    if source == "-":
        return stdin.read(), "standard input"
    if not source:
        raise PayloadError("--payload @: name a file after @ (or @- for standard input)")
    try:
        return Path(source).read_text(encoding="utf-8"), source
    except FileNotFoundError:
        raise PayloadError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PayloadError(f"{source}: cannot read it: {exc}") from exc
