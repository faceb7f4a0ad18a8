"""pj_client.events: topic patterns as the broker matches them, and redelivered events seen once."""

import pytest

from pj_client.events import RecentIds, topic_matches


@pytest.mark.parametrize(("pattern", "key", "expected"), [
    ("approval.#", "approval.created", True),
    ("approval.#", "approval.dispatch.completed", True),
    ("#", "approval.decided", True),
    ("approval.*", "approval.decided", True),
    ("approval.*", "approval.dispatch.failed", False),
    ("approval.dispatch.*", "approval.dispatch.failed", True),
    ("approval.dispatch.*", "approval.decided", False),
    ("approval.decided", "approval.decided", True),
    ("approval.decided", "approval.created", False),
    ("approval.#.failed", "approval.dispatch.failed", True),
    ("approval.#.failed", "approval.failed", True),
    ("*.dispatch.#", "approval.dispatch.started", True),
    ("approval", "approval.created", False),
])
def test_topic_patterns(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


def test_recent_ids_drop_repeats_and_forget_the_oldest() -> None:
    seen = RecentIds(size=2)
    assert [seen.first_time(i) for i in ("a", "b", "a", "c")] == [True, True, False, True]
    assert seen.first_time("a")  # forgotten: only the last two are kept
    assert not seen.first_time("c")
