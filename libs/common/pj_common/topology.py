"""Exchange and queue names, from one place, and the one function that declares them."""

from dataclasses import dataclass

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
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead_letters(self) -> str:
        """Where rejected messages land, with the reason in their headers."""
        return f"{self.prefix}.dead"


# A message redelivered this often is poison: the broker dead-letters it instead of looping.
DELIVERY_LIMIT = 50


async def declare_topology(channel: AbstractChannel, topology: Topology) -> None:
    """Declare every exchange and queue (idempotent; services and tests call the same function)."""
    dlx = await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead = await channel.declare_queue(
        topology.dead_letters, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead.bind(dlx)
    await channel.declare_exchange(topology.events, aio_pika.ExchangeType.TOPIC, durable=True)
    # Commands expire with their RPC timeout; an expired command is of no use to anyone, so no DLX.
    await channel.declare_queue(topology.commands, durable=True, arguments={"x-queue-type": "classic"})
    for name in (topology.dispatch, topology.results):
        await channel.declare_queue(
            name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": topology.dead_letter_exchange,
                "x-delivery-limit": DELIVERY_LIMIT,
            },
        )
