"""HTTP outcome classification (pj_dispatcher.connectors.http_errors), on real httpx objects."""

import time

import httpx
import pytest

from pj_dispatcher.connectors.base import ConnectorError
from pj_dispatcher.connectors.http_errors import (
    classify_status,
    classify_transport,
    json_body,
    json_field,
    json_object,
    retry_after_s,
)

REQUEST = httpx.Request("POST", "https://api.example.com/hook")


def _response(status: int, headers: dict[str, str] | None = None, text: str = "") -> httpx.Response:
    return httpx.Response(status, headers=headers or {}, text=text, request=REQUEST)


# ---------------------------------------------------------------- classify_status


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 599])
def test_429_and_5xx_are_retryable(status: int) -> None:
    error = classify_status(_response(status, text="try later"), "github")
    assert isinstance(error, ConnectorError)
    assert error.retryable is True
    assert error.code == "http_retryable"
    assert error.http_status == status
    assert error.retry_after is None
    assert error.message == f"github: HTTP {status}: try later"
    assert str(error) == error.message


@pytest.mark.parametrize(("value", "expected"), [("7", 7.0), ("0", 0.0), ("1.5", 1.5), ("120", 120.0)])
def test_retry_after_seconds_parsed_on_429(value: str, expected: float) -> None:
    error = classify_status(_response(429, {"Retry-After": value}), "slack")
    assert error.retryable is True
    assert error.retry_after == expected


def test_retry_after_parsed_on_503() -> None:
    error = classify_status(_response(503, {"retry-after": "12"}), "graph")
    assert error.retryable is True
    assert error.retry_after == 12.0
    assert error.http_status == 503


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422, 428, 451])
def test_4xx_are_permanent(status: int) -> None:
    error = classify_status(_response(status, {"Retry-After": "5"}, text="nope"), "webhook")
    assert error.retryable is False
    assert error.code == "http_error"
    assert error.http_status == status
    assert error.retry_after is None
    assert error.message == f"webhook: HTTP {status}: nope"


def test_detail_is_truncated_to_300_chars() -> None:
    error = classify_status(_response(500, text="x" * 1000), "github")
    assert error.message == "github: HTTP 500: " + "x" * 300


# ---------------------------------------------------------------- retry_after_s


def test_no_headers_no_hint() -> None:
    assert retry_after_s(_response(503)) is None


def test_negative_retry_after_is_clamped_to_zero() -> None:
    assert retry_after_s(_response(429, {"Retry-After": "-5"})) == 0.0


def test_http_date_retry_after_is_not_understood() -> None:
    # Documented as seconds only: an HTTP-date gives no hint (the caller then uses its own back-off).
    assert retry_after_s(_response(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None


def test_rate_limit_reset_with_remaining_zero() -> None:
    reset = time.time() + 30
    before = time.time()
    headers = {"X-RateLimit-Reset": str(int(reset)), "X-RateLimit-Remaining": "0"}
    error = classify_status(_response(429, headers), "github")
    assert error.retryable is True
    assert error.retry_after is not None
    # int() truncation loses up to 1s; the computation itself takes a moment.
    assert int(reset) - before - 1 <= error.retry_after <= int(reset) - before + 0.01
    assert 28.0 < error.retry_after <= 30.0


def test_rate_limit_reset_on_403_is_still_permanent() -> None:
    # Only 429/5xx are retryable; a 403 with rate-limit headers is classified as a plain 4xx.
    headers = {"X-RateLimit-Reset": str(int(time.time()) + 30), "X-RateLimit-Remaining": "0"}
    error = classify_status(_response(403, headers), "github")
    assert error.retryable is False
    assert retry_after_s(_response(403, headers)) is not None


@pytest.mark.parametrize("remaining", ["1", "10", None])
def test_rate_limit_reset_ignored_unless_remaining_is_zero(remaining: str | None) -> None:
    headers = {"X-RateLimit-Reset": str(int(time.time()) + 30)}
    if remaining is not None:
        headers["X-RateLimit-Remaining"] = remaining
    assert retry_after_s(_response(429, headers)) is None


def test_rate_limit_reset_in_the_past_is_zero() -> None:
    headers = {"X-RateLimit-Reset": str(int(time.time()) - 100), "X-RateLimit-Remaining": "0"}
    assert retry_after_s(_response(429, headers)) == 0.0


def test_rate_limit_reset_garbage_is_none() -> None:
    headers = {"X-RateLimit-Reset": "soon", "X-RateLimit-Remaining": "0"}
    assert retry_after_s(_response(429, headers)) is None


def test_retry_after_takes_precedence_over_rate_limit_reset() -> None:
    headers = {"Retry-After": "3", "X-RateLimit-Reset": str(int(time.time()) + 600),
               "X-RateLimit-Remaining": "0"}
    assert retry_after_s(_response(429, headers)) == 3.0


# ---------------------------------------------------------------- classify_transport


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectTimeout("connect timed out", request=REQUEST),
        httpx.ReadTimeout("read timed out", request=REQUEST),
        httpx.PoolTimeout("pool timed out", request=REQUEST),
        httpx.ConnectError("connection refused", request=REQUEST),
        httpx.ReadError("connection reset", request=REQUEST),
        httpx.RemoteProtocolError("server disconnected", request=REQUEST),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transport_failures_that_may_pass_are_retryable(exc: httpx.HTTPError) -> None:
    error = classify_transport(exc, "webhook")
    assert error.retryable is True
    assert error.code == "network_error"
    assert error.http_status is None
    assert error.retry_after is None
    assert error.message == f"webhook: {type(exc).__name__}: {exc}"


@pytest.mark.parametrize(
    "exc",
    [
        httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'.", request=REQUEST),
        httpx.LocalProtocolError("illegal header", request=REQUEST),
        httpx.TooManyRedirects("too many redirects", request=REQUEST),
        httpx.ProxyError("proxy refused", request=REQUEST),
    ],
    ids=lambda e: type(e).__name__,
)
def test_other_request_errors_are_permanent(exc: httpx.HTTPError) -> None:
    error = classify_transport(exc, "webhook")
    assert error.retryable is False
    assert error.code == "request_error"
    assert error.message == f"webhook: {type(exc).__name__}: {exc}"


def test_classify_transport_on_a_real_unsupported_protocol() -> None:
    # httpx itself raises UnsupportedProtocol before any I/O for a non-http(s) URL.
    with httpx.Client() as client, pytest.raises(httpx.UnsupportedProtocol) as info:
        client.get("ftp://example.com/file")
    error = classify_transport(info.value, "webhook")
    assert error.retryable is False
    assert error.code == "request_error"


# ---------------------------------------------------------------- answers that are not what the API documents


@pytest.mark.parametrize(("text", "read"), [
    ("<html>sign in</html>", json_body),
    ("[1, 2]", json_object),
    ('{"ok": tr', json_body),
], ids=["html", "not-an-object", "cut-off"])
def test_a_bad_answer_is_retryable_bad_response_in_every_connector(text: str, read: object) -> None:
    with pytest.raises(ConnectorError) as info:
        read(_response(200, text=text), "api call")  # type: ignore[operator]
    assert (info.value.code, info.value.retryable, info.value.http_status) == ("bad_response", True, 200)
    assert info.value.message.startswith("api call: ")


def test_json_field_reads_a_path_of_the_expected_type() -> None:
    data = {"object": {"sha": "abc", "size": 3, "flag": True}}
    assert json_field(data, "object.sha", str, what="x", http_status=200) == "abc"
    for path, kind in (("object.missing", str), ("object.size", str), ("object.flag", int), ("object.sha.x", str)):
        with pytest.raises(ConnectorError) as info:
            json_field(data, path, kind, what="x", http_status=201)
        assert (info.value.code, info.value.retryable, info.value.http_status) == ("bad_response", True, 201)
