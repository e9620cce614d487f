"""The one writer of files (DESIGN §1): owner-only, exclusive, durable, atomic.

Every file shredvault writes goes through here (keyfiles, handover keys, keystores,
receipts, certificates, reports, log exports, backup archives, handover packages), so
every one gets the same guarantees (docs/files.md):

* created mode 0600 whatever the umask, exclusively (``O_EXCL | O_NOFOLLOW``): never
  through a symlink, never readable by group or others, not even while being written;
* written under a hidden temporary name beside its target (:func:`partial_path`),
  flushed and fsynced;
* published atomically: by ``link``, which fails if the target exists (even one that
  appeared a moment ago), or, only when overwriting was asked for, by ``rename`` over
  it; then the directory is fsynced;
* on any failure the temporary is removed and the target is left as it was.

The temporary's name is fixed per target and its writer holds an ``flock`` on it while
it lives: the next write to the same target removes one a crashed writer left behind
(nobody holds its lock), and a second live writer of the same target is refused at once
instead of racing the first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from .errors import InvalidKeyError, OutputExistsError
from .faults import crash_point
from .locks import lock_calls

__all__ = [
    "FILE_MODE",
    "PARTIAL_SUFFIX",
    "PartialFile",
    "check_absent",
    "create_empty",
    "create_file",
    "move_into_place",
    "partial_path",
    "read_private_file",
    "write_file",
]

FILE_MODE = 0o600
PARTIAL_SUFFIX = ".shredvault-partial"

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_CREATE = os.O_CREAT | os.O_EXCL | os.O_WRONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_BINARY", 0)
# Opening someone else's temporary to see whether its writer is alive: never follow a
# symlink, never block on a FIFO planted under that name.
_INSPECT = os.O_RDONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0)
# What link() says on file systems without hard links (FAT, exFAT, some network shares).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
_ATTEMPTS = 3


def partial_path(target: str | os.PathLike[str]) -> Path:
    """Where ``target`` is written before it is published: ``.<name>.shredvault-partial``
    in the same directory (so publishing is a rename within one file system)."""
    path = Path(target)
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


class PartialFile:
    """A file being written under its temporary name; nothing is at ``target`` until
    :meth:`publish`. As a context manager: published when the block ends normally,
    discarded when it raises.

    Raises :class:`OutputExistsError` if ``target`` exists and ``overwrite`` is false,
    or if another live process is writing ``target``; ``OSError`` (naming ``target``)
    if its directory cannot take the file."""

    def __init__(self, target: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.target = Path(target)
        self.path = partial_path(self.target)
        self.overwrite = overwrite
        if not overwrite:
            check_absent(self.target)
        fd, self._identity = _create_locked(self.path, self.target)
        self._finished = False
        try:
            self._handle: BinaryIO | None = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._handle = None
            self.discard()
            raise

    def __repr__(self) -> str:
        return f"<PartialFile {self.target}>"

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._finished:
            return
        if kind is None:
            self.publish()
        else:
            self.discard()

    @property
    def handle(self) -> BinaryIO:
        """The open temporary, for writing. ValueError once published or discarded."""
        if self._handle is None or self._finished:
            raise ValueError(f"{self.target} was already published or discarded")
        return self._handle

    @contextmanager
    def writing(self) -> Iterator[BinaryIO]:
        """Yield :attr:`handle`; when the block ends normally, flush and fsync it, so
        what was written is durable before the caller goes on (still unpublished)."""
        yield self.handle
        self.sync()

    def sync(self) -> None:
        """Flush and fsync what was written so far."""
        handle = self.handle
        handle.flush()
        os.fsync(handle.fileno())

    def publish(self) -> None:
        """Make the file durable, give it its name atomically and fsync the directory.

        Raises :class:`OutputExistsError` if the target appeared meanwhile (and
        overwriting was not asked for): then, as on any failure before the rename,
        the temporary is removed and the target is untouched."""
        try:
            self.sync()
            crash_point("files:before-publish", self.target.name)
            if sys.platform == "win32":
                self._close()  # Windows cannot rename a file that is open
            move_into_place(self.path, self.target, overwrite=self.overwrite)
        except BaseException:
            self.discard()
            raise
        self._finished = True
        self._close()

    def discard(self) -> None:
        """Remove the temporary, leaving the target untouched. Idempotent; does
        nothing once published."""
        if self._finished:
            return
        self._finished = True
        with contextlib.suppress(OSError):  # buffered bytes that cannot be flushed: moot
            self._close()
        with contextlib.suppress(FileNotFoundError):
            # Only our own file: once ours is gone the name may be another writer's.
            if os.path.samestat(self._identity, os.lstat(self.path)):
                os.unlink(self.path)

    def _close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            handle.close()


@contextmanager
def create_file(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[BinaryIO]:
    """Write a file in chunks: yields a binary handle; the file appears at ``path``
    (0600, fsynced, atomically) only when the block ends normally.

    Raises :class:`OutputExistsError` if ``path`` exists and ``overwrite`` is false
    (before the block runs, or at the end if it appeared meanwhile); ``OSError`` for
    the file system. If the block or the publishing fails, nothing is at ``path``
    that was not there before."""
    with PartialFile(path, overwrite=overwrite) as partial:
        yield partial.handle


def write_file(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` as the file ``path``: 0600, fsynced, published atomically.

    Raises :class:`OutputExistsError` if ``path`` exists and ``overwrite`` is false;
    ``OSError`` for the file system. On failure ``path`` is as it was."""
    with PartialFile(path, overwrite=overwrite) as partial:
        middle = len(data) // 2
        partial.handle.write(data[:middle])
        partial.handle.flush()
        crash_point("files:partly-written", partial.target.name)
        partial.handle.write(data[middle:])


def check_absent(path: str | os.PathLike[str]) -> None:
    """Raise :class:`OutputExistsError` if anything is at ``path`` (a dangling symlink
    counts): for callers that refuse before slow work. Writing still refuses on its own,
    atomically, should the file appear after this check."""
    target = Path(path)
    if os.path.lexists(target):
        raise _exists(target)


def create_empty(path: str | os.PathLike[str]) -> None:
    """Create an empty file at ``path``, 0600, exclusively and durably, for a library
    that then fills it in place: SQLite (whose ``-wal`` and ``-shm`` files take the
    main file's mode) opens it as a new database.

    Raises :class:`OutputExistsError` if anything is at ``path``; ``OSError`` for the
    file system (then nothing is left at ``path``)."""
    target = Path(path)
    try:
        fd = os.open(target, _CREATE, FILE_MODE)
    except FileExistsError:
        raise _exists(target) from None
    try:
        _make_private(fd)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        target.unlink(missing_ok=True)
        raise
    os.close(fd)
    _fsync_directory(target.parent)


def move_into_place(
    source: str | os.PathLike[str], target: str | os.PathLike[str], *, overwrite: bool = False
) -> None:
    """Give a complete, fsynced file written by this module (``source``, on the same
    file system) the name ``target`` atomically, then fsync ``target``'s directory.

    Without ``overwrite`` it never replaces anything: :class:`OutputExistsError` if
    ``target`` exists, and ``source`` stays where it was. Where the file system has no
    hard links, an empty 0600 placeholder is created exclusively at ``target`` and
    ``source`` renamed over it (a reader may see it empty for that moment)."""
    source, target = Path(source), Path(target)
    if overwrite:
        os.replace(source, target)
    else:
        try:
            os.link(source, target)
        except FileExistsError:
            raise _exists(target) from None
        except OSError as error:
            if error.errno not in _NO_HARD_LINKS:
                raise
            create_empty(target)
            os.replace(source, target)
        else:
            os.unlink(source)
    _fsync_directory(target.parent)


# -- internals --------------------------------------------------------------------------------


def _exists(target: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{target} already exists; not overwriting it (move it away or choose another path)",
        path=str(target),
    )


def _create_locked(path: Path, target: Path) -> tuple[int, os.stat_result]:
    """Create the temporary exclusively, owner-only, and lock it; returns its fd and
    identity. A temporary left by a crashed writer is removed first; one a live writer
    holds is an :class:`OutputExistsError`."""
    for _attempt in range(_ATTEMPTS):
        try:
            fd = os.open(path, _CREATE, FILE_MODE)
        except FileExistsError:
            if _remove_abandoned(path):
                continue
            break
        except OSError as error:
            # Name the file the caller asked for, not our temporary.
            raise OSError(error.errno, error.strerror, str(target)) from None
        try:
            _make_private(fd)
            _lock(fd)
            identity = os.fstat(fd)
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(identity, os.lstat(path)):
                    return fd, identity
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # another writer removed it before we locked it: start again
    raise OutputExistsError(
        f"{target} is being written by another process ({path} exists); try again when "
        "it is done, or delete that file if no write is running",
        path=str(target),
    )


def _make_private(fd: int) -> None:
    # The umask can only take bits away from 0600 at creation; this puts back the
    # owner's read and write (a umask of 0o277 would leave 0400) and adds nothing else.
    if hasattr(os, "fchmod"):
        os.fchmod(fd, FILE_MODE)


def _lock(fd: int) -> None:
    calls = lock_calls()
    if calls is not None and sys.platform != "win32":
        # Blocks only while another writer's cleanup holds it, which lasts a moment.
        calls.wait_lock(fd)


def _remove_abandoned(path: Path) -> bool:
    """Remove the temporary at ``path`` if its writer is gone (nobody holds its lock).
    True when ``path`` is free to create now."""
    calls = lock_calls()
    if calls is None or sys.platform == "win32":
        return False  # no way to tell a crashed writer from a live one
    try:
        fd = os.open(path, _INSPECT)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # a symlink, or not ours: leave it alone
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        if not calls.try_lock(fd):
            return False  # its writer is alive
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.lstat(path)):
                os.unlink(path)
        return True
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    """Make names created in ``path`` durable; skipped where directories cannot be
    opened and fsynced (Windows)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_private_file(path: str | os.PathLike[str], *, limit: int, what: str) -> bytes:
    """Up to ``limit + 1`` bytes of a secret file (a keyfile), read through one open
    descriptor whose ``fstat`` is what is checked, so the file checked is the file read
    (no stat-then-read race). Refuses (:class:`InvalidKeyError`) anything but a regular
    file owned by this user (where the OS has owners) that group and others cannot
    access; opening never blocks (a FIFO is refused, not waited on)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InvalidKeyError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidKeyError(f"{what} {path} is not a regular file")
        owner = os.getuid() if hasattr(os, "getuid") else None
        if owner is not None and st.st_uid != owner:
            raise InvalidKeyError(
                f"{what} {path} belongs to another user (uid {st.st_uid}); use one you "
                "own (mode 600)"
            )
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InvalidKeyError(
                f"{what} {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {path}"
            )
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
        return data
    except OSError as exc:
        raise InvalidKeyError(f"cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
