"""Dispatch-order signatures: over the exact body bytes, in a header, checked in constant time."""

from pj_common.signing import SIGNATURE_HEADER, is_signed, sign, signature_headers

KEY = "k" * 32


def test_a_signed_body_verifies() -> None:
    body = b'{"approvalId":"a"}'
    assert is_signed(body, signature_headers(body, KEY), KEY)


def test_a_changed_body_or_another_key_does_not_verify() -> None:
    headers = signature_headers(b'{"approvalId":"a"}', KEY)
    assert not is_signed(b'{"approvalId":"b"}', headers, KEY)
    assert not is_signed(b'{"approvalId":"a"}', headers, "x" * 32)


def test_missing_or_malformed_headers_do_not_verify() -> None:
    body = b"{}"
    assert not is_signed(body, None, KEY)
    assert not is_signed(body, {}, KEY)
    assert not is_signed(body, {SIGNATURE_HEADER: 42}, KEY)
    assert is_signed(body, {SIGNATURE_HEADER: sign(body, KEY).encode()}, KEY)  # brokers may hand back bytes
