"""Commands the broker does not take answer 503 broker_unavailable, whatever aio-pika or aiormq raised."""

import asyncio
import gc
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest

from .conftest import FakeApprovals, Gateway, auth

# What a publish on a channel that looked open really raises when the broker or the connection goes:
# a channel closed under us, a connection closed by the broker or by us, a dropped socket; aiormq fails
# futures of a closing connection with CancelledError, or with a bare Exception when it gave no reason.
PUBLISH_ERRORS = [
    aiormq.exceptions.ChannelInvalidStateError("channel closed"),
    aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED"),
    aiormq.exceptions.ChannelClosed(406, "PRECONDITION_FAILED"),
    aiormq.exceptions.AMQPConnectionError("Server connection unexpectedly closed"),
    ConnectionResetError(104, "Connection reset by peer"),
    asyncio.CancelledError(),
    Exception(),
]


@pytest.mark.parametrize("error", PUBLISH_ERRORS, ids=lambda e: type(e).__name__)
async def test_a_publish_error_on_a_live_channel_is_503_broker_unavailable(
        gateway: Gateway, approvals: FakeApprovals, monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    async def publish(*_: Any, **__: Any) -> None:
        raise error

    monkeypatch.setattr(aio_pika.Exchange, "publish", publish)
    r = await gateway.client.get("/api/approvals/count/pending", headers=auth(csrf=False))
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "broker_unavailable"
    assert r.headers["Retry-After"] == "2"  # the services reconnect within seconds
    assert approvals.received == []


async def test_a_connection_closing_under_a_publish_is_503_not_a_cancelled_request(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real thing behind the CancelledError case: aiormq closes while the command is being written."""
    connection = gateway.state.supervisor.connection
    assert connection is not None and connection.transport is not None
    underlay = connection.transport.connection
    real_publish = aio_pika.Exchange.publish

    async def publish_while_closing(self: aio_pika.Exchange, *args: Any, **kwargs: Any) -> Any:
        closing = asyncio.ensure_future(underlay.close())
        # This test's own closing task: its outcome is read even when the publish is cancelled under it
        # (the await in `finally` below is then cut short), so it never counts as a leaked exception.
        closing.add_done_callback(lambda task: task.cancelled() or task.exception())
        try:
            return await real_publish(self, *args, **kwargs)
        finally:
            await asyncio.gather(closing, return_exceptions=True)

    monkeypatch.setattr(aio_pika.Exchange, "publish", publish_while_closing)
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        r = await gateway.client.get("/api/approvals/count/pending", headers=auth(csrf=False))
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "broker_unavailable"
        await asyncio.sleep(0.2)  # the supervisor notices the lost connection and fails what waits
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    # The call's own futures, failed by the lost connection, leave no "exception was never retrieved".
    assert [c["message"] for c in reported] == []
