"""What the trainer writes to the console: log records while the progress bar is drawn, and the
warning of a run that taught its agent nothing (issue 17)."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from finsense.trainer import Trainer, TrainSettings

log = logging.getLogger("finsense.trainer")


def screen(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: ``\\r`` returns to the line's start and later
    characters overwrite earlier ones (what a progress bar relies on)."""
    lines = []
    for raw in text.split("\n"):
        cells: list[str] = []
        cursor = 0
        for char in raw:
            if char == "\r":
                cursor = 0
                continue
            if cursor < len(cells):
                cells[cursor] = char
            else:
                cells.append(char)
            cursor += 1
        lines.append("".join(cells).rstrip())
    return lines


def row(episode: int) -> dict[str, Any]:
    return {"episode": episode, "total_profit": 12.5, "epsilon": 0.5, "steps": 40, "seconds": 0.1}


@contextmanager
def console() -> Iterator[io.StringIO]:
    """A captured terminal: the bar's stream (``sys.stdout``) and a console log handler on it,
    as Hydra's ``console`` handler (``stream: ext://sys.stdout``) is.

    Entered in the test body: pytest points ``sys.stdout`` at its own capture when a test's call
    begins, which would undo a fixture's replacement.
    """
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    saved = sys.stdout
    sys.stdout = stream
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        sys.stdout = saved


def trainer(run_dir: Path, progress: str) -> Trainer:
    """A trainer with only what the progress display reads (the settings and the metric name)."""
    manager: Any = SimpleNamespace(metric_name="total_profit")
    settings = TrainSettings(episodes=3, progress=progress)
    return Trainer(None, None, manager, run_dir, settings)  # type: ignore[arg-type]


def test_a_warning_while_the_bar_is_drawn_gets_its_own_line(tmp_path: Path) -> None:
    root = logging.getLogger()
    with console() as terminal:
        handlers = list(root.handlers)
        with trainer(tmp_path, "bar")._progress(0, 3) as progress:
            progress(1, row(1))
            log.warning("careful: something to read")
            progress(2, row(2))
            progress(3, row(3))
        # The console handler is the one the run had once the bar is gone.
        assert root.handlers == handlers
    shown = screen(terminal.getvalue())
    # Written over the bar's line (no newline before it) it would share that line with the bar.
    assert "WARNING: careful: something to read" in shown, shown
    assert sum("careful" in line for line in shown) == 1
    # The bar is drawn again after it, and ends complete on its own line.
    assert any("3/3" in line and "careful" not in line for line in shown), shown


def test_the_bar_leaves_file_and_capture_handlers_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with console(), trainer(tmp_path, "bar")._progress(0, 3) as progress:
        progress(1, row(1))
        log.warning("kept by caplog")
    assert [r.getMessage() for r in caplog.records] == ["kept by caplog"]


def test_without_the_bar_log_records_are_written_as_they_are(tmp_path: Path) -> None:
    with console() as terminal, trainer(tmp_path, "log")._progress(0, 3):
        log.warning("plain")
    assert terminal.getvalue() == "WARNING: plain\n"
