"""`sandboxes run --file main.rs` as an ordinary user when root's Rust lives under /root.

The caller cannot enter /root, so rustup's toolchains there are out of its
reach: the CLI must say so in one line (ToolchainMissing, exit 127), naming
rustc and how to install it, never fail in a confusing way. /root is left as
it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandboxes
from tests.as_user import as_user, ordinary_user

from .conftest import one_line_error

PACKAGE = Path(sandboxes.__file__).parent


@pytest.fixture
def readable_copy() -> Iterator[Path]:
    """This checkout's package where the ordinary user can read it (the tree may sit under /root)."""
    root = Path(tempfile.mkdtemp(prefix="sandboxes-as-user-", dir="/tmp"))
    try:
        shutil.copytree(PACKAGE, root / "sandboxes", ignore=shutil.ignore_patterns("__pycache__"))
        (root / "state").mkdir()
        (root / "main.rs").write_text('fn main() { println!("rust ok"); }\n')
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_rust_under_root_is_a_clear_toolchain_missing_for_an_ordinary_user(readable_copy: Path) -> None:
    user, python = ordinary_user()
    rustc = shutil.which("rustc")
    if rustc is None or not rustc.startswith("/root/"):
        pytest.skip(f"root's rustc is not under /root ({rustc}): nothing out of an ordinary user's reach")
    root_mode = os.stat("/root").st_mode
    for path in (readable_copy, *readable_copy.rglob("*")):
        os.chown(path, user.pw_uid, user.pw_gid)
    readable_copy.chmod(0o755)
    env = {
        "PATH": f"{os.path.dirname(python)}:{os.environ['PATH']}",  # root's PATH: /root/.cargo/bin and all
        "HOME": user.pw_dir if os.path.isdir(user.pw_dir) else str(readable_copy),
        "PYTHONPATH": str(readable_copy),
        "SANDBOXES_LOCAL_STATE_DIR": str(readable_copy / "state"),
        "LANG": "C.UTF-8",
    }
    command = [python, "-c", "from sandboxes.cli import main; main()", "run", "--file", str(readable_copy / "main.rs")]
    result = subprocess.run(as_user(user, command, env), capture_output=True, timeout=120, cwd="/tmp")
    assert result.returncode == 127, result.stderr.decode()
    line = one_line_error(result)
    assert "cannot run rust: 'rustc'" in line
    assert "rustup" in line and "apt-get install rustc cargo" in line  # how to install it
    assert "/root/.cargo/bin" in line and f"which user {user.pw_name} cannot enter" in line  # why the host's is out of reach
    assert not any((readable_copy / "state").glob("sb-*")), "the sandbox was not destroyed"
    assert os.stat("/root").st_mode == root_mode  # /root is left as it was
