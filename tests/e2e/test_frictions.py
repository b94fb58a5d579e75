"""End-to-end checks of the frictions a first quick try runs into (issue 17, item 4)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

pytestmark = pytest.mark.slow

Train = Callable[..., subprocess.CompletedProcess[str]]


def warnings_of(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "WARNING" in line]


def test_a_quick_try_that_cannot_learn_says_which_keys_to_change(train_cmd: Train) -> None:
    # The shipped defaults (learning_starts=1000, exploration_steps=20000) with 20 x 50 steps:
    # at most one gradient step and epsilon still 0.95 when the run ends.
    done = train_cmd("episodes=20", "env.episode_length=50", tiny=False)
    assert done.returncode == 0, done.stderr
    (warning,) = warnings_of(done)
    assert warning.startswith("WARNING: ")
    assert "after 1000 env steps" in warning and "agent.exploration_steps=20000" in warning
    assert "raise episodes or env.episode_length, or lower agent.exploration_steps" in warning
    assert "Training complete: 20/20 episodes" in done.stdout


def test_no_gradient_step_at_all_names_learning_starts(train_cmd: Train) -> None:
    done = train_cmd("episodes=1")  # 40 steps; the tiny config learns from step 64
    assert done.returncode == 0, done.stderr
    (warning,) = warnings_of(done)
    assert "no gradient step in 40 env steps (agent.learning_starts=64)" in warning
    assert "lower agent.learning_starts" in warning


def test_a_run_that_learns_does_not_warn(train_cmd: Train) -> None:
    done = train_cmd("episodes=4")  # 160 steps: learning from 64, epsilon 0.62 of 1 -> 0.05
    assert done.returncode == 0, done.stderr
    assert warnings_of(done) == []
