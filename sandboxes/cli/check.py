"""`providers` and `test`: which providers work here, and a quick live check."""

from __future__ import annotations

import json
import time

import click

from .. import specs, sync
from ..errors import ProviderUnavailable, SandboxError
from ..manager import Manager, provider_class
from ._util import check_provider, fail, host_labels, provider_option


def provider_status(name: str) -> tuple[bool, str]:
    """(available, why or how): never creates anything."""
    try:
        cls = provider_class(name)
    except ProviderUnavailable as error:
        return False, str(error)
    if name == "local":
        try:
            local = cls()
            parts = (local.describe_isolation(), local.describe_limits(), local.describe_network())
            return True, "isolation: " + "; ".join(parts)
        except ProviderUnavailable as error:
            return False, str(error)
    entry = specs.spec(name)
    if not entry.has_credentials():
        return False, f"no credentials: {entry.credential_hint or 'see the docs'}"
    return True, "credentials found"


@click.command(
    epilog="""
\b
Examples:
  sandboxes providers
  sandboxes providers --json
"""
)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def providers(as_json: bool) -> None:
    """Show which providers are available here, why not, and the local isolation."""
    rows = [(name, *provider_status(name)) for name in specs.names()]
    try:
        default = Manager().resolve(None)
    except ValueError as error:
        fail(str(error), 2)
    if as_json:
        click.echo(json.dumps({"default": default, "providers": [{"name": n, "available": a, "detail": d} for n, a, d in rows]}, indent=2))
        return
    width = max(len(name) for name in specs.names())
    for name, available, detail in rows:
        mark = "available  " if available else "unavailable"
        click.echo(f"{name.ljust(width)}  {mark}  {detail}")
    click.echo(f"default for the library: {default}; for the CLI: local (or -p / $SANDBOXES_PROVIDER)")


@click.command(
    epilog="""
\b
Examples:
  sandboxes test            # every available provider
  sandboxes test -p local
"""
)
@provider_option(default=None)
def test(provider: str | None) -> None:
    """Check providers live: create a sandbox, run echo, destroy it, with timings."""
    names = [check_provider(provider)] if provider else [n for n in specs.names() if provider_status(n)[0]]
    failures = 0
    for name in names:
        timings: list[str] = []
        started = time.perf_counter()
        sandbox = None
        try:
            sandbox = sync.Sandbox.create(name, labels=host_labels())
            timings.append(f"create {_ms(started)}")
            step = time.perf_counter()
            result = sandbox.execute(["echo", "sandboxes-ok"])
            timings.append(f"exec {_ms(step)}")
            if result.stdout.strip() != "sandboxes-ok":
                raise SandboxError(f"echo printed {result.stdout!r}, exit {result.exit_code}: {result.stderr.strip()[:200]}")
            step = time.perf_counter()
            sandbox.destroy()
            sandbox = None
            timings.append(f"destroy {_ms(step)}")
            click.echo(f"{name}: ok  ({', '.join(timings)})")
        except (SandboxError, OSError) as error:
            failures += 1
            click.echo(f"{name}: FAILED  {' '.join(str(error).split())}", err=True)
        finally:
            if sandbox is not None:
                try:
                    sandbox.destroy()
                except SandboxError:
                    pass
    if failures:
        fail(f"{failures} of {len(names)} provider(s) failed")


def _ms(since: float) -> str:
    return f"{(time.perf_counter() - since) * 1000:.0f}ms"
