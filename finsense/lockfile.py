"""The run directory's lock file: its name and a probe that needs no torch (used by ``status``).

The trainer holds ``fcntl.flock(LOCK_EX)`` on ``<run_dir>/.finsense.lock`` for as long as it runs
(:class:`finsense.checkpoint.RunLock`); the OS releases it when the holder dies, even by kill -9.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: The lock file's name inside a run directory.
LOCK_FILE = ".finsense.lock"


def lock_held(run_dir: str | Path) -> bool:
    """Whether any process (this one included) holds the lock of ``run_dir``.

    Takes the lock on a separate descriptor for an instant (non-blocking) and releases it at once.
    A trainer starting in that instant would be told the run is in use; the window is microseconds.
    """
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError as exc:
        log.debug("cannot probe %s: %s", path, exc)
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
