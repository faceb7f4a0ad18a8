"""Turning HTTP outcomes into connector errors, the same way for every API."""

import time
from typing import Any

import httpx

from .base import ConnectorError, permanent, retryable
from .bounded import ResponseTooLarge


def retry_after_s(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait: `Retry-After` (seconds) or `X-RateLimit-Reset` (epoch)."""
    value = response.headers.get("retry-after")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None
    reset = response.headers.get("x-ratelimit-reset")
    if reset is not None and response.headers.get("x-ratelimit-remaining") == "0":
        try:
            return max(0.0, float(reset) - time.time())
        except ValueError:
            return None
    return None


def classify_status(response: httpx.Response, what: str) -> ConnectorError:
    """429 and 5xx are worth another try; any other 4xx will fail the same way again."""
    status = response.status_code
    detail = response.text[:300]
    if status == 429 or status >= 500:
        return retryable("http_retryable", f"{what}: HTTP {status}: {detail}", retry_after=retry_after_s(response),
                         http_status=status)
    return permanent("http_error", f"{what}: HTTP {status}: {detail}", status)


def classify_transport(exc: httpx.HTTPError, what: str) -> ConnectorError:
    """Connection failures and timeouts may pass; anything else about the request will not.

    An answer too large to read fails the step: the same request would get it again, and it may have
    had its effect, which the step's result then says."""
    if isinstance(exc, ResponseTooLarge):
        return permanent("response_too_large", f"{what}: {exc}; the request may have taken effect upstream")
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return retryable("network_error", f"{what}: {type(exc).__name__}: {exc}")
    return permanent("request_error", f"{what}: {type(exc).__name__}: {exc}")


def bad_response(what: str, detail: str, http_status: int | None) -> ConnectorError:
    """An answer that is not what the API documents (not JSON, or not the expected shape): retryable.

    Such an answer mostly comes from something between us and the API (a proxy's or a sign-in page,
    a cut-off body, a node mid-deploy) and passes. Another attempt cannot repeat a side effect, as
    every operation that reads an answer looks for its earlier effect before acting again; and the
    attempts are bounded (PJ_CONNECTOR_MAX_ATTEMPTS), so an API URL that is plainly wrong still
    fails the step within seconds.
    """
    return retryable("bad_response", f"{what}: {detail}", http_status=http_status)


def json_body(response: httpx.Response, what: str) -> Any:
    """The answer's JSON, or `bad_response`."""
    try:
        return response.json()
    except ValueError:
        raise bad_response(what, f"HTTP {response.status_code} answer is not JSON: {response.text[:200]!r}",
                           response.status_code) from None


def json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    """The answer's JSON object, or `bad_response`."""
    body = json_body(response, what)
    if not isinstance(body, dict):
        raise bad_response(what, f"HTTP {response.status_code} answer is JSON but not an object",
                           response.status_code)
    return body


def json_field(data: Any, path: str, kind: type | tuple[type, ...], *, what: str, http_status: int) -> Any:
    """`data[a][b]` for `path` "a.b", checked to be of `kind`, or `bad_response`."""
    value = data
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise bad_response(what, f"answer has no {path!r}", http_status)
        value = value[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise bad_response(what, f"{path!r} in the answer is not a {kind}", http_status)
    return value
