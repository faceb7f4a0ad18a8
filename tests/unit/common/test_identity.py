"""Canonical identities (pj_common.identity): one person, one spelling."""

import pytest

from pj_common.identity import MAX_IDENTITY_LENGTH, IdentityError, canonical_identity


@pytest.mark.parametrize(("raw", "canonical"), [
    ("Alice", "alice"), ("  alice\t", "alice"), ("ALICE@Example.COM", "alice@example.com"),
    ("Ame\u0301lie", "am\u00e9lie"), ("Am\u00e9lie", "am\u00e9lie"), ("Stra\u00dfe", "strasse"),
])
def test_spellings_of_one_identity_meet(raw: str, canonical: str) -> None:
    assert canonical_identity(raw) == canonical


def test_case_kept_when_the_identity_provider_tells_cases_apart() -> None:
    assert canonical_identity(" Ame\u0301lie ", case_insensitive=False) == "Am\u00e9lie"


@pytest.mark.parametrize("raw", ["", "   ", "a\x00b", "a\nb", "a\u200bb", "a\u202eb", "x" * (MAX_IDENTITY_LENGTH + 1),
                                 42, None, ["alice"]])
def test_unusable_identities_are_refused(raw: object) -> None:
    with pytest.raises(IdentityError) as info:
        canonical_identity(raw)
    assert str(raw) not in str(info.value) or raw in ("", None)
