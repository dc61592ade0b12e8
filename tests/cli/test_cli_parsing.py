"""Option parsing and help, in process with click's CliRunner (no sandbox needed)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sandboxes.cli import cli
from sandboxes.cli._util import parse_pairs
from sandboxes.cli.manage import parse_age

COMMANDS = ["run", "list", "exec", "destroy", "providers", "test", "gc"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and f"sandboxes {command}" in result.output


def test_top_level_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert all(command in result.output for command in COMMANDS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "-e", "=x", "true"], "KEY=VALUE"),
        (["run", "-l", "nolabel", "true"], "KEY=VALUE"),
        (["run", "--reuse", "true"], "--reuse needs at least one label"),
        (["run"], "nothing to run"),
        (["run", "--lang", "python"], "pipe the source on stdin"),
        (["gc", "--older-than", "soon"], "bad --older-than"),
        (["destroy", "x", "-p", "nowhere"], "unknown provider"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args, input="")
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_timeout_must_be_positive() -> None:
    result = CliRunner().invoke(cli, ["run", "-t", "0", "true"])
    assert result.exit_code == 2


def test_parse_pairs_keeps_equals_in_values() -> None:
    assert parse_pairs(["A=b=c", "B="], "-e") == {"A": "b=c", "B": ""}


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("30s", 30), ("15m", 900), ("1h", 3600), ("2d", 172800), ("0.5h", 1800)])
def test_parse_age(text: str, seconds: float) -> None:
    assert parse_age(text) == seconds
