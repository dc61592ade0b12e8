"""Options: command line, then env, then ini; bad values are usage errors listing the valid ones."""

from __future__ import annotations

import pytest

PROBE = """
import os
def test_probe(sandbox_config):
    assert sandbox_config.command_timeout == float(os.environ["EXPECT_TIMEOUT"])
    assert sandbox_config.image == os.environ.get("EXPECT_IMAGE")
"""


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {}, "7"),  # ini
        ((), {"SANDBOXES_TIMEOUT": "8"}, "8"),  # env beats ini
        (("--sandbox-timeout=9",), {"SANDBOXES_TIMEOUT": "8"}, "9"),  # command line beats env
    ],
)
def test_timeout_comes_from_command_line_then_env_then_ini(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args, env, expected) -> None:
    pytester.makeini("[pytest]\nsandbox_timeout = 7\nsandbox_image = /ini-image\n")
    pytester.makepyfile(PROBE)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EXPECT_TIMEOUT", expected)
    monkeypatch.setenv("EXPECT_IMAGE", "/cli-image" if args else "/ini-image")
    if args:
        args = (*args, "--sandbox-image=/cli-image")
    pytester.runpytest(*args).assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("args", "env", "ini", "message"),
    [
        (("--sandbox-provider=local,nope",), {}, "", "valid providers: local, e2b, modal, daytona, cloudflare"),
        ((), {"SANDBOXES_RECORD_MODE": "sometimes"}, "", "valid modes: off, none, once, new_episodes, all, rewrite"),
        ((), {}, "sandbox_timeout = soon", "give a positive number of seconds"),
        ((), {"SANDBOXES_KEEP": "maybe"}, "", "is not a boolean: use one of 1, true, yes, on, 0, false, no, off"),
        ((), {}, "sandbox_fresh = sometimes", "is not a boolean: use one of 1, true, yes, on, 0, false, no, off"),
        (("--sandbox-max-concurrency=0",), {}, "", "give a whole number of sandboxes, at least 1"),
        (("--sandbox-budget=5",), {}, "", "--sandbox-budget: budget '5': give sandbox-seconds (600s, 10m, 2h) or dollars ($5, 5usd)"),
        ((), {"SANDBOXES_BUDGET": "$0"}, "", "SANDBOXES_BUDGET: budget '$0': give more than zero"),
        (("--sandbox-trace=/proc/no/such/trace.jsonl",), {}, "", "--sandbox-trace=/proc/no/such/trace.jsonl: cannot write there"),
    ],
)
def test_bad_value_is_a_usage_error_listing_valid_ones(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args, env, ini, message) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: *{message}*"])


def test_options_are_listed_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    for flag in ("--sandbox-provider", "--sandbox-record-mode", "--sandbox-cassette-dir", "--sandbox-timeout", "--sandbox-image", "--sandbox-keep"):
        result.stdout.fnmatch_lines([f"*{flag}*"])
    result.stdout.fnmatch_lines(["*SANDBOXES_TEST_PROVIDERS*", "*sandbox_record_mode*"])


def test_a_session_using_nothing_of_the_plugin_is_untouched(pytester: pytest.Pytester, live_sandboxes) -> None:
    pytester.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "left behind" not in result.stdout.str()  # no sandbox summary
    assert live_sandboxes() == []


PLAIN_CREATE = """
import pytest
import sandboxes
from sandboxes.sync import Sandbox

def test_the_fixture_follows_the_plugins_list(sandbox):
    assert sandbox.provider == "local"

def test_plain_create_follows_the_librarys_default():
    with Sandbox.create() as box:
        assert box.provider == "local" and box.execute("echo ok").stdout == "ok\\n"
"""


def test_the_plugins_providers_have_their_own_variable_and_plain_create_keeps_working(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, live_sandboxes
) -> None:
    pytester.makepyfile(PLAIN_CREATE)
    monkeypatch.setenv("SANDBOXES_TEST_PROVIDERS", "local")
    monkeypatch.setenv("SANDBOXES_PROVIDER", "local")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    # A list in the library's variable is refused by name, not taken as a provider called "local,e2b".
    monkeypatch.setenv("SANDBOXES_PROVIDER", "local,e2b")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*$SANDBOXES_PROVIDER='local,e2b' is not a provider*SANDBOXES_TEST_PROVIDERS*"])
    assert live_sandboxes() == []


GOVERNED = """
import pytest

@pytest.mark.parametrize("n", range(8))
def test_one(sandbox, n):
    assert sandbox.execute("echo ok").stdout == "ok\\n"
"""


def test_max_concurrency_caps_every_worker_together_and_the_summary_says_so(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """`-n 2 --sandbox-max-concurrency=2` on E2B (emulated, capped at 2): both workers stay under it, none refused."""
    from tests.emulators.e2b import open_emulator

    pytester.makepyfile(GOVERNED)
    with open_emulator(max_alive=2) as emulator:
        for name, value in emulator.environ().items():
            monkeypatch.setenv(name, value)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--sandbox-provider=e2b", "--sandbox-max-concurrency=2")
        result.assert_outcomes(passed=8)
        result.stdout.fnmatch_lines(["e2b governor: peak [12] alive at once*"])
        assert emulator.refused == 0 and emulator.peak_alive <= 2 and emulator.created == 8
        assert not emulator.sandboxes
