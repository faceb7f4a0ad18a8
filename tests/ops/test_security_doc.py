"""docs/security.md: every threat row names a defence and tests that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"


def rows() -> list[list[str]]:
    lines = [line for line in DOC.read_text().splitlines() if line.startswith("|")]
    table = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))] for line in lines]
    return [row for row in table if row != ["threat", "defence", "test"] and not set(row[0]) <= set("-: ")]


def test_every_row_has_a_threat_a_defence_and_a_test() -> None:
    found = rows()
    assert found, "docs/security.md has no threat table"
    for row in found:
        assert len(row) == 3 and all(row), f"threat | defence | test, all filled: {row}"
        assert "tests/" in row[2], f"{row[0]}: name the test that attacks it"


def test_the_named_tests_exist() -> None:
    for row in rows():
        path = None
        for ref in re.findall(r"`([^`]+)`", row[2]):
            if ref.startswith("tests/"):
                path, _, name = ref.partition("::")
            else:
                name = ref.removeprefix("::")
            assert path is not None, f"{ref}: a test file first"
            source = ROOT / path
            assert source.is_file(), f"{row[0]}: {path} does not exist"
            if name:
                assert re.search(rf"def {re.escape(name)}\(", source.read_text()), f"{path} has no {name}"
