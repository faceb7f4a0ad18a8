"""Everything long-lived in one gateway process, built in the lifespan and passed down."""

from dataclasses import dataclass

from aio_pika.abc import AbstractChannel, AbstractConnection
from prometheus_client import CollectorRegistry, Counter, Histogram

from pj_common.auth import TokenVerifier
from pj_common.jwks import JwksKeys
from pj_common.topology import Topology, require_topology
from pj_common.transport import RpcClient, Supervisor

from .settings import GatewaySettings


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("pj_gateway_requests", "HTTP requests handled",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("pj_gateway_request_seconds", "HTTP request duration", ["route"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


@dataclass
class GatewayState:
    settings: GatewaySettings
    topology: Topology
    verifier: TokenVerifier
    rpc: RpcClient
    supervisor: Supervisor
    metrics: GatewayMetrics
    # A plain channel for health checks (queue depth and consumers); None while disconnected.
    inspect: AbstractChannel | None = None

    @classmethod
    def build(cls, settings: GatewaySettings) -> "GatewayState":
        topology = Topology(settings.amqp_prefix)
        rpc = RpcClient.to(topology, topology.commands)
        state = cls(settings=settings, topology=topology,
                    verifier=settings.token_verifier(),
                    rpc=rpc, supervisor=None,  # type: ignore[arg-type]  # set just below
                    metrics=GatewayMetrics())
        state.supervisor = Supervisor(settings.amqp_url, state._setup, name="gateway", on_lost=state._lost)
        return state

    async def load_token_keys(self) -> None:
        """Fetch the identity provider's keys (a JWKS source) before the first request; a failure is
        logged, and the first token then fetches them."""
        if isinstance(self.verifier.keys, JwksKeys):
            await self.verifier.keys.start()

    async def release_token_keys(self) -> None:
        if isinstance(self.verifier.keys, JwksKeys):
            await self.verifier.keys.stop()

    async def _setup(self, connection: AbstractConnection) -> None:
        # Approvals declares the topology; the gateway's broker user may only publish commands. The channel
        # that checked it serves the health checks.
        channel = await connection.channel()
        await require_topology(channel, exchanges=(self.topology.inlet(self.topology.commands),))
        self.inspect = channel
        self.supervisor.watch(await self.rpc.attach(connection))

    async def inspect_channel(self) -> AbstractChannel | None:
        """The health-check channel, reopened if the broker closed it (a failed passive declare does)."""
        connection = self.supervisor.connection
        if self.inspect is not None and self.inspect.is_closed and connection is not None:
            self.inspect = await connection.channel()
        return self.inspect

    def _lost(self) -> None:
        self.inspect = None
        self.rpc.detach()
