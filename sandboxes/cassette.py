"""Provider-neutral record/replay of sandbox operations.

``CassetteProvider`` sits between a ``Sandbox`` and any provider. It logs each
operation (create, execute, stream, write/read file, list/get, destroy) with
its normalised arguments and its result into a ``Cassette``: one readable YAML
file per test. In replay no provider is contacted and no credentials are
needed. Record modes follow VCR:

- ``none``: replay only; a missing cassette or an unmatched operation fails.
- ``once``: replay when the cassette exists (misses fail), else record it.
- ``new_episodes``: replay what matches, run the rest live and append it.
- ``all``: run everything live; the cassette becomes this run's operations.
- ``rewrite``: like ``all``, and the old cassette is not even read.

Matching is by operation and normalised arguments (command, env, cwd, stdin
and file digests), first-in-first-out among equal keys. Provider sandbox ids
are replaced by stable placeholders (``sandbox-1``...), nothing time-dependent
is written, secrets are scrubbed in one place (``Scrubber``), writes are
atomic and only happen when the content changed.
"""

from __future__ import annotations

import base64
import builtins
import difflib
import fnmatch
import functools
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import errors as _errors
from .errors import CassetteError
from .languages import RUN_ROOT
from .models import Capabilities, Command, ExecutionResult, OutputChunk, SandboxConfig, SandboxInfo
from .provider import SandboxProvider
from .streaming import CommandStream, ExitStatus, StreamItem, streaming

RECORD_MODES = ("none", "once", "new_episodes", "all", "rewrite")
FORMAT_VERSION = 1
RUN_LABEL_PREFIX = "sandboxes_"
"""Labels starting with this (run id, worker) are per run: never part of a match."""

CREDENTIAL_VARS = ("E2B_API_KEY", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_TOKEN_*", "DAYTONA_API_KEY", "CLOUDFLARE_API_TOKEN")
SECRET_NAME_PATTERNS = ("*KEY*", "*TOKEN*", "*SECRET*", "*PASSWORD*")
MIN_SECRET_LENGTH = 4  # shorter values would scrub ordinary text


@functools.lru_cache(maxsize=4096)  # asked for every env var of every cassette
def looks_secret(name: str) -> bool:
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, pattern) for pattern in (*CREDENTIAL_VARS, *SECRET_NAME_PATTERNS))


class Scrubber:
    """The one place where secrets are removed from what a cassette stores.

    Secrets are the credentials the library loaded (``E2B_API_KEY``,
    ``MODAL_TOKEN_*``, ...), the values of environment variables whose names
    look secret, and any extra values given (provider options such as an API
    key passed to ``Sandbox.configure``).
    """

    def __init__(self, environ: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        found = {name: value for name, value in environ.items() if looks_secret(name)}
        found.update(extra or {})
        # longest first, so a secret containing another is replaced whole
        self._secrets = sorted(
            ((value, name) for name, value in found.items() if value and len(value) >= MIN_SECRET_LENGTH),
            key=lambda item: -len(item[0]),
        )

    def add(self, name: str, value: str) -> None:
        if value and len(value) >= MIN_SECRET_LENGTH and all(value != v for v, _ in self._secrets):
            self._secrets.append((value, name))
            self._secrets.sort(key=lambda item: -len(item[0]))

    def text(self, value: str) -> str:
        for secret, name in self._secrets:
            if secret in value:
                value = value.replace(secret, f"<scrubbed:{name}>")
        return value

    def env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        """An env mapping as stored and matched: secret-named values hidden."""
        return {k: ("<scrubbed>" if looks_secret(k) else self.text(str(v))) for k, v in sorted((env or {}).items())}

    def deep(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.deep(v) for v in value]
        if isinstance(value, dict):
            return {k: self.deep(v) for k, v in value.items()}
        return value


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _as_bytes(data: bytes | str | None) -> bytes | None:
    return data.encode() if isinstance(data, str) else data


def _payload(data: bytes) -> dict[str, Any]:
    """File contents as stored: text when it is text, else base64."""
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def _unpayload(stored: Mapping[str, Any]) -> bytes:
    if "text" in stored:
        return str(stored["text"]).encode("utf-8")
    return base64.b64decode(stored["base64"])


def _plain_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    return {k: str(v) for k, v in sorted((labels or {}).items()) if not k.startswith(RUN_LABEL_PREFIX)}


# -- the YAML form ------------------------------------------------------------------
class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]  # libyaml's when present (~10x faster): chosen at run time
    """Block scalars for multi-line text, so recorded output reads as it printed."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str_representer)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Interaction:
    op: str
    args: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        return _key(self.op, self.args)

    def describe(self) -> str:
        return f"{self.op} {json.dumps(self.args, sort_keys=True, default=str)}"

    def as_dict(self) -> dict[str, Any]:
        return {"op": self.op, "args": self.args, "result": self.result}


def _key(op: str, args: Mapping[str, Any]) -> str:
    matched = {k: v for k, v in args.items() if k not in _UNMATCHED_ARGS}
    return op + " " + json.dumps(matched, sort_keys=True, default=str)


_UNMATCHED_ARGS = {"timeout", "stdin_text", "size"}
RUN_DIR_PREFIX = RUN_ROOT + "/"  # where run_code puts each run, under a random name
_RUN_DIR = re.compile(re.escape(RUN_DIR_PREFIX) + r"[0-9a-f]{12}")
"""Recorded for the reader but not part of a match (a timeout differs between runs)."""


@dataclass
class CassetteStats:
    """Counters a test session adds up per provider."""

    live: int = 0
    replayed: int = 0
    recorded: int = 0
    created: int = 0
    create_seconds: list[float] = field(default_factory=list)
    execute_seconds: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "live": self.live,
            "replayed": self.replayed,
            "recorded": self.recorded,
            "created": self.created,
            "create_seconds": list(self.create_seconds),
            "execute_seconds": list(self.execute_seconds),
        }

    def merge(self, other: Mapping[str, Any]) -> None:
        self.live += other.get("live", 0)
        self.replayed += other.get("replayed", 0)
        self.recorded += other.get("recorded", 0)
        self.created += other.get("created", 0)
        self.create_seconds.extend(other.get("create_seconds", ()))
        self.execute_seconds.extend(other.get("execute_seconds", ()))


class Cassette:
    """One test's recorded sandbox operations, and the rules to replay them."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: str = "none",
        *,
        provider: str | None = None,
        rerecord_hint: str | None = None,
        scrubber: Scrubber | None = None,
    ) -> None:
        if mode not in RECORD_MODES:
            raise CassetteError(f"unknown record mode {mode!r}: choose one of {', '.join(RECORD_MODES)}")
        self.path = Path(path)
        self.mode = mode
        self.provider = provider
        self.rerecord_hint = rerecord_hint or f"record it again with record mode 'rewrite' (cassette {self.path})"
        self.scrubber = scrubber or Scrubber()
        self.capabilities: list[str] | None = None
        existed = self.path.is_file()
        self._original_text = self.path.read_text() if existed else None
        self.recorded: list[Interaction] = []
        if existed and mode != "rewrite":
            self.recorded = self._load()
        if mode == "none" and not existed:
            raise CassetteError(f"no cassette at {self.path} and the record mode is 'none' (replay only).\nTo record it: {self.rerecord_hint}")
        self.existed = existed
        self._used: set[int] = set()
        self.new: list[Interaction] = []

    # -- what the mode allows ----------------------------------------------------------
    @property
    def replays(self) -> bool:
        """Whether recorded operations are played back."""
        return self.mode == "none" or self.mode == "new_episodes" or (self.mode == "once" and self.existed)

    @property
    def records(self) -> bool:
        """Whether operations that were not replayed run live and are kept."""
        return self.mode in ("new_episodes", "all", "rewrite") or (self.mode == "once" and not self.existed)

    @property
    def needs_provider(self) -> bool:
        """False when every operation must come from the cassette (no credentials needed)."""
        return self.records

    # -- matching ------------------------------------------------------------------------
    def play(self, op: str, args: dict[str, Any]) -> Interaction | None:
        """The first unused recorded interaction with this key, or None."""
        if not self.replays:
            return None
        key = _key(op, args)
        for index, interaction in enumerate(self.recorded):
            if index not in self._used and interaction.key() == key:
                self._used.add(index)
                return interaction
        return None

    def miss(self, op: str, args: dict[str, Any]) -> CassetteError:
        wanted = Interaction(op, args)
        unused = [i for n, i in enumerate(self.recorded) if n not in self._used]
        pool = unused or self.recorded
        ranked = sorted(
            pool,
            key=lambda i: (i.op != op, -difflib.SequenceMatcher(None, i.describe(), wanted.describe()).ratio()),
        )
        closest = "\n".join(f"  - {_short(i.describe())}" for i in ranked[:3]) or "  (the cassette is empty)"
        why = "" if unused else " (every recorded operation was already used)"
        return CassetteError(
            f"no recorded sandbox operation matches, in cassette {self.path} (record mode {self.mode!r}):\n"
            f"  {_short(wanted.describe())}\n"
            f"closest recorded{why}:\n{closest}\n"
            f"To record it again: {self.rerecord_hint}"
        )

    def append(self, interaction: Interaction) -> None:
        self.new.append(interaction)

    # -- the file -------------------------------------------------------------------------
    def _load(self) -> list[Interaction]:
        try:
            data = yaml.load(self._original_text or "", Loader=_Loader) or {}
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"unsupported cassette version {data.get('version')!r}")
            self.capabilities = data.get("capabilities")
            return [Interaction(item["op"], dict(item.get("args") or {}), dict(item.get("result") or {})) for item in data.get("interactions") or []]
        except (yaml.YAMLError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise CassetteError(f"cannot read cassette {self.path}: {error}. To record it again: {self.rerecord_hint}") from None

    def interactions(self) -> list[Interaction]:
        """What the file will hold after this run."""
        if self.mode in ("all", "rewrite") or (self.mode == "once" and not self.existed):
            return list(self.new)
        return [*self.recorded, *self.new]

    def render(self) -> str:
        document = {
            "version": FORMAT_VERSION,
            "provider": self.provider,
            "capabilities": self.capabilities,
            "interactions": [self.scrubber.deep(i.as_dict()) for i in self.interactions()],
        }
        hint = " ".join(self.rerecord_hint.split())
        header = f"# pytest-sandboxes cassette: the sandbox operations of one test.\n# To record it again: {hint}\n"
        body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
        return self.scrubber.text(header + body)

    def save(self) -> bool:
        """Write the cassette when recording changed it; True when a file was written."""
        if not self.records:
            return False
        if not self.new and not (self.mode in ("all", "rewrite") and self.existed):
            return False
        text = self.render()
        if text == self._original_text:
            return False
        atomic_write(self.path, text)
        self._original_text = text
        return True


def atomic_write(path: Path, text: str) -> None:
    """Readers (another xdist worker, say) see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- errors recorded and raised again ---------------------------------------------------
_ERROR_TYPES: dict[str, type[BaseException]] = {
    name: getattr(builtins, name)
    for name in (
        "FileNotFoundError",
        "PermissionError",
        "IsADirectoryError",
        "NotADirectoryError",
        "FileExistsError",
        "OSError",
        "ValueError",
        "TypeError",
        "TimeoutError",
    )
}
_ERROR_TYPES.update({name: getattr(_errors, name) for name in _errors.__dict__ if isinstance(getattr(_errors, name), type)})


def _error_record(error: BaseException) -> dict[str, Any]:
    record: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    if isinstance(error, _errors.UnsupportedOperation):
        record.update(provider=error.provider, capability=error.capability)
    return record


def _raise_recorded(record: Mapping[str, Any]) -> None:
    kind = _ERROR_TYPES.get(record.get("type", ""), _errors.ProviderError)
    message = str(record.get("message", ""))
    if kind is _errors.UnsupportedOperation:
        raise _errors.UnsupportedOperation(record.get("provider", "?"), record.get("capability", "?"))
    if issubclass(kind, _errors.CommandFailed):  # its result is not recorded (SetupFailed included)
        raise _errors.ProviderError(message)
    if issubclass(kind, _errors.ProviderError):
        raise kind(message)
    raise kind(message)


# -- the wrapper ---------------------------------------------------------------------------
class CassetteProvider(SandboxProvider):
    """Wraps a provider (or nothing, in replay) and logs every operation.

    With ``cassette=None`` every operation is live and only counted, so a
    test session can report operations and latencies either way.
    """

    def __init__(
        self,
        inner: SandboxProvider | None,
        cassette: Cassette | None = None,
        *,
        name: str | None = None,
        stats: CassetteStats | None = None,
    ) -> None:
        if inner is None and (cassette is None or cassette.needs_provider):
            raise ValueError("a provider is needed unless the cassette only replays")
        self.inner = inner
        self.cassette = cassette
        self.name = name or (inner.name if inner is not None else (cassette.provider if cassette else None)) or "replay"  # type: ignore[misc]  # a ClassVar on providers; a wrapper takes its inner one's name
        self.stats = stats if stats is not None else CassetteStats()
        self._placeholders: dict[str, str] = {}  # live id -> placeholder
        self._live_ids: dict[str, str] = {}  # placeholder -> live id
        self._configs: dict[str, SandboxConfig] = {}  # placeholder -> config (new_episodes)
        self._run_dirs: dict[str, str] = {}  # a live run_code directory -> its placeholder
        if cassette is not None and inner is not None and cassette.capabilities is None:
            cassette.capabilities = inner.capabilities.supported()

    def __repr__(self) -> str:
        return f"<CassetteProvider {self.name} mode={self.cassette.mode if self.cassette else 'live'}>"

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]  # the inner provider's, or the recorded ones
        if self.inner is not None:
            return self.inner.capabilities
        names = set(self.cassette.capabilities or ()) if self.cassette else set()
        return Capabilities(**{k: True for k in names if k in Capabilities.__dataclass_fields__})

    # -- ids ----------------------------------------------------------------------------------
    def _stable(self, value: Any) -> Any:
        """``value`` with each random run directory of ``run_code`` replaced by a placeholder
        numbered in order of first use, so a replay, which makes new random names, matches."""
        if isinstance(value, str):
            return _RUN_DIR.sub(lambda found: self._run_dirs.setdefault(found.group(0), f"{RUN_DIR_PREFIX}run-{len(self._run_dirs) + 1}"), value)
        if isinstance(value, list):
            return [self._stable(item) for item in value]
        return value

    def _placeholder(self, sandbox_id: str) -> str:
        if sandbox_id in self._live_ids:  # already a placeholder
            return sandbox_id
        if sandbox_id not in self._placeholders:
            return sandbox_id if sandbox_id.startswith("sandbox-") else "unknown-sandbox"
        return self._placeholders[sandbox_id]

    def _new_placeholder(self, live_id: str | None) -> str:
        placeholder = f"sandbox-{len(self._live_ids) + 1}"
        self._live_ids[placeholder] = live_id or ""
        if live_id:
            self._placeholders[live_id] = placeholder
        return placeholder

    async def _live_id(self, sandbox_id: str) -> str:
        """The provider's id for a handle's id; a replayed sandbox gets a live one on first need."""
        if sandbox_id in self._placeholders:
            return sandbox_id
        live = self._live_ids.get(sandbox_id)
        if live:
            return live
        if sandbox_id in self._live_ids:  # replayed create, now a miss in new_episodes: go live
            assert self.inner is not None
            info = await self.inner.create_sandbox(self._configs.get(sandbox_id, SandboxConfig()))
            self.stats.created += 1
            self._live_ids[sandbox_id] = info.id
            self._placeholders[info.id] = sandbox_id
            return info.id
        return sandbox_id

    # -- the generic path -------------------------------------------------------------------------
    def _replay(self, op: str, args: dict[str, Any]) -> Interaction | None:
        if self.cassette is None:
            return None
        interaction = self.cassette.play(op, args)
        if interaction is not None:
            self.stats.replayed += 1
            if "error" in interaction.result:
                _raise_recorded(interaction.result["error"])
            return interaction
        if not self.cassette.records:
            raise self.cassette.miss(op, args)
        return None

    def _record(self, op: str, args: dict[str, Any], result: dict[str, Any]) -> None:
        self.stats.live += 1
        if self.cassette is not None and self.cassette.records:
            self.cassette.append(Interaction(op, args, result))
            self.stats.recorded += 1

    def _scrub_env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        scrubber = self.cassette.scrubber if self.cassette else Scrubber({})
        return scrubber.env(env)

    # -- lifecycle ------------------------------------------------------------------------------------
    def _config_args(self, config: SandboxConfig) -> dict[str, Any]:
        return {
            "image": config.image,
            "labels": _plain_labels(config.labels),
            "env": self._scrub_env(config.env),
            "lifetime": config.lifetime,
            "memory_mb": config.memory_mb,
            "cpus": config.cpus,
            "network": config.network,
            "working_dir": config.working_dir,
            "setup_commands": list(config.setup_commands),
        }

    async def create_sandbox(self, config: SandboxConfig) -> SandboxInfo:
        args = self._config_args(config)
        if (played := self._replay("create", args)) is not None:
            placeholder = self._new_placeholder(None)
            self._configs[placeholder] = config
            # Whether it had network decides where run_code installs dependencies: replayed as recorded.
            metadata = {"network": played.result["network"]} if "network" in played.result else {}
            return SandboxInfo(id=placeholder, provider=self.name, labels=dict(config.labels), image=config.image, metadata=metadata)
        assert self.inner is not None
        started = time.perf_counter()
        try:
            info = await self.inner.create_sandbox(config)
        except Exception as error:
            self._record("create", args, {"error": _error_record(error)})
            raise
        self.stats.create_seconds.append(time.perf_counter() - started)
        self.stats.created += 1
        placeholder = self._new_placeholder(info.id)
        self._record("create", args, _created(placeholder, info))
        return info

    def adopt(self, info: SandboxInfo, config: SandboxConfig, seconds: float | None = None) -> SandboxInfo:
        """Log a sandbox created ahead of time (by a warm pool) as if created now."""
        if self.cassette is not None and self.cassette.replays:
            raise CassetteError("a pooled sandbox cannot be used while replaying a cassette")
        if seconds is not None:
            self.stats.create_seconds.append(seconds)
        self.stats.created += 1
        placeholder = self._new_placeholder(info.id)
        self._record("create", self._config_args(config), _created(placeholder, info))
        return info

    async def get_sandbox(self, sandbox_id: str) -> SandboxInfo | None:
        args = {"sandbox": self._placeholder(sandbox_id)}
        if (played := self._replay("get", args)) is not None:
            found = played.result.get("found")
            return SandboxInfo(id=sandbox_id, provider=self.name, labels=dict(played.result.get("labels") or {})) if found else None
        assert self.inner is not None
        info = await self.inner.get_sandbox(await self._live_id(sandbox_id))
        self._record("get", args, {"found": info is not None, "labels": _plain_labels(info.labels) if info else {}})
        return info

    async def list_sandboxes(self, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]:
        args = {"labels": _plain_labels(labels)}
        if (played := self._replay("list", args)) is not None:
            return [SandboxInfo(id=item["sandbox"], provider=self.name, labels=dict(item.get("labels") or {})) for item in played.result.get("sandboxes") or []]
        assert self.inner is not None
        found = await self.inner.list_sandboxes(labels)
        self._record("list", args, {"sandboxes": [{"sandbox": self._placeholder(i.id), "labels": _plain_labels(i.labels)} for i in found]})
        return found

    async def destroy_sandbox(self, sandbox_id: str) -> bool:
        args = {"sandbox": self._placeholder(sandbox_id)}
        if (played := self._replay("destroy", args)) is not None:
            live = self._live_ids.get(sandbox_id)
            if live and self.inner is not None:  # a replayed sandbox that went live later
                await self.inner.destroy_sandbox(live)
            return bool(played.result.get("existed", True))
        assert self.inner is not None
        existed = await self.inner.destroy_sandbox(await self._live_id(sandbox_id))
        self._record("destroy", args, {"existed": existed})
        return existed

    async def health_check(self) -> bool:
        return True if self.inner is None else await self.inner.health_check()

    # -- commands ------------------------------------------------------------------------------------------
    def _command_args(
        self, sandbox_id: str, command: Command, env: Mapping[str, str] | None, cwd: str | None, timeout: float | None, stdin: bytes | str | None
    ) -> dict[str, Any]:
        args: dict[str, Any] = {
            "sandbox": self._placeholder(sandbox_id),
            "command": self._stable(command if isinstance(command, str) else [str(part) for part in command]),
            "env": self._scrub_env(env),
            "cwd": self._stable(cwd),
            "timeout": timeout,
        }
        data = _as_bytes(stdin)
        if data is not None:
            args["stdin"] = digest(data)
            if len(data) <= 4096:
                stored = _payload(data)
                if "text" in stored:
                    args["stdin_text"] = stored["text"]
        return args

    async def execute_command(
        self,
        sandbox_id: str,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
    ) -> ExecutionResult:
        args = self._command_args(sandbox_id, command, env, cwd, timeout, stdin)
        if (played := self._replay("execute", args)) is not None:
            r = played.result
            return ExecutionResult(
                stdout=r.get("stdout", ""), stderr=r.get("stderr", ""), exit_code=int(r.get("exit_code", 0)),
                timed_out=bool(r.get("timed_out", False)), truncated=bool(r.get("truncated", False)), command=command,
                oom_killed=bool(r.get("oom_killed", False)),
            )  # fmt: skip
        assert self.inner is not None
        started = time.perf_counter()
        try:
            result = await self.inner.execute_command(await self._live_id(sandbox_id), command, env=env, cwd=cwd, timeout=timeout, stdin=stdin)
        except Exception as error:
            self._record("execute", args, {"error": _error_record(error)})
            raise
        self.stats.execute_seconds.append(time.perf_counter() - started)
        self._record(
            "execute",
            args,
            {
                "exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
                "timed_out": result.timed_out, "truncated": result.truncated,
                **({"oom_killed": True} if result.oom_killed else {}),  # only when set: older cassettes stay as they are
            },
        )  # fmt: skip
        return result

    @streaming
    async def stream_execution(
        self,
        sandbox_id: str,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
    ) -> AsyncIterator[StreamItem]:
        args = self._command_args(sandbox_id, command, env, cwd, timeout, stdin)
        if (played := self._replay("stream", args)) is not None:
            for chunk in played.result.get("chunks") or []:
                yield OutputChunk(chunk["stream"], chunk["data"])
            recorded_end = played.result.get("ended") or {}
            if "error" in recorded_end:
                _raise_recorded(recorded_end["error"])
            if "exit_code" in recorded_end:  # cassettes recorded before streams had a status have none
                yield ExitStatus(int(recorded_end["exit_code"]), bool(recorded_end.get("timed_out", False)))
            return
        assert self.inner is not None
        chunks: list[dict[str, str]] = []
        ended: dict[str, Any] = {"complete": False}
        try:
            live = CommandStream.of(
                self.inner.stream_execution(await self._live_id(sandbox_id), command, env=env, cwd=cwd, timeout=timeout, stdin=stdin),
                command=command,
            )
            async for chunk in live:
                chunks.append({"stream": chunk.stream, "data": chunk.data})
                yield chunk
            ended = {"complete": True}
            if live.status is not None:
                ended.update(exit_code=live.status.exit_code, timed_out=live.status.timed_out)
                yield live.status
        except Exception as error:
            ended = {"error": _error_record(error)}
            raise
        finally:
            self._record("stream", args, {"chunks": _merge_chunks(chunks), "ended": ended})

    # -- files ---------------------------------------------------------------------------------------------
    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        args = {"sandbox": self._placeholder(sandbox_id), "path": self._stable(path), "data": digest(data), "size": len(data)}
        if self._replay("write_file", args) is not None:
            return
        assert self.inner is not None
        try:
            await self.inner.write_file(await self._live_id(sandbox_id), path, data)
        except Exception as error:
            self._record("write_file", args, {"error": _error_record(error)})
            raise
        self._record("write_file", args, {})

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        args = {"sandbox": self._placeholder(sandbox_id), "path": self._stable(path)}
        if (played := self._replay("read_file", args)) is not None:
            return _unpayload(played.result.get("data") or {"text": ""})
        assert self.inner is not None
        try:
            data = await self.inner.read_file(await self._live_id(sandbox_id), path)
        except Exception as error:
            self._record("read_file", args, {"error": _error_record(error)})
            raise
        self._record("read_file", args, {"data": _payload(data)})
        return data

    async def aclose(self) -> None:
        """The wrapped provider belongs to whoever made it: nothing to close here."""


def _created(placeholder: str, info: SandboxInfo) -> dict[str, Any]:
    """A create's recorded result: the placeholder id, and whether it has network when the provider says."""
    network = info.metadata.get("network")
    return {"sandbox": placeholder, "network": network} if isinstance(network, bool) else {"sandbox": placeholder}


def _merge_chunks(chunks: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """Adjacent chunks of one stream stored as one: the file stays readable."""
    merged: list[dict[str, str]] = []
    for chunk in chunks:
        if merged and merged[-1]["stream"] == chunk["stream"]:
            merged[-1] = {"stream": chunk["stream"], "data": merged[-1]["data"] + chunk["data"]}
        else:
            merged.append(dict(chunk))
    return merged
