"""Turning HTTP outcomes into connector errors, the same way for every API."""

import time

import httpx

from .base import ConnectorError, permanent, retryable


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
        return retryable("http_retryable", f"{what}: HTTP {status}: {detail}", retry_after_s(response), status)
    return permanent("http_error", f"{what}: HTTP {status}: {detail}", status)


def classify_transport(exc: httpx.HTTPError, what: str) -> ConnectorError:
    """Connection failures and timeouts may pass; anything else about the request will not."""
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return retryable("network_error", f"{what}: {type(exc).__name__}: {exc}")
    return permanent("request_error", f"{what}: {type(exc).__name__}: {exc}")
