"""Errors of the approvals service: all are `GateError`s with a stable code (see pj_common.errors)."""

from pj_common.errors import ErrorCode, GateError


def not_found(approval_id: str) -> GateError:
    # Another tenant's approval answers exactly like a missing one, so ids leak nothing.
    return GateError(ErrorCode.NOT_FOUND, f"approval {approval_id} not found")
