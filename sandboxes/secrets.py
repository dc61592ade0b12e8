"""Credentials that never show themselves: one holder and one scrubber for every provider."""

from __future__ import annotations


class Secret:
    """Holds a credential so that no repr, str, vars() dump or traceback local shows it."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


def scrub(text: str, *secrets: Secret | str | None) -> str:
    """``text`` with every given credential replaced by ``***``."""
    for secret in secrets:
        value = secret.value if isinstance(secret, Secret) else secret
        if value:
            text = text.replace(value, "***")
    return text
