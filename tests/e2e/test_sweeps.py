"""Sweeps end to end: Hydra's basic, joblib and submitit launchers and the optuna sweeper."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from finsense.lockfile import lock_held
from tests.e2e.helpers import (
    TINY,
    kill_when,
    load_checkpoint_tensors,
    subprocess_env,
    train_argv,
    wait_for,
)
from tests.helpers import assert_same_state

pytestmark = pytest.mark.slow


def _sweep(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    argv = train_argv(*args, multirun=True)
    return subprocess.run(
        argv, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


_TINY_KEYS = {item.split("=")[0] for item in TINY}


def _job_dirs(tmp_path: Path, sweep: str = "sweep") -> list[str]:
    """The sweep's job directories, named by their swept overrides only (TINY's are dropped)."""
    root = tmp_path / "multirun" / sweep
    names = []
    for p in root.iterdir():
        if p.is_dir() and not p.name.startswith("."):
            kept = [kv for kv in p.name.split(",") if kv.split("=")[0] not in _TINY_KEYS]
            names.append(",".join(kept))
    return sorted(names)


def _job_dir(tmp_path: Path, swept: str, sweep: str = "sweep") -> Path:
    root = tmp_path / "multirun" / sweep
    for p in root.iterdir():
        kept = [kv for kv in p.name.split(",") if kv.split("=")[0] not in _TINY_KEYS]
        if ",".join(kept) == swept:
            return p
    raise AssertionError(f"no job dir for {swept} in {sorted(q.name for q in root.iterdir())}")


def test_killed_sweep_resumes_every_job_in_place(tmp_path: Path) -> None:
    argv = train_argv("episodes=6", "seed=0,1", "agent.gamma=0.9,0.99", multirun=True)
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    root = tmp_path / "multirun" / "sweep"
    kill_when(proc, lambda: len(list(root.glob("*/metrics.csv"))) >= 2, timeout=180)
    jobs = _job_dirs(tmp_path)
    assert "agent.gamma=0.9,seed=0" in jobs

    rerun = _sweep(tmp_path, "episodes=6", "seed=0,1", "agent.gamma=0.9,0.99")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _job_dirs(tmp_path) == sorted(
        f"agent.gamma={g},seed={s}" for g in ("0.9", "0.99") for s in (0, 1)
    )
    assert "Training already complete!" in rerun.stdout  # the first job had finished
    for job in _job_dirs(tmp_path):
        assert (_job_dir(tmp_path, job) / "models" / "model_ep6.json").exists()

    again = _sweep(tmp_path, "episodes=6", "seed=0,1", "agent.gamma=0.9,0.99")
    assert again.returncode == 0
    assert again.stdout.count("Training already complete!") == 4
    assert len(_job_dirs(tmp_path)) == 4


def test_joblib_launcher_runs_jobs_in_parallel_into_stable_dirs(tmp_path: Path) -> None:
    proc = _sweep(
        tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "episodes=4", "seed=0,1"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _job_dirs(tmp_path) == ["seed=0", "seed=1"]
    extended = _sweep(
        tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "episodes=6", "seed=0,1"
    )
    assert extended.returncode == 0, extended.stdout + extended.stderr
    assert _job_dirs(tmp_path) == ["seed=0", "seed=1"]
    for job in ("seed=0", "seed=1"):
        log = (_job_dir(tmp_path, job) / "logs" / "finsense.log").read_text()
        assert "Resuming training from episode 5/6" in log


def _submitit_job_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "submitit.core._submit" in cmd:
            pids.append(int(entry.name))
    return pids


def test_submitit_job_signalled_mid_run_is_requeued_and_ends_with_the_same_weights(
    tmp_path: Path, start_train, train_cmd
) -> None:
    args = ["episodes=150", "seed=3"]
    proc = start_train(
        *args, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", multirun=True
    )
    root = tmp_path / "multirun" / "sweep"

    def started() -> bool:
        found = list(root.glob("*/metrics.csv"))
        return bool(found) and len(found[0].read_text().splitlines()) > 3

    wait_for(started, timeout=180)
    pids = _submitit_job_pids()
    assert pids, "no submitit job process found"
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)  # submitit's preemption / timeout signal
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    job = _job_dir(tmp_path, "seed=3")
    log = (job / "logs" / "finsense.log").read_text()
    assert "Stopped by SIGUSR2 after episode" in log
    assert "Auto-resuming from episode" in log

    reference = train_cmd(*args, "hydra.run.dir=reference", timeout=300)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    assert_same_state(
        load_checkpoint_tensors(tmp_path / "reference" / "models", 150),
        load_checkpoint_tensors(job / "models", 150),
    )


def test_optuna_sweeper_runs_resumable_trials_and_reports_the_best(tmp_path: Path) -> None:
    args = [
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.sampler.seed=0",
        "agent.gamma=choice(0.9,0.95,0.99)",
        "episodes=2",
        "name=search",
    ]
    first = _sweep(tmp_path, *args)
    assert first.returncode == 0, first.stdout + first.stderr
    results = yaml.safe_load(
        (tmp_path / "multirun" / "search" / "optimization_results.yaml").read_text()
    )
    assert results["best_params"]["agent.gamma"] in (0.9, 0.95, 0.99)
    assert isinstance(results["best_value"], float)
    jobs = _job_dirs(tmp_path, "search")
    assert 1 <= len(jobs) <= 4 and all(j.startswith("agent.gamma=") for j in jobs)
    again = _sweep(tmp_path, *args)
    assert again.returncode == 0
    assert again.stdout.count("Training already complete!") == 4
    assert _job_dirs(tmp_path, "search") == jobs


def _processes_left_by(launcher_pid: int, tmp_path: Path) -> list[int]:
    """Live processes of a killed sweep: marked with its launcher's pid, or working in tmp_path."""
    mark = f"FINSENSE_LAUNCHER_PID={launcher_pid}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            environ = (entry / "environ").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except (OSError, IndexError):
            continue  # gone, or not ours to read
        if state in ("Z", "X"):
            continue  # exited; waiting for a reaper
        if mark in environ or Path(cwd).is_relative_to(tmp_path):
            found.append(int(entry.name))
    return found


def _last_episode(job_dir: Path) -> int:
    with (job_dir / "metrics.csv").open(newline="") as f:
        return int(list(csv.DictReader(f))[-1]["episode"])


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers in /proc")
def test_killed_joblib_launcher_takes_its_orphaned_workers_down(tmp_path: Path) -> None:
    args = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1"]
    env = subprocess_env()
    env.pop("FINSENSE_LAUNCHER_PID", None)
    root = tmp_path / "multirun" / "sweep"
    # Workers keep writing after the launcher is gone: a file, not a pipe nobody reads.
    with (tmp_path / "sweep.out").open("w") as out:
        proc = subprocess.Popen(
            train_argv(*args, "episodes=100000", multirun=True),
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def both_training() -> bool:
        found = list(root.glob("*/metrics.csv"))
        return len(found) == 2 and all(len(p.read_text().splitlines()) > 3 for p in found)

    kill_when(proc, both_training, timeout=180)

    killed_at = time.monotonic()
    left = _processes_left_by(proc.pid, tmp_path)
    while left and time.monotonic() - killed_at < 60:
        time.sleep(0.2)
        left = _processes_left_by(proc.pid, tmp_path)
    for pid in left:  # never leave them training after the test
        os.kill(pid, signal.SIGKILL)
    output = (tmp_path / "sweep.out").read_text()
    assert not left, f"processes still running 60 s after the launcher was killed: {left}"

    lasts = []
    for job in ("seed=0", "seed=1"):
        job_dir = _job_dir(tmp_path, job)
        assert not lock_held(job_dir), f"{job}: run lock still held"
        last = _last_episode(job_dir)
        lasts.append(last)
        assert 3 < last < 100000
        assert (job_dir / "models" / f"model_ep{last}.json").exists()
        log = (job_dir / "logs" / "finsense.log").read_text()
        assert f"launcher (pid {proc.pid}) is gone" in log
        assert f"Stopped by SIGTERM after episode {last}; checkpoint saved" in log
    assert output.count(f"launcher (pid {proc.pid}) is gone") == 2

    target = max(lasts) + 2
    rerun = _sweep(tmp_path, *args, f"episodes={target}")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert (rerun.stdout + rerun.stderr).count("Auto-resuming from episode") == 2
    for job in ("seed=0", "seed=1"):
        assert _last_episode(_job_dir(tmp_path, job)) == target
        assert (_job_dir(tmp_path, job) / "models" / f"model_ep{target}.json").exists()


def _study_states(db: Path) -> list[str]:
    """Every trial's state in the search's SQLite study (read with sqlite3: no lock, no schema
    check, safe while the search writes)."""
    import sqlite3

    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
            return [row[0] for row in conn.execute("SELECT state FROM trials")]
    except sqlite3.OperationalError:
        return []  # tables not created yet


def _files_stamp(job_dir: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(job_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted((job_dir / "models").iterdir())
    }


def test_killed_optuna_search_resumes_its_study(tmp_path: Path) -> None:
    import optuna

    args = ["hydra/sweeper=search", "hydra.sweeper.n_trials=6", "episodes=20", "name=search"]
    root = tmp_path / "multirun" / "search"
    db = root / "optuna.db"
    proc = subprocess.Popen(
        train_argv(*args, multirun=True),
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def fourth_trial_training() -> bool:
        if _study_states(db).count("COMPLETE") < 3:
            return False
        # Killed after its first checkpoint, so that the re-run can resume it.
        return len({p.parent.parent for p in root.glob("*/models/model_ep*.json")}) >= 4

    kill_when(proc, fourth_trial_training, timeout=240)
    states = _study_states(db)
    assert states.count("COMPLETE") == 3 and states.count("RUNNING") == 1, states
    finished = {
        p.name: _files_stamp(p) for p in root.iterdir() if (p / "models/model_ep20.json").exists()
    }
    assert len(finished) == 3
    jobs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    (killed,) = [p for p in jobs if p.name not in finished]

    rerun = _sweep(tmp_path, *args)
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out
    assert "Resuming study 'finsense': 3 of 6 trials finished, 3 to run" in out
    # The killed trial ran again with its parameters: in its own run directory, resumed.
    assert "Resuming training from episode" in (killed / "logs" / "finsense.log").read_text()
    study = optuna.load_study(study_name="finsense", storage=f"sqlite:///{db}")
    by_state = [t.state for t in study.trials]
    assert by_state.count(optuna.trial.TrialState.COMPLETE) == 6
    assert by_state.count(optuna.trial.TrialState.FAIL) == 1  # the killed one, then re-run
    assert by_state.count(optuna.trial.TrialState.RUNNING) == 0
    jobs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(jobs) == 6  # 3 finished + the resumed one + 2 new: nothing drawn twice
    for job in jobs:
        assert (job / "models" / "model_ep20.json").exists()
    for name, stamp in finished.items():
        assert _files_stamp(root / name) == stamp, f"{name} was trained again"
    assert (root / "optimization_results.yaml").exists()

    again = _sweep(tmp_path, *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "6 of 6 trials finished, 0 to run" in again.stdout + again.stderr
    assert len(optuna.load_study(study_name="finsense", storage=f"sqlite:///{db}").trials) == 7
