"""Appending JSON lines that several writers (tasks, processes) share: one whole line per write."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def append_line(path: Path, record: Mapping[str, Any]) -> None:
    """One whole line per write (O_APPEND): a reader never sees half of one, nor two interleaved."""
    data = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # a short write to a regular file: disk full
            raise OSError(f"could not write a whole line to {path}")
    finally:
        os.close(fd)
