"""Bad input on the real command line (config keys, checkpoint files, run directory contents):
one ``ERROR:`` line naming what is wrong, a non-zero exit, no traceback, and nothing changed or
left behind."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.e2e.helpers import run_dir_files, subprocess_env

pytestmark = pytest.mark.slow


def _one_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``ERROR`` line of a refused command (asserting there is exactly one)."""
    combined = proc.stdout + proc.stderr
    assert proc.returncode != 0, combined
    assert "Traceback" not in combined, combined
    errors = [line for line in combined.splitlines() if "ERROR" in line or "Error" in line]
    assert len(errors) == 1, combined
    return errors[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # A misspelled key added with '+': Hydra's force-add skips the schema, so FinSense refuses.
        (
            ["+agent.learing_rate=0.5"],
            "agent.learing_rate is not a key of agent (did you mean agent.learning_rate?)",
        ),
        (["++agent.learing_rate=0.5"], "did you mean agent.learning_rate?"),
        (["+foo=1"], "foo is not a config key"),
        (["+episodez=3"], "episodez is not a config key (did you mean episodes?)"),
        (["+env.windowsize=10"], "env.windowsize is not a key of env (did you mean env.window_"),
        (["+env.data.nsteps=10"], "env.data.nsteps is not a key of env.data (did you mean"),
        (["+checkpoints.max_kept=3"], "did you mean checkpoints.max_keep?"),
        (
            ["agent.batch_size=4096", "agent.buffer_size=1000"],
            "agent.batch_size=4096 must be <= agent.buffer_size=1000",
        ),
        (["agent.gamma=???"], "agent.gamma has no value"),
        (["env.execution=nextclose"], "env.execution must be one of next_close, next_open, close"),
        (["env.execution=next_open"], "synthetic prices have closes only"),
        (["env.slippage_bps=-2"], "env.slippage_bps must be >= 0 (basis points), got -2"),
        (["+env.executon=close"], "did you mean env.execution?"),
    ],
    ids=[
        "plus-agent-typo",
        "plusplus-agent-typo",
        "plus-top-unknown",
        "plus-top-typo",
        "plus-env-typo",
        "plus-env-data-typo",
        "plus-checkpoints-typo",
        "batch-over-buffer",
        "missing-value",
        "unknown-execution",
        "next-open-without-opens",
        "negative-slippage",
        "plus-execution-typo",
    ],
)
def test_bad_config_key_is_one_clear_line_and_nonzero_exit(
    tmp_path: Path, train_cmd, args: list[str], expected: str
) -> None:
    proc = train_cmd("episodes=1", *args)
    combined = proc.stdout + proc.stderr
    assert proc.returncode != 0, combined
    assert "Traceback" not in combined
    errors = [line for line in combined.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, combined
    assert expected in errors[0]
    outputs = tmp_path / "outputs"
    assert not outputs.exists() or list(outputs.iterdir()) == []


@pytest.fixture
def run_dir(tmp_path: Path, train_cmd) -> Path:
    """A finished 4-episode run at ``tmp_path/run`` (checkpoints at 2 and 4)."""
    done = train_cmd("episodes=4", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp_path / "run"


def test_resume_from_a_model_file_without_its_json_is_one_line(tmp_path: Path, train_cmd) -> None:
    mine = tmp_path / "mine.pt"
    torch.save({"policy": {"w": torch.zeros(2)}}, mine)
    error = _one_error(train_cmd(f"resume={mine}", "episodes=2"))
    assert "no mine.json beside it" in error
    assert not (tmp_path / "outputs").exists() or list((tmp_path / "outputs").iterdir()) == []


@pytest.mark.parametrize(
    ("entry", "make", "says"),
    [
        ("metrics.csv", "dir", "metrics.csv is a directory, where FinSense keeps its metrics.csv"),
        ("logs", "file", "logs is a file, where FinSense keeps its logs directory"),
    ],
)
def test_a_run_directory_entry_of_the_wrong_kind_is_one_line_and_changes_nothing(
    run_dir: Path, train_cmd, entry: str, make: str, says: str
) -> None:
    path = run_dir / entry
    if path.is_dir():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
    else:
        path.unlink()
    if make == "dir":
        path.mkdir()
    else:
        path.write_text("")
    before = run_dir_files(run_dir, exclude=())
    error = _one_error(train_cmd("episodes=6", f"hydra.run.dir={run_dir}"))
    assert says in error
    assert run_dir_files(run_dir, exclude=()) == before


@pytest.mark.parametrize("multirun", [False, True])
def test_outputs_that_is_a_file_is_one_line(tmp_path: Path, multirun: bool) -> None:
    (tmp_path / "outputs").write_text("not a folder")
    argv = [sys.executable, "-m", "finsense.train"]
    argv += ["--multirun", "hydra.sweep.dir=outputs/sweep", "seed=0"] if multirun else []
    proc = subprocess.run(
        [*argv, "episodes=1"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    error = _one_error(proc)
    assert error.startswith("ERROR: outputs is a file, so the run directory outputs/")
    assert (tmp_path / "outputs").read_text() == "not a folder"


def test_a_newest_checkpoint_without_training_state_falls_back_loudly(
    run_dir: Path, train_cmd
) -> None:
    newest = run_dir / "models" / "model_ep4.json"
    meta = json.loads(newest.read_text())
    meta["sha256"]["training"] = None
    meta["size_bytes"]["training"] = None
    newest.write_text(json.dumps(meta))
    proc = train_cmd("episodes=6", f"hydra.run.dir={run_dir}")
    combined = proc.stdout + proc.stderr
    assert proc.returncode == 0, combined
    warning = [line for line in combined.splitlines() if "model_ep4.json" in line]
    assert len(warning) == 1 and "records no training state" in warning[0], combined
    assert len(warning[0]) < 300
    assert "Auto-resuming from episode 2: models/model_ep2.pt" in proc.stdout
    assert newest.exists()  # left in place, not deleted


def test_a_best_model_with_an_infinite_metric_is_set_aside_and_rebuilt(
    run_dir: Path, train_cmd
) -> None:
    best = run_dir / "models" / "best_model.json"
    meta = json.loads(best.read_text())
    meta["metric_value"] = float("inf")
    best.write_text(json.dumps(meta))  # json writes Infinity, which Python reads back
    proc = train_cmd("episodes=8", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "best_model.json: unreadable JSON or no finite metric_value; set aside" in proc.stderr
    assert (run_dir / "models" / "best_model.json.corrupt").exists()
    rebuilt = json.loads(best.read_text())
    assert rebuilt["metric_name"] == "val_total_profit"
    with open(run_dir / "metrics.csv", newline="") as f:
        scored = [float(row["val_total_profit"]) for row in csv.DictReader(f)]
    assert rebuilt["metric_value"] == pytest.approx(max(v for v in scored if not math.isnan(v)))
