"""``python -m finsense.evaluate multirun/<sweep>`` on a real ``--multirun`` sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finsense.sweep_eval import sweep_job_dirs
from tests.e2e.helpers import subprocess_env, train_argv

pytestmark = pytest.mark.slow


def test_a_real_sweep_is_evaluated_job_by_job_and_compared_per_configuration(
    tmp_path: Path,
) -> None:
    sweep = subprocess.run(
        train_argv("episodes=2", "seed=0,1", "agent.learning_rate=0.001,0.0005", multirun=True),
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sweep.returncode == 0, sweep.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "finsense.evaluate", "multirun/sweep", "seeds=2"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("CONFIGURATION"))
    rows = [line.split()[:2] for line in lines[header + 1 : header + 3]]
    assert sorted(rows) == [["agent.learning_rate=0.0005", "2"], ["agent.learning_rate=0.001", "2"]]
    assert lines[header + 3].startswith("Best configuration: agent.learning_rate=")
    assert "given 2 configurations tried" in lines[header + 3]

    jobs = sweep_job_dirs(tmp_path / "multirun" / "sweep")  # names shortened with a hash
    assert len(jobs) == 4
    assert all((job / "eval" / "test_metrics.json").is_file() for job in jobs)
    data = json.loads((tmp_path / "multirun" / "sweep" / "eval" / "sweep_metrics.json").read_text())
    assert [c["n"] for c in data["configurations"]] == [2, 2] and data["skipped"] == []
    assert data["deflated_sharpe"]["n_trials"] == 2
