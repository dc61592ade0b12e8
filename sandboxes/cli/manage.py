"""`list`, `exec`, `destroy` and `gc`: sandboxes that already exist."""

from __future__ import annotations

import json
import re
import socket
import time

import click

from .. import leases, specs, sync
from ..errors import ProviderUnavailable, SandboxNotFoundError
from ..manager import get_manager, has_credentials
from ..models import SandboxInfo
from ._util import (
    CREATED_BY,
    DEFAULT_PROVIDER,
    ERROR_EXIT,
    HOST_LABEL,
    TEST_HOST_LABEL,
    check_provider,
    echo_err,
    fail,
    parse_pairs,
    piped_stdin,
    provider_option,
    reported,
    stream_command,
)


def _providers(provider: str | None) -> list[str]:
    """The named provider, or local plus every cloud provider with credentials."""
    if provider:
        return [check_provider(provider)]
    return [DEFAULT_PROVIDER, *(name for name in specs.cloud_names() if has_credentials(name))]


def _list(names: list[str], labels: dict[str, str], *, strict: bool) -> list[SandboxInfo]:
    found: list[SandboxInfo] = []
    for name in names:
        try:
            found += sync.Sandbox.list(labels, name)
        except ProviderUnavailable as error:
            if strict:
                raise
            echo_err(f"warning: skipping {name}: {error}")
    return found


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@click.command(
    "list",
    epilog="""
\b
Examples:
  sandboxes list
  sandboxes list -p local -l project=demo
  sandboxes list --json | jq '.[].id'
""",
)
@provider_option(default=None)
@click.option("-l", "--label", "labels", multiple=True, metavar="K=V", help="Only sandboxes carrying this label (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="JSON array instead of a table.")
def list_command(provider: str | None, labels: tuple[str, ...], as_json: bool) -> None:
    """List live sandboxes (local, plus cloud providers with credentials, unless -p)."""
    label_map = parse_pairs(labels, "-l")
    with reported():
        found = _list(_providers(provider), label_map, strict=provider is not None)
    if as_json:
        rows = [
            {"id": i.id, "provider": i.provider, "state": i.state, "labels": i.labels, "created_at": i.created_at,
             "expires_at": i.expires_at, "image": i.image}
            for i in found
        ]  # fmt: skip
        click.echo(json.dumps(rows, indent=2))
        return
    if not found:
        echo_err("no sandboxes")
        return
    now = time.time()
    table = [("ID", "PROVIDER", "STATE", "AGE", "EXPIRES IN", "LABELS")]
    for info in found:
        created = now - info.created_at if info.created_at else None
        expires = info.expires_at - now if info.expires_at else None
        table.append((info.id, info.provider, info.state, _age(created), _age(expires), ",".join(f"{k}={v}" for k, v in sorted(info.labels.items()))))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


@click.command(
    "exec",
    epilog="""
\b
Examples:
  sandboxes exec sb-1a2b3c4d5e6f "ls -la"
  sandboxes exec sb-1a2b3c4d5e6f -e DEBUG=1 -- python3 script.py --verbose
  echo hello | sandboxes exec sb-1a2b3c4d5e6f cat
""",
)
@click.argument("sandbox_id")
@click.argument("command", nargs=-1, required=True)
@provider_option()
@click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="Environment variable for the command (repeatable).")
@click.option("-t", "--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds the command may take.")
@click.option("--cwd", help="Working directory inside the sandbox.")
def exec_command(sandbox_id: str, command: tuple[str, ...], provider: str, env: tuple[str, ...], timeout: float | None, cwd: str | None) -> None:
    """Run COMMAND in an existing sandbox; output streams live, the exit code is the command's.

    One COMMAND argument is a shell command line; several are run as they are, without a shell.
    """
    env_vars = parse_pairs(env, "-e")
    check_provider(provider)
    with reported(ERROR_EXIT):
        sandbox = sync.Sandbox.get(sandbox_id, provider)
        argv = list(command) if len(command) > 1 else ["/bin/sh", "-c", command[0]]
        status = stream_command(sandbox, argv, env=env_vars, cwd=cwd, stdin=piped_stdin(), timeout=timeout)
    click.get_current_context().exit(status)


@click.command(
    epilog="""
\b
Examples:
  sandboxes destroy sb-1a2b3c4d5e6f
  sandboxes destroy sb-1a2b3c4d5e6f sb-0f9e8d7c6b5a -p local
"""
)
@click.argument("sandbox_ids", nargs=-1, required=True, metavar="ID...")
@provider_option()
def destroy(sandbox_ids: tuple[str, ...], provider: str) -> None:
    """Destroy sandboxes by id."""
    check_provider(provider)
    missing = []
    with reported():
        for sandbox_id in sandbox_ids:
            try:
                sync.Sandbox.get(sandbox_id, provider).destroy()
            except SandboxNotFoundError:
                missing.append(sandbox_id)
                continue
            click.echo(f"destroyed {sandbox_id}")
    if missing:
        fail(f"no sandbox {', '.join(map(repr, missing))} on provider {provider!r} (see sandboxes list -p {provider})")


def _sweep_leases(names: list[str], dry_run: bool, *, strict: bool) -> int:
    """Destroy (or, dry, show) the sandboxes whose run lease is stale; how many were destroyed."""
    destroyed = 0
    for name in names:
        try:
            provider = get_manager().get_provider(name)
            stale = sync.portal().call(leases.stale_sandboxes, provider)
        except ProviderUnavailable as error:
            if strict:
                raise
            echo_err(f"warning: skipping {name}: {error}")
            continue
        for info, why in stale:
            if dry_run:
                click.echo(f"would destroy {info.id} ({name}): {why}")
                continue
            try:
                if sync.portal().call(provider.destroy_sandbox, info.id):
                    destroyed += 1
                    click.echo(f"destroyed {info.id} ({name}): {why}")
            except SandboxNotFoundError:
                continue
    return destroyed


def parse_age(value: str) -> float:
    """'90', '90s', '15m', '1h', '2d' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)
    if not match:
        fail(f"bad --older-than value {value!r}: expected a number with a unit, for example 30s, 15m, 1h, 2d", 2)
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


@click.command(
    epilog="""
\b
Examples:
  sandboxes gc                        # what killed runs left, then this host's CLI/test sandboxes older than 1h
  sandboxes gc --older-than 0s        # all of them, whatever their age
  sandboxes gc -l run=ci-1234 --older-than 10m
  sandboxes gc --all --dry-run        # list every sandbox on every provider that --all would destroy
"""
)
@provider_option(default=None)
@click.option("-l", "--label", "labels", multiple=True, metavar="K=V", help="Only sandboxes carrying this label (repeatable).")
@click.option("--older-than", default="1h", show_default=True, help="Only sandboxes at least this old: 30s, 15m, 1h, 2d.")
@click.option("--all", "everything", is_flag=True, help="Any sandbox, not only those this host's runs labelled.")
@click.option("--dry-run", is_flag=True, help="Show what would be destroyed.")
def gc(provider: str | None, labels: tuple[str, ...], older_than: str, everything: bool, dry_run: bool) -> None:
    """Destroy sandboxes this machine's runs left behind.

    First, whatever age: sandboxes whose run (a pytest session, an eval)
    was killed, or whose run lease expired. Then: sandboxes made on this host
    by the CLI or the pytest plugin (labels host= or sandboxes_host=) at least
    --older-than old; -l narrows (and skips the first step), --all widens.
    """
    label_map = parse_pairs(labels, "-l")
    min_age = parse_age(older_than)
    host = socket.gethostname()
    now = time.time()
    destroyed = 0
    with reported():
        names = _providers(provider)
        if not label_map:  # first, whatever runs left with a lease that nobody holds any more, whatever its age
            destroyed += _sweep_leases(names, dry_run, strict=provider is not None)
        for info in _list(names, label_map, strict=provider is not None):
            made_here = host in (info.labels.get(HOST_LABEL), info.labels.get(TEST_HOST_LABEL))
            if not everything and not made_here and CREATED_BY[0] not in info.labels:
                continue
            if not everything and info.labels.get(HOST_LABEL, host) != host:
                continue
            if info.created_at is not None and now - info.created_at < min_age:
                continue
            if dry_run:
                click.echo(f"would destroy {info.id} ({info.provider}, age {_age(now - info.created_at) if info.created_at else '?'})")
                continue
            try:
                sync.Sandbox.get(info.id, info.provider).destroy()
            except SandboxNotFoundError:
                continue  # gone meanwhile
            destroyed += 1
            click.echo(f"destroyed {info.id} ({info.provider})")
    if not dry_run:
        echo_err(f"gc: destroyed {destroyed} sandbox(es)")
