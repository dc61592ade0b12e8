"""Running part of the suite as an ordinary user when the suite runs as root (as CI does)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def ordinary_user() -> tuple[pwd.struct_passwd, str]:
    """A non-root user and a Python it can run with this project's dependencies, or skip saying why not.

    CI makes the user ``sbtest`` with its own virtualenv (see .ci/run).
    """
    if os.geteuid() != 0:
        pytest.skip("run as root: the test switches to an ordinary user")
    candidates = []
    try:
        user = pwd.getpwnam("sbtest")
        candidates.append((user, f"{user.pw_dir}/venv/bin/python3"))
    except KeyError:
        pass
    candidates.append((pwd.getpwnam("nobody"), sys.executable))
    for user, python in candidates:
        check = subprocess.run(as_user(user, [python, "-c", "import anyio, click, yaml"], {"PATH": "/usr/bin:/bin"}), capture_output=True)
        if check.returncode == 0:
            return user, python
    pytest.skip("no ordinary user can run a Python with this project's dependencies (a user 'sbtest' with ~/venv, as .ci/run makes)")


def as_user(user: pwd.struct_passwd, argv: list[str], env: dict[str, str]) -> list[str]:
    """``argv`` as ``user``, with exactly ``env``."""
    assignments = [f"{k}={v}" for k, v in env.items()]
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "env", "-i", *assignments, *argv]


def readable_copy(user: pwd.struct_passwd, parts: Iterable[str]) -> Path:
    """A copy of these parts of the checkout that ``user`` owns (the checkout may sit under /root)."""
    root = Path(tempfile.mkdtemp(prefix="sandboxes-as-user-", dir="/tmp"))
    for part in parts:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, root / part, ignore=shutil.ignore_patterns("__pycache__", "sandbox_cassettes"))
        else:
            shutil.copy2(source, root / part)
    for path in (root, *root.rglob("*")):
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    root.chmod(0o755)
    return root
