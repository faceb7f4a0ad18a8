"""Identities (subjects and tenants) in one canonical form.

Separation of duties compares the requester with the decider, and rows are filed by tenant: if `Alice`
and `alice` (or a name with a trailing space, or the same letters in another Unicode normal form) were
two people, one person could approve their own request. Every identity taken from a token goes through
`canonical_identity` before anything stores or compares it.
"""

import unicodedata

MAX_IDENTITY_LENGTH = 256


class IdentityError(ValueError):
    """An identity that is not a usable identifier; the message never repeats the value."""


def canonical_identity(value: object, *, case_insensitive: bool = True) -> str:
    """`value` as Unicode NFC, trimmed, and case-folded when the identity provider ignores case.

    Raises `IdentityError` unless it is a non-empty printable string of at most MAX_IDENTITY_LENGTH
    characters (no control, format or line-break characters: they hide in logs and look-alike names).
    """
    if not isinstance(value, str):
        raise IdentityError("is not a string")
    text = unicodedata.normalize("NFC", value).strip()
    if case_insensitive:
        # Case folding can leave a string that is no longer NFC (e.g. some Greek letters), so normalize again.
        text = unicodedata.normalize("NFC", text.casefold())
    if not text:
        raise IdentityError("is empty")
    if len(text) > MAX_IDENTITY_LENGTH:
        raise IdentityError(f"is longer than {MAX_IDENTITY_LENGTH} characters")
    if not text.isprintable():
        raise IdentityError("has control or unprintable characters")
    return text
