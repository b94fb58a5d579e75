"""``finsense.status``: run directories on disk, read back as one row per run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from finsense.status import collect, main
from tests.helpers import run_into_closed_pipe

JSON_KEYS = {
    "run_dir",
    "episodes_done",
    "episodes_total",
    "latest_checkpoint",
    "best_metric_name",
    "best_metric_value",
    "best_episode",
    "updated_at",
    "state",
    "corrupt_files",
    "sweep_invocation",
}


def _checkpoint_meta(episode: int, total: int, value: float, is_best: bool) -> dict[str, Any]:
    """A checkpoint JSON as ``finsense.checkpoint`` writes it."""
    return {
        "episode": episode,
        "metrics": {"total_profit": value * 100, "sharpe_ratio": value, "max_drawdown": -0.1},
        "is_best": is_best,
        "metric_name": "sharpe_ratio",
        "metric_value": value,
        "epsilon": 0.05,
        "episodes_total": total,
        "format_version": 1,
        "sha256": {"pt": "0" * 64, "train.pt": "1" * 64},
        "written_at": datetime(2026, 11, 29, 3, episode % 60, tzinfo=UTC).isoformat(),
        "config": {"episodes": total, "seed": 0, "agent": {"learning_rate": 1e-3}},
    }


def make_run(
    run_dir: Path,
    episodes: Sequence[int] = (),
    total: int = 10,
    best_episode: int | None = None,
    hydra_episodes: int | None = None,
    extra_files: Sequence[str] = (),
) -> Path:
    """Write a fake run: checkpoints of ``episodes``, best, metrics.csv, optional Hydra record."""
    models = run_dir / "models"
    models.mkdir(parents=True)
    for ep in episodes:
        meta = _checkpoint_meta(ep, total, value=ep / 10, is_best=ep == best_episode)
        (models / f"model_ep{ep}.pt").write_bytes(b"weights")
        (models / f"model_ep{ep}.train.pt").write_bytes(b"state")
        (models / f"model_ep{ep}.json").write_text(json.dumps(meta))
    if best_episode is not None:
        meta = _checkpoint_meta(best_episode, total, value=best_episode / 10, is_best=True)
        (models / "best_model.pt").write_bytes(b"weights")
        (models / "best_model.train.pt").write_bytes(b"state")
        (models / "best_model.json").write_text(json.dumps(meta))
    if episodes:
        rows = "".join(f"{ep},1.0,0.5\n" for ep in range(1, max(episodes) + 1))
        (run_dir / "metrics.csv").write_text("episode,total_profit,sharpe_ratio\n" + rows)
        # Older than every checkpoint, so updated_at comes from the checkpoint unless a test says.
        old = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
        os.utime(run_dir / "metrics.csv", (old, old))
    if hydra_episodes is not None:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "config.yaml").write_text(
            f"episodes: {hydra_episodes}\nseed: 0\nagent:\n  learning_rate: 0.001\n"
        )
    for name in extra_files:
        (models / name).write_bytes(b"")
    return run_dir


def only(dirs: Sequence[Path]) -> Any:
    """The single run found below ``dirs``."""
    runs = collect(list(dirs))
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture
def hold_lock() -> Iterator[Callable[[Path], None]]:
    """Hold the trainer's flock on a run's lock file from a child process, as training does."""
    children: list[subprocess.Popen[str]] = []
    code = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )

    def hold(run_dir: Path) -> None:
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(run_dir / ".finsense.lock")],
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"

    yield hold
    for child in children:
        child.kill()
        child.wait()


# -- states ---------------------------------------------------------------------------------------
def test_run_at_its_target_is_complete_with_latest_checkpoint_and_best(tmp_path: Path) -> None:
    make_run(tmp_path / "outputs" / "run", episodes=[8, 9, 10], total=10, best_episode=7)

    run = only([tmp_path / "outputs"])

    assert run.state == "complete"
    assert (run.episodes_done, run.episodes_total) == (10, 10)
    assert run.latest_checkpoint == "model_ep10.pt"
    assert (run.best_metric_name, run.best_metric_value, run.best_episode) == (
        "sharpe_ratio",
        0.7,
        7,
    )
    assert run.corrupt_files == ()


def test_run_short_of_its_target_with_free_lock_is_interrupted(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", episodes=[4, 6], total=10, best_episode=6)
    (run_dir / ".finsense.lock").write_text("")

    run = only([tmp_path])

    assert run.state == "interrupted"
    assert (run.episodes_done, run.episodes_total, run.latest_checkpoint) == (6, 10, "model_ep6.pt")


def test_run_without_checkpoints_is_empty(tmp_path: Path) -> None:
    make_run(tmp_path / "run", episodes=[], hydra_episodes=300)

    run = only([tmp_path])

    assert run.state == "empty"
    assert (run.episodes_done, run.episodes_total, run.latest_checkpoint) == (0, 300, None)
    assert run.best_metric_name is None and run.updated_at is None


def test_corrupt_file_marks_run_damaged_even_when_complete(tmp_path: Path) -> None:
    make_run(
        tmp_path / "run",
        episodes=[9, 10],
        total=10,
        best_episode=10,
        extra_files=["model_ep8.pt.corrupt", "model_ep8.json.corrupt.1"],
    )

    run = only([tmp_path])

    assert run.state == "damaged"
    assert run.corrupt_files == ("model_ep8.json.corrupt.1", "model_ep8.pt.corrupt")
    assert run.latest_checkpoint == "model_ep10.pt"


def test_held_lock_shows_running(tmp_path: Path, hold_lock: Callable[[Path], None]) -> None:
    run_dir = make_run(tmp_path / "run", episodes=[2, 4], total=10)
    with (run_dir / "metrics.csv").open("a") as f:
        f.write("5,1.0,0.5\n")  # an episode finished since the last save
    hold_lock(run_dir)

    run = only([tmp_path])

    assert run.state == "running"
    assert (run.episodes_done, run.latest_checkpoint) == (5, "model_ep4.pt")


def test_held_lock_on_damaged_run_shows_running_damaged(
    tmp_path: Path, hold_lock: Callable[[Path], None]
) -> None:
    run_dir = make_run(tmp_path / "run", episodes=[2], extra_files=["model_ep4.pt.corrupt"])
    hold_lock(run_dir)

    assert only([tmp_path]).state == "running (damaged)"


# -- which checkpoint, which target, which time ---------------------------------------------------
def test_unparseable_newest_json_falls_back_to_previous_checkpoint(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", episodes=[3, 6, 9], total=10)
    (run_dir / "models" / "model_ep9.json").write_text('{"episode": 9, "metr')
    (run_dir / "models" / "model_ep12.json").write_text(
        json.dumps(_checkpoint_meta(12, 10, 1, False))
    )
    (run_dir / "models" / ".model_ep15.json.tmp").write_text("{}")

    run = only([tmp_path])

    # ep12 has no .pt (set aside or never landed); ep9's JSON is truncated; temp files are ignored.
    assert (run.latest_checkpoint, run.episodes_done, run.state) == (
        "model_ep6.pt",
        6,
        "interrupted",
    )


def test_hydra_config_target_wins_over_checkpoint_total(tmp_path: Path) -> None:
    make_run(tmp_path / "run", episodes=[10], total=10, hydra_episodes=20)

    run = only([tmp_path])

    assert (run.episodes_done, run.episodes_total, run.state) == (10, 20, "interrupted")


def test_updated_at_is_metrics_csv_mtime_when_newer_than_checkpoint(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", episodes=[10], total=10)
    newer = datetime(2027, 1, 2, 3, 4, tzinfo=UTC).timestamp()
    os.utime(run_dir / "metrics.csv", (newer, newer))

    assert only([tmp_path]).updated_at == datetime.fromtimestamp(newer).astimezone()

    older = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
    os.utime(run_dir / "metrics.csv", (older, older))

    assert only([tmp_path]).updated_at == datetime(2026, 11, 29, 3, 10, tzinfo=UTC)


def test_runs_are_found_in_sweeps_but_not_inside_models_or_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "multirun" / "sweep"
    make_run(sweep / "lr=0.001,seed=0", episodes=[5], total=5, hydra_episodes=5)
    make_run(sweep / "lr=0.001,seed=1", episodes=[3], total=5, hydra_episodes=5)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    make_run(sweep / "lr=0.001,seed=0" / "models" / "archive" / "20261129-031200", episodes=[1])
    make_run(sweep / "lr=0.001,seed=1" / "archive" / "old", episodes=[1])

    runs = collect([Path("multirun")])

    assert [(r.run_dir, r.state) for r in runs] == [
        ("multirun/sweep/lr=0.001,seed=0", "complete"),
        ("multirun/sweep/lr=0.001,seed=1", "interrupted"),
    ]


# -- command line ---------------------------------------------------------------------------------
def test_table_has_header_and_one_aligned_row_per_run_sorted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path / "outputs" / "b", episodes=[4], total=10, best_episode=4)
    make_run(tmp_path / "outputs" / "a", episodes=[10], total=10, best_episode=10)

    assert main(["outputs"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RUN", "EPISODES", "LATEST", "BEST", "UPDATED", "STATE"]
    assert lines[1].split()[:3] == ["outputs/a", "10/10", "model_ep10.pt"]
    assert "sharpe_ratio=1 @ep10" in lines[1] and "sharpe_ratio=0.4 @ep4" in lines[2]
    assert lines[1].endswith("complete") and lines[2].endswith("interrupted")
    assert lines[2].startswith("outputs/b ") and lines[1].index("10/10") == lines[2].index("4/10")


def test_json_output_has_every_key_with_plain_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    make_run(
        tmp_path / "outputs" / "run",
        episodes=[6],
        total=10,
        best_episode=6,
        extra_files=["model_ep7.pt.corrupt"],
    )

    assert main(["--json", "outputs"]) == 0

    (row,) = json.loads(capsys.readouterr().out)
    assert set(row) == JSON_KEYS
    assert row == {
        "run_dir": "outputs/run",
        "episodes_done": 6,
        "episodes_total": 10,
        "latest_checkpoint": "model_ep6.pt",
        "best_metric_name": "sharpe_ratio",
        "best_metric_value": 0.6,
        "best_episode": 6,
        "updated_at": row["updated_at"],
        "state": "damaged",
        "corrupt_files": ["model_ep7.pt.corrupt"],
        "sweep_invocation": None,
    }
    when = datetime.fromisoformat(row["updated_at"])
    assert when == datetime(2026, 11, 29, 3, 6, tzinfo=UTC)


def test_missing_dir_exits_2_with_one_line_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "nope")]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert "nope does not exist" in captured.err


def test_default_dirs_are_outputs_and_multirun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path / "outputs" / "single", episodes=[1])
    make_run(tmp_path / "multirun" / "sweep" / "seed=0", episodes=[1])
    make_run(tmp_path / "elsewhere" / "run", episodes=[1])

    assert main(["--json"]) == 0

    found = [row["run_dir"] for row in json.loads(capsys.readouterr().out)]
    assert found == ["multirun/sweep/seed=0", "outputs/single"]


def test_no_runs_prints_a_friendly_line_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)

    assert main([]) == 0

    out = capsys.readouterr().out
    assert out.startswith("No FinSense runs found") and len(out.splitlines()) == 1


def test_status_command_does_not_import_torch(tmp_path: Path) -> None:
    make_run(tmp_path / "outputs" / "run", episodes=[5], total=5, best_episode=5, hydra_episodes=5)
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['finsense.status', {str(tmp_path / 'outputs')!r}]\n"
        "try:\n"
        "    runpy.run_module('finsense.status', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stdout.splitlines()
    assert "complete" in lines[-2]
    assert lines[-1] == "False"


def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``python -m finsense.status | head -1``: no BrokenPipeError traceback, exit 141."""
    for i in range(30):
        make_run(tmp_path / "outputs" / f"run{i}", episodes=[5], total=5, best_episode=5)
    done = run_into_closed_pipe(
        [sys.executable, "-m", "finsense.status", str(tmp_path / "outputs")], timeout=60
    )
    assert done.returncode == 128 + 13, done.stderr  # 128 + SIGPIPE, as Unix tools exit
    assert done.stderr == ""


def test_sweep_jobs_are_grouped_by_the_invocation_that_last_ran_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from finsense import sweeps

    sweep = tmp_path / "multirun" / "sweep"
    for job, invocation in (("a=1", "20260102T000000-2"), ("a=2", "20260101T000000-1")):
        (sweep / job / "models").mkdir(parents=True)
        monkeypatch.setenv(sweeps.INVOCATION_ENV, invocation)
        sweeps.record(sweep, sweep / job, "complete")
    (sweep / "a=3" / "models").mkdir(parents=True)  # a job the manifest has no record of
    monkeypatch.chdir(tmp_path)
    runs = collect([Path("multirun")])
    assert [(r.run_dir, r.sweep_invocation) for r in runs] == [
        ("multirun/sweep/a=3", None),
        ("multirun/sweep/a=2", "20260101T000000-1"),
        ("multirun/sweep/a=1", "20260102T000000-2"),
    ]
    assert main(["multirun"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "SWEEP" and lines[1].split()[-1] == "-"
    assert lines[2].split()[-1] == "20260101T000000-1"
