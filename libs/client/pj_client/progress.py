"""`pj dispatch` with a live display: the dispatch request runs while the approval is read every
`poll_s`, so each step shows as approvals records it; with `wait`, reading goes on after the gateway
answers 202 (still dispatching) until the approval ends dispatched or dispatch_failed.
"""

import asyncio
import contextlib
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from pj_common.errors import ErrorCode
from pj_common.messages import ApprovalStatus, ApprovalView, DispatchOutcome

from .errors import Unavailable
from .http import AsyncGatewayClient

# Where a dispatch ends; `dispatching` goes on, `approved` has not started yet.
ENDED = frozenset({ApprovalStatus.DISPATCHED, ApprovalStatus.DISPATCH_FAILED, ApprovalStatus.EXPIRED,
                   ApprovalStatus.REJECTED})


def steps_done(approval: ApprovalView) -> int:
    """Steps whose outcome approvals has recorded (succeeded, failed or skipped; not `not_run`)."""
    return sum(1 for step in approval.dispatch_result or () if step.status != "not_run")


def outcome_of(approval: ApprovalView) -> DispatchOutcome:
    """A finished dispatch as the outcome the gateway would have answered."""
    return DispatchOutcome(approval_id=approval.id, approval_status=approval.approval_status,
                           dispatch_result=approval.dispatch_result)


def _progress(console: Console, *, show: bool) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True, disable=not show)


async def dispatch_live(gate: AsyncGatewayClient, approval_id: str, *, wait: bool, timeout_s: float,
                        console: Console, show: bool = True, poll_s: float = 0.3) -> DispatchOutcome:
    """Dispatch and show its steps as they finish; returns the gateway's answer, or with `wait` the
    outcome once the dispatch ended. No end within `timeout_s` raises `Unavailable(upstream_timeout)`."""
    request = asyncio.create_task(gate.dispatch(approval_id))
    deadline = time.monotonic() + timeout_s
    try:
        with _progress(console, show=show) as progress:
            task = progress.add_task(f"dispatching {approval_id}", total=None)
            while time.monotonic() < deadline:
                if request.done():
                    answer = request.result()  # the gateway's refusal (409, 403...) is raised here
                    if answer.approval_status in ENDED or not wait:
                        return answer
                approval = await gate.get_approval(approval_id)
                # Still `approved` until approvals has claimed it: the dispatch is starting, not stalled.
                stage = "starting" if approval.approval_status == ApprovalStatus.APPROVED else approval.approval_status
                progress.update(task, total=len(approval.plan or ()), completed=steps_done(approval),
                                description=f"{stage} {approval_id}")
                if request.done() and approval.approval_status in ENDED:
                    request.result()
                    return outcome_of(approval)
                if request.done():
                    await asyncio.sleep(poll_s)
                else:  # woken early when the gateway answers
                    await asyncio.wait({request}, timeout=poll_s)
    finally:
        if not request.done():
            request.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # raised above if it mattered
            await request
    raise Unavailable(ErrorCode.UPSTREAM_TIMEOUT, f"{approval_id} did not finish dispatching within "
                                                  f"{timeout_s:g}s; it goes on: see `pj show {approval_id}`")
