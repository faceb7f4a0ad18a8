"""Dead-letter headers, how they are read back (every value checked), scrubbing, and the table."""

from datetime import UTC, datetime
from typing import Any, cast

import pytest
from aio_pika.abc import AbstractIncomingMessage

from pj_common.deadletters import (
    COUNT_MAX,
    LAST_ERROR_MAX,
    DeadLetter,
    DeadReason,
    dead_letter_headers,
    format_table,
    message_id_of,
    scrub,
)

NOW = 1_800_000_000.0


class Letter:
    def __init__(self, headers: dict[str, Any] | None, *, message_id: str | None = "m-1",
                 body: bytes = b"{}") -> None:
        self.headers = headers
        self.message_id = message_id
        self.body = body


def read(headers: dict[str, Any] | None, **kwargs: Any) -> DeadLetter:
    return DeadLetter.read(cast(AbstractIncomingMessage, Letter(headers, **kwargs)), now=NOW)


def test_headers_say_why_and_replace_earlier_death_records() -> None:
    headers = dead_letter_headers(
        {"x-pj-signature": "sig", "x-delivery-count": 4, "x-death": [{"queue": "old"}], "x-pj-dead-reason": "x"},
        reason=DeadReason.PERMANENT, queue="pj.dispatch", deliveries=5, error="Permanent: unknown step",
        now=NOW)
    assert headers == {"x-pj-signature": "sig", "x-pj-dead-reason": "permanent",
                       "x-pj-original-queue": "pj.dispatch", "x-pj-delivery-count": 5,
                       "x-pj-last-error": "Permanent: unknown step", "x-pj-dead-at": int(NOW)}


@pytest.mark.parametrize(("text", "leaked"), [
    ("connect to amqp://guest:s3cr3t-pass@rabbit:5672/ failed", "s3cr3t-pass"),
    ("401 with Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
    ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl rejected", "c2lnbmF0dXJl"),
    ("password=hunter2 wrong", "hunter2"),
    ("the configured secret my-webhook-key leaked", "my-webhook-key"),
])
def test_scrub_masks_secrets_and_credentials(text: str, leaked: str) -> None:
    scrubbed = scrub(text, ["my-webhook-key"])
    assert leaked not in scrubbed and "***" in scrubbed


def test_scrub_truncates_and_drops_control_characters() -> None:
    scrubbed = scrub("x\x00y\n" + "z" * 2000)
    assert len(scrubbed) == LAST_ERROR_MAX and scrubbed.endswith("…")
    assert "\x00" not in scrubbed and scrubbed.startswith("x y\n")


def test_reading_the_transports_headers() -> None:
    letter = read(dead_letter_headers(None, reason=DeadReason.INVALID, queue="pj.dispatch.results",
                                      deliveries=1, error="ValidationError: 1 error", now=NOW - 90))
    assert letter == DeadLetter(id="m-1", original_queue="pj.dispatch.results", reason="invalid",
                                delivery_count=1, dead_at=NOW - 90, last_error="ValidationError: 1 error",
                                replays=0)
    assert letter.age_s(NOW) == 90


def test_reading_a_broker_dead_letter_from_x_death() -> None:
    died = datetime.fromtimestamp(NOW - 3600, UTC)
    letter = read({"x-death": [{"queue": "pj.dispatch", "reason": "delivery_limit", "count": 1, "time": died}]})
    assert (letter.original_queue, letter.reason, letter.dead_at) == ("pj.dispatch", "delivery_limit", NOW - 3600)
    assert letter.delivery_count is None and letter.last_error is None


@pytest.mark.parametrize("headers", [
    {"x-pj-dead-reason": "permanent", "x-pj-delivery-count": "7", "x-pj-dead-at": "yesterday"},
    {"x-pj-dead-reason": "permanent", "x-pj-delivery-count": True, "x-pj-dead-at": NOW * 10},
    {"x-pj-dead-reason": "permanent", "x-pj-delivery-count": -3, "x-pj-dead-at": -1},
    {"x-pj-dead-reason": "permanent", "x-pj-delivery-count": COUNT_MAX + 1, "x-pj-dead-at": None},
    {"x-pj-dead-reason": "permanent", "x-pj-delivery-count": 1.5, "x-pj-original-queue": 42},
    {"x-death": "not a list"},
    {"x-death": [17]},
])
def test_malformed_header_values_read_as_unknown(headers: dict[str, Any]) -> None:
    letter = read(headers)
    assert letter.delivery_count is None and letter.dead_at is None and letter.original_queue is None


def test_an_id_without_a_message_id_is_a_digest_of_the_body() -> None:
    one = message_id_of(cast(AbstractIncomingMessage, Letter(None, message_id=None, body=b"a")))
    assert one.startswith("sha256:") and one == message_id_of(
        cast(AbstractIncomingMessage, Letter(None, message_id="", body=b"a")))
    assert one != message_id_of(cast(AbstractIncomingMessage, Letter(None, message_id=None, body=b"b")))


def test_the_table_has_a_row_per_dead_letter() -> None:
    letters = [read(dead_letter_headers(None, reason=DeadReason.PERMANENT, queue="pj.dispatch", deliveries=3,
                                        error="Permanent: no", now=NOW - 7200)),
               read({"x-death": [{"queue": "pj.dispatch.results", "reason": "delivery_limit"}]},
                    message_id="m-2")]
    lines = format_table(letters, now=NOW).splitlines()
    assert lines[0].split() == ["ID", "ORIGINAL", "QUEUE", "REASON", "DELIVERIES", "AGE", "LAST", "ERROR"]
    assert lines[1].split()[:5] == ["m-1", "pj.dispatch", "permanent", "3", "2h"]
    assert lines[2].split() == ["m-2", "pj.dispatch.results", "delivery_limit", "?", "?"]
    assert lines[-1] == "2 dead letter(s)"
