from pathlib import Path

import pytest
import yaml

from pj_notifier.catalog import CatalogError, load_catalog, parse_catalog
from tests.unit.notifier.catalog_text import CATALOG

ROOT = Path(__file__).resolve().parents[3]


def test_actions_give_their_stages_time_to_live_and_plan_in_brief() -> None:
    catalog = parse_catalog(yaml.safe_load(CATALOG))
    one = catalog.action("notify.webhook")
    assert [(s.name, s.roles, s.approvals_required) for s in one.stages] == [("approval", ("admin",), 1)]
    assert one.pending_ttl == 7200
    two = catalog.action("environment.create")
    assert [s.name for s in two.stages] == ["review", "sign-off"]
    assert two.plan_in_brief() == "create-branch (github.create_branch), announce (slack.post_message)"
    assert catalog.action("gone.action").stages[0].name == "approval"  # no longer in the catalog


def test_a_route_merges_the_default_tenant_the_tenant_and_the_action() -> None:
    catalog = parse_catalog(yaml.safe_load(CATALOG))
    plain = catalog.route("acme", "environment.create")
    assert plain.remind_after == 4 * 3600 and plain.escalate_after == 8 * 3600
    assert plain.channels == ("slack", "email", "webhook") and plain.slack.channel == "C0APPROVALS"
    assert plain.quiet_hours is None
    action = catalog.route("acme", "notify.webhook")
    assert action.remind_after == 1800 and action.channels == ("email",)
    quiet = catalog.route("quiet", "environment.create")
    assert quiet.quiet_hours is not None and quiet.quiet_hours.timezone == "Europe/Berlin"
    assert quiet.approvers == plain.approvers


def test_people_are_reached_by_their_settings_or_an_email_subject() -> None:
    route = parse_catalog(yaml.safe_load(CATALOG)).route("acme", "environment.create")
    assert route.person("alice").slack == "U0ALICE"
    assert route.person("zoe@example.com").email == "zoe@example.com"
    assert route.person("zoe").email is None
    assert route.escalation_group() == ("dave",)


@pytest.mark.parametrize(("change", "reason"), [
    ("remind_after: 4h", "remind_after: soon"),
    ("escalate_to: leads", "escalate_to: nobody"),
    ("timezone: Europe/Berlin", "timezone: Mars/Olympus"),
    ("channels: [slack, email, webhook]", "channels: [pager]"),
    ("groups: {leads: [dave]}", "groupz: {leads: [dave]}"),
    ('webhooks: ["http://127.0.0.1:9/hook"]', 'webhooks: ["hooks.example.com/pj"]'),
])
def test_bad_notification_settings_stop_the_start_with_what_is_wrong(change: str, reason: str) -> None:
    with pytest.raises(CatalogError, match="notifications"):
        parse_catalog(yaml.safe_load(CATALOG.replace(change, reason)))


def test_no_catalog_configures_nothing() -> None:
    catalog = load_catalog(None)
    assert catalog.route("acme", "x").approvers == {}


def test_the_packaged_default_catalog_reads(tmp_path: Path) -> None:
    catalog = load_catalog(ROOT / "services/approvals/pj_approvals/default_catalog.yaml")
    assert "environment.create" in catalog.actions
    with pytest.raises(CatalogError):
        load_catalog(tmp_path / "missing.yaml")


def test_approvals_reads_the_same_file_with_the_notification_settings_in_it(tmp_path: Path) -> None:
    """The settings live where approvals' strict catalog allows free keys (each tenant's entry)."""
    from pj_approvals.catalog import load_catalog as approvals_load_catalog

    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG)
    approvals = approvals_load_catalog(path)
    assert approvals.tenant_settings("acme")["notifications"]["escalate_to"] == "leads"
    assert load_catalog(path).route("acme", "notify.webhook").remind_after == 1800


def test_tenant_keys_are_compared_in_the_canonical_form_of_the_events() -> None:
    raw = yaml.safe_load(CATALOG)
    raw["tenants"]["Quiet-Ones "] = raw["tenants"].pop("quiet")  # as someone might write it
    catalog = parse_catalog(raw)
    assert catalog.route("quiet-ones", "environment.create").quiet_hours is not None  # the token's form
    raw["tenants"]["bad\u0000tenant"] = {"notifications": {}}
    with pytest.raises(CatalogError, match="tenants"):
        parse_catalog(raw)
