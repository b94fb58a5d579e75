"""Sweeps that tell the truth: failed jobs fail the sweep, jobs never merge, and the manifest says
which jobs each invocation launched. Real ``--multirun`` command lines."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from finsense.sweeps import FAILED_MARKER, MANIFEST
from tests.e2e.helpers import TINY, status_output, subprocess_env, train_argv

pytestmark = pytest.mark.slow

_CONFIG = Path(__file__).parents[2] / "finsense" / "conf" / "config.yaml"
EXCLUDED = yaml.safe_load(_CONFIG.read_text())["hydra"]["job"]["config"]["override_dirname"][
    "exclude_keys"
]


_TINY_KEYS = {item.split("=")[0] for item in TINY}


def _swept(job_dir: str) -> str:
    """A job directory's name without the TINY settings every job shares."""
    name = Path(job_dir).name
    return ",".join(kv for kv in name.split(",") if kv.split("=")[0] not in _TINY_KEYS)


def _sweep(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        train_argv(*args, multirun=True),
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _status(tmp_path: Path) -> dict[str, str]:
    runs = json.loads(status_output(tmp_path, "multirun", "--json"))
    return {_swept(r["run_dir"]): r["state"] for r in runs}


def test_a_sweep_with_a_failed_job_runs_the_rest_then_fails_with_a_line_per_job(
    tmp_path: Path,
) -> None:
    proc = _sweep(tmp_path, "episodes=2", "agent.learning_rate=0.001,-1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 1, proc.stderr
    assert "agent.learning_rate=-1" in failed[0] and "agent.learning_rate must be > 0" in failed[0]
    assert proc.stderr.strip().splitlines()[-1].startswith("ERROR: 1 of 2 sweep jobs failed")
    assert _status(tmp_path) == {
        "agent.learning_rate=0.001": "complete",
        "agent.learning_rate=-1": "failed",
    }
    events = [
        json.loads(line)
        for line in (tmp_path / "multirun" / "sweep" / MANIFEST).read_text().splitlines()
    ]
    assert [(_swept(e["job_dir"]), e["event"]) for e in events] == [
        ("agent.learning_rate=0.001", "started"),
        ("agent.learning_rate=0.001", "complete"),
        ("agent.learning_rate=-1", "started"),
        ("agent.learning_rate=-1", "failed"),
    ]
    assert len({e["invocation"] for e in events}) == 1


def test_a_fixed_job_clears_its_failure_and_the_sweep_succeeds(tmp_path: Path) -> None:
    bad = _sweep(tmp_path, "episodes=2", "seed=0,1", "checkpoints.max_keep=0")
    assert bad.returncode == 1
    assert bad.stderr.count("FAILED ") == 2
    jobs = sorted((tmp_path / "multirun" / "sweep").glob("seed=*"))
    assert all((job / FAILED_MARKER).exists() for job in jobs)
    assert set(_status(tmp_path).values()) == {"failed"}

    good = _sweep(tmp_path, "episodes=2", "seed=0,1")
    assert good.returncode == 0, good.stdout + good.stderr
    assert not any((job / FAILED_MARKER).exists() for job in jobs)
    assert set(_status(tmp_path).values()) == {"complete"}
    invocations = {
        json.loads(line)["invocation"]
        for line in (tmp_path / "multirun" / "sweep" / MANIFEST).read_text().splitlines()
    }
    assert len(invocations) == 2


_TWO_VALUES = {
    "episodes": "2,3",
    "max_steps": "100,200",
    "resume": "auto,never",
    "device": "cpu,cpu",
    "name": "a,b",
    "threads": "1,2",
    "progress": "log,bar",
    "logger": "csv,tensorboard",
    "eval_every": "0,1",
    "checkpoints": "default,default",
    "checkpoints.save_frequency": "1,2",
    "checkpoints.max_keep": "1,2",
    "checkpoints.save_best": "true,false",
    "checkpoints.metric_name": "total_profit,sharpe_ratio",
    "checkpoints.mode": "max,min",
    "checkpoints.save_every_minutes": "1,2",
    "checkpoints.remote": "file:///nowhere/a,file:///nowhere/b",
}


def test_every_key_left_out_of_directory_names_is_covered() -> None:
    assert sorted(_TWO_VALUES) == sorted(EXCLUDED)


@pytest.mark.parametrize("key", sorted(_TWO_VALUES))
def test_sweeping_a_key_left_out_of_directory_names_is_refused_before_any_job(
    tmp_path: Path, key: str
) -> None:
    proc = _sweep(tmp_path, f"{key}={_TWO_VALUES[key]}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert errors and errors[0].startswith(f"ERROR: cannot sweep {key}:"), proc.stderr
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "Launching" not in proc.stdout + proc.stderr
    assert not (tmp_path / "multirun").exists() or not any((tmp_path / "multirun").rglob("*"))
