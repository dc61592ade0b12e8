"""`sandboxes run` on a provider that cannot stream (Daytona, through its emulator): said, not faked."""

from __future__ import annotations

from tests.emulators.daytona import provider_env, running

from .conftest import CLI


def test_run_on_a_provider_without_streaming_says_so_and_keeps_the_exit_code(cli: CLI) -> None:
    with running() as emulator:
        env = provider_env(emulator)
        result = cli("run", "-p", "daytona", "echo hi; exit 3", env=env)
        assert (result.returncode, result.stdout) == (3, b"hi\n"), result.stderr.decode()
        assert result.stderr.decode().splitlines() == ["note: provider daytona cannot stream output; it is shown when the command ends"]
        empty_stdin = cli("run", "-p", "daytona", "cat; echo done", input=b"", env=env)  # nothing piped: no stdin to refuse
        assert (empty_stdin.returncode, empty_stdin.stdout) == (0, b"done\n"), empty_stdin.stderr.decode()
        assert not emulator.sandboxes, "the CLI left a Daytona sandbox behind"
