"""The bound on an answer's size (pj_dispatcher.connectors.bounded): a declared or streamed body past
it is not read, and the step fails as `response_too_large`."""

from collections.abc import AsyncIterator

import httpx
import pytest

from pj_dispatcher.connectors.bounded import ResponseTooLarge, response_size_hook
from pj_dispatcher.connectors.http_errors import classify_transport


class Chunks(httpx.AsyncByteStream):
    """A body of `count` chunks of `size` bytes, with no Content-Length; counts what was read."""

    def __init__(self, count: int, size: int) -> None:
        self.count, self.size, self.read = count, size, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            self.read += 1
            yield b"x" * self.size


def client(answer: httpx.Response, limit: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda request: answer),
                             event_hooks={"response": [response_size_hook(limit)]})


async def test_an_answer_within_the_bound_is_read_whole() -> None:
    async with client(httpx.Response(200, stream=Chunks(4, 256)), limit=1024) as http:
        assert len((await http.get("http://api.test/")).content) == 1024


async def test_a_streamed_answer_past_the_bound_stops_being_read() -> None:
    body = Chunks(1000, 1024)
    async with client(httpx.Response(200, stream=body), limit=4096) as http:
        with pytest.raises(ResponseTooLarge, match="larger than 4096 bytes"):
            await http.get("http://api.test/")
    assert body.read == 5  # the chunk that went past the bound, and no further


async def test_a_declared_length_past_the_bound_is_refused_before_reading() -> None:
    body = Chunks(10, 1024)
    answer = httpx.Response(200, headers={"Content-Length": "10240"}, stream=body)
    async with client(answer, limit=4096) as http:
        with pytest.raises(ResponseTooLarge, match="10240 bytes"):
            await http.get("http://api.test/")
    assert body.read == 0


def test_a_too_large_answer_fails_the_step_for_good() -> None:
    error = classify_transport(ResponseTooLarge("answer larger than 1 bytes"), "webhook")
    assert (error.code, error.retryable) == ("response_too_large", False)
    assert "may have taken effect upstream" in error.message
