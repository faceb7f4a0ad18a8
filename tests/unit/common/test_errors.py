"""Error codes (pj_common.errors): stable strings, carried by GateError."""

import re

from pj_common.errors import ErrorCode, GateError


def test_codes_are_unique_snake_case_strings() -> None:
    values = [code.value for code in ErrorCode]
    assert len(values) == len(set(values))
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", v) for v in values)
    assert ErrorCode("not_found") is ErrorCode.NOT_FOUND
    assert f"{ErrorCode.PLAN_CHANGED}" == "plan_changed"  # StrEnum: formats as its code


def test_a_gate_error_carries_its_code_and_message() -> None:
    error = GateError(ErrorCode.INVALID_STATE, "approval is not pending")
    assert (error.code, error.message, str(error)) == (ErrorCode.INVALID_STATE, "approval is not pending",
                                                       "approval is not pending")
