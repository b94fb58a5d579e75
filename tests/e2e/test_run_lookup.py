"""``finsense.evaluate`` and ``finsense.report`` find a run by the train command's overrides.

The real train command makes the run; the other two are given the same overrides (and flags of
their own, in both spellings) and must find that very directory.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from finsense.runs import run_dir_for
from tests.e2e.helpers import TINY, subprocess_env

pytestmark = pytest.mark.slow

#: What defines the experiment, as the user types it for all three commands.
EXPERIMENT = [*TINY, "name=lookup", "seed=1"]


def tool(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_evaluate_and_report_find_the_train_commands_run(
    tmp_path: Path,
    train_cmd: Callable[..., subprocess.CompletedProcess[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("matplotlib")
    train = train_cmd(*EXPERIMENT[len(TINY) :], "--episodes", "2")  # train_cmd puts TINY first
    assert train.returncode == 0, train.stderr
    made = list((tmp_path / "outputs").iterdir())
    assert len(made) == 1 and (made[0] / "models").is_dir()
    run_dir = made[0]

    monkeypatch.chdir(tmp_path)
    assert run_dir_for(EXPERIMENT) == run_dir.relative_to(tmp_path)
    assert run_dir_for([*reversed(EXPERIMENT), "episodes=2", "device=cpu"]) == run_dir.relative_to(
        tmp_path
    )

    evaluate = tool(
        "finsense.evaluate", *EXPERIMENT, "--episodes", "2", "--checkpoint", "latest",
        "seeds=2", cwd=tmp_path,
    )  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr
    assert "(episode 2)" in evaluate.stdout
    assert (run_dir / "eval" / "test_metrics.json").is_file()

    report = tool("finsense.report", *reversed(EXPERIMENT), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    for name in ("training_curve.png", "equity.png", "drawdown.png"):
        assert (run_dir / "report" / name).is_file()

    # Another experiment was never trained: one line naming where it looked and the overrides.
    missing = tool("finsense.evaluate", *TINY, "name=lookup", "seed=2", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stdout == ""
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("finsense.evaluate: no run at outputs/")
    assert "seed=2" in lines[0] and "Traceback" not in missing.stderr
