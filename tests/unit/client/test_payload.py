"""pj_client.payload: `--payload` as inline JSON, @file or @-; always an object, or a clear error."""

import io
import re
from pathlib import Path

import pytest

from pj_client.payload import PayloadError, read_payload


def test_inline_json() -> None:
    assert read_payload('{"message": "hello", "n": 2}') == {"message": "hello", "n": 2}


def test_nothing_given_is_an_empty_payload() -> None:
    assert read_payload(None) == {}
    assert read_payload("") == {}


def test_at_file(tmp_path: Path) -> None:
    path = tmp_path / "payload.json"
    path.write_text('{"name": "smoke-test-env", "config": {"size": "s"}}\n', encoding="utf-8")
    assert read_payload(f"@{path}") == {"name": "smoke-test-env", "config": {"size": "s"}}


def test_at_dash_reads_standard_input() -> None:
    assert read_payload("@-", stdin=io.StringIO('{"from": "stdin"}')) == {"from": "stdin"}


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(PayloadError, match=f"^{re.escape(str(missing))}: no such file$"):
        read_payload(f"@{missing}")


def test_an_empty_file_name_is_refused() -> None:
    with pytest.raises(PayloadError, match="name a file after @"):
        read_payload("@")


def test_bad_json_says_where(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"a": 1,\n "b": }')
    with pytest.raises(PayloadError, match=r"broken.json: not JSON: .* line 2 column"):
        read_payload(f"@{path}")
    with pytest.raises(PayloadError, match=r"^--payload: not JSON"):
        read_payload("{'single': 'quotes'}")


@pytest.mark.parametrize("text", ["[1, 2]", '"text"', "3", "null"])
def test_the_payload_must_be_an_object(text: str) -> None:
    with pytest.raises(PayloadError, match="must be a JSON object"):
        read_payload(text)


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"name": "café"}'.encode("latin-1"))
    with pytest.raises(PayloadError, match="cannot read it"):
        read_payload(f"@{path}")
