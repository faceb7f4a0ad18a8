"""Exchange and queue names, from one place, and the one function that declares them."""

import logging
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel


@dataclass(frozen=True, slots=True)
class Topology:
    """All broker names, derived from a prefix so test runs never share a queue."""

    prefix: str = "pj"

    @property
    def commands(self) -> str:
        """Classic queue: RPC commands are short-lived (they carry a TTL), so quorum durability buys nothing."""
        return f"{self.prefix}.commands"

    @property
    def leases(self) -> str:
        """Classic queue of the dispatchers' own RPCs (`get_dispatch_plan`, `renew_lease`), apart from the
        commands so that a dispatcher's broker user may publish these and no command, and so that a flood
        of commands never delays a lease renewal."""
        return f"{self.prefix}.leases"

    @property
    def dispatch(self) -> str:
        """Quorum queue of dispatch orders, consumed by every dispatcher process."""
        return f"{self.prefix}.dispatch"

    @property
    def results(self) -> str:
        """Quorum queue of step reports, consumed by the approvals service."""
        return f"{self.prefix}.dispatch.results"

    @property
    def events(self) -> str:
        """Topic exchange of lifecycle events (`approval.*`)."""
        return f"{self.prefix}.events"

    @property
    def notifier(self) -> str:
        """Quorum queue of the notifier processes, bound to every approval event (declared by the
        notifier; the gateway's health reads its consumers)."""
        return f"{self.prefix}.notifier"

    @property
    def inlet_queues(self) -> tuple[str, ...]:
        """The queues publishers reach through an exchange of their own (see `inlet`)."""
        return (self.commands, self.leases, self.dispatch, self.results)

    @property
    def declared_queues(self) -> tuple[str, ...]:
        """Every queue `declare_topology` declares (the notifier declares its own)."""
        return (*self.inlet_queues, self.dead_letters)

    @property
    def declared_exchanges(self) -> tuple[str, ...]:
        """Every exchange `declare_topology` declares."""
        return (*(self.inlet(queue) for queue in self.inlet_queues), self.events, self.dead_letter_exchange)

    def inlet(self, queue: str) -> str:
        """The direct exchange leading into `queue` (bound with the queue's name as its key).

        Publishing through the default exchange needs write permission on `amq.default`, which covers
        every queue; an exchange per queue lets each service's broker user be given exactly the queues it
        may feed (pj_common.broker_access): a dispatcher the leases and results, never the commands,
        and nothing but approvals the dispatch orders.
        """
        return f"{queue}.in"

    @property
    def dead_letter_exchange(self) -> str:
        """Fanout exchange every dead letter goes to: the broker's (from the queues' arguments) and the
        transport's own (republished with why in `x-pj-*` headers)."""
        return f"{self.prefix}.dlx"

    @property
    def dead_letters(self) -> str:
        """Quorum queue of dead letters, with why in their headers: list and replay them with
        `python -m pj_common.deadletters` (make dlq, make dlq-replay)."""
        return f"{self.prefix}.dead"


# The broker's delivery limit on the orders and results queues. The transport dead-letters a message
# itself, with why in its headers, when delivery number transport.MAX_DELIVERIES (200) fails, which
# takes at least 48 minutes of failures (the sum is in pj_common.transport's docstring); this limit
# sits above that and only catches a message whose consumer dies on every delivery (the transport
# never sees it fail). RabbitMQ dead-letters it after DELIVERY_LIMIT + 1 deliveries, with `x-death`.
DELIVERY_LIMIT = 250

# Earlier releases declared x-delivery-limit 50 (10-second back-off: a 10-minute outage dead-lettered
# every queued order and report). A queue's arguments never change once declared, and a
# `delivery-limit` policy cannot raise it either (RabbitMQ applies the lower of argument and policy),
# so such a queue is used as it is, with a warning, until it is re-created empty (docs/runbook.md,
# "Dead letters"): an upgrade never stops a service, and the new limit comes with the new queue.
LEGACY_DELIVERY_LIMITS = (50,)

log = logging.getLogger("pj.topology")


def work_queue_arguments(topology: Topology, delivery_limit: int = DELIVERY_LIMIT) -> dict[str, Any]:
    """The arguments of the orders and results queues (quorum, dead-lettering, the delivery limit)."""
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": topology.dead_letter_exchange,
        "x-delivery-limit": delivery_limit,
    }


async def declare_topology(channel: AbstractChannel, topology: Topology) -> None:
    """Declare every exchange and queue (idempotent; services and tests call the same function)."""
    dlx = await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    # No delivery limit here, ever: listing the dead letters returns each one, which counts as a delivery.
    dead = await channel.declare_queue(
        topology.dead_letters, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead.bind(dlx)
    await channel.declare_exchange(topology.events, aio_pika.ExchangeType.TOPIC, durable=True)
    # Commands expire with their RPC timeout; an expired command is of no use to anyone, so no DLX.
    for rpc in (topology.commands, topology.leases):
        await channel.declare_queue(rpc, durable=True, arguments={"x-queue-type": "classic"})
    for name in (topology.dispatch, topology.results):
        await _declare_work_queue(channel, topology, name)
    for queue in topology.inlet_queues:
        inlet = await channel.declare_exchange(topology.inlet(queue), aio_pika.ExchangeType.DIRECT, durable=True)
        await (await channel.get_queue(queue, ensure=False)).bind(inlet, routing_key=queue)


class TopologyNotReady(Exception):
    """A queue or exchange this process uses does not exist yet: only the approvals service declares the
    topology (the other services' broker users may not), so they wait for it."""


async def require_topology(channel: AbstractChannel, *, queues: tuple[str, ...] = (),
                           exchanges: tuple[str, ...] = ()) -> None:
    """Check that each of `queues` and `exchanges` exists (passive declares need no permission).

    Raises TopologyNotReady naming the first one missing; the broker then closes `channel`.
    """
    try:
        for queue in queues:
            await channel.declare_queue(queue, passive=True)
        for exchange in exchanges:
            await channel.declare_exchange(exchange, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity as exc:
        raise TopologyNotReady(f"{exc}: waiting for the approvals service to declare the topology") from exc


async def _declare_work_queue(channel: AbstractChannel, topology: Topology, name: str) -> None:
    try:
        await channel.declare_queue(name, durable=True, arguments=work_queue_arguments(topology))
        return
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        if "x-delivery-limit" not in str(exc):
            raise
        # The broker closed the channel; any other difference than the limit still fails below.
        await channel.reopen()
    for legacy in LEGACY_DELIVERY_LIMITS:
        try:
            await channel.declare_queue(name, durable=True, arguments=work_queue_arguments(topology, legacy))
        except aio_pika.exceptions.ChannelPreconditionFailed:
            await channel.reopen()
            continue
        log.warning("queue %s keeps the x-delivery-limit %d it was declared with (this release declares %d): "
                    "re-create it empty to get the new limit (docs/runbook.md, Dead letters)", name, legacy,
                    DELIVERY_LIMIT, extra={"scope": "amqp.legacy_delivery_limit", "queue": name,
                                           "deliveryLimit": legacy})
        return
    raise RuntimeError(f"queue {name} exists with an x-delivery-limit this release does not know; "
                       "re-create it empty (docs/runbook.md, Dead letters)")
