"""Provider-neutral record/replay of sandbox operations.

``CassetteDriver`` is a middleware: it wraps any driver (or nothing, in
replay) under the engine and above the retry middleware, so it records what
the caller saw, not each attempt. It logs each driver operation (create, exec,
write/read file, list/get, destroy) with its normalised arguments and its
result, errors included, into a ``Cassette``: one readable YAML file per test.
Setup commands and the working directory are the engine's: they appear as the
``exec`` operations they are. In replay no provider is contacted and no credentials are
needed. Record modes follow VCR:

- ``none``: replay only; a missing cassette or an unmatched operation fails.
- ``once``: replay when the cassette exists (misses fail), else record it.
- ``new_episodes``: replay what matches, run the rest live and append it.
- ``all``: run everything live; the cassette becomes this run's operations.
- ``rewrite``: like ``all``, and the old cassette is not even read.

Matching is by operation and normalised arguments (argv, env, cwd, stdin
and file digests; not the timeout), first-in-first-out among equal keys.
Format 2; a format-1 file (recorded above the engine) is migrated when read.
Nothing read is trusted: YAML aliases are refused, every field's type is
checked, and a bad file is a ``CassetteError`` that names it. Provider sandbox ids
are replaced by stable placeholders (``sandbox-1``...), nothing time-dependent
is written, secrets are scrubbed in one place (``Scrubber``), writes are
atomic and only happen when the content changed.
"""

from __future__ import annotations

import base64
import builtins
import collections
import difflib
import fnmatch
import functools
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import errors as _errors
from .driver import RESERVED_LABEL_PREFIX, TOOLCHAINS, WIRE_METHODS, Driver, Event, Exit, FilesUpload, Output, cold_argv
from .errors import CassetteError
from .languages import RUN_ROOT
from .models import DEFAULT_MAX_OUTPUT_BYTES, NONCE_PREFIX, SandboxConfig, SandboxInfo
from .resilience import CircuitOpenError
from .specs import secret_variables

if TYPE_CHECKING:
    from .provider import SandboxProvider

RECORD_MODES = ("none", "once", "new_episodes", "all", "rewrite")
FORMAT_VERSION = 2
OLDEST_VERSION = 1  # migrated when read
RUN_LABEL_PREFIX = "sandboxes_"
"""Labels starting with this (run id, worker) are per run: never part of a match."""

SECRET_NAME_PATTERNS = ("*KEY*", "*TOKEN*", "*SECRET*", "*PASSWORD*")
MIN_SECRET_LENGTH = 4  # shorter values would scrub ordinary text


@functools.lru_cache(maxsize=4096)  # asked for every env var of every cassette
def looks_secret(name: str) -> bool:
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, pattern) for pattern in (*secret_variables(), *SECRET_NAME_PATTERNS))


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
        """An env mapping as stored and matched: secret-named values hidden, and learnt, so output that prints them is scrubbed too."""
        for key, value in (env or {}).items():
            if looks_secret(key):
                self.add(key, str(value))
        return {k: ("<scrubbed>" if looks_secret(k) else self.text(str(v))) for k, v in sorted((env or {}).items())}

    def data(self, value: bytes) -> bytes:
        """Bytes as stored (output, file contents): what is not text is stored as base64, so it is scrubbed before."""
        for secret, name in self._secrets:
            value = value.replace(secret.encode(), f"<scrubbed:{name}>".encode())
        return value

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


_NAMED: dict[str, str] = {}
"""A file's digest -> the name cassettes record and match it by (``name_content``)."""


def name_content(data: bytes, name: str) -> None:
    """Have cassettes record and match a file of these bytes by ``name``, not by its digest.

    For a file of the library's own that it writes into sandboxes (the judge's
    harness): its bytes change from one version to the next while what it does,
    which ``name`` says, does not, so a cassette recorded with one version
    replays with the next. Give it a new name when what it does changes:
    cassettes recorded under the old one then stop replaying, as they should.
    """
    _NAMED[digest(data)] = name


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
    """Labels as matched: not the per-run ones, nor the library's reserved ones (derived from the config)."""
    return {k: str(v) for k, v in sorted((labels or {}).items()) if not k.startswith((RUN_LABEL_PREFIX, RESERVED_LABEL_PREFIX))}


def _stored_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """Labels as a result stores them: the reserved ones kept (they carry the sandbox's settings)."""
    return {k: str(v) for k, v in sorted((labels or {}).items()) if not k.startswith(RUN_LABEL_PREFIX)}


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


_PLACED_NONCE = re.compile(re.escape(NONCE_PREFIX).encode() + rb"x[0-9]{31}")
_UNMATCHED_ARGS = {"timeout", "stdin_text", "size"}
"""Recorded for the reader but not part of a match (a timeout differs between runs)."""
RUN_DIR_PREFIX = RUN_ROOT + "/"  # where run_code puts each run, under a random name
_RANDOM_PATHS = (
    (re.compile(re.escape(RUN_DIR_PREFIX) + r"[0-9a-f]{12}"), RUN_DIR_PREFIX + "run-{}"),
    (re.compile(r"/tmp/\.sandboxes-cmd-[0-9a-f]{16}\.sh"), "/tmp/.sandboxes-cmd-{}.sh"),
    (re.compile(r"/tmp/\.sandboxes-download-[0-9a-f]{32}\.tar"), "/tmp/.sandboxes-download-{}.tar"),
    (re.compile(NONCE_PREFIX + r"[0-9a-f]{32}"), NONCE_PREFIX + "x{:031d}"),
)
"""What the library draws at random (run_code's run directories, spilled commands, download archives, the
judge's nonces): recorded as placeholders numbered in order of first use, in arguments, stdin and output alike,
so that a replay, which draws new ones, matches, and its output carries its own."""


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
        self.rerecord_hint = rerecord_hint or f"run it with record mode 'rewrite' (cassette {self.path})"
        self.scrubber = scrubber or Scrubber()
        existed = self.path.is_file()
        self._original_text = None
        if existed:
            try:
                self._original_text = self.path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as error:
                raise CassetteError(f"cannot read cassette {self.path}: it is not UTF-8 text ({error}). To record it again: {self.rerecord_hint}") from None
        self.recorded: list[Interaction] = []
        if existed and mode != "rewrite":
            self.recorded = self._load()
        if mode == "none" and not existed:
            raise CassetteError(f"no cassette at {self.path} and the record mode is 'none' (replay only).\nTo record it: {self.rerecord_hint}")
        self.existed = existed
        self._used: set[int] = set()
        self._keys: list[str] | None = None
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
        if self._keys is None:  # each recorded key computed once, not at every operation of the test
            self._keys = [interaction.key() for interaction in self.recorded]
        for index, recorded in enumerate(self._keys):
            if recorded == key and index not in self._used:
                self._used.add(index)
                return self.recorded[index]
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
        from . import _cassette_cache

        def read_document(text: str) -> tuple[str | None, list[Interaction]]:
            from ._cassette_format import read_document  # YAML only for a cassette the cache has not kept

            return read_document(text)

        try:
            provider, interactions = _cassette_cache.read(self._original_text or "", read_document)
        except ValueError as error:
            raise CassetteError(f"cannot read cassette {self.path}: {error}. To record it again: {self.rerecord_hint}") from None
        self.provider = self.provider or provider
        return interactions

    def interactions(self) -> list[Interaction]:
        """What the file will hold after this run."""
        if self.mode in ("all", "rewrite") or (self.mode == "once" and not self.existed):
            return list(self.new)
        return [*self.recorded, *self.new]

    def render(self) -> str:
        from ._cassette_format import write_document  # YAML only when a cassette is written or a new one read

        document = {
            "version": FORMAT_VERSION,
            "provider": self.provider,
            "interactions": [self.scrubber.deep(i.as_dict()) for i in self.interactions()],
        }
        hint = " ".join(self.rerecord_hint.split())
        header = f"# pytest-sandboxes cassette: the sandbox operations of one test.\n# To record it again: {hint}\n"
        body = write_document(document)
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


# -- errors recorded and raised again, faithfully ---------------------------------------
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
_ERROR_TYPES["CircuitOpenError"] = CircuitOpenError


def error_record(error: BaseException) -> dict[str, Any]:
    """An error as stored: its type, message and the fields a caller may read (retry_after, errno...)."""
    record: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    if isinstance(error, OSError):
        record.update(message=error.strerror or str(error), errno=error.errno, filename=error.filename)
    for name in ("provider", "capability", "retry_after", "retry_in"):
        value = getattr(error, name, None)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            record[name] = value
    return record


def recorded_error(record: Mapping[str, Any]) -> BaseException:
    """The error a record describes, of the same type with the same fields (a type unknown here: ProviderError)."""
    kind = _ERROR_TYPES.get(str(record.get("type", "")), _errors.ProviderError)
    message = str(record.get("message", ""))
    provider = record.get("provider")
    if kind is _errors.UnsupportedOperation:
        error: BaseException = _errors.UnsupportedOperation(str(provider or "?"), str(record.get("capability", "?")))
        error.args = (message,)
        return error
    if issubclass(kind, _errors.CommandFailed):  # its result lives in the exec it came from
        return _errors.ProviderError(message, provider=provider)
    if issubclass(kind, OSError):
        number, filename = record.get("errno"), record.get("filename")
        if number is None:
            return kind(message)
        return kind(number, message, filename) if filename is not None else kind(number, message)
    if kind is CircuitOpenError:
        return CircuitOpenError(message, provider=provider, retry_in=float(record.get("retry_in") or 0.0))
    if kind is _errors.RateLimitError:
        retry_after = record.get("retry_after")
        return _errors.RateLimitError(message, provider=provider, retry_after=float(retry_after) if retry_after is not None else None)
    if issubclass(kind, _errors.ProviderError):
        return kind(message, provider=provider)
    try:
        return kind(message)
    except TypeError:  # a constructor that wants more (ToolchainMissing): the same type, with the message
        error = kind.__new__(kind)
        error.args = (message,)
        return error


# -- the middleware ------------------------------------------------------------------------
class CassetteDriver:
    """Wraps a driver (or nothing, in replay) and logs every operation.

    With ``cassette=None`` every operation is live and only counted, so a
    test session can report operations and latencies either way.
    """

    def __init__(self, inner: Driver | None, cassette: Cassette | None = None, *, name: str | None = None, stats: CassetteStats | None = None) -> None:
        if inner is None and (cassette is None or cassette.needs_provider):
            raise ValueError("a provider is needed unless the cassette only replays")
        self.inner = inner
        self.cassette = cassette
        self.name: str = name or (inner.name if inner is not None else (cassette.provider if cassette else None)) or "replay"
        self.stats = stats if stats is not None else CassetteStats()
        self._placeholders: dict[str, str] = {}  # live id -> placeholder
        self._live_ids: dict[str, str] = {}  # placeholder -> live id ("" for a replayed one not yet live)
        self._configs: dict[str, SandboxConfig] = {}  # placeholder -> config (new_episodes)
        self._limits: dict[str, int] = {}  # placeholder -> output cap
        self._random: dict[str, str] = {}  # a random path -> its placeholder

    def __repr__(self) -> str:
        return f"<CassetteDriver {self.name} mode={self.cassette.mode if self.cassette else 'live'}>"

    def __getattr__(self, name: str) -> Any:  # the driver's options and descriptions
        if name.startswith("__") or name == "inner" or name in WIRE_METHODS or self.__dict__.get("inner") is None:
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _live(self) -> Driver:
        if self.inner is None:
            raise CassetteError("this cassette only replays, and the operation needs a live provider")
        return self.inner

    # -- ids and random names --------------------------------------------------------------------
    def _stable(self, value: Any) -> Any:
        if isinstance(value, str):
            for pattern, template in _RANDOM_PATHS:
                value = pattern.sub(functools.partial(self._placeholder_path, template), value)
            return value
        if isinstance(value, list):
            return [self._stable(item) for item in value]
        return value

    def _names(self, data: bytes, *, live: bool) -> bytes:
        """Output with this run's random names as their placeholders (to store), or the placeholders as this run's names (replayed).

        A nonce's placeholder is not hex, so no live nonce looks like one: one in the output to store was
        printed by the program, and is spoilt, or a replay would turn it into the judge's nonce.
        """
        if not live:
            data = _PLACED_NONCE.sub(NONCE_PREFIX.encode() + b"forged", data)
        for name, placeholder in self._random.items():
            old, new = (placeholder, name) if live else (name, placeholder)
            data = data.replace(old.encode(), new.encode())
        return data

    def _placeholder_path(self, template: str, found: re.Match[str]) -> str:
        return self._random.setdefault(found.group(0), template.format(len(self._random) + 1))

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
        """The provider's id for a handle's id; a replayed sandbox gets a live one on first need (new_episodes)."""
        if sandbox_id in self._placeholders:
            return sandbox_id
        live = self._live_ids.get(sandbox_id)
        if live:
            return live
        if sandbox_id in self._live_ids:
            info = await self._live().create(self._configs.get(sandbox_id, SandboxConfig()))
            self.stats.created += 1
            self._live_ids[sandbox_id] = info.id
            self._placeholders[info.id] = sandbox_id
            return info.id
        return sandbox_id

    # -- the generic path --------------------------------------------------------------------------
    def _replay(self, op: str, args: dict[str, Any]) -> Interaction | None:
        if self.cassette is None:
            return None
        args.update(self.cassette.scrubber.deep(args))  # matched as stored: scrubbed, so neither a match nor a miss shows a secret
        interaction = self.cassette.play(op, args)
        if interaction is not None:
            self.stats.replayed += 1
            if "error" in interaction.result and op != "exec":
                raise recorded_error(interaction.result["error"])
            return interaction
        if not self.cassette.records:
            raise self.cassette.miss(op, args)
        return None

    def _record(self, op: str, args: dict[str, Any], result: dict[str, Any]) -> None:
        self.stats.live += 1
        if self.cassette is not None and self.cassette.records:
            scrub = self.cassette.scrubber.deep
            self.cassette.append(Interaction(op, scrub(args), scrub(result)))
            self.stats.recorded += 1

    def _scrub_env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        scrubber = self.cassette.scrubber if self.cassette else Scrubber({})
        return scrubber.env(env)

    # -- lifecycle -----------------------------------------------------------------------------------
    def _config_args(self, config: SandboxConfig) -> dict[str, Any]:
        return {
            "image": config.image,
            "labels": _plain_labels(config.labels),
            "env": self._scrub_env(config.env),
            "lifetime": config.lifetime,
            "memory_mb": config.memory_mb,
            "cpus": config.cpus,
            "network": config.network,
        }

    async def create(self, config: SandboxConfig) -> SandboxInfo:
        args = self._config_args(config)
        if (played := self._replay("create", args)) is not None:
            placeholder = self._new_placeholder(None)
            self._configs[placeholder] = config
            self._limits[placeholder] = config.max_output_bytes
            # Whether it had network decides where run_code installs dependencies: replayed as recorded.
            metadata = {"network": played.result["network"]} if "network" in played.result else {}
            return SandboxInfo(id=placeholder, provider=self.name, labels=dict(config.labels), image=config.image, metadata=metadata)
        started = time.perf_counter()
        try:
            info = await self._live().create(config)
        except Exception as error:
            self._record("create", args, {"error": error_record(error)})
            raise
        self.stats.create_seconds.append(time.perf_counter() - started)
        self.stats.created += 1
        placeholder = self._new_placeholder(info.id)
        self._limits[placeholder] = config.max_output_bytes
        network = info.metadata.get("network")
        self._record("create", args, {"sandbox": placeholder, **({"network": network} if isinstance(network, bool) else {})})
        return self._unshared(info)

    def _unshared(self, info: SandboxInfo) -> SandboxInfo:
        """Recording, a sandbox is not alike another for its tools (``TOOLCHAINS``): each test's cassette
        holds the lookups it replays, whatever ran before it in the process."""
        if self.cassette is None or TOOLCHAINS not in info.metadata:
            return info
        return replace(info, metadata={key: value for key, value in info.metadata.items() if key != TOOLCHAINS})

    async def get(self, sandbox_id: str) -> SandboxInfo | None:
        args = {"sandbox": self._placeholder(sandbox_id)}
        if (played := self._replay("get", args)) is not None:
            found = played.result.get("found")
            return SandboxInfo(id=sandbox_id, provider=self.name, labels=dict(played.result.get("labels") or {})) if found else None
        info = await self._live().get(await self._live_id(sandbox_id))
        self._record("get", args, {"found": info is not None, "labels": _stored_labels(info.labels) if info else {}})
        return self._unshared(info) if info else None

    async def list(self, labels: Mapping[str, str]) -> builtins.list[SandboxInfo]:
        args = {"labels": _plain_labels(labels)}
        if (played := self._replay("list", args)) is not None:
            return [SandboxInfo(id=item["sandbox"], provider=self.name, labels=dict(item.get("labels") or {})) for item in played.result.get("sandboxes") or []]
        found = await self._live().list(labels)
        self._record("list", args, {"sandboxes": [{"sandbox": self._placeholder(i.id), "labels": _stored_labels(i.labels)} for i in found]})
        return [self._unshared(info) for info in found]

    async def destroy(self, sandbox_id: str) -> bool:
        args = {"sandbox": self._placeholder(sandbox_id)}
        if (played := self._replay("destroy", args)) is not None:
            live = sandbox_id if sandbox_id in self._placeholders else self._live_ids.get(sandbox_id)
            if live and self.inner is not None:  # a live sandbox behind the placeholder (new_episodes): it goes too
                await self.inner.destroy(live)
            return bool(played.result.get("existed", True))
        existed = await self._live().destroy(await self._live_id(sandbox_id))
        self._record("destroy", args, {"existed": existed})
        return existed

    async def health_check(self) -> bool:
        return True if self.inner is None else await self.inner.health_check()

    async def aclose(self) -> None:
        """The wrapped driver belongs to whoever made it: nothing to close here."""

    # -- commands ----------------------------------------------------------------------------------------
    async def exec(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        stdin: bytes | None,
        timeout: float,
        output_limit: int,
    ) -> AsyncIterator[Event]:
        args: dict[str, Any] = {
            "sandbox": self._placeholder(sandbox_id),
            "argv": self._stable(cold_argv(argv)),  # warm or not, one command
            "env": self._scrub_env(env),
            "cwd": self._stable(cwd),
            "timeout": timeout,
        }
        if stdin is not None:
            stable = self._stable(stdin.decode("latin-1")).encode("latin-1")
            args["stdin"] = digest(stable)
            if len(stable) <= 4096 and "text" in (stored := _payload(stable)):
                args["stdin_text"] = stored["text"]
        if (played := self._replay("exec", args)) is not None:
            for item in played.result.get("output") or []:
                yield Output(item["stream"], self._names(_unpayload(item), live=True))
            if "error" in played.result:
                raise recorded_error(played.result["error"])
            r = played.result
            if r.get("exit_unknown"):  # the caller stopped reading before the end (or a format-1 stream without its status)
                return
            yield Exit(int(r.get("exit_code", 0)), bool(r.get("timed_out")), None, bool(r.get("oom_killed")), tuple(r.get("dropped") or ()))
            return
        scrubber = self.cassette.scrubber if self.cassette else Scrubber({})
        recorder = _OutputRecorder(output_limit, lambda data: scrubber.data(self._names(data, live=False)))
        result: dict[str, Any] = {"exit_unknown": True}  # unless the command ends or fails: the caller stopped reading
        started = time.perf_counter()
        try:
            live_id = await self._live_id(sandbox_id)
            async for event in self._live().exec(live_id, argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout, output_limit=output_limit):
                if isinstance(event, Output):
                    recorder.add(event)
                else:
                    result = {"exit_code": event.exit_code}
                    result.update({k: True for k in ("timed_out", "oom_killed") if getattr(event, k)})
                    dropped = sorted({*event.dropped, *recorder.dropped})
                    if dropped:
                        result["dropped"] = dropped
                yield event
        except Exception as error:
            result = {"error": error_record(error)}
            raise
        finally:
            self.stats.execute_seconds.append(time.perf_counter() - started)
            self._record("exec", args, {"output": recorder.stored(), **result})

    # -- files ----------------------------------------------------------------------------------------------
    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        fingerprint = digest(data)
        args = {"sandbox": self._placeholder(sandbox_id), "path": self._stable(path), "data": _NAMED.get(fingerprint, fingerprint), "size": len(data)}
        if self._replay("write_file", args) is not None:
            return
        try:
            await self._live().write_file(await self._live_id(sandbox_id), path, data)
        except Exception as error:
            self._record("write_file", args, {"error": error_record(error)})
            raise
        self._record("write_file", args, {})

    async def write_files(self, sandbox_id: str, files: Sequence[tuple[str, bytes]]) -> None:
        """In one exchange when nothing is recorded; recorded and replayed as a ``write_file`` each."""
        if self.cassette is None and isinstance(self.inner, FilesUpload):
            await self.inner.write_files(await self._live_id(sandbox_id), files)
            self.stats.live += 1
            return
        for path, data in files:
            await self.write_file(sandbox_id, path, data)

    async def read_file(self, sandbox_id: str, path: str, limit: int) -> bytes:
        args = {"sandbox": self._placeholder(sandbox_id), "path": self._stable(path)}
        if (played := self._replay("read_file", args)) is not None:
            return _unpayload(played.result.get("data") or {"text": ""})
        try:
            data = await self._live().read_file(await self._live_id(sandbox_id), path, limit)
        except Exception as error:
            self._record("read_file", args, {"error": error_record(error)})
            raise
        self._record("read_file", args, {"data": _payload(self.cassette.scrubber.data(data) if self.cassette else data)})
        return data


class _OutputRecorder:
    """A command's output as a cassette keeps it: in the order it came, each stream's head and tail within the cap.

    What is kept of each stream is what the engine's ``OutputBuffer`` of the
    same cap keeps, so a replay gives the same text; ``dropped`` names the
    streams whose middle went.
    """

    def __init__(self, limit: int = DEFAULT_MAX_OUTPUT_BYTES, rewrite: Callable[[bytes], bytes] | None = None) -> None:
        self._head_room = {"stdout": limit // 2, "stderr": limit // 2}
        self._tail_room = limit - limit // 2
        self._chunks: builtins.list[tuple[str, bytearray]] = []  # in order; tail chunks shrink from the front
        self._tails: dict[str, collections.deque[bytearray]] = {"stdout": collections.deque(), "stderr": collections.deque()}
        self._tail_size = {"stdout": 0, "stderr": 0}
        self._rewrite = rewrite or bytes
        self.dropped: set[str] = set()

    def add(self, event: Output) -> None:
        stream = event.stream
        room = self._head_room[stream]
        head, rest = event.data[:room], event.data[room:]
        if head:
            self._head_room[stream] -= len(head)
            self._chunks.append((stream, bytearray(head)))
        if rest:
            chunk = bytearray(rest)
            self._chunks.append((stream, chunk))
            self._tails[stream].append(chunk)
            self._tail_size[stream] += len(chunk)
            while self._tail_size[stream] > self._tail_room:
                oldest = self._tails[stream][0]
                cut = min(len(oldest), self._tail_size[stream] - self._tail_room)
                del oldest[:cut]  # the same object as in _chunks: it shrinks there too
                self._tail_size[stream] -= cut
                self.dropped.add(stream)
                if not oldest:
                    self._tails[stream].popleft()

    def stored(self) -> builtins.list[dict[str, str]]:
        merged: builtins.list[tuple[str, bytes]] = []
        for stream, chunk in self._chunks:
            if not chunk:
                continue
            if merged and merged[-1][0] == stream:
                merged[-1] = (stream, merged[-1][1] + bytes(chunk))
            else:
                merged.append((stream, bytes(chunk)))
        return [{"stream": stream, **_payload(self._rewrite(data))} for stream, data in merged]


def cassette_provider(
    live: SandboxProvider | None, cassette: Cassette | None, *, name: str | None = None, stats: CassetteStats | None = None
) -> SandboxProvider:
    """A provider whose driver is recorded (or, with ``live=None``, only replayed) by ``cassette``."""
    from .provider import SandboxProvider
    from .specs import spec

    if cassette is not None and cassette.provider is None and live is not None:
        cassette.provider = live.name  # written in the file, so that a replay knows it
    driver = CassetteDriver(live.driver if live is not None else None, cassette, name=name or (live.name if live else None), stats=stats)
    if live is not None:
        return live.with_driver(driver)
    return SandboxProvider(driver, spec=spec(driver.name))
