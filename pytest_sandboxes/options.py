"""Command-line options, their env vars and ini keys, resolved in that order.

Every setting comes from the command line, else the environment, else the
ini file, else its default. A bad value is a ``pytest.UsageError`` listing the
valid ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandboxes import specs
from sandboxes.budget import Budget
from sandboxes.cassette import RECORD_MODES

OFF = "off"
MODES = (OFF, *RECORD_MODES)
"""``off`` (the default): no cassette, every operation is live."""
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class _Option:
    dest: str
    flag: str
    env: str
    ini: str
    help: str
    is_flag: bool = False


OPTIONS = (
    _Option("provider", "--sandbox-provider", "SANDBOXES_TEST_PROVIDERS", "sandbox_provider",
            f"provider(s) to run sandbox tests on, comma-separated: {', '.join(s.name for s in specs.BUILTIN)} or a published one (default: local)"),
    _Option("record_mode", "--sandbox-record-mode", "SANDBOXES_RECORD_MODE", "sandbox_record_mode",
            f"cassette record mode: {', '.join(MODES)} (default: off, no cassettes; 'none' replays only, for CI)"),
    _Option("cassette_dir", "--sandbox-cassette-dir", "SANDBOXES_CASSETTE_DIR", "sandbox_cassette_dir",
            "directory of the cassettes (default: sandbox_cassettes/ beside each test module)"),
    _Option("timeout", "--sandbox-timeout", "SANDBOXES_TIMEOUT", "sandbox_timeout",
            "default per-command timeout in seconds"),
    _Option("image", "--sandbox-image", "SANDBOXES_IMAGE", "sandbox_image",
            "default image (template, snapshot or rootfs dir, depending on the provider)"),
    _Option("keep", "--sandbox-keep", "SANDBOXES_KEEP", "sandbox_keep",
            "keep the sandboxes of failed tests for debugging (their ids are reported)", is_flag=True),
    _Option("record_failed", "--sandbox-record-failed", "SANDBOXES_RECORD_FAILED", "sandbox_record_failed",
            "also write the cassettes of failed tests", is_flag=True),
    _Option("fresh", "--sandbox-fresh", "SANDBOXES_FRESH", "sandbox_fresh",
            "a new sandbox for every test: the local provider otherwise resets a destroyed sandbox and leases it again", is_flag=True),
    _Option("max_concurrency", "--sandbox-max-concurrency", "SANDBOXES_MAX_CONCURRENCY", "sandbox_max_concurrency",
            "sandboxes alive at once on each cloud provider, shared by every process here (xdist workers, other runs); default: its published limit"),
    _Option("budget", "--sandbox-budget", "SANDBOXES_BUDGET", "sandbox_budget",
            "stop creating sandboxes once the run has spent this: sandbox-seconds (600s, 10m, 2h) or estimated dollars ($5); the tests left are skipped"),
    _Option("trace", "--sandbox-trace", "SANDBOXES_TRACE", "sandbox_trace",
            "write one JSON line per sandbox lifecycle event (create, wait, 429, destroy...) of every worker to this file"),
    _Option("eval_report", "--sandbox-eval-report", "SANDBOXES_EVAL_REPORT", "sandbox_eval_report",
            "write the verdicts and pass@k of the tests that carry a task (marker task=... or a task_id parameter) to this JSON file"),
    _Option("eval_k", "--sandbox-eval-k", "SANDBOXES_EVAL_K", "sandbox_eval_k",
            "the k of pass@k in the eval summary, comma-separated (default: 1,10,100)"),
)  # fmt: skip


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("sandboxes", "sandboxes: run code in sandboxes")
    for option in OPTIONS:
        if option.is_flag:
            group.addoption(option.flag, action="store_true", default=None, dest=f"sandbox_{option.dest}", help=option.help + f" [env {option.env}]")
            parser.addini(option.ini, option.help, default=None)  # parsed by us: a bad value is a usage error, not a crash
        else:
            group.addoption(
                option.flag, action="store", default=None, dest=f"sandbox_{option.dest}", metavar=option.dest.upper(), help=option.help + f" [env {option.env}]"
            )
            parser.addini(option.ini, option.help, default=None)


@dataclass(frozen=True)
class Settings:
    """The session's resolved sandbox settings."""

    providers: tuple[str, ...] = ("local",)
    record_mode: str = OFF
    cassette_dir: Path | None = None
    timeout: float | None = None
    image: str | None = None
    keep: bool = False
    record_failed: bool = False
    fresh: bool = False
    max_concurrency: int | None = None
    budget: Budget | None = None
    trace: Path | None = None
    eval_report: Path | None = None
    eval_k: tuple[int, ...] = (1, 10, 100)


def _raw(config: pytest.Config, option: _Option) -> tuple[object, str, Path]:
    """The value, where it came from (for messages) and the dir a relative path is based on."""
    value = config.getoption(f"sandbox_{option.dest}")
    if value is not None:
        return value, option.flag, Path(config.invocation_params.dir)
    if option.env in os.environ:
        return os.environ[option.env], option.env, Path.cwd()
    value = config.getini(option.ini)
    base = Path(config.inipath).parent if config.inipath else Path(config.rootpath)
    return value, f"ini {option.ini}", base


def resolve(config: pytest.Config) -> Settings:
    values: dict[str, object] = {}
    for option in OPTIONS:
        raw, origin, base = _raw(config, option)
        if raw is None or raw == "":
            continue
        values[option.dest] = _parse(option, raw, origin, base)
    if "provider" in values:
        values["providers"] = values.pop("provider")
    return Settings(**values)  # type: ignore[arg-type]  # each value was parsed to its field's type above


def _parse(option: _Option, raw: object, origin: str, base: Path) -> object:
    if option.is_flag:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in TRUE:
            return True
        if text in FALSE:
            return False
        raise pytest.UsageError(f"{origin}={raw!r} is not a boolean: use one of {', '.join(TRUE + FALSE[:-1])}")
    text = str(raw).strip()
    if option.dest == "provider":
        names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        bad = [n for n in names if not specs.known(n)]
        if bad or not names:
            raise pytest.UsageError(
                f"{origin}={text!r}: unknown provider {', '.join(map(repr, bad)) or '(none given)'}; valid providers: {', '.join(specs.names())}"
            )
        return names
    if option.dest == "record_mode":
        if text not in MODES:
            raise pytest.UsageError(f"{origin}={text!r} is not a record mode; valid modes: {', '.join(MODES)}")
        return text
    if option.dest == "timeout":
        try:
            number = float(text)
        except ValueError:
            number = -1
        if number <= 0:
            raise pytest.UsageError(f"{origin}={text!r} is not valid: give a positive number of seconds")
        return number
    if option.dest == "max_concurrency":
        if not text.isdigit() or int(text) < 1:
            raise pytest.UsageError(f"{origin}={text!r} is not valid: give a whole number of sandboxes, at least 1")
        return int(text)
    if option.dest == "budget":
        try:
            return Budget.parse(text)
        except ValueError as error:
            raise pytest.UsageError(f"{origin}: {error}") from None
    if option.dest in ("cassette_dir", "eval_report", "trace"):
        return (base / text).resolve()
    if option.dest == "eval_k":
        try:
            ks = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
        except ValueError:
            ks = ()
        if not ks or ks[0] < 1:
            raise pytest.UsageError(f"{origin}={text!r}: give whole numbers of at least 1, separated by commas, such as 1,10")
        return ks
    return text
