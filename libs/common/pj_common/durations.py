"""Durations as the catalog writes them: seconds, or strings like "90s", "30m", "48h", "7d"."""

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(value: Any) -> Any:
    """`value` in seconds when it is a duration string; other values are left to the field's checks."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 48h, not a boolean")
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)
        if not match:
            raise ValueError(f"invalid duration {value!r}: use seconds or a number with s, m, h or d")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


# A positive, finite number of seconds, written either way.
Duration = Annotated[float, BeforeValidator(seconds), Field(gt=0, allow_inf_nan=False)]
