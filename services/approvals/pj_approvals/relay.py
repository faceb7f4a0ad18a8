"""Which stored events the relay may publish now: pure, so the gap rule is tested on its own.

Event ids come from a sequence, and a statement that took id 100 may commit after the one that took
101. Publishing 101 and moving the cursor past 100 would lose 100 for good. So the relay stops before a
gap while the event after it is young (the missing one may still commit), and skips the gap once it
is older than the grace period (its statement failed: sequences leave such holes)."""

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol, TypeVar


class Numbered(Protocol):
    id: int
    occurred_at: datetime


E = TypeVar("E", bound=Numbered)


def publishable(last_id: int, rows: Sequence[E], *, now: datetime, grace: timedelta) -> list[E]:
    """The leading run of `rows` (ordered by id, all after `last_id`) safe to publish now."""
    ready: list[E] = []
    expected = last_id + 1
    for row in rows:
        if row.id != expected and now - row.occurred_at < grace:
            break
        ready.append(row)
        expected = row.id + 1
    return ready
