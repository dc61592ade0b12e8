"""Frames spoken between the host and the in-sandbox agent over a unix socket.

A frame is one type byte, a big-endian 4-byte length, then the payload. This
module is imported by both sides, so it uses the standard library only.
"""

from __future__ import annotations

import json
import struct

HEADER = b"H"  # client -> agent: JSON request
STDIN = b"I"  # client -> agent: bytes for the command's stdin / a file's contents
EOF = b"E"  # client -> agent: end of STDIN data
STDOUT = b"O"  # agent -> client
STDERR = b"R"  # agent -> client
EXIT = b"X"  # agent -> client: JSON {"exit_code", "timed_out", "duration_ms"}
DATA = b"F"  # agent -> client: file contents
OK = b"K"  # agent -> client: operation done (JSON payload, may be empty)
ERROR = b"!"  # agent -> client: JSON {"type", "message"}

MAX_FRAME = 1 << 20
_LENGTH = struct.Struct(">I")


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + _LENGTH.pack(len(payload)) + payload


def json_frame(kind: bytes, value: object) -> bytes:
    return frame(kind, json.dumps(value).encode())


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
            (length,) = _LENGTH.unpack_from(self._buffer, 1)
            if length > MAX_FRAME:
                raise ValueError(f"frame of {length} bytes exceeds the limit of {MAX_FRAME}")
            if len(self._buffer) < 5 + length:
                break
            kind = bytes(self._buffer[:1])
            payload = bytes(self._buffer[5 : 5 + length])
            del self._buffer[: 5 + length]
            frames.append((kind, payload))
        return frames
