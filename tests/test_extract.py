"""Extracting archives that come out of an untrusted sandbox (sandboxes._extract).

Every archive here is hostile: it claims root ownership, setuid modes, links
out of the target, device nodes, names that climb out, sizes it does not
have. The host file system is checked afterwards: only regular files and
directories, owned by the caller, no mode bit beyond 0o755, nothing outside
the target. Each test runs with tarfile's extraction filters present and
hidden (as on an interpreter older than the filters): the extractor must not
depend on them.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import logging
import os
import stat
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandboxes import _extract
from sandboxes._extract import MAX_DEPTH, ExtractReport, extract_tar
from sandboxes.provider import SandboxProvider
from sandboxes.providers.local import LocalProvider

UMASK = 0o022
FILE = 0o644 & ~UMASK
EXEC = 0o755 & ~UMASK
DIR = 0o755 & ~UMASK
CAP = 1 << 20


@pytest.fixture(autouse=True, params=["filters", "no-filters"])
def tarfile_filters(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each test with tarfile's extraction filters, and again without them."""
    if request.param == "no-filters":
        for name in ("data_filter", "tar_filter", "fully_trusted_filter"):
            monkeypatch.delattr(tarfile, name, raising=False)
        assert not hasattr(tarfile, "data_filter")
    return str(request.param)


@pytest.fixture(autouse=True)
def known_umask() -> Iterator[int]:
    previous = os.umask(UMASK)
    try:
        yield UMASK
    finally:
        os.umask(previous)


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return tmp_path / "target"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the target that nothing may reach."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "victim").write_text("untouched\n")
    return path


# -- building hostile archives -------------------------------------------------------
def member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes = b"",
    *,
    mode: int = 0o644,
    link: str = "",
    size: int | None = None,
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.linkname = link
    info.mtime = 4_000_000_000  # far in the future: must not be applied
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    info.size = len(data) if size is None else size
    return info, data


def archive(*members: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def extract(data: bytes, target: Path, max_bytes: int = CAP) -> ExtractReport:
    return extract_tar(io.BytesIO(data), target, max_bytes=max_bytes)


def assert_safe_tree(root: Path) -> dict[str, os.stat_result]:
    """Every entry below ``root``: a regular file or directory of ours, no bit beyond 0o755."""
    found: dict[str, os.stat_result] = {}
    pending = [root]
    while pending:
        directory = pending.pop()
        for entry in os.scandir(directory):
            info = entry.stat(follow_symlinks=False)
            relative = Path(entry.path).relative_to(root).as_posix()
            found[relative] = info
            assert stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode), f"{relative} is neither file nor directory"
            assert info.st_mode & 0o7777 & ~0o755 == 0, f"{relative} has mode {oct(info.st_mode)}"
            assert info.st_uid == os.geteuid(), f"{relative} belongs to uid {info.st_uid}"
            assert info.st_mtime < 4_000_000_000, f"{relative} took its time from the archive"
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
    return found


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def skipped_names(report: ExtractReport) -> set[str]:
    return {line.split(": ", 1)[0] for line in report.skipped}


# -- modes, owners and types -----------------------------------------------------------
def test_modes_and_owners_from_the_archive_are_ignored(target: Path) -> None:
    data = archive(
        member(".", tarfile.DIRTYPE, mode=0o1777),
        member("setuid", data=b"#!/bin/sh\n", mode=0o4755),
        member("setgid", data=b"g", mode=0o2755),
        member("sticky", data=b"s", mode=0o1777),
        member("open", data=b"o", mode=0o777),
        member("private", data=b"p", mode=0o600),
        member("plain", data=b"p", mode=0o644),
        member("only-group-exec", data=b"x", mode=0o610),
        member("world", tarfile.DIRTYPE, mode=0o777),
        member("sgid-dir", tarfile.DIRTYPE, mode=0o2775),
        member("tmp-like", tarfile.DIRTYPE, mode=0o1777),
        member("implicit/deeper/file", data=b"d", mode=0o6777),
    )
    report = extract(data, target)
    tree = assert_safe_tree(target)
    assert set(tree) == {
        "setuid", "setgid", "sticky", "open", "private", "plain", "only-group-exec",
        "world", "sgid-dir", "tmp-like", "implicit", "implicit/deeper", "implicit/deeper/file",
    }  # fmt: skip
    for name in ("setuid", "setgid", "sticky", "open", "only-group-exec", "implicit/deeper/file"):
        assert mode_of(target / name) == EXEC, name
    for name in ("private", "plain"):
        assert mode_of(target / name) == FILE, name
    for name in ("world", "sgid-dir", "tmp-like", "implicit", "implicit/deeper"):
        assert mode_of(target / name) == DIR, name
    assert report.files == 8
    assert report.directories == 5
    assert report.bytes_written == len(b"#!/bin/sh\n") + 7
    assert report.skipped == []


def test_the_umask_applies(target: Path) -> None:
    os.umask(0o077)
    extract(archive(member("exe", data=b"x", mode=0o777), member("doc", data=b"d"), member("dir", tarfile.DIRTYPE, mode=0o777)), target)
    assert mode_of(target / "exe") == 0o700
    assert mode_of(target / "doc") == 0o600
    assert mode_of(target / "dir") == 0o700


def test_links_devices_and_fifos_are_never_created(target: Path, outside: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = archive(
        member("sym", tarfile.SYMTYPE, link=str(outside / "victim")),
        member("relsym", tarfile.SYMTYPE, link="../outside/victim"),
        member("hard", tarfile.LNKTYPE, link="/etc/passwd"),
        member("inner-hard", tarfile.LNKTYPE, link="plain"),
        member("null", tarfile.CHRTYPE),
        member("disk", tarfile.BLKTYPE),
        member("pipe", tarfile.FIFOTYPE),
        member("contiguous", tarfile.CONTTYPE, data=b"c"),
        member("weird", b"Q", data=b"unknown type"),
        member("plain", data=b"kept"),
    )
    passwd = os.stat("/etc/passwd")
    with caplog.at_level(logging.DEBUG, logger="sandboxes"):
        report = extract(data, target)
    assert set(assert_safe_tree(target)) == {"plain", "contiguous"}
    assert (target / "plain").read_bytes() == b"kept"
    assert skipped_names(report) == {"sym", "relsym", "hard", "inner-hard", "null", "disk", "pipe", "weird"}
    assert any("symbolic link" in line for line in report.skipped)
    assert any("hard link" in line for line in report.skipped)
    skips = [record for record in caplog.records if record.name == "sandboxes" and "skipped" in record.getMessage()]
    assert len(skips) == len(report.skipped)
    assert all(record.levelno == logging.DEBUG for record in skips)
    assert (outside / "victim").read_text() == "untouched\n"
    after = os.stat("/etc/passwd")
    assert (after.st_nlink, after.st_size, after.st_mtime_ns) == (passwd.st_nlink, passwd.st_size, passwd.st_mtime_ns)


def test_sparse_files_are_skipped(target: Path) -> None:
    data = archive(member("holes", tarfile.GNUTYPE_SPARSE, data=b"x" * 512), member("after", data=b"a"))
    report = extract(data, target)
    assert set(assert_safe_tree(target)) == {"after"}
    assert skipped_names(report) == {"holes"}


# -- links followed by members that go through them --------------------------------------
def test_symlink_to_etc_then_a_file_through_it(target: Path) -> None:
    name = f"sandboxes-test-{uuid.uuid4().hex}"
    planted = Path("/etc") / name
    data = archive(member("a", tarfile.SYMTYPE, link="/etc"), member(f"a/{name}", data=b"owned\n", mode=0o4755))
    try:
        report = extract(data, target)
        assert not planted.exists(), "wrote into /etc through a symbolic link"
    finally:
        planted.unlink(missing_ok=True)
    assert skipped_names(report) == {"a"}
    tree = assert_safe_tree(target)
    assert set(tree) == {"a", f"a/{name}"}  # a plain directory stands where the link was refused
    assert stat.S_ISDIR(tree["a"].st_mode)
    assert mode_of(target / "a" / name) == EXEC


def test_symlink_to_an_absolute_path_then_files_through_it(target: Path, outside: Path) -> None:
    data = archive(
        member("link", tarfile.SYMTYPE, link=str(outside)),
        member("link/victim", data=b"overwritten"),
        member("link/new", data=b"planted"),
        member("rel", tarfile.SYMTYPE, link="../outside"),
        member("rel/new2", data=b"planted"),
        member("file-link", tarfile.SYMTYPE, link=str(outside / "victim")),
        member("file-link", data=b"overwritten"),
    )
    extract(data, target)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "untouched\n"
    assert set(assert_safe_tree(target)) == {"link", "link/victim", "link/new", "rel", "rel/new2", "file-link"}


def test_existing_symlinks_in_the_target_are_not_followed(target: Path, outside: Path) -> None:
    target.mkdir()
    os.symlink(outside, target / "to-dir")
    os.symlink(outside / "victim", target / "to-file")
    os.symlink("/nonexistent-dangling", target / "dangling")
    (target / "sub").mkdir()
    os.symlink("..", target / "sub" / "up")
    data = archive(
        member("to-dir/planted", data=b"x"),
        member("to-dir/victim", data=b"x"),
        member("to-dir", tarfile.DIRTYPE),
        member("to-file", data=b"x", mode=0o4755),
        member("dangling", data=b"x"),
        member("dangling/in", data=b"x"),
        member("sub/up/escape", data=b"x"),
        member("fine/file", data=b"ok"),
    )
    report = extract(data, target)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "untouched\n"
    assert mode_of(outside / "victim") == 0o644 & ~UMASK
    assert not Path("/nonexistent-dangling").exists()
    assert skipped_names(report) == {"to-dir/planted", "to-dir/victim", "to-dir", "to-file", "dangling", "dangling/in", "sub/up/escape"}
    assert all("symbolic link is in the way" in line for line in report.skipped)
    for name in ("to-dir", "to-file", "dangling", "sub/up"):
        assert (target / name).is_symlink()  # left alone
    assert (target / "fine" / "file").read_bytes() == b"ok"


def test_existing_special_and_shared_files_are_not_written(target: Path, outside: Path) -> None:
    target.mkdir()
    os.mkfifo(target / "fifo")
    os.link(outside / "victim", target / "hardlinked")
    (target / "mine").write_text("old")
    os.chmod(target / "mine", 0o4777)
    data = archive(member("fifo", data=b"x"), member("hardlinked", data=b"x"), member("mine", data=b"new"))
    report = extract(data, target)  # a FIFO opened for writing would hang here
    assert skipped_names(report) == {"fifo", "hardlinked"}
    assert stat.S_ISFIFO(os.lstat(target / "fifo").st_mode)
    assert (outside / "victim").read_text() == "untouched\n"
    assert (target / "mine").read_text() == "new"
    assert mode_of(target / "mine") == FILE  # an existing setuid file of ours loses the bit


def test_new_directories_do_not_inherit_setgid(target: Path) -> None:
    target.mkdir()
    os.chmod(target, 0o2755)
    extract(archive(member("sub/file", data=b"x"), member("dir", tarfile.DIRTYPE, mode=0o2755)), target)
    assert mode_of(target / "sub") == DIR
    assert mode_of(target / "dir") == DIR
    assert mode_of(target / "sub" / "file") == FILE


# -- names ---------------------------------------------------------------------------------
def test_names_that_climb_out_or_are_absolute_are_skipped(target: Path, tmp_path: Path) -> None:
    absolute = Path("/tmp") / f"sandboxes-abs-{uuid.uuid4().hex}"
    data = archive(
        member("../escape", data=b"x"),
        member("a/../../escape2", data=b"x"),
        member("ok/..", tarfile.DIRTYPE),
        member(str(absolute), data=b"x"),
        member("/", tarfile.DIRTYPE),
        member("", data=b"x"),
        member("./", data=b"x"),
        member("./a//b/./c", data=b"normalized"),
        member(".", tarfile.DIRTYPE),
    )
    try:
        report = extract(data, target)
        assert not absolute.exists()
    finally:
        absolute.unlink(missing_ok=True)
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "escape2").exists()
    assert set(assert_safe_tree(target)) == {"a", "a/b", "a/b/c"}
    assert (target / "a" / "b" / "c").read_bytes() == b"normalized"
    reasons = "\n".join(report.skipped)
    assert "'..'" in reasons and "absolute" in reasons and "empty name" in reasons
    assert len(report.skipped) == 7


def test_names_with_nul_bytes_or_too_deep_are_skipped(target: Path) -> None:
    deep = "/".join(["d"] * (MAX_DEPTH + 1))
    data = archive(member("nul\x00byte", data=b"x"), member(deep, data=b"x"), member("fine", data=b"y"), fmt=tarfile.PAX_FORMAT)
    report = extract(data, target)
    assert deep in skipped_names(report)
    assert set(assert_safe_tree(target)) <= {"fine", "nul"}  # tarfile may cut a ustar name at the NUL
    with pytest.raises(_extract._Skip, match="NUL"):
        _extract._normalize("nul\x00byte")
    assert _extract._normalize("./a//b/") == ("a", "b")


def test_a_directory_then_a_file_of_the_same_name_and_back(target: Path) -> None:
    data = archive(
        member("was-dir", tarfile.DIRTYPE),
        member("was-dir/inside", data=b"in"),
        member("was-dir", data=b"now a file"),
        member("was-file", data=b"a file"),
        member("was-file", tarfile.DIRTYPE),
        member("was-file/below", data=b"x"),
    )
    report = extract(data, target)
    tree = assert_safe_tree(target)
    assert stat.S_ISDIR(tree["was-dir"].st_mode)
    assert (target / "was-dir" / "inside").read_bytes() == b"in"
    assert stat.S_ISREG(tree["was-file"].st_mode)
    assert (target / "was-file").read_bytes() == b"a file"
    assert sorted(report.skipped) == [
        "was-dir: a directory is in the way",
        "was-file/below: a file is in the way at 'was-file'",
        "was-file: a file is in the way at 'was-file'",
    ]


def test_duplicate_names_the_last_one_wins(target: Path) -> None:
    data = archive(
        member("dup", data=b"first, longer content", mode=0o755),
        member("dup", data=b"second", mode=0o4644),
        member("d", tarfile.DIRTYPE, mode=0o700),
        member("d", tarfile.DIRTYPE, mode=0o777),
    )
    report = extract(data, target)
    assert (target / "dup").read_bytes() == b"second"
    assert mode_of(target / "dup") == FILE
    assert mode_of(target / "d") == DIR
    assert report.files == 2 and report.directories == 1 and report.skipped == []
    assert_safe_tree(target)


# -- sizes ---------------------------------------------------------------------------------
def test_a_member_larger_than_the_cap_is_refused_before_writing(target: Path) -> None:
    data = archive(member("small", data=b"s"), member("big", data=b"x" * 5000))
    with pytest.raises(OSError, match="max_file_bytes") as caught:
        extract(data, target, max_bytes=4096)
    assert caught.value.errno == errno.EFBIG
    assert "4096" in str(caught.value)
    assert not (target / "big").exists()


@pytest.mark.timeout(60)
def test_a_declared_size_the_stream_does_not_hold_fails_fast(target: Path) -> None:
    header = member("liar", size=10**15)[0].tobuf(tarfile.GNU_FORMAT)  # 1 PB declared, nothing follows
    for data in (header, header + b"\0" * 1024, archive(member("skipped", tarfile.SYMTYPE, link="x"))[:512] + header):
        with pytest.raises(OSError) as caught:
            extract(data, target / "x", max_bytes=1 << 30)
        assert caught.value.errno == errno.EFBIG
        assert not (target / "x" / "liar").exists()


def test_many_small_members_past_the_cap(target: Path) -> None:
    data = archive(*(member(f"f{index:04d}", data=b"x" * 100) for index in range(400)))
    with pytest.raises(OSError) as caught:
        extract(data, target, max_bytes=50_000)
    assert caught.value.errno == errno.EFBIG
    written = sum(path.stat().st_size for path in target.iterdir())
    assert 0 < written < 50_000
    assert_safe_tree(target)


def test_skipped_members_count_against_the_cap(target: Path) -> None:
    data = archive(*(member(f"../skip{index}", data=b"x" * 1000) for index in range(100)))
    with pytest.raises(OSError) as caught:
        extract(data, target, max_bytes=20_000)
    assert caught.value.errno == errno.EFBIG


def test_a_compression_bomb_stops_at_the_cap(target: Path) -> None:
    bomb = gzip.compress(archive(member("zeros", data=bytes(20 << 20))), compresslevel=9)
    assert len(bomb) < 100_000
    with pytest.raises(OSError) as caught:
        extract(bomb, target, max_bytes=1 << 20)
    assert caught.value.errno == errno.EFBIG
    assert not (target / "zeros").exists()  # its declared size alone was past the cap


def test_a_huge_pax_header_stops_at_the_cap(target: Path) -> None:
    info, data = member("f", data=b"x")
    info.pax_headers = {"comment": "x" * (8 << 20)}  # tarfile reads a pax header whole, into memory
    bomb = gzip.compress(archive((info, data), fmt=tarfile.PAX_FORMAT))
    with pytest.raises(OSError, match="max_file_bytes") as caught:
        extract(bomb, target, max_bytes=1 << 20)
    assert caught.value.errno == errno.EFBIG
    assert not (target / "f").exists()


def test_compressed_archives_are_read(target: Path) -> None:
    plain = archive(member("d/f", data=b"gz"))
    report = extract(gzip.compress(plain), target)
    assert (target / "d" / "f").read_bytes() == b"gz"
    assert report.files == 1


def test_too_many_members(target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_extract, "MAX_MEMBERS", 10)
    data = archive(*(member(f"l{index}", tarfile.SYMTYPE, link="x") for index in range(11)))
    with pytest.raises(OSError, match="more than 10 members") as caught:
        extract(data, target)
    assert caught.value.errno == errno.EFBIG


# -- corrupt input -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: b"not a tar archive at all " * 40, id="garbage"),
        pytest.param(lambda data: data[:700], id="cut-in-a-header"),
        pytest.param(lambda data: data[:1030], id="cut-in-the-data"),
        pytest.param(lambda data: data[:1536], id="no-end-marker"),
        pytest.param(lambda data: data[:1536] + b"\x01" * 512 + data[1536:], id="bad-second-header"),
        pytest.param(lambda data: gzip.compress(data)[:60], id="cut-gzip"),
        pytest.param(lambda data: b"\x1f\x8b" + b"\xff" * 100, id="bad-gzip"),
        pytest.param(lambda data: b"BZh9" + b"\xff" * 100, id="bad-bzip2"),
        pytest.param(lambda data: b"\xfd7zXZ\x00" + b"\xff" * 100, id="bad-xz"),
    ],
)
def test_a_corrupt_archive_is_an_os_error(target: Path, damage: Callable[[bytes], bytes]) -> None:
    good = archive(member("one", data=b"1" * 600), member("two", data=b"2"))
    assert len(good) > 2048
    with pytest.raises(OSError) as caught:
        extract(damage(good), target)
    assert not isinstance(caught.value, tarfile.TarError)
    assert caught.value.errno == errno.EIO
    assert "corrupt" in str(caught.value)


def test_a_bad_pax_record_is_an_os_error(target: Path) -> None:
    info, data = member("sparse-liar", data=b"x")
    info.pax_headers = {"GNU.sparse.size": "not a number", "GNU.sparse.map": "1,x"}
    with pytest.raises(OSError, match="corrupt"):
        extract(archive((info, data), fmt=tarfile.PAX_FORMAT), target)


# -- through the public API, on a real local sandbox ------------------------------------------
@pytest.fixture
def provider() -> LocalProvider:
    return LocalProvider(workspace_mb=64, tmp_mb=64, max_file_mb=16)


HOSTILE_TREE = """
set -e
mkdir -p tree/world tree/sub
printf '#!/bin/sh\\necho root\\n' > tree/suid
chmod 4755 tree/suid
printf 'g' > tree/sgid && chmod 2777 tree/sgid
chmod 777 tree/world
chmod 1777 tree/sub
printf 'plain' > tree/sub/plain
ln -s /etc/shadow tree/shadow
ln -s / tree/root
ln tree/sub/plain tree/hard
mkfifo tree/fifo
ls -la tree >&2
"""


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["provider", "base-class"])
async def test_download_of_a_hostile_tree_from_a_local_sandbox(provider: LocalProvider, box: str, tmp_path: Path, path: str) -> None:
    """Through ``provider.download_file``, and through the base class's (the cloud providers' path)."""
    made = await provider.execute_command(box, ["sh", "-c", HOSTILE_TREE])
    assert made.exit_code == 0, made.stderr
    shadow = hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest() if os.access("/etc/shadow", os.R_OK) else None
    local = tmp_path / "download"
    if path == "provider":
        await provider.download_file(box, "tree", local)
    else:
        await SandboxProvider.download_file(provider, box, "tree", local)
    tree = assert_safe_tree(local)
    assert not (local / "shadow").is_symlink() and not (local / "root").is_symlink()
    assert {"suid", "sgid", "world", "sub"} <= set(tree)
    assert "fifo" not in tree and "shadow" not in tree and "root" not in tree
    assert (local / "suid").read_bytes() == b"#!/bin/sh\necho root\n"
    assert mode_of(local / "suid") == EXEC
    assert mode_of(local / "sgid") == EXEC
    assert mode_of(local / "world") == DIR
    assert mode_of(local / "sub") == DIR
    # Two names of one file: tar stores the second as a hard link, which is skipped.
    linked = [name for name in ("hard", "sub/plain") if name in tree]
    assert linked, "neither name of the hard-linked file arrived"
    for name in linked:
        assert (local / name).read_bytes() == b"plain"
        assert tree[name].st_nlink == 1
    assert tree["suid"].st_uid == os.geteuid()
    if shadow is not None:
        assert hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest() == shadow


@pytest.mark.anyio
async def test_single_file_download_is_plain_capped_and_refuses_links(provider: LocalProvider, box: str, tmp_path: Path) -> None:
    made = await provider.execute_command(box, ["sh", "-c", "printf data > f && chmod 4777 f && head -c 5000 /dev/zero > big"])
    assert made.exit_code == 0, made.stderr
    single = tmp_path / "single"
    await provider.download_file(box, "f", single)
    assert single.read_bytes() == b"data"
    assert mode_of(single) == FILE
    assert single.stat().st_uid == os.geteuid()

    victim = tmp_path / "victim"
    victim.write_text("untouched")
    os.symlink(victim, tmp_path / "link")
    with pytest.raises(OSError) as caught:
        await provider.download_file(box, "f", tmp_path / "link")
    assert caught.value.errno == errno.ELOOP
    assert victim.read_text() == "untouched"

    provider.max_file_bytes = 4096
    with pytest.raises(OSError, match="max_file_bytes") as too_big:
        await provider.download_file(box, "big", tmp_path / "big")
    assert too_big.value.errno == errno.EFBIG
    assert not (tmp_path / "big").exists()
    with pytest.raises(OSError, match="max_file_bytes") as tree_too_big:
        await provider.download_file(box, ".", tmp_path / "all")
    assert tree_too_big.value.errno == errno.EFBIG


@pytest.mark.anyio
async def test_the_archive_name_in_the_sandbox_is_unpredictable(provider: LocalProvider, box: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    read = provider.driver.read_file

    async def spy(sandbox_id: str, path: str, limit: int) -> bytes:
        seen.append(path)
        return await read(sandbox_id, path, limit)

    monkeypatch.setattr(provider.driver, "read_file", spy)
    generic = SandboxProvider(provider.driver)  # no spec, so no tree download: the path the cloud providers take
    await provider.execute_command(box, "mkdir -p d && echo x > d/x")
    await generic.download_file(box, "d", tmp_path / "one")
    await generic.download_file(box, "d", tmp_path / "two")
    assert (tmp_path / "two" / "x").read_text() == "x\n"
    assert len(seen) == 2 and seen[0] != seen[1]
    assert all(path.startswith("/tmp/.sandboxes-download-") and len(path) > len("/tmp/.sandboxes-download-") + 24 for path in seen)
    leftover = await provider.execute_command(box, "ls -a /tmp")
    assert ".sandboxes-download" not in leftover.stdout
