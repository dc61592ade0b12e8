"""Callers' arguments, checked once at the boundary, before anything runs.

A caller's mistake is a ``TypeError`` or ``ValueError`` that names the
argument and what was wrong, raised before any side effect: never a provider
error (which would be retried, fail over and count against the circuit), and
never a silent reinterpretation (bytes in argv run as their repr, a string of
setup commands run character by character).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .models import Command


def _no_nul(text: str, what: str) -> str:
    if "\0" in text:
        raise ValueError(f"{what} contains a NUL byte, which no command, path or variable can hold: {text[:60]!r}")
    return text


def command(value: Any, what: str = "command") -> Command:
    """A string (run by ``sh -c``) or a list of arguments (run directly), each a str or a path."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{what} is empty: nothing to run")
        return _no_nul(value, what)
    if isinstance(value, bytes | bytearray) or not isinstance(value, Sequence):
        raise TypeError(f"{what} must be a string or a list of strings, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} is an empty list: give at least the program to run")
    argv = []
    for index, part in enumerate(value):
        if not isinstance(part, str | os.PathLike):
            raise TypeError(f"{what}[{index}] must be a string, not {type(part).__name__} ({part!r})")
        argv.append(_no_nul(str(os.fspath(part)), f"{what}[{index}]"))
    return argv


def environment(value: Any, what: str = "env") -> dict[str, str]:
    """Variable names without ``=`` or NUL, and string values."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping of names to strings, not {type(value).__name__}")
    checked = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key:
            raise ValueError(f"{what} has an invalid variable name {key!r}: a name is a non-empty string without '='")
        if not isinstance(item, str):
            raise TypeError(f"{what}[{key!r}] must be a string, not {type(item).__name__} ({item!r}); convert it with str()")
        checked[_no_nul(key, f"{what} name")] = _no_nul(item, f"{what}[{key!r}]")
    return checked


def labels(value: Any, what: str = "labels") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping such as {{'project': 'demo'}}, not {type(value).__name__} ({value!r})")
    return {_no_nul(str(k), f"{what} key"): _no_nul(str(v), f"{what}[{k!r}]") for k, v in value.items()}


def path(value: Any, what: str = "path") -> str:
    """A str or ``pathlib`` path, not empty, without NUL."""
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{what} must be a string or a path, not {type(value).__name__} ({value!r})")
    text = os.fspath(value)
    if not isinstance(text, str) or not text:
        raise ValueError(f"{what} must be a non-empty text path, not {value!r}")
    return _no_nul(text, what)


def optional_path(value: Any, what: str) -> str | None:
    return None if value is None else path(value, what)


def seconds(value: Any, what: str) -> float | None:
    """None, or a finite positive number of seconds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__} ({value!r})")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number of seconds above 0, not {value!r}")
    return float(value)


def positive(value: Any, what: str, kind: type = float) -> Any:
    """None, or a positive finite number (an int where ``kind`` is int)."""
    if value is None:
        return None
    allowed = int if kind is int else int | float
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise TypeError(f"{what} must be a {'whole ' if kind is int else ''}number, not {type(value).__name__} ({value!r})")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be above 0, not {value!r} (leave it unset for the provider's default)")
    return value


def stdin(value: Any) -> bytes | str | None:
    if value is None or isinstance(value, str | bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"stdin must be bytes or a string, not {type(value).__name__} ({value!r})")


def data(value: Any, what: str = "data") -> bytes:
    """A file's contents: bytes or text (written as UTF-8)."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or a string, not {type(value).__name__} ({value!r})")


def commands(value: Any, what: str) -> list[str]:
    """A list of shell commands (a single string would run character by character)."""
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(f"{what} must be a list of commands such as ['pip install x'], not {type(value).__name__} ({value!r})")
    checked = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise TypeError(f"{what}[{index}] must be a string, not {type(item).__name__} ({item!r})")
        checked.append(_no_nul(item, f"{what}[{index}]"))
    return checked


def sandbox_id(value: Any) -> str:
    """A sandbox's id: a non-empty string without NUL."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"sandbox_id must be a sandbox's id (a non-empty string), not {value!r}")
    return _no_nul(value, "sandbox_id")
