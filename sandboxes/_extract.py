"""Extract a tar archive that came out of an untrusted sandbox.

Nothing in the archive is trusted: not the names, the types, the modes, the
owners nor the sizes. Members are read in streaming mode and written one by
one through directory file descriptors, so no path below the target is ever
resolved through a symbolic link.

Rules (see ``extract_tar``):

* only regular files and directories are created; every other member type
  (symbolic and hard links, devices, FIFOs, sparse files, unknown types) is
  skipped and reported;
* names are relative, normalized (``./a//b`` is ``a/b``) and may not hold
  ``..``, NUL bytes, or more than ``MAX_DEPTH`` components;
* files get 0o755 when the member has an execute bit, else 0o644; directories
  0o755; the process umask is applied on top. No setuid, setgid or sticky bit,
  nothing group- or world-writable, no chown (all belongs to the caller), and
  no times from the archive (files and directories keep the time they are
  written);
* what is already below the target is never followed nor replaced: a symbolic
  link, a special file or a file with other hard links (or another owner) in
  the way makes that member skipped; a regular file of the caller's is
  overwritten (the later of two members of one name wins, as with tar);
* the uncompressed archive stream (headers, padding, and the data of every
  member, skipped or not) may not exceed ``max_bytes``; so the data written
  cannot either.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import logging
import lzma
import os
import stat
import tarfile
import typing
import zlib
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MAX_DEPTH", "MAX_MEMBERS", "ExtractReport", "extract_tar", "process_umask"]

log = logging.getLogger("sandboxes")

MAX_MEMBERS = 1_000_000
"""Members (of any type, skipped ones included) one archive may hold."""
MAX_DEPTH = 256
"""Path components one member name may have; deeper members are skipped."""

_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# No O_TRUNC: an existing file is truncated only once fstat has shown it is a
# regular file of ours. O_NONBLOCK and O_NOCTTY: a FIFO or a terminal that
# turns up in the way makes open fail or return at once instead of hanging.
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
_SKIPPED_FS_ERRORS = {errno.ENAMETOOLONG, errno.EILSEQ}


@dataclass
class ExtractReport:
    """What ``extract_tar`` did."""

    files: int = 0
    """Regular files written (a name written twice counts twice)."""
    directories: int = 0
    """Directories created on the host (one that already existed does not count)."""
    bytes_written: int = 0
    """File data written."""
    skipped: list[str] = field(default_factory=list)
    """``"name: reason"`` for every member that was not extracted."""


class _Skip(Exception):
    """This member is not extracted; the message says why."""


def extract_tar(source: typing.IO[bytes], target: Path, *, max_bytes: int) -> ExtractReport:
    """Extract the tar archive read from ``source`` below ``target``.

    ``target`` is created (with its parents) when missing. A plain tar or one
    compressed with gzip, bzip2 or xz is read as a stream; ``max_bytes``
    bounds its uncompressed size. Past it, or past ``MAX_MEMBERS`` members,
    ``OSError(EFBIG)`` is raised; a corrupt archive raises ``OSError(EIO)``.
    Members written before an error stay on disk.
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
    target = Path(target)
    target.mkdir(mode=0o755, parents=True, exist_ok=True)
    root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        stream = _open_stream(source, max_bytes)
        try:
            return _Extractor(root_fd, max_bytes).run(stream)
        finally:
            stream.close()
    finally:
        os.close(root_fd)


def _cap_error(max_bytes: int, what: str) -> OSError:
    return OSError(
        errno.EFBIG,
        f"{what} the download cap of {max_bytes} bytes; raise it with the provider's max_file_bytes (provider.max_file_bytes = <bytes>)",
    )


def _corrupt(error: BaseException) -> OSError:
    return OSError(errno.EIO, f"corrupt or unreadable tar archive: {error}")


class _Head:
    """``source`` with the bytes already read from it put back in front."""

    def __init__(self, head: bytes, source: typing.IO[bytes]) -> None:
        self._head = head
        self._source = source

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size is None or size < 0:
                data, self._head = self._head + self._source.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._source.read(size)


class _Budget:
    """The uncompressed archive stream, read at most ``max_bytes`` of."""

    def __init__(self, stream: typing.Any, max_bytes: int) -> None:
        self._stream = stream
        self.max_bytes = max_bytes
        self.used = 0

    def close(self) -> None:
        """Close the decompressor, if any (``source`` itself stays open)."""
        if not isinstance(self._stream, _Head):
            self._stream.close()

    @property
    def left(self) -> int:
        return self.max_bytes - self.used

    def read(self, size: int = -1) -> bytes:
        # Ask for one byte past the cap at most: enough to tell that it was passed.
        want = self.left + 1 if size is None or size < 0 else min(size, self.left + 1)
        try:
            data: bytes = self._stream.read(want)
        except (EOFError, OSError, zlib.error, lzma.LZMAError) as error:
            raise _corrupt(error) from error
        self.used += len(data)
        if self.used > self.max_bytes:
            raise _cap_error(self.max_bytes, "the archive from the sandbox is larger than")
        return data


def _open_stream(source: typing.IO[bytes], max_bytes: int) -> _Budget:
    """The archive as tar bytes, decompressed here so that the cap counts what tarfile reads."""
    head = b""
    while len(head) < 6:
        try:
            piece = source.read(6 - len(head))
        except OSError as error:
            raise _corrupt(error) from error
        if not piece:
            break
        head += piece
    raw: typing.Any = _Head(head, source)
    # Closed by _Budget.close (extract_tar's finally); ``source`` itself stays open.
    if head.startswith(b"\x1f\x8b"):
        raw = gzip.GzipFile(fileobj=raw, mode="rb")
    elif head.startswith(b"BZh"):
        raw = bz2.BZ2File(raw)
    elif head.startswith(b"\xfd7zXZ\x00"):
        raw = lzma.LZMAFile(raw)  # noqa: SIM115 - read by the caller, which closes the archive
    return _Budget(raw, max_bytes)


class _StrictTarInfo(tarfile.TarInfo):
    """A TarInfo whose bad header is an error, not a silent end of the archive.

    tarfile stops quietly at a truncated or invalid header after the first
    one, which would drop the rest of a download without a word.
    """

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> typing.Self:
        try:
            return super().fromtarfile(archive)
        except tarfile.HeaderError as error:
            if isinstance(error, _END_OF_ARCHIVE):
                raise  # a zero block: the archive's proper end
            if isinstance(error, _CUT_SHORT):
                raise tarfile.ReadError("the archive is empty or cut short (no end-of-archive marker)") from None
            raise tarfile.ReadError(f"invalid header at byte {archive.offset}: {error}") from None
        except (ValueError, OverflowError) as error:  # from a pax record such as GNU.sparse.size=x
            raise tarfile.ReadError(f"invalid header at byte {archive.offset}: {error}") from None


# tarfile's header errors below HeaderError (typeshed does not list them).
_END_OF_ARCHIVE: type[Exception] = getattr(tarfile, "EOFHeaderError")  # noqa: B009 - private in tarfile, untyped in typeshed
_CUT_SHORT: tuple[type[Exception], ...] = (getattr(tarfile, "EmptyHeaderError"), getattr(tarfile, "TruncatedHeaderError"))  # noqa: B009 - private in tarfile, untyped in typeshed


def process_umask() -> int:
    """The umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # fallback: briefly the strictest usual mask, never a looser one
    os.umask(mask)
    return mask


def _normalize(name: str) -> tuple[str, ...]:
    """The member name as path components; raises _Skip for a name that is refused."""
    if not name:
        raise _Skip("empty name")
    if "\x00" in name:
        raise _Skip("NUL byte in the name")
    if name.startswith("/"):
        raise _Skip("absolute name")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise _Skip("'..' in the name")
    if len(parts) > MAX_DEPTH:
        raise _Skip(f"more than {MAX_DEPTH} path components")
    return parts


def _member_kind(member: tarfile.TarInfo) -> str:
    """'file' or 'dir'; any other type raises _Skip with what it is."""
    if member.issparse():
        raise _Skip("sparse file")
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        raise _Skip(f"symbolic link (to {member.linkname!r})")
    if member.islnk():
        raise _Skip(f"hard link (to {member.linkname!r})")
    if member.ischr() or member.isblk():
        raise _Skip("device")
    if member.isfifo():
        raise _Skip("FIFO")
    raise _Skip(f"unsupported member type {member.type!r}")


def _in_the_way(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISREG(st.st_mode):
        return "a file"
    return "a special file"


class _Extractor:
    def __init__(self, root_fd: int, max_bytes: int) -> None:
        self.root_fd = root_fd
        self.max_bytes = max_bytes
        self.report = ExtractReport()
        umask = process_umask()
        self.file_modes = (0o644 & ~umask, 0o755 & ~umask)
        self.dir_mode = 0o755 & ~umask
        self.euid = os.geteuid()
        # The last parent directory opened: members come grouped by directory.
        # Nothing here removes or renames a directory, so the fd stays right.
        self._parent: tuple[tuple[str, ...], int] | None = None

    def run(self, stream: _Budget) -> ExtractReport:
        try:
            with tarfile.open(fileobj=typing.cast(typing.IO[bytes], stream), mode="r|", tarinfo=_StrictTarInfo) as tar:
                count = 0
                while (member := tar.next()) is not None:
                    tar.members.clear()  # type: ignore[attr-defined]  # stream mode keeps every TarInfo otherwise
                    count += 1
                    if count > MAX_MEMBERS:
                        raise OSError(errno.EFBIG, f"the archive from the sandbox has more than {MAX_MEMBERS} members")
                    # tar.offset: where the next header starts, past this member's declared
                    # data. Checked before tarfile skips there: it would spin, block after
                    # block, on a huge declared size that the stream does not hold.
                    if tar.offset > stream.max_bytes:
                        raise _cap_error(stream.max_bytes, f"member {member.name!r} of {member.size} bytes goes past")
                    try:
                        self._member(tar, member)
                    except _Skip as skip:
                        self.report.skipped.append(f"{member.name}: {skip}")
                        log.debug("download: skipped %r: %s", member.name, skip)
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as error:
            raise _corrupt(error) from error
        finally:
            self._drop_parent()
        return self.report

    # -- one member ------------------------------------------------------------
    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        kind = _member_kind(member)
        parts = _normalize(member.name)
        if kind == "dir":
            if parts:  # "." (or "./") is the target itself
                fd = self._open_dir(parts)
                os.close(fd)
            return
        if not parts:
            raise _Skip("names the target directory itself")
        parent = self._parent_fd(parts[:-1])
        fd = self._open_file(parent, parts[-1], self.file_modes[bool(member.mode & 0o111)])
        try:
            reader = tar.extractfile(member)
            if reader is None:  # pragma: no cover - isreg() members always have data
                raise _Skip("no data")
            while chunk := reader.read(_CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                self.report.bytes_written += len(chunk)
        finally:
            os.close(fd)
        self.report.files += 1

    def _open_file(self, parent: int, name: str, mode: int) -> int:
        """A writable fd on ``name`` in ``parent``: a new or emptied regular file of ours, mode ``mode``."""
        try:
            before: os.stat_result | None = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            before = None
        if before is not None:
            if not stat.S_ISREG(before.st_mode):
                raise _Skip(f"{_in_the_way(before)} is in the way")
            if before.st_nlink > 1:
                raise _Skip("the existing file has other hard links")
            if before.st_uid != self.euid:
                raise _Skip(f"the existing file belongs to uid {before.st_uid}")
        try:
            fd = os.open(name, _FILE_FLAGS, mode, dir_fd=parent)
        except OSError as error:
            raise self._blocked(error, parent, name) from None
        try:
            after = os.fstat(fd)
            if not stat.S_ISREG(after.st_mode):
                raise _Skip(f"{_in_the_way(after)} is in the way")
            if before is not None and (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
                raise _Skip("the existing file changed while it was opened")
            if after.st_nlink > 1:
                raise _Skip("the existing file has other hard links")
            os.ftruncate(fd, 0)
            os.fchmod(fd, mode)  # exact: also for a file that existed, and whatever a default ACL said
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- directories ---------------------------------------------------------------
    def _parent_fd(self, parts: tuple[str, ...]) -> int:
        """An fd (owned by the cache) on the directory ``parts`` below the root."""
        if not parts:
            return self.root_fd
        if self._parent is not None and self._parent[0] == parts:
            return self._parent[1]
        fd = self._open_dir(parts)
        self._drop_parent()
        self._parent = (parts, fd)
        return fd

    def _drop_parent(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    def _open_dir(self, parts: tuple[str, ...]) -> int:
        """A new fd on the directory ``parts`` below the root, made as needed; never through a link."""
        current = self.root_fd
        try:
            for index, name in enumerate(parts):
                following = self._step(current, name, "/".join(parts[: index + 1]))
                if current != self.root_fd:
                    os.close(current)
                current = following
        except BaseException:
            if current != self.root_fd:
                os.close(current)
            raise
        if current == self.root_fd:  # pragma: no cover - parts is never empty here
            return os.dup(current)
        return current

    def _step(self, parent: int, name: str, where: str) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise self._blocked(error, parent, name, where) from None
        created = True
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
        except FileExistsError:
            created = False  # a dangling link, or made meanwhile: the open below tells
        except OSError as error:
            raise self._blocked(error, parent, name, where) from None
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as error:
            raise self._blocked(error, parent, name, where) from None
        if created:
            try:
                os.fchmod(fd, self.dir_mode)  # drops a setgid bit inherited from the parent
            except BaseException:
                os.close(fd)
                raise
            self.report.directories += 1
        return fd

    def _blocked(self, error: OSError, parent: int, name: str, where: str | None = None) -> BaseException:
        """The _Skip for an entry in the way, or ``error`` itself when it is not about this member."""
        at = f" at {where!r}" if where is not None else ""
        if error.errno in _SKIPPED_FS_ERRORS:
            return _Skip(f"{os.strerror(error.errno or 0)}{at}")
        if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO, errno.EEXIST, errno.ETXTBSY):
            try:
                found = _in_the_way(os.stat(name, dir_fd=parent, follow_symlinks=False))
            except OSError:
                found = "something"
            return _Skip(f"{found} is in the way{at}")
        return error
