"""The one back-off rule of the system: exponential with full jitter, a server's hint winning."""

import random


def backoff_s(
    attempt: int, *, base: float, cap: float, hint: float | None = None, hint_cap: float | None = None
) -> float:
    """Seconds to wait before try number `attempt + 1` (attempt counts from 1).

    Full jitter (a uniform draw below the exponential bound) keeps many retrying clients from
    arriving together; a server's own Retry-After (`hint`) wins, bounded by `hint_cap` (default `cap`).
    """
    if hint is not None:
        return max(0.0, min(hint, cap if hint_cap is None else hint_cap))
    return random.uniform(0, min(cap, base * 2 ** max(attempt - 1, 0)))
