"""The JSON check on its own: the limits hold at their boundaries."""

import json

import pytest

from pj_gateway.request_limits import check_json


def nested(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


def test_depth_up_to_the_limit_passes_and_one_more_is_refused() -> None:
    assert check_json(nested(4), max_depth=4, max_string=10) is None
    assert check_json(nested(5), max_depth=4, max_string=10) == "JSON nested deeper than 4 levels"


def test_objects_count_as_levels_too() -> None:
    assert check_json(b'{"a": {"b": {"c": 1}}}', max_depth=3, max_string=10) is None
    assert check_json(b'{"a": {"b": {"c": {}}}}', max_depth=3, max_string=10) is not None


def test_strings_up_to_the_limit_pass() -> None:
    assert check_json(json.dumps({"k": "x" * 10}).encode(), max_depth=4, max_string=10) is None
    assert "longer than 10" in str(check_json(json.dumps({"k": "x" * 11}).encode(), max_depth=4, max_string=10))


@pytest.mark.parametrize("number", [b"0", b"-1.5e10", b"1e308", b"12345678901234567890"])
def test_finite_numbers_pass(number: bytes) -> None:
    assert check_json(b'{"n": ' + number + b"}", max_depth=4, max_string=10) is None


@pytest.mark.parametrize("text", ["plain", "tab\tand\nnewline\r\n", "unicode ✓ é 中", "emoji 😀"])
def test_ordinary_text_passes(text: str) -> None:
    assert check_json(json.dumps({"t": text}).encode(), max_depth=4, max_string=100) is None


@pytest.mark.parametrize("char", ["\x00", "\x1f", "\x7f", "\x85", "\ud800", "\udfff"])
def test_control_characters_and_lone_surrogates_are_refused(char: str) -> None:
    assert "control characters" in str(check_json(json.dumps({"t": f"a{char}b"}).encode(), max_depth=4,
                                                  max_string=100))


def test_a_key_twice_in_one_object_is_refused() -> None:
    assert "twice" in str(check_json(b'{"status": "rejected", "status": "approved"}', max_depth=4, max_string=10))
    assert check_json(b'{"a": {"k": 1}, "b": {"k": 2}}', max_depth=4, max_string=10) is None
