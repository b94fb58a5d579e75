"""A refused command changes nothing in the run directory, not even Hydra's record, the log or
the lock file; data written by a newer FinSense is never overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finsense.checkpoint.layout import FORMAT_VERSION
from tests.e2e.helpers import status_output, wait_for

pytestmark = pytest.mark.slow


def _snapshot(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run directory, Hydra's record, logs and lock included: bytes and mtime."""
    return {
        str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def finished(tmp_path: Path, train_cmd) -> Path:
    """A complete 5-episode run at ``tmp_path/outputs/run``."""
    run_dir = tmp_path / "outputs" / "run"
    done = train_cmd("episodes=5", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert {".hydra", "logs", ".finsense.lock", "models", "metrics.csv"} <= {
        p.name for p in run_dir.iterdir()
    }
    return run_dir


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["episodes=500", "checkpoints.max_keep=0"], 2, "checkpoints.max_keep must be >= 1"),
        (
            ["episodes=500", "agent.network.hidden_sizes=[8]"],
            2,
            "agent.network.hidden_sizes: [64, 64] -> [8]",
        ),
        (["episodes=5"], 0, "Training already complete!"),
    ],
)
def test_a_refused_or_finished_command_changes_no_file_of_the_run(
    tmp_path: Path, train_cmd, finished: Path, args: list[str], code: int, says: str
) -> None:
    before = _snapshot(finished)
    proc = train_cmd(*args, f"hydra.run.dir={finished}")
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert says in proc.stdout + proc.stderr
    assert _snapshot(finished) == before
    assert "5/5" in status_output(tmp_path) and "complete" in status_output(tmp_path)


def test_a_second_trainer_refused_as_in_use_changes_nothing(
    tmp_path: Path, train_cmd, start_train, finished: Path
) -> None:
    at = f"hydra.run.dir={finished}"
    first = start_train("episodes=400", at)
    wait_for(lambda: (finished / ".finsense.lock").read_text().strip() == str(first.pid))
    assert "episodes: 400" in (finished / ".hydra" / "config.yaml").read_text()
    record = (finished / ".hydra" / "config.yaml").read_bytes()
    pid = (finished / ".finsense.lock").read_text().strip()
    second = train_cmd("episodes=8765", at)  # not a multiple of 40: no step count
    assert second.returncode == 3, second.stdout + second.stderr
    assert f"in use by another FinSense process (pid {first.pid})" in second.stderr
    assert (finished / ".hydra" / "config.yaml").read_bytes() == record
    assert (finished / ".finsense.lock").read_text().strip() == pid
    log = (finished / "logs" / "finsense.log").read_text()
    assert "in use" not in log and "8765" not in log
    first.kill()
    first.wait()


def test_a_checkpoint_of_a_newer_finsense_is_never_overwritten(
    tmp_path: Path, train_cmd, finished: Path
) -> None:
    newer = finished / "models" / "model_ep4.json"
    meta = json.loads(newer.read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    newer.write_text(json.dumps(meta))
    before = _snapshot(finished)
    for args in (["episodes=6"], ["episodes=6", "resume=never"], ["resume=models/model_ep2.pt"]):
        proc = train_cmd(*args, f"hydra.run.dir={finished}")
        combined = proc.stdout + proc.stderr
        assert proc.returncode == 2, combined
        errors = [line for line in combined.splitlines() if line.startswith("ERROR")]
        assert errors == [
            f"ERROR: {newer}: written by a newer FinSense (format_version {FORMAT_VERSION + 1} > "
            f"{FORMAT_VERSION}); upgrade "
            "FinSense to continue this run, or train in another run directory (name=NEW)"
        ], combined
        assert "Traceback" not in combined
        assert _snapshot(finished) == before
