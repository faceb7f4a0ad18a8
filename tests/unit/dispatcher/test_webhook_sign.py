"""Webhook signatures and retry back-off.

Covers pj_dispatcher.connectors.webhook.sign and pj_dispatcher.worker.backoff_s.
"""

import hashlib
import hmac
import random
import re
from collections.abc import Iterator

import pytest

from pj_dispatcher.connectors.webhook import sign
from pj_dispatcher.worker import backoff_s

# ---------------------------------------------------------------- sign


def _expected(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@pytest.mark.parametrize(
    ("secret", "timestamp", "body"),
    [
        ("pj-dev-webhook-secret", "1714564800",
         b'{"approvalId":"a","actionId":"notify.webhook","payload":{}}'),
        ("s", "0", b""),
        ("sécret-✓", "1714564800", '{"name":"Zoë"}'.encode()),
        ("k", "1700000000", bytes(range(256))),
    ],
    ids=["typical", "empty-body", "non-ascii-secret", "binary-body"],
)
def test_sign_matches_independent_hmac(secret: str, timestamp: str, body: bytes) -> None:
    signature = sign(secret, timestamp, body)
    assert signature == _expected(secret, timestamp, body)
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", signature)


def test_sign_known_vector() -> None:
    # Computed outside Python:
    #   printf '1714564800.{"hello":"world"}' | openssl dgst -sha256 -hmac 'pj-dev-webhook-secret'
    assert sign("pj-dev-webhook-secret", "1714564800", b'{"hello":"world"}') == (
        "sha256=c6dbbc44b1c026b6c253359e5a23585d098a9f34b9992f0211e320ca59492eb4"
    )


def test_sign_depends_on_every_input() -> None:
    base = sign("secret", "1714564800", b"body")
    assert sign("secret2", "1714564800", b"body") != base
    assert sign("secret", "1714564801", b"body") != base
    assert sign("secret", "1714564800", b"body ") != base
    # The "." separator matters: moving bytes between timestamp and body changes the MAC input.
    assert sign("secret", "17145648001", b"body") != sign("secret", "1714564800", b"1body")


# ---------------------------------------------------------------- backoff_s


@pytest.fixture
def _restore_random() -> Iterator[None]:
    state = random.getstate()
    yield
    random.setstate(state)


@pytest.mark.parametrize(
    ("hint", "cap", "expected"),
    [(0.0, 30.0, 0.0), (2.5, 30.0, 2.5), (30.0, 30.0, 30.0), (120.0, 30.0, 30.0), (5.0, 0.0, 0.0)],
)
def test_backoff_hint_wins_but_is_capped(hint: float, cap: float, expected: float) -> None:
    for attempt in (1, 2, 10):
        assert backoff_s(attempt, 0.5, cap, hint) == expected


def test_backoff_hint_is_used_even_when_larger_than_the_exponential_bound() -> None:
    # attempt 1, base 0.5: the jittered bound would be 0.5, but the server asked for 10s.
    assert backoff_s(1, 0.5, 30.0, 10.0) == 10.0


@pytest.mark.parametrize(
    ("attempt", "base", "cap"),
    [(1, 0.5, 30.0), (2, 0.5, 30.0), (3, 1.0, 30.0), (4, 0.5, 30.0), (6, 1.0, 10.0), (20, 0.5, 30.0)],
)
def test_backoff_without_hint_is_within_full_jitter_bounds(attempt: int, base: float, cap: float,
                                                           _restore_random: None) -> None:
    bound = min(cap, base * 2 ** (attempt - 1))
    random.seed(12345)
    samples = [backoff_s(attempt, base, cap, None) for _ in range(2000)]
    assert all(0.0 <= s <= bound for s in samples)
    # Full jitter spreads over the whole range, not just a corner of it.
    assert min(samples) < bound * 0.1
    assert max(samples) > bound * 0.9


def test_backoff_without_hint_is_uniform_over_the_bound(_restore_random: None) -> None:
    # Same seed, same draw: backoff_s is exactly uniform(0, min(cap, base * 2**(attempt-1))).
    for attempt, base, cap in [(1, 0.5, 30.0), (3, 0.5, 30.0), (8, 0.5, 30.0)]:
        random.seed(attempt)
        got = backoff_s(attempt, base, cap, None)
        expected = random.Random(attempt).uniform(0, min(cap, base * 2 ** (attempt - 1)))
        assert got == expected


def test_backoff_zero_base_or_cap_is_zero() -> None:
    assert backoff_s(3, 0.0, 30.0, None) == 0.0
    assert backoff_s(3, 0.5, 0.0, None) == 0.0
