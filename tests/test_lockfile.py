"""The run lock's portability: no POSIX-only import, and the soft lock where flock is missing."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finsense import lockfile
from finsense.errors import RunLockedError
from finsense.lockfile import LOCK_FILE, SOFT_LOCK_FILE, RunLock, lock_held

REPO = Path(__file__).resolve().parents[1]

# Runs in a child: a platform without fcntl (importing it raises ImportError) and without the
# POSIX-only signals, as on Windows. Every module of the package must still import.
_IMPORT_ALL = """
import importlib, pkgutil, signal, sys
sys.modules["fcntl"] = None
for name in ("SIGUSR1", "SIGUSR2", "SIGHUP", "SIGPIPE"):
    if hasattr(signal, name):
        delattr(signal, name)
import finsense
failed = []
for info in pkgutil.walk_packages(finsense.__path__, "finsense."):
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
print("\\n".join(failed) or "ok")
"""


def test_every_module_imports_without_fcntl_or_posix_signals() -> None:
    child = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "ok", child.stdout


@pytest.fixture
def no_flock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem without file locks, as Lustre mounted without ``-o flock`` answers."""

    def refuse(fd: int) -> bool:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(lockfile, "_os_lock", refuse)
    monkeypatch.setattr(lockfile, "_os_unlock", refuse)


@pytest.mark.usefixtures("no_flock")
def test_soft_lock_where_the_filesystem_has_no_flock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    marker = run_dir / SOFT_LOCK_FILE
    with caplog.at_level(logging.WARNING, logger="finsense.lockfile"):
        lock = RunLock(run_dir)
        lock.acquire()
    try:
        assert "does not support file locks" in caplog.text
        assert marker.exists() and lock_held(run_dir) and RunLock.is_locked(run_dir)
        assert (run_dir / LOCK_FILE).read_bytes() == b""  # acquire() wrote nothing there
        lock.record_pid()
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}.*delete .*{SOFT_LOCK_FILE}"):
            RunLock(run_dir).acquire()
    finally:
        lock.release()
    assert not marker.exists() and not lock_held(run_dir)
    assert (run_dir / LOCK_FILE).read_bytes() == b""
    with RunLock(run_dir) as again:
        assert again.held


@pytest.mark.usefixtures("no_flock")
def test_soft_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    import socket

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_bytes(b"")
    (run_dir / SOFT_LOCK_FILE).write_text(f"{dead.stdout.strip()} {socket.gethostname()}\n")
    assert not lock_held(run_dir)  # the holder it names is gone
    with RunLock(run_dir) as lock:
        assert lock.held
        assert (run_dir / SOFT_LOCK_FILE).read_text().split()[0] == str(os.getpid())


@pytest.mark.usefixtures("no_flock")
def test_soft_lock_on_another_host_refuses(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / SOFT_LOCK_FILE).write_text("4242 some-other-node\n")
    with pytest.raises(RunLockedError, match="pid 4242.*runs on some-other-node"):
        RunLock(run_dir).acquire()
    assert (run_dir / SOFT_LOCK_FILE).read_text() == "4242 some-other-node\n"


def test_refused_command_leaves_the_lock_file_untouched(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with RunLock(run_dir) as lock:
        lock.record_pid()
        before = (run_dir / LOCK_FILE).read_bytes()
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            RunLock(run_dir).acquire()
        assert (run_dir / LOCK_FILE).read_bytes() == before
    assert (run_dir / LOCK_FILE).read_bytes() == b""  # a recorded pid is cleared on release
