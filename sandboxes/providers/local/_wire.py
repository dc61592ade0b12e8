"""Frames spoken between the host and the in-sandbox agent over a unix socket.

A frame is one type byte, a big-endian 4-byte length, then the payload. This
module is imported by both sides, so it uses the standard library only, and
nothing slow to import: the agent's start-up time is the sandbox's.

Requests (host -> agent) are ``marshal``-encoded: both sides are the same
interpreter and the host is trusted. Replies (agent -> host) are JSON, since
the host must not unmarshal what a sandbox could forge.
"""

from __future__ import annotations

import marshal
from _json import encode_basestring_ascii as _quote

TYPE_CHECKING = False  # not `typing`: it costs milliseconds, and this module's import time is the agent's
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

HEADER = b"H"  # client -> agent: the (last part of the) marshalled request
HEADER_PART = b"h"  # client -> agent: a part of a request too large for one frame
STDIN = b"I"  # client -> agent: bytes for the command's stdin / a file's contents
EOF = b"E"  # client -> agent: end of STDIN data
STDOUT = b"O"  # agent -> client
STDERR = b"R"  # agent -> client
EXIT = b"X"  # agent -> client: JSON {"exit_code", "timed_out", "duration_ms"}
DATA = b"F"  # agent -> client: file contents
OK = b"K"  # agent -> client: operation done (JSON payload, may be empty)
ERROR = b"!"  # agent -> client: JSON {"type", "message"}

MAX_FRAME = 1 << 20


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + len(payload).to_bytes(4, "big") + payload


def request_frame(request: dict[str, object]) -> bytes:
    """The request in frames: HEADER_PART for all but its last MAX_FRAME bytes, then HEADER,
    so a command or an environment of any size fits."""
    body = marshal.dumps(request)
    last = (len(body) - 1) // MAX_FRAME * MAX_FRAME if body else 0
    return b"".join(chunked(HEADER_PART, body[:last])) + frame(HEADER, body[last:])


def decode_request(payload: bytes) -> dict[str, Any]:
    request: dict[str, Any] = marshal.loads(payload)
    return request


def reply_frame(kind: bytes, reply: Mapping[str, str | int | float | bool | None]) -> bytes:
    """A JSON reply of flat scalars, without importing json (which costs ~10 ms)."""
    return frame(kind, ("{" + ",".join(f"{_quote(k)}:{_scalar(v)}" for k, v in reply.items()) + "}").encode())


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, int | float):
        return repr(value)
    raise TypeError(f"not a reply scalar: {value!r}")


def chunked(kind: bytes, data: bytes) -> list[bytes]:
    """Split a payload into frames of at most MAX_FRAME bytes."""
    return [frame(kind, data[i : i + MAX_FRAME]) for i in range(0, len(data), MAX_FRAME)]


class FrameParser:
    """Incremental parser: feed bytes, take whole frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= 5:
            length = int.from_bytes(self._buffer[1:5], "big")
            if length > MAX_FRAME:
                raise ValueError(f"frame of {length} bytes exceeds the limit of {MAX_FRAME}")
            if len(self._buffer) < 5 + length:
                break
            kind = bytes(self._buffer[:1])
            payload = bytes(self._buffer[5 : 5 + length])
            del self._buffer[: 5 + length]
            frames.append((kind, payload))
        return frames
