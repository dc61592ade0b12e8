"""A cassette's checked form is kept by content: read once, and afresh when the file or the reader changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandboxes import _cassette_cache, _cassette_format
from sandboxes.cassette import Cassette
from sandboxes.errors import CassetteError

CASSETTE = """version: 2
provider: local
interactions:
- op: create
  args: {image: null, labels: {}, env: {}, lifetime: null, memory_mb: null, cpus: null, network: null}
  result: {sandbox: sandbox-1, network: false}
- op: exec
  args: {sandbox: sandbox-1, argv: [python3, -c, "print(0.5)"], env: {}, cwd: null, timeout: 60.0}
  result: {output: [{stream: stdout, text: "0.5\\n"}], exit_code: 0}
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SANDBOXES_LOCAL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "cassettes"


def recorded(path: Path) -> list[dict[str, object]]:
    return [interaction.as_dict() for interaction in Cassette(path, "none", provider="local").recorded]


def test_a_cassette_read_again_is_not_parsed_again(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "test.yaml"
    path.write_text(CASSETTE)
    first = recorded(path)
    assert [entry.suffix for entry in cache.iterdir()] == [".json"]

    def parse_again(*args: object) -> object:
        raise AssertionError("parsed again")

    monkeypatch.setattr(_cassette_format, "read_document", parse_again)
    assert recorded(path) == first
    assert first[1]["result"] == {"output": [{"stream": "stdout", "text": "0.5\n"}], "exit_code": 0}


def test_a_cassette_read_from_the_cache_needs_no_yaml(tmp_path: Path, cache: Path) -> None:
    """A replayed suite's processes skip the YAML library's import (some 25 ms each) when every cassette is cached."""
    path = tmp_path / "test.yaml"
    path.write_text(CASSETTE)
    recorded(path)  # parsed here, and kept
    script = (
        "import sys\n"
        "from sandboxes.cassette import Cassette\n"
        f"assert len(Cassette({str(path)!r}, 'none', provider='local').recorded) == 2\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('yaml', '_yaml')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_an_edited_cassette_is_checked_afresh(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "test.yaml"
    path.write_text(CASSETTE)
    recorded(path)
    path.write_text(CASSETTE.replace("exit_code: 0", "exit_code: 'zero'"))
    with pytest.raises(CassetteError, match="exit_code"):
        recorded(path)
    assert len(list(cache.iterdir())) == 1  # what failed its check is never kept


def test_a_damaged_entry_is_a_miss_and_is_written_again(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "test.yaml"
    path.write_text(CASSETTE)
    first = recorded(path)
    (entry,) = cache.iterdir()
    entry.write_text('{"provider": "local", "interactions": [{"op": ')
    assert recorded(path) == first
    assert json.loads(entry.read_text())["interactions"] == first


def test_a_cache_that_cannot_be_written_is_only_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SANDBOXES_LOCAL_CACHE_DIR", str(blocker / "cache"))  # under a file: no directory can be made
    path = tmp_path / "test.yaml"
    path.write_text(CASSETTE)
    assert recorded(path) == recorded(path)
    assert blocker.read_text() == ""


def test_a_change_to_the_reader_makes_a_new_entry(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "test.yaml"
    path.write_text(CASSETTE)
    recorded(path)
    monkeypatch.setattr(_cassette_cache, "_reader_digest", lambda: b"another reader")
    recorded(path)
    assert len(list(cache.iterdir())) == 2


def test_entries_not_written_for_a_month_are_pruned(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "test.yaml"
    path.write_text(CASSETTE)
    recorded(path)
    (fresh,) = cache.iterdir()
    stale = cache / "stale.json"
    stale.write_text("{}")
    long_ago = time.time() - _cassette_cache.STALE_SECONDS - 60
    os.utime(stale, (long_ago, long_ago))
    _cassette_cache._prune(cache)
    assert list(cache.iterdir()) == [fresh]


def test_a_reader_whose_code_cannot_be_read_caches_nothing(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cassette_cache, "_reader_digest", lambda: None)  # as from a zipped install
    path = tmp_path / "test.yaml"
    path.write_text(CASSETTE)
    assert recorded(path) == recorded(path)
    assert not cache.exists()
