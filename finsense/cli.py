"""What every FinSense command-line tool shares (kept free of heavy imports: status is fast)."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import ParamSpec

P = ParamSpec("P")


def point_at_devnull(fd: int) -> None:
    """Make ``fd`` write to /dev/null (its reader has gone away)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _interrupted_while_starting(signum: int, frame: FrameType | None) -> None:
    try:
        sys.stderr.write("\nInterrupted while starting; nothing was changed.\n")
        sys.stderr.flush()
    finally:
        os._exit(128 + signal.SIGINT)


def exit_quietly_on_interrupt() -> None:
    """Until :func:`restore_interrupt`, Ctrl+C ends the process at once with one line and exit
    130 instead of a ``KeyboardInterrupt`` traceback from deep inside an import (torch takes
    seconds to import, and nothing has been written yet)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupted_while_starting)


def restore_interrupt() -> None:
    """Ctrl+C raises ``KeyboardInterrupt`` again (if :func:`exit_quietly_on_interrupt` was on)."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def quiet_on_closed_stdout(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap a ``main`` so that ``... | head`` ends it quietly, as Unix tools do.

    When the reader of stdout goes away, the rest of the output is dropped (stdout is pointed at
    /dev/null so Python's final flush cannot complain) and the exit code is 128 + SIGPIPE.
    """

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        restore_interrupt()
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            point_at_devnull(sys.stdout.fileno())
            # Windows has no SIGPIPE; 13 is its number on Linux and macOS.
            return 128 + getattr(signal, "SIGPIPE", 13)

    return wrapper


class BelowLevel(logging.Filter):
    """Passes records below ``level`` only: the stdout handler leaves warnings to stderr's."""

    def __init__(self, level: int | str = logging.WARNING) -> None:
        super().__init__()
        self.level = logging.getLevelName(level) if isinstance(level, str) else level

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return record.levelno < self.level


class ConsoleHandler(logging.StreamHandler):
    """The console log handler of ``finsense.train`` (named in conf/hydra/job_logging).

    If the reader of the console goes away (``python -m finsense.train | head``), training goes
    on and keeps logging to ``logs/finsense.log``; the console is pointed at /dev/null instead of
    printing a "Logging error" traceback for every later message.
    """

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            try:
                point_at_devnull(self.stream.fileno())
            except (OSError, ValueError, AttributeError):
                self.stream = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the handler)
            return
        super().handleError(record)
