"""Plain data: configuration in, results out. No I/O here."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import CommandFailed

DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
DEFAULT_LIFETIME_SECONDS = 600.0
FRESH_ENV = "SANDBOXES_FRESH"
"""Set to 1, true, yes or on: no sandbox is recycled, each creation starts a new one (local provider)."""
WARM_ENV = "SANDBOXES_WARM_PYTHON"
"""Set to 0, false, no or off: Python programs start a new interpreter each, never a warm one (local provider)."""
DEFAULT_COMMAND_TIMEOUT_SECONDS = 300.0
NONCE_PREFIX = "sandboxes-nonce-"
"""How the judge's nonces start, so that a cassette knows them (and stores a placeholder)."""

Command = str | Sequence[str]
"""A string is run by ``sh -c``; a list of arguments is run directly, no shell."""


@dataclass(init=False)
class SandboxConfig:
    """How to create a sandbox.

    The reference library's field names keep working: ``env_vars`` is ``env``,
    ``timeout_seconds`` is ``lifetime`` (how long the sandbox may live), and
    ``cpu_cores`` is ``cpus``.
    """

    image: str | None
    labels: dict[str, str]
    env: dict[str, str]
    lifetime: float | None
    memory_mb: int | None
    cpus: float | None
    network: bool | None
    working_dir: str | None
    setup_commands: list[str]
    command_timeout: float | None
    max_output_bytes: int
    provider_config: dict[str, Any]

    def __init__(
        self,
        *,
        image: str | None = None,
        labels: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        lifetime: float | None = None,
        memory_mb: int | None = None,
        cpus: float | None = None,
        network: bool | None = None,
        working_dir: str | None = None,
        setup_commands: Sequence[str] | None = None,
        command_timeout: float | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        provider_config: Mapping[str, Any] | None = None,
        env_vars: Mapping[str, str] | None = None,
        timeout_seconds: float | None = None,
        cpu_cores: float | None = None,
    ) -> None:
        from . import _validate as check  # here: _validate imports Command from this module

        if image is not None and not isinstance(image, str):
            raise TypeError(f"image must be a string, not {type(image).__name__} ({image!r})")
        self.image = image
        self.labels = check.labels(labels)
        self.env = {**check.environment(env_vars, "env_vars"), **check.environment(env)}
        self.lifetime = check.seconds(lifetime if lifetime is not None else timeout_seconds, "lifetime")
        self.memory_mb = check.positive(memory_mb, "memory_mb", int)
        self.cpus = check.positive(cpus if cpus is not None else cpu_cores, "cpus")
        if network not in (None, True, False):
            raise ValueError(f"network must be None, True or False, not {network!r}")
        self.network = network
        self.working_dir = check.optional_path(working_dir, "working_dir")
        self.setup_commands = check.commands(setup_commands, "setup_commands")
        self.command_timeout = check.seconds(command_timeout, "command_timeout")
        if max_output_bytes < 2:
            raise ValueError("max_output_bytes must be at least 2")
        self.max_output_bytes = max_output_bytes
        self.provider_config = dict(provider_config or {})

    @property
    def env_vars(self) -> dict[str, str]:
        return self.env

    @property
    def timeout_seconds(self) -> float | None:
        return self.lifetime

    @property
    def cpu_cores(self) -> float | None:
        return self.cpus

    def replace(self, **changes: Any) -> SandboxConfig:
        """A copy with some fields changed (dicts are copied, not shared)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update(changes)
        return SandboxConfig(**fields)


@dataclass
class ExecutionResult:
    """What a command did. A non-zero exit is a result, not an exception."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    duration_ms: float = 0.0
    timed_out: bool = False
    truncated: bool = False
    command: Command | None = field(default=None, repr=False)
    oom_killed: bool = False  # the sandbox's memory limit killed part of this command (where the provider can tell)
    cpu_ms: float | None = None  # user + system CPU time where the provider measures it (local: the command and what it waited for; not a replay)

    @property
    def success(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def check(self) -> ExecutionResult:
        """Return self when the command succeeded, else raise ``CommandFailed``."""
        if not self.success:
            raise CommandFailed(self)
        return self

    def describe(self, tail_lines: int = 20) -> str:
        """A readable account for failure messages: exit code and output tails."""
        if self.timed_out:
            head = f"command timed out after {self.duration_ms / 1000:.1f}s"
        elif self.oom_killed:
            head = f"command exited with code {self.exit_code}, killed for exceeding the sandbox's memory limit"
        else:
            head = f"command exited with code {self.exit_code}"
        if self.command is not None:
            shown = self.command if isinstance(self.command, str) else " ".join(self.command)
            if len(shown) > 200:
                shown = shown[:200] + "..."
            head += f": {shown}"
        parts = [head]
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            lines = text.splitlines()
            if lines:
                shown_lines = lines[-tail_lines:]
                label = f"{name} (last {len(shown_lines)} of {len(lines)} lines)" if len(lines) > tail_lines else name
                parts.append(f"--- {label} ---\n" + "\n".join(shown_lines))
        if self.truncated:
            parts.append("(output was truncated: only its head and tail were kept)")
        return "\n".join(parts)


@dataclass(frozen=True)
class OutputChunk:
    """A piece of streamed output; prints as its text."""

    stream: Literal["stdout", "stderr"]
    data: str

    def __str__(self) -> str:
        return self.data


@dataclass
class SandboxInfo:
    """What a provider knows about one sandbox."""

    id: str
    provider: str
    labels: dict[str, str] = field(default_factory=dict)
    state: str = "running"
    created_at: float | None = None
    expires_at: float | None = None
    image: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Capabilities:
    """What a provider can do. A missing one raises ``UnsupportedOperation``."""

    streaming: bool = False
    stdin: bool = False  # a stdin stream; without one the engine feeds stdin from a file (where ``files`` is)
    files: bool = True
    background_processes: bool = False
    network_control: bool = False
    native_labels: bool = False
    cross_process_reuse: bool = False
    snapshots: bool = False
    gpu: bool = False
    merges_stderr: bool = False  # stderr arrives inside stdout (Daytona): a result's stderr is then always empty
    tree_download: bool = False  # the driver sends a directory as one tar stream (``driver.TreeDownload``)
    files_upload: bool = False  # the driver writes several files in one exchange (``driver.FilesUpload``)
    oom_reporting: bool = False  # ``ExecutionResult.oom_killed`` is set when the memory limit killed the command
    warm_python: bool = False  # Python programs can start from a warm interpreter (``driver.WARM_PYTHON``)

    def as_dict(self) -> dict[str, bool]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def supported(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]


class OutputBuffer:
    """Keeps the head and tail of a stream within ``limit`` bytes.

    A program printing gigabytes never grows the host's memory: the middle is
    dropped and ``truncated`` says so.
    """

    def __init__(self, limit: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        self.limit = limit
        self._head = bytearray()
        self._tail = bytearray()
        self._head_limit = limit // 2
        self._tail_limit = limit - self._head_limit
        self.truncated = False

    def write(self, data: bytes) -> None:
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data:
            return
        self._tail += data
        if len(self._tail) > self._tail_limit:
            del self._tail[: len(self._tail) - self._tail_limit]
            self.truncated = True

    def getvalue(self) -> bytes:
        if self.truncated:
            return bytes(self._head) + b"\n[... output truncated ...]\n" + bytes(self._tail)
        return bytes(self._head + self._tail)

    def text(self) -> str:
        return self.getvalue().decode("utf-8", errors="replace")
