"""A bound on how much of an external API's answer a connector reads.

No answer a connector reads is more than a few kilobytes; a larger one is a proxy's page, a server
gone wrong or a hostile target, and reading it whole would hold the dispatcher's memory. The bound
is an httpx response hook, so the client keeps its own transport (and proxies from the
environment): it refuses a declared Content-Length over the bound before reading anything, and
stops reading a body that grows past it. It counts the bytes as they arrive (compressed).
"""

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx

MAX_RESPONSE_BYTES = 1 << 20  # 1 MiB


class ResponseTooLarge(httpx.RequestError):
    """The answer is larger than the dispatcher reads (`MAX_RESPONSE_BYTES`)."""


class _BoundedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, *, limit: int, request: httpx.Request) -> None:
        self._inner = inner
        self._limit = limit
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = 0
        async for chunk in self._inner:
            read += len(chunk)
            if read > self._limit:
                raise ResponseTooLarge(f"answer larger than {self._limit} bytes; not read further",
                                       request=self._request)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def response_size_hook(limit: int = MAX_RESPONSE_BYTES) -> Callable[[httpx.Response], Awaitable[None]]:
    """An httpx `response` event hook that bounds the body read to `limit` bytes."""

    async def bound(response: httpx.Response) -> None:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLarge(f"answer of {declared} bytes is larger than {limit}; not read",
                                   request=response.request)
        if isinstance(response.stream, httpx.AsyncByteStream):
            response.stream = _BoundedStream(response.stream, limit=limit, request=response.request)

    return bound
