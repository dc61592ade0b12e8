"""Streamed output that still ends with an exit status.

``async for chunk in sandbox.stream(cmd)`` yields ``OutputChunk``s as the
command prints them; once the loop is over the same object says how the
command ended (``exit_code``, ``timed_out``, ``result``), so a caller that
shows output live does not need a second command to learn the status.

The engine's stream yields the chunks and, last, one ``ExitStatus``, which
the ``CommandStream`` keeps instead of passing on.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

from .models import (
    DEFAULT_MAX_OUTPUT_BYTES,
    Command,
    ExecutionResult,
    OutputBuffer,
    OutputChunk,
)


@dataclass(frozen=True)
class ExitStatus:
    """How a streamed command ended; a provider's stream yields it last."""

    exit_code: int
    timed_out: bool = False
    duration_ms: float | None = None


StreamItem = OutputChunk | ExitStatus


class ChunkDecoder:
    """Bytes of stdout and stderr to text chunks, never splitting a UTF-8 character.

    ``decode`` keeps a character cut at the end of one piece of output for the
    next; ``flush`` gives what is left once the command has ended.
    """

    def __init__(self) -> None:
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")}

    def decode(self, stream: str, data: bytes) -> OutputChunk | None:
        text = self._decoders[stream].decode(data)
        return OutputChunk(stream, text) if text else None  # type: ignore[arg-type]  # stream is "stdout" or "stderr": the decoders' keys

    def flush(self) -> list[OutputChunk]:
        left = ((name, decoder.decode(b"", final=True)) for name, decoder in self._decoders.items())
        return [OutputChunk(name, text) for name, text in left if text]  # type: ignore[arg-type]  # names are the decoders' keys


class CommandStream(AsyncIterator[OutputChunk]):
    """Output chunks as the command produces them; after the end, its exit status.

    ``exit_code`` and ``timed_out`` are ``None`` until the stream has ended
    (and stay ``None`` when it was closed early, or when a provider outside
    this library streams without reporting a status). ``result`` is an
    ``ExecutionResult`` with the output seen (capped like ``execute``'s, head
    and tail) and the status; ``await stream.wait()`` reads what is left and
    returns it.
    """

    def __init__(self, source: AsyncIterator[StreamItem], *, command: Command | None = None, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        self._source = source
        self.command = command
        self.status: ExitStatus | None = None
        self.ended = False
        self._started = time.monotonic()
        self._out = OutputBuffer(max_output_bytes)
        self._err = OutputBuffer(max_output_bytes)

    def __repr__(self) -> str:
        state = f"exit_code={self.exit_code} timed_out={self.timed_out}" if self.ended else "running"
        return f"<CommandStream {state}>"

    # -- iteration -----------------------------------------------------------------
    def __aiter__(self) -> CommandStream:
        return self

    async def __anext__(self) -> OutputChunk:
        while True:
            try:
                item = await self._source.__anext__()
            except StopAsyncIteration:
                self.ended = True
                raise
            if isinstance(item, ExitStatus):
                self.status = item
                continue
            (self._out if item.stream == "stdout" else self._err).write(item.data.encode("utf-8", "surrogateescape"))
            return item

    async def aclose(self) -> None:
        """Stop reading; the provider ends the command if it is still running."""
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> CommandStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def wait(self) -> ExecutionResult:
        """Read the rest of the output (kept, not shown) and return the result."""
        async for _ in self:
            pass
        return self.result

    # -- how it ended ------------------------------------------------------------------
    @property
    def exit_code(self) -> int | None:
        return self.status.exit_code if self.ended and self.status else None

    @property
    def timed_out(self) -> bool | None:
        return self.status.timed_out if self.ended and self.status else None

    @property
    def success(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @property
    def result(self) -> ExecutionResult:
        """The whole command's result; RuntimeError before the stream has ended."""
        if not self.ended:
            raise RuntimeError("the stream has not ended: iterate it to the end (or await stream.wait()) first")
        if self.status is None:
            raise RuntimeError("the provider's stream ended without an exit status")
        duration = self.status.duration_ms
        return ExecutionResult(
            stdout=self._out.text(),
            stderr=self._err.text(),
            exit_code=self.status.exit_code,
            duration_ms=duration if duration is not None else (time.monotonic() - self._started) * 1000,
            timed_out=self.status.timed_out,
            truncated=self._out.truncated or self._err.truncated,
            command=self.command,
        )
