"""Each tenant's own corner of a shared target: the segment is injective and safe in refs and paths."""

import re

import pytest

from pj_common.messages import PlanStep
from pj_dispatcher.connectors.base import ConnectorError, StepContext
from pj_dispatcher.connectors.tenancy import check_not_anothers, own_name, tenant_prefix, tenant_segment

# What git refuses in a ref component (git check-ref-format), and what no path segment may be.
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\/]|\.\.|@\{|^\.|\.lock$")


def ctx(tenant: str) -> StepContext:
    return StepContext("appr-1", tenant, "act", PlanStep(step_id="s", connector="github", operation="x", params={}))


@pytest.mark.parametrize("tenant", ["acme", "Acme_2-b", "a.b", "..", ".lock", "ünïcode", "a/b", "a b", "%41", "x@{y"])
def test_a_segment_is_a_valid_ref_component_without_a_slash(tenant: str) -> None:
    segment = tenant_segment(tenant)
    assert segment and not _BAD_REF.search(segment)


def test_plain_tenants_keep_their_name_and_no_two_tenants_share_a_segment() -> None:
    assert tenant_segment("acme-1_x") == "acme-1_x"
    tenants = ["a/b", "a%2Fb", "a.b", "a%2Eb", "A", "a", "ä", "a\u0308"]
    assert len({tenant_segment(t) for t in tenants}) == len(tenants)


def test_own_names_are_under_the_tenants_prefix_once() -> None:
    assert tenant_prefix("acme") == "pj/acme/"
    assert own_name(ctx("acme"), "env/dev") == "pj/acme/env/dev"
    assert own_name(ctx("acme"), "pj/acme/env/dev") == "pj/acme/env/dev"  # already its own
    assert own_name(ctx("globex"), "pj/acme/env/dev") == "pj/globex/pj/acme/env/dev"
    assert own_name(ctx("a/b"), "x") == "pj/a%2Fb/x"


def test_another_tenants_corner_is_refused_and_shared_names_pass() -> None:
    assert check_not_anothers(ctx("acme"), "main", param="base", what="op") == "main"
    assert check_not_anothers(ctx("acme"), "pj/acme/env", param="base", what="op") == "pj/acme/env"
    with pytest.raises(ConnectorError) as err:
        check_not_anothers(ctx("globex"), "pj/acme/env", param="base", what="op")
    assert (err.value.code, err.value.retryable) == ("invalid_params", False)
