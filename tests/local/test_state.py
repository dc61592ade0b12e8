"""The host's bookkeeping of local sandboxes: the uid registry that keeps one uid to one live sandbox.

A root caller gives each sandbox a host uid of its own. The registry's slot
for a uid names the state dir of the sandbox that holds it; a recycled
sandbox's dir is renamed at each lease and reset, and its slot follows it.
A slot is free again only once the dir it names is gone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sandboxes.providers.local import state


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "uids"
    monkeypatch.setattr(state, "UID_REGISTRY", path)
    return path


def uids_in_turn(monkeypatch: pytest.MonkeyPatch, *offsets: int) -> None:
    """allocate_uid tries these uids, in this order."""
    tries = iter(offsets)
    monkeypatch.setattr(state.random, "randrange", lambda _slots: next(tries))


def test_a_uid_moves_with_its_renamed_sandbox_and_stays_taken_while_that_sandbox_lives(registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, leased = tmp_path / "sb-first", tmp_path / "sb-leased"
    first.mkdir()
    uids_in_turn(monkeypatch, 7)
    uid = state.allocate_uid(first)
    assert uid == state.UID_BASE + 7

    state.reassign_uid(uid, leased)  # a recycled sandbox takes a new id: its slot names the new dir first
    first.rename(leased)
    slot = registry / str(uid)
    assert slot.is_symlink() and os.readlink(slot) == str(leased)
    assert not list(registry.glob(".*"))  # no temporary left behind

    os.utime(slot, (time.time() - 2 * state.UID_MOVE_SECONDS,) * 2, follow_symlinks=False)  # old: only its holder keeps it
    uids_in_turn(monkeypatch, 7, 8)
    other = tmp_path / "sb-other"
    assert state.allocate_uid(other) == state.UID_BASE + 8  # never the live sandbox's uid


def test_a_slot_whose_sandbox_is_gone_is_taken_again_once_it_is_old(registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = tmp_path / "sb-gone"
    gone.mkdir()
    uids_in_turn(monkeypatch, 3)
    uid = state.allocate_uid(gone)
    state.reassign_uid(uid, tmp_path / "idle-gone")  # renamed, then the process died: the dir never came to be
    slot = registry / str(uid)

    uids_in_turn(monkeypatch, 3, 4)
    assert state.allocate_uid(tmp_path / "sb-young") == state.UID_BASE + 4  # a young slot may be a rename in flight: kept
    os.utime(slot, (time.time() - 2 * state.UID_MOVE_SECONDS,) * 2, follow_symlinks=False)
    uids_in_turn(monkeypatch, 3, 3)
    assert state.allocate_uid(tmp_path / "sb-next") == uid  # freed, then taken
    assert (registry / str(uid)).read_text() == str(tmp_path / "sb-next")


@pytest.mark.parametrize("unread", [False, True])
def test_a_saved_record_replaces_the_last_one_whole_and_leaves_no_temporary_file(tmp_path: Path, unread: bool) -> None:
    record = state.SandboxState(id="idle-1", labels={"lease": "old"}, created_at=1.0, expires_at=2.0, pid=1, pid_start="0", isolation="bwrap")
    record.save(tmp_path)
    record.labels, record.id = {"lease": "new"}, "sb-2"
    record.save(tmp_path, unread=unread)
    assert state.SandboxState.load(tmp_path) == record
    assert sorted(os.listdir(tmp_path)) == ["meta.json"]
