"""The run directory's lock: :class:`RunLock`, and a probe that needs no torch (used by ``status``).

The trainer holds an exclusive OS lock on ``<run_dir>/.finsense.lock`` for as long as it runs. The
lock is taken with ``filelock``'s descriptor primitive: ``flock`` on Unix, ``LockFileEx`` on byte 0
on Windows. Both are released by the OS when the holder dies, even by ``kill -9``.

Where the filesystem has no file locks (Lustre mounted without ``flock``, NFS without a lock
daemon: the OS answers ENOSYS, ENOTSUP or ENOLCK), the lock falls back to a *soft* lock, a marker
file ``.finsense.lock.soft`` created with ``O_EXCL`` that holds ``<pid> <host>``, and says so in a
warning. A soft lock is not released when its holder is killed: a later start removes it when the
pid it names is dead on this host, and otherwise refuses with a message naming the file to delete.
Refusing outright would leave such clusters unable to train at all; running with no lock would let
two trainers write one run directory.

Nothing here imports torch, and ``filelock`` is imported on first use, so importing this module
(``status`` does) stays cheap; nothing here needs ``fcntl`` to import.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
from pathlib import Path
from types import TracebackType

from finsense.errors import CheckpointError, RunLockedError

log = logging.getLogger(__name__)

__all__ = ["LOCK_FILE", "SOFT_LOCK_FILE", "RunLock", "lock_held"]

#: The lock file's name inside a run directory.
LOCK_FILE = ".finsense.lock"
#: The marker of a soft lock, used where the filesystem has no OS file locks.
SOFT_LOCK_FILE = ".finsense.lock.soft"

#: Errors that mean "this filesystem does not do file locks" rather than a failure to report.
_UNSUPPORTED = frozenset(
    code
    for code in (
        errno.ENOSYS,  # Lustre mounted without -o flock, filelock without fcntl
        getattr(errno, "ENOTSUP", None),  # some FUSE filesystems
        getattr(errno, "EOPNOTSUPP", None),
        getattr(errno, "ENOLCK", None),  # NFS without a lock daemon
    )
    if code is not None
)
# Windows has no O_CLOEXEC (its descriptors are not inherited anyway) and opens files in text
# mode unless told otherwise.
_OPEN_FLAGS = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)

#: Run directories (resolved) whose RunLock this process holds.
_held_locks: set[Path] = set()


def _os_lock(fd: int) -> bool:
    """Try the OS lock on ``fd`` without waiting: True if taken, False if another holds it.

    Raises OSError where the OS cannot lock (errno in ``_UNSUPPORTED`` where it has no locks).
    """
    import filelock  # on first use: it costs tens of ms, and ``status`` often never locks

    return filelock.lock_descriptor(fd, blocking=False)


def _os_unlock(fd: int) -> None:
    """Release the OS lock :func:`_os_lock` took on ``fd``."""
    import filelock

    filelock.unlock_descriptor(fd)


def _unsupported(exc: OSError) -> bool:
    """Whether ``exc`` says the filesystem has no file locks."""
    return exc.errno in _UNSUPPORTED


def _reason(exc: OSError) -> str:
    """The OS reason of an error, on one line (``Function not implemented``)."""
    if exc.strerror:
        return exc.strerror
    return os.strerror(exc.errno) if exc.errno else str(exc)


def lock_held(run_dir: str | Path) -> bool:
    """Whether any process (this one included) holds the lock of ``run_dir``.

    Takes the lock on a separate descriptor for an instant (non-blocking) and releases it at once.
    A trainer starting in that instant would be told the run is in use; the window is microseconds.
    Where the filesystem has no file locks, a live soft lock's marker counts as held.
    """
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except OSError:
        return False
    try:
        if not _os_lock(fd):
            return True
        _os_unlock(fd)
        return False
    except OSError as exc:
        if _unsupported(exc):
            holder = _soft_holder(Path(run_dir) / SOFT_LOCK_FILE)
            return holder is not None and not _stale(holder)
        log.debug("cannot probe %s: %s", path, exc)
        return False
    finally:
        os.close(fd)


class RunLock:
    """Exclusive OS lock on ``<run_dir>/.finsense.lock`` (soft where the filesystem has none).

    Held for as long as training runs; the OS releases it when the holder exits or dies, even by
    ``kill -9``. The lock file holds the holder's pid (written by :meth:`record_pid`), for the
    message a second process gets. The descriptor is not inherited by child processes; a child made
    by a bare ``fork`` shares the lock until it exits.

    Use as ``with RunLock(run_dir): ...``.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._key: Path | None = None
        self._recorded = False
        #: The soft lock's marker and its content, where the filesystem has no OS locks.
        self._soft: tuple[Path, str] | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock without waiting. The lock file is not written (see :meth:`record_pid`).

        Raises:
            RunLockedError: another process (or another RunLock here) holds it.
            CheckpointError: the lock file cannot be created or locked.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: this RunLock is already held")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o644)
        except OSError as exc:
            raise CheckpointError(
                f"{self.path}: cannot create the run lock ({_reason(exc)})"
            ) from exc
        try:
            locked = _os_lock(fd)
        except OSError as exc:
            if not _unsupported(exc):
                os.close(fd)
                raise CheckpointError(f"{self.path}: cannot lock ({_reason(exc)})") from exc
            self._acquire_soft(fd, exc)
            locked = True
        if not locked:
            holder = _read_pid(fd)
            os.close(fd)
            raise RunLockedError(_in_use(self.run_dir, holder))
        self._fd = fd
        self._key = self.run_dir.resolve()
        _held_locks.add(self._key)

    def _acquire_soft(self, fd: int, cause: OSError) -> None:
        """Take the soft lock (the marker file) for a filesystem without OS locks; closes ``fd``
        on failure."""
        marker = self.run_dir / SOFT_LOCK_FILE
        content = f"{os.getpid()} {socket.gethostname()}\n"
        for attempt in range(2):
            try:
                mfd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o644)
            except FileExistsError:
                holder = _soft_holder(marker)
                if attempt == 0 and holder is not None and _stale(holder):
                    # Its holder died without releasing (kill -9, a crash): take its place.
                    log.warning("%s: removing the soft lock of dead process %d", marker, holder[0])
                    _remove_marker(marker, holder)
                    continue
                os.close(fd)
                pid = None if holder is None else holder[0]
                where = "" if holder is None else f" on {holder[1]}"
                raise RunLockedError(
                    f"{_in_use(self.run_dir, pid)} (this filesystem has no file locks: if no such "
                    f"process runs{where}, delete {marker})"
                ) from None
            except OSError as exc:
                os.close(fd)
                raise CheckpointError(
                    f"{marker}: cannot create the soft lock ({_reason(exc)})"
                ) from exc
            # The marker is the lock itself, so it names its holder from the start: a holder
            # killed before record_pid() must still be recognisable as dead.
            try:
                os.write(mfd, content.encode())
            finally:
                os.close(mfd)
            break
        log.warning(
            "%s: the filesystem does not support file locks (%s); using the soft lock %s, which "
            "a killed trainer leaves behind",
            self.path,
            _reason(cause),
            marker,
        )
        self._soft = (marker, content)

    def record_pid(self) -> None:
        """Write this process's pid into the lock file, for the message a second process gets.

        Called once the command is known to run: a refused command leaves the file untouched.
        """
        if self._fd is None:
            raise RuntimeError(f"{self.path}: record_pid() needs the lock held")
        try:
            os.ftruncate(self._fd, 0)
            # Byte 0 is a newline: Windows locks that byte, so a second process reads from byte 1.
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.write(self._fd, f"\n{os.getpid()}\n".encode())
            self._recorded = True
        except OSError as exc:
            log.debug("%s: cannot record the pid (%s)", self.path, _reason(exc))

    def release(self) -> None:
        """Give the lock back (nothing happens if it is not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._key is not None:
            _held_locks.discard(self._key)
        soft, self._soft = self._soft, None
        try:
            if self._recorded:
                os.ftruncate(fd, 0)
                self._recorded = False
            if soft is None:
                _os_unlock(fd)
            else:
                _remove_marker(soft[0], _parse_marker(soft[1]))
        except OSError as exc:
            log.debug("%s: %s while releasing", self.path, _reason(exc))
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    @staticmethod
    def is_locked(run_dir: str | Path) -> bool:
        """Whether any process (this one included) holds the lock of ``run_dir``."""
        return lock_held(run_dir)


def _in_use(run_dir: Path, holder: int | None) -> str:
    """The refusal a second process gets."""
    return (
        f"run directory {run_dir} is in use by another FinSense process "
        f"(pid {holder if holder is not None else 'unknown'}); wait for it to finish or stop it"
    )


def _read_pid(fd: int) -> int | None:
    """The pid :meth:`RunLock.record_pid` wrote, or None."""
    # Unix reads from byte 0 (a leading newline is stripped); on Windows the holder's lock makes
    # byte 0 unreadable, so the read fails and is made again from byte 1.
    for offset in (0, 1):
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            text = os.read(fd, 32).decode("ascii", "replace").strip()
        except OSError:
            continue
        return int(text) if text.isdigit() else None
    return None


def _parse_marker(text: str) -> tuple[int, str] | None:
    """``(pid, host)`` from a soft lock marker's content, or None if it is not one."""
    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit():
        return None
    return int(parts[0]), parts[1]


def _soft_holder(marker: Path) -> tuple[int, str] | None:
    """``(pid, host)`` of a soft lock's holder, or None if there is no (readable) marker."""
    try:
        return _parse_marker(marker.read_text(encoding="ascii", errors="replace"))
    except OSError:
        return None


def _stale(holder: tuple[int, str]) -> bool:
    """Whether a soft lock's holder is known to be dead: only checkable for a pid on this host."""
    pid, host = holder
    # On Windows os.kill(pid, 0) would terminate the process, not probe it: never call it there.
    if sys.platform == "win32" or host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # EPERM: alive, another user's
    return False


def _remove_marker(marker: Path, holder: tuple[int, str] | None) -> None:
    """Delete a soft lock's marker if it still names ``holder``.

    Reading then deleting is not atomic: another process could replace the marker in between. The
    window is microseconds, and only a soft lock (a filesystem without locks) has it.
    """
    if holder is not None and _soft_holder(marker) == holder:
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
