"""The click group and the entry point."""

from __future__ import annotations

import sys

import click

from .. import __version__, _quick_exit
from . import check, eval, manage, run


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sandboxes")
def cli() -> None:
    """Run code in any language in a sandbox: local (bubblewrap) by default, or a cloud provider.

    \b
    Examples:
      sandboxes run --file main.go
      cat script.py | sandboxes run --lang python
      sandboxes run "python3 -c 'print(42)'"
      sandboxes run --file app.py -l project=demo --keep
      sandboxes list --json
      sandboxes exec sb-1a2b3c4d5e6f "ls -la"
      sandboxes destroy sb-1a2b3c4d5e6f
      sandboxes providers
      sandboxes gc --older-than 1h
      sandboxes eval samples.jsonl --problems HumanEval.jsonl.gz

    Exit codes: the program's own; 2 for a usage error; 124 when the command
    timed out; 125 when the sandbox (not the program) failed; 127 when the
    language's toolchain is missing.
    """


cli.add_command(run.run)
cli.add_command(manage.list_command)
cli.add_command(manage.exec_command)
cli.add_command(manage.destroy)
cli.add_command(manage.gc)
cli.add_command(check.providers)
cli.add_command(check.test)
cli.add_command(eval.eval_command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="sandboxes")
    except KeyboardInterrupt:  # pragma: no cover - interactive
        click.echo("Interrupted", err=True)
        sys.exit(130)
    finally:
        _quick_exit.freeze_once_clean()
