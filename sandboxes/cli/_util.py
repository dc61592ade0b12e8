"""What the commands share: argument parsing, error reporting, live output."""

from __future__ import annotations

import re
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO, NoReturn

import click

from .. import specs, sync
from ..errors import SandboxError, ToolchainMissing

DEFAULT_PROVIDER = "local"
CREATED_BY = ("created-by", "sandboxes-cli")
HOST_LABEL = "host"
TEST_HOST_LABEL = "sandboxes_host"  # what the pytest plugin sets (reserved prefix: kept out of cassettes)
TIMEOUT_EXIT = 124  # as timeout(1)
ERROR_EXIT = 125  # as docker run: the sandbox, not the program, failed
MISSING_TOOL_EXIT = 127


class CliError(click.ClickException):
    """One line on stderr, an exit code, no traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(" ".join(str(message).split()))
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.message}", err=True)


def fail(message: str, exit_code: int = 1) -> NoReturn:
    raise CliError(message, exit_code)


@contextmanager
def reported(error_code: int = 1) -> Iterator[None]:
    """Turn library errors into one clear line and an exit code."""
    try:
        yield
    except click.ClickException:
        raise
    except ToolchainMissing as error:
        fail(str(error), MISSING_TOOL_EXIT)
    except SandboxError as error:
        fail(str(error), error_code)
    except (ValueError, TypeError) as error:
        fail(str(error), 2)
    except OSError as error:
        fail(str(error) or type(error).__name__, error_code)


def parse_pairs(values: Sequence[str], option: str) -> dict[str, str]:
    """K=V pairs from repeated -e/-l options; a bad one is a usage error."""
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-/]*", key):
            fail(f"bad {option} value {value!r}: expected KEY=VALUE, for example {option} DEBUG=1", 2)
        pairs[key] = val
    return pairs


def check_provider(name: str) -> str:
    if name not in specs.specs():
        fail(f"unknown provider {name!r}: choose one of {', '.join(specs.names())}", 2)
    return name


def provider_option(default: str | None = DEFAULT_PROVIDER) -> Callable[[Any], Any]:
    help_text = f"Provider: {', '.join(specs.names())}" + (f" (default: {default}, or $SANDBOXES_PROVIDER)." if default else ".")
    return click.option("-p", "--provider", default=default, envvar="SANDBOXES_PROVIDER", show_envvar=False, help=help_text)


def host_labels() -> dict[str, str]:
    """Labels every sandbox the CLI creates carries, so `gc` can find them."""
    return {CREATED_BY[0]: CREATED_BY[1], HOST_LABEL: socket.gethostname()}


def binary_stream(name: str) -> BinaryIO:
    """The byte stream under sys.stdin/stdout/stderr (CliRunner's too).

    Not ``click.get_binary_stream``, which click 8.5 deprecates.
    """
    stream: BinaryIO = getattr(sys, name)
    return getattr(stream, "buffer", stream)


def piped_stdin() -> bytes | None:
    """Our stdin when it is a pipe or file with something in it (handed to the program), else None.

    Empty input is None: the program sees end-of-file either way, and
    providers that take no stdin (Daytona) can still run it.
    """
    stream = binary_stream("stdin")
    if stream.isatty():
        return None
    return stream.read() or None


def stream_command(
    sandbox: sync.Sandbox,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    stdin: bytes | None = None,
    timeout: float | None = None,
) -> int:
    """Run argv with output shown live; the program's exit code (124 when it timed out)."""
    out, err = binary_stream("stdout"), binary_stream("stderr")
    if not sandbox.async_sandbox.provider_instance.capabilities.streaming:
        # The provider cannot stream: say so, and show the output when the command ends.
        echo_err(f"note: provider {sandbox.provider} cannot stream output; it is shown when the command ends")
        result = sandbox.execute(list(argv), env=env, cwd=cwd, stdin=stdin, timeout=timeout)
        out.write(result.stdout.encode("utf-8", "surrogateescape"))
        out.flush()
        err.write(result.stderr.encode("utf-8", "surrogateescape"))
        err.flush()
        return exit_status(result.exit_code, result.timed_out, timeout)
    stream = sandbox.stream(list(argv), env=env, cwd=cwd, stdin=stdin, timeout=timeout)
    for chunk in stream:
        target = out if chunk.stream == "stdout" else err
        target.write(chunk.data.encode("utf-8", "surrogateescape"))
        target.flush()
    if stream.exit_code is None:
        echo_err(f"Error: provider {sandbox.provider} ended the output without the command's exit status")
        return ERROR_EXIT
    return exit_status(stream.exit_code, bool(stream.timed_out), timeout)


def exit_status(exit_code: int, timed_out: bool, timeout: float | None) -> int:
    """The CLI's exit code for a command's end: its own, or 124 with a line when it timed out."""
    if timed_out:
        limit = f" after {timeout:g}s" if timeout is not None else ""
        echo_err(f"Error: the command timed out{limit} and was killed")
        return TIMEOUT_EXIT
    if exit_code < 0:  # a provider's "killed, no status" (a signal, the sandbox ended)
        echo_err(f"Error: the command was killed (exit status {exit_code})")
        return ERROR_EXIT
    if exit_code > 128 and (name := _signal_name(exit_code - 128)):
        # Nothing else would say it: a crash prints nothing of its own.
        echo_err(f"note: exit status {exit_code} is 128 + {name}: the program was killed by {name}")
    return exit_code


def _signal_name(number: int) -> str | None:
    try:
        return signal.Signals(number).name
    except ValueError:
        return None


def echo_err(message: str) -> None:
    click.echo(message, err=True)


def flush() -> None:
    sys.stdout.flush()
