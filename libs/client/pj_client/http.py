"""Typed clients of the gateway's HTTP API: `AsyncGatewayClient` (httpx.AsyncClient) and its sync twin
`GatewayClient` (httpx.Client). Both send the requests `pj_client.api` describes and return the
contract's reply models; a refusal raises the `ClientError` of its code, a gateway that cannot be
reached raises `Unavailable`.

    async with AsyncGatewayClient("http://127.0.0.1:8080", token=token) as gate:
        accepted = await gate.execute("notify.webhook", {"message": "hello"}, request_id="order-4711")
"""

from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from pj_common.errors import ErrorCode
from pj_common.messages import (
    ApprovalPage,
    ApprovalStatus,
    ApprovalView,
    ChainView,
    DispatchOutcome,
    DryRunPlan,
    ExecuteAccepted,
    PendingCount,
)

from . import api
from .api import CORRELATION_HEADER, CSRF_HEADER, Call, GatewayHealth
from .errors import Unavailable

T = TypeVar("T")

# A dispatch waits up to PJ_DISPATCH_WAIT_S (10 s) at the gateway before it answers: leave it room.
DEFAULT_TIMEOUT_S = 30.0


def _headers(token: str | None, correlation_id: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "pj-client"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if correlation_id:
        headers[CORRELATION_HEADER] = correlation_id
    return headers


def _request_kwargs(call: Call[Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"params": call.params or None}
    if call.body is not None:
        kwargs["json"] = call.body
    if call.changes_state:
        kwargs["headers"] = {CSRF_HEADER: "true"}
    return kwargs


def _unreachable(base_url: str, exc: httpx.TransportError) -> Unavailable:
    # A timeout after the request left may have changed state: say the outcome is unknown.
    if isinstance(exc, httpx.TimeoutException):
        return Unavailable(ErrorCode.UPSTREAM_TIMEOUT, f"no answer from {base_url} in time; outcome unknown")
    return Unavailable("gateway_unreachable", f"cannot reach the gateway at {base_url}: {exc!r}")


class AsyncGatewayClient:
    """The gateway's HTTP API, async. Use as an async context manager (or call `aclose`)."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_S,
                 correlation_id: str | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=_headers(token, correlation_id),
                                       timeout=timeout, transport=transport, follow_redirects=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        """Send one described request and read its answer."""
        try:
            response = await self._http.request(call.method, call.path, **_request_kwargs(call))
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return call.parse(response.status_code, response.content)

    async def execute(self, action_id: str, payload: dict[str, Any], *, request_id: str | None = None
                      ) -> ExecuteAccepted | DispatchOutcome:
        """Ask for an action: the stored request, or a launch-tier action's outcome if it finished at once."""
        return await self.send(api.execute(action_id, payload, request_id=request_id))

    async def dry_run(self, action_id: str, payload: dict[str, Any]) -> DryRunPlan:
        """The plan an execute would make; nothing is stored."""
        return await self.send(api.dry_run(action_id, payload))

    async def list_approvals(self, *, status: ApprovalStatus | None = None, limit: int = 50,
                             offset: int = 0) -> ApprovalPage:
        """One page of the approvals the caller may see, newest first."""
        return await self.send(api.list_approvals(status=status, limit=limit, offset=offset))

    async def count_pending(self) -> PendingCount:
        return await self.send(api.count_pending())

    async def get_approval(self, approval_id: str) -> ApprovalView:
        return await self.send(api.get_approval(approval_id))

    async def get_chain(self, approval_id: str) -> ChainView:
        return await self.send(api.get_chain(approval_id))

    async def approve(self, approval_id: str, *, note: str | None = None) -> ApprovalView:
        """Approve (the approval stays pending while later stages or approvers are due)."""
        return await self.send(api.decide(approval_id, "approved", note=note))

    async def reject(self, approval_id: str, *, note: str) -> ApprovalView:
        return await self.send(api.decide(approval_id, "rejected", note=note))

    async def dispatch(self, approval_id: str, *, dry_run: bool = False) -> DispatchOutcome:
        """Dispatch: the outcome (`dispatched`/`dispatch_failed`), or `dispatching` if it still runs."""
        return await self.send(api.dispatch(approval_id, dry_run=dry_run))

    async def health(self) -> GatewayHealth:
        return await self.send(api.health())

    async def metrics(self) -> str:
        return await self.send(api.metrics())


class GatewayClient:
    """The gateway's HTTP API, sync: the same calls as `AsyncGatewayClient`, for scripts and the CLI."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_S,
                 correlation_id: str | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=_headers(token, correlation_id),
                                  timeout=timeout, transport=transport, follow_redirects=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call[T]) -> T:
        """Send one described request and read its answer."""
        try:
            response = self._http.request(call.method, call.path, **_request_kwargs(call))
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return call.parse(response.status_code, response.content)

    def execute(self, action_id: str, payload: dict[str, Any], *, request_id: str | None = None
                ) -> ExecuteAccepted | DispatchOutcome:
        """Ask for an action: the stored request, or a launch-tier action's outcome if it finished at once."""
        return self.send(api.execute(action_id, payload, request_id=request_id))

    def dry_run(self, action_id: str, payload: dict[str, Any]) -> DryRunPlan:
        """The plan an execute would make; nothing is stored."""
        return self.send(api.dry_run(action_id, payload))

    def list_approvals(self, *, status: ApprovalStatus | None = None, limit: int = 50,
                       offset: int = 0) -> ApprovalPage:
        """One page of the approvals the caller may see, newest first."""
        return self.send(api.list_approvals(status=status, limit=limit, offset=offset))

    def count_pending(self) -> PendingCount:
        return self.send(api.count_pending())

    def get_approval(self, approval_id: str) -> ApprovalView:
        return self.send(api.get_approval(approval_id))

    def get_chain(self, approval_id: str) -> ChainView:
        return self.send(api.get_chain(approval_id))

    def approve(self, approval_id: str, *, note: str | None = None) -> ApprovalView:
        """Approve (the approval stays pending while later stages or approvers are due)."""
        return self.send(api.decide(approval_id, "approved", note=note))

    def reject(self, approval_id: str, *, note: str) -> ApprovalView:
        return self.send(api.decide(approval_id, "rejected", note=note))

    def dispatch(self, approval_id: str, *, dry_run: bool = False) -> DispatchOutcome:
        """Dispatch: the outcome (`dispatched`/`dispatch_failed`), or `dispatching` if it still runs."""
        return self.send(api.dispatch(approval_id, dry_run=dry_run))

    def health(self) -> GatewayHealth:
        return self.send(api.health())

    def metrics(self) -> str:
        return self.send(api.metrics())
