"""Each tenant's own corner of a target that several tenants share (a repository, a drive, a channel).

A catalog may point every tenant at the same repository or drive, and the names a step writes to
(branch, file path) come from the plan, often from the request's payload: without a tenant in them,
tenant B asking for `env/dev` would write to, and report, tenant A's branch and pull request. So
connectors put what they write under `pj/<tenant>/` and refuse to read from another tenant's corner.
The tenant comes from the dispatch order, which approvals signed, never from the step's params.
"""

import re

from .base import StepContext, permanent

NAMESPACE = "pj"

# Kept as they are in a segment; anything else is percent-encoded (UTF-8), `%` and `.` included, so
# the segment is a valid git ref component and file name, has no `/`, and two tenants never share one.
_PLAIN = re.compile(r"[A-Za-z0-9_-]")


def tenant_segment(tenant_id: str) -> str:
    """The tenant as one path or ref component: injective, never empty, never containing `/` or `..`."""
    return "".join(ch if _PLAIN.fullmatch(ch) else "".join(f"%{b:02X}" for b in ch.encode()) for ch in tenant_id)


def tenant_prefix(tenant_id: str) -> str:
    """`pj/<tenant>/`: every branch and path a step of this tenant writes starts with it."""
    return f"{NAMESPACE}/{tenant_segment(tenant_id)}/"


def own_name(ctx: StepContext, name: str) -> str:
    """`name` inside the step's tenant's corner (unchanged when it is there already, so a plan that
    names the full branch and one that names the short one meet)."""
    prefix = tenant_prefix(ctx.tenant_id)
    return name if name.startswith(prefix) else prefix + name.lstrip("/")


def check_not_anothers(ctx: StepContext, name: str, *, param: str, what: str) -> str:
    """`name` as given, unless it lies in another tenant's corner (a base branch, a ref to run on)."""
    if name.startswith(f"{NAMESPACE}/") and not name.startswith(tenant_prefix(ctx.tenant_id)):
        raise permanent("invalid_params", f"{what}: param {param!r} names another tenant's {NAMESPACE}/ branch "
                                          "or path; a step reads only its own tenant's and shared ones")
    return name
