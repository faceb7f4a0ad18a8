"""The event relay's rule for gaps in event ids."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pj_approvals.relay import publishable

NOW = datetime(2026, 1, 1, tzinfo=UTC)
GRACE = timedelta(seconds=5)


@dataclass
class Ev:
    id: int
    occurred_at: datetime


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def ids(rows: list[Ev]) -> list[int]:
    return [r.id for r in rows]


def test_contiguous_events_are_all_published() -> None:
    rows = [Ev(11, ago(0)), Ev(12, ago(0)), Ev(13, ago(0))]
    assert ids(publishable(10, rows, now=NOW, grace=GRACE)) == [11, 12, 13]


def test_a_young_gap_stops_the_batch_before_it() -> None:
    # id 12 may still commit: publishing 13 and moving past 12 would lose it.
    rows = [Ev(11, ago(0)), Ev(13, ago(1)), Ev(14, ago(1))]
    assert ids(publishable(10, rows, now=NOW, grace=GRACE)) == [11]


def test_a_gap_right_after_the_cursor_waits_too() -> None:
    assert publishable(10, [Ev(12, ago(1))], now=NOW, grace=GRACE) == []


def test_an_old_gap_is_skipped() -> None:
    # The statement that took id 12 failed long ago: sequences leave such holes for good.
    rows = [Ev(11, ago(30)), Ev(13, ago(10)), Ev(15, ago(1))]
    assert ids(publishable(10, rows, now=NOW, grace=GRACE)) == [11, 13]


def test_nothing_new_publishes_nothing() -> None:
    assert publishable(10, [], now=NOW, grace=GRACE) == []
