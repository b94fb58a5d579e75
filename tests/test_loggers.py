"""TensorBoard logging: scalars per episode, and resumed runs that continue the same curves."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from finsense.errors import ConfigError, FinSenseError
from finsense.loggers import (
    TENSORBOARD_DIR,
    TensorBoardLogger,
)


def row(episode: int, session: int) -> dict[str, float | int | str]:
    """A metrics.csv-like row whose profit says which session wrote it."""
    return {
        "episode": episode,
        "total_profit": 1000.0 * session + episode,
        "epsilon": 1.0 / episode,
        "steps": 100 * episode,
    }


def read_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every point TensorBoard shows for ``tag``."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_each_numeric_value_is_a_scalar_at_its_episode(tmp_path: Path) -> None:
    with TensorBoardLogger(tmp_path / "tb") as logger:
        for episode in (1, 2, 3):
            logger.log(episode, {**row(episode, 0), "note": "text", "flag": True, "bad": math.nan})
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["epsilon", "steps", "total_profit"]
    assert read_scalars(tmp_path / "tb", "total_profit") == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_resume_with_purge_step_leaves_no_duplicate_or_orphan_points(tmp_path: Path) -> None:
    log_dir = tmp_path / TENSORBOARD_DIR
    # First session: episodes 1..7 logged, last checkpoint at 5, then the process dies.
    first = TensorBoardLogger(log_dir)
    for episode in range(1, 8):
        first.log(episode, row(episode, session=1))
    first.close()
    # Resumed from the checkpoint of episode 5: episodes 6..10 are logged again.
    second = TensorBoardLogger(log_dir, purge_step=6)
    for episode in range(6, 11):
        second.log(episode, row(episode, session=2))
    second.close()

    points = read_scalars(log_dir, "total_profit")
    steps = [step for step, _ in points]
    assert steps == list(range(1, 11)), "each episode exactly once, in order"
    values = dict(points)
    assert all(values[e] == 1000 + e for e in range(1, 6)), "kept: the first session up to 5"
    assert all(values[e] == 2000 + e for e in range(6, 11)), "replaced: 6 and 7 by the resume"


def test_points_are_on_disk_as_soon_as_an_episode_is_logged(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path / "tb")
    logger.log(1, row(1, 0))
    try:
        assert read_scalars(tmp_path / "tb", "total_profit") == [(1, 1.0)]
    finally:
        logger.close()


def test_start_opens_under_the_run_dir_and_a_fresh_start_purges_the_old_points(
    tmp_path: Path,
) -> None:
    old = TensorBoardLogger()
    old.start(tmp_path, 2, {})
    old.log(3, row(3, 1))
    old.close()
    # A fresh start after resume=never (start 0): the old history's points disappear too.
    fresh = TensorBoardLogger()
    fresh.start(tmp_path, 0, {})
    assert fresh.log_dir == tmp_path / TENSORBOARD_DIR
    fresh.log(1, row(1, 2))
    fresh.close()
    assert read_scalars(tmp_path / TENSORBOARD_DIR, "total_profit") == [(1, 2001.0)]


def test_missing_tensorboard_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(FinSenseError) as info:
        TensorBoardLogger(tmp_path / "tb")
    message = str(info.value)
    assert "\n" not in message and "pip install 'finsense[tensorboard]'" in message


# -- checked before any work (issue 17) ----------------------------------------------------------
def test_a_missing_tensorboard_is_refused_when_the_logger_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    asked: list[str] = []

    def find_spec(name: str, *args: object) -> object:
        asked.append(name)
        return None if name == "tensorboard" else real(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError) as info:
        TensorBoardLogger()  # built before any work starts, from logger/tensorboard.yaml
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("logger=tensorboard needs the tensorboard extra: pip install ")
    assert "finsense[tensorboard]" in message
    assert "tensorboard" in asked  # found by its spec: nothing heavy was imported to tell
