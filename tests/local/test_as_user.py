"""The local provider's own suite, run again as an ordinary user.

CI runs as root, where the local provider works without a user namespace;
an ordinary user's sandboxes take the other path (bubblewrap in a user
namespace, the agent sharing the workload's uid). Both must hold.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess

from tests.as_user import as_user, ordinary_user, readable_copy


def delegated_cgroup(user: pwd.struct_passwd) -> str | None:
    """``/<user>`` when an administrator delegated that cgroup to the user (CI does, see .ci/run)."""
    candidates = [f"/sys/fs/cgroup/{h}/{user.pw_name}" for h in ("memory", "pids")]
    if not all(os.path.isdir(c) for c in candidates):
        candidates = [f"/sys/fs/cgroup/{user.pw_name}"]
    if all(os.path.isdir(c) and os.stat(c).st_uid == user.pw_uid for c in candidates):
        return f"/{user.pw_name}"
    return None


def test_the_local_suite_passes_as_an_ordinary_user() -> None:
    user, python = ordinary_user()
    copy = readable_copy(user, ["sandboxes", "pytest_sandboxes", "tests", "pyproject.toml", "README.md"])
    try:
        env = {
            # ~/.local/bin first: CI puts a tool there (bun), as pip --user does.
            "PATH": f"{user.pw_dir}/.local/bin:{os.path.dirname(python)}:/usr/local/bin:/usr/bin:/bin",
            "HOME": user.pw_dir,
            "PYTHONPATH": str(copy),
            "LANG": "C.UTF-8",
        }
        delegated = delegated_cgroup(user)
        if delegated:
            env["SANDBOXES_CGROUP_PARENT"] = delegated
        suites = ["tests/local", "tests/conformance", "tests/test_languages.py", "tests/test_judging.py", "tests/test_embedded.py"]
        selection = [*suites, "-k", "local or not (e2b or modal or daytona or cloudflare)"]
        command = [python, "-m", "pytest", *selection, "-q", "-p", "no:cacheprovider", "-n", "0"]
        done = subprocess.run(as_user(user, command, env), cwd=copy, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"as {user.pw_name}:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
        assert " passed" in done.stdout.splitlines()[-1]
    finally:
        shutil.rmtree(copy, ignore_errors=True)
