"""Extension points: providers and languages from other packages (entry points), and the plugin's own hooks.

Each is exercised by an extension written here: a real distribution on a
path (its dist-info with entry points), loaded by a fresh interpreter, and a
pytest plugin in a pytester project.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXTENSION = '''
from sandboxes.languages import Language, Recipe
from sandboxes.models import Capabilities
from sandboxes.providers.local.driver import LocalDriver
from sandboxes.specs import ProviderSpec


class MirrorDriver(LocalDriver):
    """The local driver under another name: a provider that lives outside the library."""

    name = "mirror"


SPEC = ProviderSpec("mirror", "sandboxes_mirror", "MirrorDriver", Capabilities(streaming=True, stdin=True, files=True), cloud=False)
AWK = Language(name="awk", source="main.awk", extensions=(".awk",), recipes=(Recipe(requires=("awk",), run=("awk", "-f", "{src}")),),
               install_hint="apt-get install gawk")
LOCAL_AGAIN = ProviderSpec("local", "sandboxes_mirror", "MirrorDriver", Capabilities())  # a built-in's name: ignored
BROKEN = 42  # not a spec: ignored with a warning
'''

ENTRY_POINTS = """
[sandboxes.providers]
mirror = sandboxes_mirror:SPEC
local = sandboxes_mirror:LOCAL_AGAIN
broken = sandboxes_mirror:BROKEN

[sandboxes.languages]
awk = sandboxes_mirror:AWK
"""

USE = """
import logging, anyio
logging.basicConfig(level=logging.WARNING)
from sandboxes import Sandbox, specs
from sandboxes.languages import known_languages
from sandboxes.providers import MirrorProvider

async def main():
    assert "mirror" in specs.names() and specs.spec("local").module == "sandboxes.providers.local.driver", specs.names()
    assert "awk" in known_languages()
    assert MirrorProvider.driver_class.__name__ == "MirrorDriver"
    async with Sandbox.create("mirror") as box:
        assert box.provider == "mirror"
        result = await box.run_code('BEGIN { print 6 * 7 }', "awk")
        print("RESULT", result.exit_code, result.stdout.strip())

anyio.run(main)
"""


def test_a_provider_and_a_language_from_another_package(tmp_path: Path) -> None:
    (tmp_path / "sandboxes_mirror.py").write_text(textwrap.dedent(EXTENSION))
    info = tmp_path / "sandboxes_mirror-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sandboxes-mirror\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    done = subprocess.run([sys.executable, "-c", USE], capture_output=True, text=True, cwd=tmp_path, timeout=120, env=_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "RESULT 0 42" in done.stdout
    assert "provider 'local' from entry point sandboxes_mirror:LOCAL_AGAIN is already defined; ignored" in done.stderr
    assert "entry point sandboxes_mirror:BROKEN of group sandboxes.providers is not a ProviderSpec; ignored" in done.stderr


def _env(path: Path) -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), *sys.path])}


HOOKS = """
import json, os
import pytest

SEEN = []

def pytest_sandboxes_configure(item, config):
    if item.get_closest_marker("slow_lane"):
        return config.replace(env={**config.env, "LANE": "slow"})
    return None

def pytest_sandboxes_result(item, result):
    SEEN.append((item.name, result.exit_code, result.stdout))

def pytest_sessionfinish(session):
    with open(os.environ["HOOK_LOG"], "w") as log:
        json.dump(SEEN, log)
"""

SUITE = """
import pytest

@pytest.mark.slow_lane
def test_marked(sandbox):
    assert sandbox.execute("echo $LANE").stdout == "slow\\n"

def test_plain(sandbox, sandbox_factory):
    assert sandbox.execute("echo ${LANE:-none}").stdout == "none\\n"
    assert sandbox_factory(working_dir="/tmp/hooked").execute("exit 3").exit_code == 3  # its mkdir is the engine's: not seen
"""


@pytest.mark.parametrize("where", ["conftest", "plugin"])
def test_the_plugins_hooks_configure_and_see_every_result(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, where: str, live_sandboxes) -> None:
    import json

    pytester.makeini("[pytest]\nmarkers =\n    slow_lane: a test run with LANE=slow\n")
    pytester.makepyfile(test_suite=SUITE)
    log = pytester.path / "hooks.json"
    monkeypatch.setenv("HOOK_LOG", str(log))
    if where == "conftest":
        pytester.makeconftest(HOOKS)
        args: tuple[str, ...] = ()
    else:
        pytester.makepyfile(lane_plugin=HOOKS)
        monkeypatch.syspath_prepend(pytester.path)
        args = ("-p", "lane_plugin")
    pytester.runpytest_subprocess("-p", "no:cacheprovider", *args).assert_outcomes(passed=2)
    assert sorted(map(tuple, json.loads(log.read_text()))) == [("test_marked", 0, "slow\n"), ("test_plain", 0, "none\n"), ("test_plain", 3, "")]
    assert live_sandboxes() == []


def test_a_configure_hook_returning_something_else_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("def pytest_sandboxes_configure(item, config):\n    return {'memory_mb': 1}\n")
    pytester.makepyfile("def test_it(sandbox):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*pytest_sandboxes_configure returned dict, not a SandboxConfig (or None)*"])
