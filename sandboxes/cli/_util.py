"""What the commands share: argument parsing, error reporting, live output."""

from __future__ import annotations

import re
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import click

from .. import sync
from ..errors import SandboxError, ToolchainMissing
from ..manager import PROVIDERS

DEFAULT_PROVIDER = "local"
CREATED_BY = ("created-by", "sandboxes-cli")
HOST_LABEL = "host"
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
    if name not in PROVIDERS:
        fail(f"unknown provider {name!r}: choose one of {', '.join(PROVIDERS)}", 2)
    return name


def provider_option(default: str | None = DEFAULT_PROVIDER) -> Callable[[Any], Any]:
    help_text = f"Provider: {', '.join(PROVIDERS)}" + (f" (default: {default}, or $SANDBOXES_PROVIDER)." if default else ".")
    return click.option("-p", "--provider", default=default, envvar="SANDBOXES_PROVIDER", show_envvar=False, help=help_text)


def host_labels() -> dict[str, str]:
    """Labels every sandbox the CLI creates carries, so `gc` can find them."""
    return {CREATED_BY[0]: CREATED_BY[1], HOST_LABEL: socket.gethostname()}


def piped_stdin() -> bytes | None:
    """Our stdin when it is a pipe or file (handed to the program), None on a terminal."""
    stream = click.get_binary_stream("stdin")
    if stream.isatty():
        return None
    return stream.read()


STATUS_SCRIPT = 'f=$1; shift; "$@"; s=$?; echo "$s" >"$f"; exit "$s"'


def stream_command(
    sandbox: sync.Sandbox,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    stdin: bytes | None = None,
    timeout: float | None = None,
    status_file: str,
) -> int:
    """Run argv with output shown live; the program's exit code.

    The streaming contract carries output only, so the exit status is written
    to a file by a small wrapper (given as arguments: no quoting) and read back.
    """
    out, err = click.get_binary_stream("stdout"), click.get_binary_stream("stderr")
    started = time.monotonic()
    wrapped = ["/bin/sh", "-c", STATUS_SCRIPT, "sh", status_file, *argv]
    for chunk in sandbox.stream(wrapped, env=env, cwd=cwd, stdin=stdin, timeout=timeout):
        target = out if chunk.stream == "stdout" else err
        target.write(chunk.data.encode("utf-8", "surrogateescape"))
        target.flush()
    try:
        status = sandbox.read_file(status_file)
    except FileNotFoundError:
        elapsed = time.monotonic() - started
        if timeout is not None and elapsed >= timeout * 0.95:
            click.echo(f"Error: the command timed out after {timeout:g}s and was killed", err=True)
            return TIMEOUT_EXIT
        click.echo("Error: the command was killed before it could exit (out of memory or a limit?)", err=True)
        return ERROR_EXIT
    finally:
        try:
            sandbox.execute(["rm", "-f", status_file], timeout=30)
        except SandboxError:
            pass
    return int(status.strip() or b"0")


def echo_err(message: str) -> None:
    click.echo(message, err=True)


def flush() -> None:
    sys.stdout.flush()
