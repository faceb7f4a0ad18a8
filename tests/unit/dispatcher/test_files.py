"""One rule for the bytes a connector writes (pj_dispatcher.connectors.files)."""

import json

import pytest

from pj_dispatcher.connectors.files import file_content


@pytest.mark.parametrize("text", ["", "no newline", "# Notes\nhéllo\n", "a\r\nb"])
def test_a_string_is_written_byte_for_byte(text: str) -> None:
    content = file_content(text)
    assert content.data == text.encode() and content.media_type.startswith("text/plain")


@pytest.mark.parametrize("value", [{"b": [1, 2], "a": {"z": True, "y": None}}, [1, "Zoë"], 7, None, True])
def test_any_other_value_is_pretty_sorted_json_with_one_final_newline(value: object) -> None:
    content = file_content(value)
    assert content.media_type == "application/json"
    assert content.data.endswith(b"\n") and not content.data.endswith(b"\n\n")
    assert json.loads(content.data) == value
    assert content.data == (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
