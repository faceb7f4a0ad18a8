"""Webhook signatures (pj_dispatcher.connectors.webhook.sign); the back-off is tested with
pj_common.backoff, the runner's use of it in test_runner."""

import hashlib
import hmac
import re

import pytest

from pj_dispatcher.connectors.webhook import sign

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
