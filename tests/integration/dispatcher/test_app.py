"""A whole dispatcher process (pj_dispatcher.app) on the real broker, with a stand-in approvals
responder and a local webhook receiver: how many orders and steps it runs at once."""

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from pj_common.messages import (
    CommandEnvelope,
    DispatchOrder,
    DispatchPlan,
    GetDispatchPlan,
    PlanStep,
    Reply,
    StepReport,
)
from pj_common.signing import signature_headers
from pj_common.topology import Topology, declare_topology
from pj_common.transport import consume, json_message, publish_confirmed, reply
from pj_dispatcher.app import DispatcherApp
from pj_dispatcher.settings import DispatcherSettings
from tests.support.local_http import serving

HOLD_S = 0.3  # each delivery takes this long, so what runs at once overlaps



class Receiver:
    """A webhook receiver that counts the requests it holds at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = self.total = 0
        self.url = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.now += 1
                    receiver.total += 1
                    receiver.most = max(receiver.most, receiver.now)
                time.sleep(HOLD_S)
                with receiver.lock:
                    receiver.now -= 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()
    with serving(state.handler()) as base_url:
        state.url = f"{base_url}/hook"
        yield state


def two_steps() -> list[PlanStep]:
    return [PlanStep(step_id=s, connector="webhook", operation="post", params={"body": s}) for s in ("a", "b")]


async def test_concurrency_bounds_the_orders_run_at_once_and_so_the_steps(
        amqp_url: str, topology: Topology, receiver: Receiver) -> None:
    settings = DispatcherSettings(env="dev", amqp_url=amqp_url, amqp_prefix=topology.prefix,
                                  PJ_DISPATCHER_CONCURRENCY=2, webhook_url=receiver.url, webhook_secret="s",
                                  webhook_allow_private=True)
    connection = await aio_pika.connect_robust(amqp_url)
    finals: list[StepReport] = []
    three_done = asyncio.Event()
    app = DispatcherApp(settings)
    try:
        channel = await connection.channel()
        await declare_topology(channel, topology)

        async def approvals(message: AbstractIncomingMessage) -> None:  # confirms every claim
            command = CommandEnvelope.model_validate_json(message.body).command
            assert isinstance(command, GetDispatchPlan)
            answer = Reply[DispatchPlan](ok=True, data=DispatchPlan(stale=False, steps=two_steps()))
            await reply(channel, message, answer.to_json())

        async def results(message: AbstractIncomingMessage) -> None:
            report = StepReport.model_validate_json(message.body)
            if report.plan_status != "running":
                finals.append(report)
                if len(finals) == 3:
                    three_done.set()

        await consume(channel, topology.leases, approvals, prefetch=10)
        await consume(await connection.channel(), topology.results, results, prefetch=10)
        await app.start()
        publisher = await connection.channel(publisher_confirms=True)
        for n in range(3):
            order = DispatchOrder(approval_id=f"apr-{n}", tenant_id="t", action_id="notify.webhook",
                                  claim_token=f"claim-{n}", steps=two_steps())
            body = order.to_json()
            await publish_confirmed(publisher, topology.dispatch, json_message(
                body, message_id=order.message_id, headers=signature_headers(body, settings.signing_key)))
        await asyncio.wait_for(three_done.wait(), 30)
    finally:
        await app.stop()
        await connection.close()

    assert sorted(f.plan_status for f in finals) == ["dispatched"] * 3
    assert receiver.total == 6
    # Two orders at once (the prefetch), each running its steps one after another: two steps at once.
    assert receiver.most == 2
