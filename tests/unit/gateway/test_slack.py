"""pj_gateway.slack's pure parts: Slack's request signature, the interaction payloads, the note's modal, and
the user map's settings. The endpoint itself is tested against the running system
(tests/e2e/test_slack_decisions.py)."""

import json
import time
from typing import Any

import pytest
from pydantic import ValidationError

from pj_common.errors import ErrorCode, GateError
from pj_common.principal import Role
from pj_gateway.settings import SlackSettings
from pj_gateway.slack import MAX_AGE_S, Kind, parse_interaction, reject_modal, signature_problem
from tests.support.slack_api import SlackState, sign_interaction

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
NOW = 1_700_000_000


def check(body: bytes, headers: dict[str, str], *, secret: str = SECRET, now: float = NOW) -> str | None:
    return signature_problem(secret, body=body, now=now, timestamp=headers.get("X-Slack-Request-Timestamp"),
                             signature=headers.get("X-Slack-Signature"))


def test_slacks_documented_example_verifies() -> None:
    """The worked example of Slack's "Verifying requests from Slack" (secret, timestamp, body, signature)."""
    body = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&"
            b"channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&"
            b"response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
            b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
    headers = {"X-Slack-Request-Timestamp": "1531420618",
               "X-Slack-Signature": "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"}
    assert check(body, headers, now=1531420618) is None


def test_a_signed_request_verifies() -> None:
    body, headers = sign_interaction({"type": "block_actions"}, secret=SECRET, timestamp=NOW)
    assert check(body, headers) is None


def test_another_secret_or_a_changed_body_is_refused() -> None:
    body, headers = sign_interaction({"type": "block_actions"}, secret=SECRET, timestamp=NOW)
    assert check(body, headers, secret=SECRET + "x") == "the signature does not match"
    assert check(body + b"&x=1", headers) == "the signature does not match"
    assert check(body, {**headers, "X-Slack-Signature": "v1=" + headers["X-Slack-Signature"][3:]}) is not None


def test_a_timestamp_that_does_not_match_its_signature_is_refused() -> None:
    """Replaying an old body with a fresh timestamp: the timestamp is signed too."""
    body, headers = sign_interaction({"type": "block_actions"}, secret=SECRET, timestamp=NOW - 3600)
    assert check(body, {**headers, "X-Slack-Request-Timestamp": str(NOW)}) == "the signature does not match"


@pytest.mark.parametrize("age", [MAX_AGE_S + 1, -(MAX_AGE_S + 1), 86400])
def test_a_request_more_than_five_minutes_off_is_refused(age: int) -> None:
    body, headers = sign_interaction({"type": "block_actions"}, secret=SECRET, timestamp=NOW - age)
    assert "five minutes" in (check(body, headers) or "")


def test_a_request_just_within_five_minutes_verifies() -> None:
    body, headers = sign_interaction({"type": "block_actions"}, secret=SECRET, timestamp=NOW - MAX_AGE_S)
    assert check(body, headers) is None


@pytest.mark.parametrize("headers", [
    {}, {"X-Slack-Request-Timestamp": str(NOW)}, {"X-Slack-Signature": "v0=00"},
    {"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=00"},
    # Digits, but not ASCII ones (Arabic-Indic), which int() would accept.
    {"X-Slack-Request-Timestamp": "\u0661\u0667\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660",
     "X-Slack-Signature": "v0=00"},
])
def test_missing_or_malformed_headers_are_refused(headers: dict[str, str]) -> None:
    assert check(b"payload=%7B%7D", headers) is not None


def form(payload: Any) -> bytes:
    return sign_interaction(payload, secret=SECRET)[0]


def click(action_id: str, value: str = "0b7e4c2e-1111-4222-8333-444455556666") -> dict[str, Any]:
    return SlackState(token="xoxb").button_click(user_id="U0ALICE", action_id=action_id, value=value,
                                                 channel_id="C0APPROVALS", message_ts="1.000001")


def test_approve_and_reject_buttons_parse() -> None:
    approve = parse_interaction(form(click("pj_approve")))
    assert approve is not None and approve.kind is Kind.APPROVE and approve.user_id == "U0ALICE"
    assert (approve.approval_id, approve.channel) == ("0b7e4c2e-1111-4222-8333-444455556666", "C0APPROVALS")
    reject = parse_interaction(form(click("pj_reject")))
    assert reject is not None and reject.kind is Kind.REJECT and reject.trigger_id


def test_the_modal_submission_carries_the_approval_and_the_note() -> None:
    view = {**reject_modal("0b7e4c2e", "C0APPROVALS"), "id": "V1"}
    payload = SlackState(token="xoxb").submit_view(view, user_id="U0ALICE", values={"note": "  not on a Friday "})
    submitted = parse_interaction(form(payload))
    assert submitted is not None and submitted.kind is Kind.REJECT_WITH_NOTE
    assert (submitted.approval_id, submitted.channel, submitted.note) == ("0b7e4c2e", "C0APPROVALS", "not on a Friday")


def test_interactions_of_other_kinds_are_ignored() -> None:
    assert parse_interaction(form(click("someone_elses_button"))) is None
    assert parse_interaction(form({"type": "view_closed", "user": {"id": "U0ALICE"}})) is None
    other_view = {"type": "view_submission", "user": {"id": "U0ALICE"}, "view": {"callback_id": "other"}}
    assert parse_interaction(form(other_view)) is None


@pytest.mark.parametrize("body", [
    b"", b"payload=not-json", b"other=1", b"payload=%5B%5D", b"\xff\xfe",
    form({"type": "block_actions", "actions": [{"action_id": "pj_approve", "value": "x"}]}),  # no user
    form({"type": "block_actions", "user": {"id": "U1"}, "actions": [{"action_id": "pj_approve"}]}),  # no value
    form({"type": "view_submission", "user": {"id": "U1"},
          "view": {"callback_id": "pj_reject", "private_metadata": "{}", "state": {"values": {}}}}),
])
def test_a_malformed_interaction_is_a_validation_error(body: bytes) -> None:
    with pytest.raises(GateError) as info:
        parse_interaction(body)
    assert info.value.code is ErrorCode.VALIDATION_ERROR


def test_the_modal_requires_a_note_that_fits_a_decision() -> None:
    modal = reject_modal("a1", None)
    [block] = modal["blocks"]
    assert block["element"]["min_length"] == 1 and block["element"]["max_length"] <= 4000 - len("via Slack: ")
    assert json.loads(modal["private_metadata"]) == {"approvalId": "a1", "channel": None}


def test_the_user_map_reads_json_and_ignores_the_case_of_emails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_SLACK_USER_MAP", json.dumps({
        "U0ALICE": {"sub": "alice", "role": "admin", "tenant": "acme"},
        "Bob@Example.COM": {"sub": "bob", "role": "approver", "tenant": "acme"}}))
    users = SlackSettings(env="dev").slack_user_map
    assert users["U0ALICE"].sub == "alice" and users["bob@example.com"].role is Role.APPROVER


def test_a_user_map_entry_needs_a_known_role(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJ_SLACK_USER_MAP", json.dumps({"U0X": {"sub": "x", "role": "root", "tenant": "acme"}}))
    with pytest.raises(ValidationError):
        SlackSettings(env="dev")


def test_the_slack_api_must_be_https_outside_dev() -> None:
    with pytest.raises(ValidationError, match="https"):
        SlackSettings(env="prod", slack_api_url="http://slack.example.com/api")
    assert SlackSettings(env="prod", slack_api_url="http://127.0.0.1:1/api", connector_allow_http=True)


def test_the_signing_secret_may_come_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    monkeypatch.setenv("PJ_SLACK_SIGNING_SECRET_FILE", str(path))
    secret = SlackSettings(env="dev").slack_signing_secret
    assert secret is not None and secret.get_secret_value() == SECRET


def test_a_fresh_signature_uses_the_current_time() -> None:
    _, headers = sign_interaction({}, secret=SECRET)
    assert abs(int(headers["X-Slack-Request-Timestamp"]) - time.time()) < 5
