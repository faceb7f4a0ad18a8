"""The one back-off rule (pj_common.backoff): full jitter under a doubling bound, a hint winning."""

import random
from collections.abc import Iterator

import pytest

from pj_common.backoff import backoff_s


@pytest.fixture
def _seeded() -> Iterator[None]:
    state = random.getstate()
    random.seed(2026)
    yield
    random.setstate(state)


@pytest.mark.parametrize(("attempt", "bound"), [(0, 0.1), (1, 0.1), (2, 0.2), (3, 0.4), (7, 6.4), (8, 10.0),
                                                (50, 10.0)])
def test_draws_spread_over_the_whole_doubling_bound(attempt: int, bound: float, _seeded: None) -> None:
    samples = [backoff_s(attempt, base=0.1, cap=10.0) for _ in range(2000)]
    assert all(0.0 <= s <= bound for s in samples)
    assert min(samples) < bound * 0.1
    assert max(samples) > bound * 0.9


@pytest.mark.parametrize(("hint", "expected"), [(0.0, 0.0), (2.5, 2.5), (10.0, 10.0), (99.0, 10.0), (-3.0, 0.0)])
def test_a_hint_wins_bounded_by_the_cap(hint: float, expected: float) -> None:
    assert backoff_s(1, base=0.1, cap=10.0, hint=hint) == expected
    assert backoff_s(30, base=0.1, cap=10.0, hint=hint) == expected


def test_a_hint_may_have_a_cap_of_its_own() -> None:
    assert backoff_s(1, base=0.1, cap=10.0, hint=25.0, hint_cap=30.0) == 25.0
    assert backoff_s(1, base=0.1, cap=10.0, hint=45.0, hint_cap=30.0) == 30.0


def test_the_hint_cap_leaves_the_jittered_bound_alone(_seeded: None) -> None:
    assert all(backoff_s(20, base=0.1, cap=10.0, hint_cap=30.0) <= 10.0 for _ in range(500))
