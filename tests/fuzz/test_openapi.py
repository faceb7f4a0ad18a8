"""Schemathesis against the gateway's own /openapi.json, on a real system, with a valid token for each role:
no 5xx, every response (status, headers, content type, body) as the spec says, and data the spec calls
invalid refused with a 4xx.

`make test` runs a short pass (5 examples per operation, PJ_FUZZ_EXAMPLES); `make fuzz` a long one
(PJ_FUZZ_FULL=1: every phase, stateful included, 100 examples per operation). PJ_FUZZ_SEED picks the seed.
"""

import asyncio
import os
import sys
from pathlib import Path

import pytest

from pj_common.auth import mint_token
from tests.support.system import System

from .conftest import SECRET, TENANT

ROLES = ("admin", "approver", "operator", "viewer")
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "negative_data_rejection")
# `make fuzz` sets PJ_FUZZ_FULL=1: every phase for every role, 100 examples per operation by default.
FULL = os.environ.get("PJ_FUZZ_FULL") == "1"
EXAMPLES = int(os.environ.get("PJ_FUZZ_EXAMPLES", "100" if FULL else "5"))
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def phases(role: str) -> str:
    """The short run keeps the boundary-value (coverage) phase for admin, who reaches every route."""
    if FULL:
        return "examples,coverage,fuzzing,stateful"
    return "examples,coverage,fuzzing" if role == "admin" else "examples,fuzzing"


def schemathesis_command(system: System, *, role: str, token: str, report: Path) -> list[str]:
    return [
        str(SCHEMATHESIS), "run", f"{system.base_url}/openapi.json", "--phases", phases(role),
        "--checks", ",".join(CHECKS), "--max-examples", str(EXAMPLES),
        "--seed", os.environ.get("PJ_FUZZ_SEED", "4711"),
        "--header", f"Authorization: Bearer {token}", "--workers", "1", "--request-timeout", "15",
        # A live event stream answers until the token expires: not a request/response operation to fuzz.
        "--exclude-path", "/api/events",
        "--report", "junit", "--report-junit-path", str(report),
        "--suppress-health-check", "all", "--warnings", "off",
    ]


async def fuzz_as(system: System, role: str, report: Path) -> tuple[int, str]:
    """One schemathesis run with a valid token of this role: its exit code and its output."""
    token = mint_token(SECRET, subject=f"fuzz-{role}", tenant=TENANT, role=role, issuer="puddlejumper",
                       audience="pj-approval-gate", ttl_s=3600)
    proc = await asyncio.create_subprocess_exec(
        *schemathesis_command(system, role=role, token=token, report=report),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
    out, _ = await asyncio.wait_for(proc.communicate(), 540)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.e2e
@pytest.mark.timeout(600)
async def test_the_api_keeps_to_its_spec_for_every_role(fuzz_system: System, tmp_path: Path) -> None:
    # The roles at once: each run mostly waits on the system, so together they take little more than one.
    results = await asyncio.gather(*(fuzz_as(fuzz_system, role, tmp_path / f"{role}.xml") for role in ROLES))
    fuzz_system.check_alive()
    failed = {role: out for role, (code, out) in zip(ROLES, results, strict=True) if code != 0}
    assert not failed, "\n\n".join(f"schemathesis as {role}:\n{out[-12000:]}" for role, out in failed.items())
