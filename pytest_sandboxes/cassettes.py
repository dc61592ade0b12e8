"""Where a test's cassette lives and how it is named."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from .options import Settings

PROVIDER_PARAM = "sandbox_provider_name"
_UNSAFE = re.compile(r"[^\w.\-\[\]]+")


def test_name(item: pytest.Item) -> str:
    """The test's id within its module, without the provider parameter."""
    name = "::".join(item.nodeid.split("::")[1:]) or item.name
    callspec = getattr(item, "callspec", None)
    if callspec is not None and PROVIDER_PARAM in callspec.params:
        provider = str(callspec.params[PROVIDER_PARAM])
        if name.endswith(f"[{provider}]"):
            name = name[: -len(provider) - 2]
        elif name.endswith(f"-{provider}]"):
            name = name[: -len(provider) - 2] + "]"
    name = _UNSAFE.sub("_", name.replace("::", "."))
    if len(name) > 150:
        name = name[:130] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]
    return name


def cassette_path(item: pytest.Item, provider: str, settings: Settings) -> Path:
    """``<test dir>/sandbox_cassettes/<module>/<provider>/<test id>.yaml`` (or under --sandbox-cassette-dir)."""
    module = Path(item.path)
    base = settings.cassette_dir or module.parent / "sandbox_cassettes"
    return base / module.stem / provider / f"{test_name(item)}.yaml"


def rerecord_command(item: pytest.Item) -> str:
    return f"pytest '{item.nodeid}' --sandbox-record-mode=rewrite"
