"""Sweep workers end when their launcher dies (``kill -9`` of a joblib sweep).

Hydra's joblib launcher runs each job in a loky worker process, a direct child of the
``python -m finsense.train --multirun`` process. When that launcher is killed the workers are
re-parented and, left alone, train to the end unobserved while holding their run locks. Loky does
not notice: a worker is busy in its task, and afterwards it waits for the next one.

:func:`mark_launcher` (called by :func:`finsense.train.main` before Hydra starts) records the
launcher's pid in :data:`LAUNCHER_PID_ENV`, which its workers inherit. :func:`watch_launcher`
(called at the top of every Hydra task) starts, once per process and only in a direct child of the
launcher, a daemon thread that polls :func:`os.getppid`. When the parent changes it logs one
warning and sends SIGTERM to its own process, so the trainer's graceful stop runs (finish the
episode, save a checkpoint, release the run lock); once the task has returned it ends the process
with :func:`os._exit`, because loky would catch the task's ``SystemExit`` and wait forever for a
parent that is gone.

Never active in a plain run (the process is the launcher itself: a ``nohup``-ed run whose shell
dies keeps training), nor on a cluster node (the parent is ``slurmstepd`` or submitit's
controller, not the launcher).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from types import CodeType
from typing import Any

log = logging.getLogger(__name__)

#: The environment variable holding the pid of the ``python -m finsense.train`` launcher process.
LAUNCHER_PID_ENV = "FINSENSE_LAUNCHER_PID"

#: The exit status of an orphaned worker, the same as a trainer stopped by SIGTERM.
ORPHAN_EXIT_CODE = 128 + signal.SIGTERM

_lock = threading.Lock()
_task_codes: set[CodeType] = set()
_watcher: threading.Thread | None = None


def mark_launcher() -> None:
    """Record this process as the launcher, unless a launcher above it already did."""
    os.environ.setdefault(LAUNCHER_PID_ENV, str(os.getpid()))


def launcher_pid() -> int | None:
    """The launcher's pid from :data:`LAUNCHER_PID_ENV`, or None when unset or unreadable."""
    try:
        return int(os.environ[LAUNCHER_PID_ENV])
    except (KeyError, ValueError):
        return None


def _same_executable(pid: int) -> bool:
    """Whether process ``pid`` runs the same interpreter binary as this one (True without /proc).

    Guards against a pid from another machine or namespace that happens to equal the parent's
    (a cluster node's ``slurmstepd``).
    """
    try:
        return os.readlink(f"/proc/{pid}/exe") == os.readlink("/proc/self/exe")
    except OSError:
        return True


def watch_launcher(poll_s: float = 0.5) -> bool:
    """In a sweep worker, end this process gracefully when the launcher dies.

    Call it at the top of the Hydra task function: the caller's code is what "the task is still
    running" means to the watcher. Returns whether this process is watched.
    """
    launcher = launcher_pid()
    pid = os.getpid()
    if launcher is None or pid == launcher or os.getppid() != launcher:
        return False
    if not _same_executable(launcher):
        return False
    global _watcher
    with _lock:
        _task_codes.add(sys._getframe(1).f_code)
        if _watcher is None:
            _watcher = threading.Thread(
                target=_watch,
                args=(launcher, poll_s),
                name="finsense-launcher-watch",
                daemon=True,
            )
            _watcher.start()
            log.debug("watching the sweep's launcher (pid %d) from pid %d", launcher, pid)
    return True


def _task_running() -> bool:
    """Whether the main thread is inside one of the watched task functions."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    with _lock:
        codes = set(_task_codes)
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


def _watch(launcher: int, poll_s: float) -> None:
    while os.getppid() == launcher:
        time.sleep(poll_s)
    if _task_running():
        log.warning(
            "the sweep's launcher (pid %d) is gone; finishing this episode, saving and exiting",
            launcher,
        )
        # The trainer's handler (finsense.trainer.GracefulInterrupt) finishes the episode and
        # saves; before it is installed or after it is gone, SIGTERM ends the process at once.
        os.kill(os.getpid(), signal.SIGTERM)
        while _task_running():
            time.sleep(min(poll_s, 0.1))
    else:
        log.warning("the sweep's launcher (pid %d) is gone; exiting", launcher)
    _exit(ORPHAN_EXIT_CODE)


def _exit(code: int) -> None:
    """Flush what can be flushed (for a few seconds at most), then end the process at once.

    ``os._exit`` does not unwind the main thread, which is in loky's hands by now. Flushing runs
    in a helper thread: a lock held by the blocked main thread must not keep the orphan alive.
    """
    flusher = threading.Thread(target=_flush_outputs, name="finsense-exit-flush", daemon=True)
    flusher.start()
    flusher.join(timeout=5.0)
    os._exit(code)


def _flush_outputs() -> None:
    targets: list[Any] = [sys.stdout, sys.stderr]
    for name in (None, "finsense"):
        targets.extend(logging.getLogger(name).handlers)
    for target in targets:
        with contextlib.suppress(Exception):  # best effort on the way out
            target.flush()
