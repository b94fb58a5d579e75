"""``python -m finsense.train`` end to end: real processes, real signals, real Hydra."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.e2e.helpers import (
    kill_at_random_moments,
    load_checkpoint_tensors,
    run_dir_files,
    subprocess_env,
    train_argv,
    wait_for,
)
from tests.helpers import assert_same_state, run_into_closed_pipe

pytestmark = pytest.mark.slow


def _run_dir(tmp_path: Path, name: str | None = None) -> Path:
    """The run directory of a TINY run (its overrides are part of the name), by run name."""
    prefix = f"{name}," if name else "agent."
    found = [p for p in (tmp_path / "outputs").glob("*") if p.name.startswith(prefix)]
    assert len(found) == 1, found
    return found[0]


def test_quick_test_scenario_second_run_is_already_complete_and_touches_nothing(
    tmp_path: Path, train_cmd
) -> None:
    first = train_cmd("--episodes", "5", "--auto-resume")
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = _run_dir(tmp_path)
    models = run_dir / "models"
    assert (models / "model_ep4.pt").exists() and (models / "model_ep5.json").exists()
    assert "Training complete" in first.stdout
    before = run_dir_files(run_dir)
    mtimes = {p: p.stat().st_mtime_ns for p in models.iterdir()}

    second = train_cmd("--episodes", "5", "--auto-resume")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Auto-resuming from episode 5: models/model_ep5.pt" in second.stdout
    assert "Training already complete!" in second.stdout
    assert run_dir_files(run_dir) == before
    assert {p: p.stat().st_mtime_ns for p in models.iterdir()} == mtimes


def test_rotation_keeps_max_keep_newest_and_best(tmp_path: Path, train_cmd) -> None:
    proc = train_cmd("episodes=16", "checkpoints.max_keep=3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    models = _run_dir(tmp_path) / "models"
    episodic = sorted(int(p.stem[len("model_ep") :]) for p in models.glob("model_ep*.json"))
    assert episodic == [12, 14, 16]
    best = (models / "best_model.json").read_text()
    assert '"is_best": true' in best
    assert (models / "best_model.pt").exists()
    lines = (_run_dir(tmp_path) / "metrics.csv").read_text().splitlines()
    assert len(lines) == 17 and lines[0].startswith("episode,")
    # best_model is the best validation score of the whole run, on the save grid (every 2
    # episodes) or not (episodes 5 and 15, scored by eval_every=5).
    rows = [r for r in csv.DictReader(lines) if not math.isnan(float(r["val_total_profit"]))]
    assert [int(r["episode"]) for r in rows] == [2, 4, 5, 6, 8, 10, 12, 14, 15, 16]
    top = max(rows, key=lambda r: float(r["val_total_profit"]))
    best_meta = json.loads(best)
    assert best_meta["metric_name"] == "val_total_profit"
    assert best_meta["episode"] == int(top["episode"])
    assert best_meta["metric_value"] == pytest.approx(float(top["val_total_profit"]), rel=1e-9)
    assert (_run_dir(tmp_path) / "logs" / "finsense.log").read_text().count("Episode ") == 16


def test_extending_episodes_equals_running_longer_from_the_start(tmp_path: Path, train_cmd) -> None:
    assert train_cmd("episodes=6", "name=ext").returncode == 0
    extended = train_cmd("episodes=10", "name=ext")
    assert extended.returncode == 0, extended.stdout + extended.stderr
    assert "Resuming training from episode 7/10" in extended.stdout
    straight = train_cmd("episodes=10", "name=straight")
    assert straight.returncode == 0
    assert_same_state(
        load_checkpoint_tensors(_run_dir(tmp_path, "ext") / "models", 10),
        load_checkpoint_tensors(_run_dir(tmp_path, "straight") / "models", 10),
    )


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path: Path, train_cmd) -> None:
    episodes = "episodes=150"
    reference = train_cmd(episodes, "name=reference")
    assert reference.returncode == 0, reference.stdout + reference.stderr

    run_dir = tmp_path / "killed"
    argv = train_argv(episodes, f"hydra.run.dir={run_dir}")
    kills = kill_at_random_moments(argv, tmp_path, run_dir, attempts=5, seed=1234, max_delay=0.4)
    assert kills >= 3
    final = train_cmd(episodes, f"hydra.run.dir={run_dir}")
    assert final.returncode == 0, final.stdout + final.stderr
    assert_same_state(
        load_checkpoint_tensors(_run_dir(tmp_path, "reference") / "models", 150),
        load_checkpoint_tensors(run_dir / "models", 150),
    )
    episodes_logged = [
        int(r.split(",")[0]) for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]
    ]
    assert episodes_logged == list(range(1, 151))


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_episode_saves_off_grid_and_resumes(
    tmp_path: Path, train_cmd, start_train, sig: int, code: int
) -> None:
    run_dir = tmp_path / "run"
    at = f"hydra.run.dir={run_dir}"
    # Far more episodes than it can train before the signal however loaded the machine.
    proc = start_train("episodes=100000", "checkpoints.save_frequency=100000", at)
    wait_for(
        lambda: (
            (run_dir / "metrics.csv").exists()
            and len((run_dir / "metrics.csv").read_text().splitlines()) > 3
        )
    )
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, out
    assert "checkpoint saved: models/model_ep" in out and "Run the same command to resume." in out
    saved = sorted(run_dir.glob("models/model_ep*.json"))
    assert len(saved) == 1
    episode = int(saved[0].stem[len("model_ep") :])
    assert 0 < episode < 100000
    assert f"Interrupted at episode {episode};" in out

    resumed = train_cmd(f"episodes={episode + 2}", "checkpoints.save_frequency=100", at)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Auto-resuming from episode {episode}: models/model_ep{episode}.pt" in resumed.stdout
    assert f"Resuming training from episode {episode + 1}/{episode + 2}" in resumed.stdout


def test_proper_test_scenario_ctrl_c_after_episode_ten_then_resume_matches_uninterrupted(
    tmp_path: Path, train_cmd, start_train
) -> None:
    run_dir = tmp_path / "proper"
    at = f"hydra.run.dir={run_dir}"
    proc = start_train("--episodes", "20", "--auto-resume", at, "checkpoints.save_frequency=10")
    wait_for(lambda: (run_dir / "models" / "model_ep10.json").exists())
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    resumed = train_cmd("--episodes", "20", "--auto-resume", at, "checkpoints.save_frequency=10")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Auto-resuming from episode" in resumed.stdout
    straight = train_cmd("--episodes", "20", "name=straight", "checkpoints.save_frequency=10")
    assert straight.returncode == 0
    assert_same_state(
        load_checkpoint_tensors(run_dir / "models", 20),
        load_checkpoint_tensors(_run_dir(tmp_path, "straight") / "models", 20),
    )


def test_second_writer_on_the_same_run_is_refused(tmp_path: Path, train_cmd, start_train) -> None:
    run_dir = tmp_path / "run"
    first = start_train("episodes=400", f"hydra.run.dir={run_dir}")
    wait_for(lambda: (run_dir / "metrics.csv").exists())
    second = train_cmd("episodes=400", f"hydra.run.dir={run_dir}")
    assert second.returncode == 3
    combined = second.stdout + second.stderr
    assert "in use" in combined and "Traceback" not in combined
    first.kill()
    first.wait()


def test_resume_never_archives_the_old_history(tmp_path: Path, train_cmd) -> None:
    assert train_cmd("episodes=4").returncode == 0
    fresh = train_cmd("episodes=2", "resume=never")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    models = _run_dir(tmp_path) / "models"
    archives = list((models / "archive").iterdir())
    assert len(archives) == 1
    assert (archives[0] / "model_ep4.pt").exists() and (archives[0] / "metrics.csv").exists()
    assert sorted(p.name for p in models.glob("model_ep*.json")) == ["model_ep2.json"]


def test_structural_drift_is_refused_and_other_drift_is_logged(tmp_path: Path, train_cmd) -> None:
    fixed = f"hydra.run.dir={tmp_path / 'fixed'}"
    assert train_cmd("episodes=2", fixed).returncode == 0
    refused = train_cmd("episodes=4", fixed, "agent.network.hidden_sizes=[32]")
    assert refused.returncode == 2
    combined = refused.stdout + refused.stderr
    assert "agent.network.hidden_sizes: [64, 64] -> [32]" in combined and "resume=never" in combined
    assert "Traceback" not in combined
    changed = train_cmd("episodes=4", fixed, "agent.learning_rate=0.0005")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert "changed since the checkpoint: agent.learning_rate: 0.001 -> 0.0005" in changed.stderr


def test_resume_from_a_named_checkpoint_of_another_run_archives_this_runs_history(
    tmp_path: Path, train_cmd
) -> None:
    assert train_cmd("episodes=6").returncode == 0
    assert train_cmd("episodes=2", "name=branch").returncode == 0
    path = _run_dir(tmp_path) / "models" / "model_ep4.pt"
    again = train_cmd("episodes=6", "--resume", str(path), "name=branch")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Resuming from episode 4:" in again.stdout
    assert "Resuming training from episode 5/6" in again.stdout
    assert "this run's previous history moved to models/archive/" in again.stderr
    branch = _run_dir(tmp_path, "branch")
    (archive,) = (branch / "models" / "archive").iterdir()
    assert (archive / "model_ep2.pt").exists() and (archive / "metrics.csv").exists()
    assert sorted(p.name for p in (branch / "models").glob("model_ep*.json")) == ["model_ep6.json"]
    # The run goes on from the other run's episode 4 exactly: same weights at episode 6.
    assert_same_state(
        load_checkpoint_tensors(branch / "models", 6),
        load_checkpoint_tensors(_run_dir(tmp_path) / "models", 6),
    )


def test_going_back_to_an_earlier_checkpoint_archives_the_abandoned_future(
    tmp_path: Path, train_cmd
) -> None:
    assert train_cmd("episodes=10").returncode == 0
    run_dir = _run_dir(tmp_path)
    models = run_dir / "models"
    ten = load_checkpoint_tensors(models, 10)
    # The guide's form: a path relative to the run directory.
    back = train_cmd("episodes=8", "--resume", "models/model_ep4.pt")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "Resuming from episode 4: models/model_ep4.pt" in back.stdout
    assert "checkpoints after episode 4 moved to models/archive/" in back.stderr
    (archive,) = (models / "archive").iterdir()
    assert {p.name for p in archive.glob("model_ep*.json")} == {
        "model_ep6.json",
        "model_ep8.json",
        "model_ep10.json",
    }
    assert len((archive / "metrics.csv").read_text().splitlines()) == 11  # the whole old history
    assert sorted(int(p.stem[8:]) for p in models.glob("model_ep*.json")) == [2, 4, 6, 8]
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 9
    # resume=auto now follows the new line: episode 8, then on to 10, equal to the first run.
    on = train_cmd("episodes=10")
    assert "Auto-resuming from episode 8: models/model_ep8.pt" in on.stdout
    assert_same_state(load_checkpoint_tensors(models, 10), ten)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["episodes=-5"], "episodes must be >= 1"),
        (["checkpoints.max_keep=0"], "checkpoints.max_keep must be >= 1"),
        (["checkpoints.metric_name=profit_factor"], "checkpoints.metric_name"),
        (["agent.learning_rate=-0.1"], "agent.learning_rate must be > 0"),
        (["env=csv", "env.data.path=missing.csv"], "missing.csv"),
        (["env=csv"], "env.data.path is required"),
        (["resume=nope/model_ep7.pt"], "nope/model_ep7.pt"),
        (["device=cuda"], "cuda"),
    ],
)
def test_bad_input_is_one_clear_line_and_nonzero_exit(
    tmp_path: Path, train_cmd, args: list[str], expected: str
) -> None:
    if "device=cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    proc = train_cmd(*args)
    combined = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert expected in combined
    assert "Traceback" not in combined
    errors = [line for line in combined.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, combined
    # A refused command leaves no empty run directory behind.
    assert list((tmp_path / "outputs").iterdir()) == []


def test_a_refused_command_keeps_an_existing_run_directory(tmp_path: Path, train_cmd) -> None:
    assert train_cmd("episodes=2").returncode == 0
    before = run_dir_files(_run_dir(tmp_path))
    refused = train_cmd("episodes=4", "checkpoints.max_keep=0")
    assert refused.returncode == 2
    assert run_dir_files(_run_dir(tmp_path)) == before


def test_hydra_type_error_is_reported_without_traceback(train_cmd) -> None:
    proc = train_cmd("episodes=many")
    assert proc.returncode != 0
    combined = proc.stdout + proc.stderr
    assert "episodes" in combined and "Traceback" not in combined


def test_unsafe_checkpoint_named_by_the_user_is_refused_and_never_executed(
    tmp_path: Path, train_cmd
) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"

    class Payload:
        def __reduce__(self):  # noqa: D105
            return (os.system, (f"touch {marker}",))

    torch.save({"policy": Payload()}, evil)
    # A JSON beside it that vouches for exactly these bytes: only the safe loader stands between
    # the pickle and its execution.
    sha = hashlib.sha256(evil.read_bytes()).hexdigest()
    (tmp_path / "evil.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "episode": 3,
                "metrics": {"total_profit": 1.0},
                "sha256": {"model": sha, "training": None},
                "size_bytes": {"model": evil.stat().st_size, "training": None},
            }
        )
    )
    proc = train_cmd(f"resume={evil}")
    combined = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "not a FinSense checkpoint or unsafe to load" in combined
    assert not marker.exists()


def test_save_every_minutes_saves_off_the_frequency_grid(tmp_path: Path, train_cmd) -> None:
    run_dir = tmp_path / "run"
    proc = train_cmd(
        "episodes=3",
        "checkpoints.save_frequency=100",
        "checkpoints.save_every_minutes=0.00001",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (run_dir / "models").glob("model_ep*.json")) == [
        "model_ep1.json",
        "model_ep2.json",
        "model_ep3.json",
    ]


def test_second_ctrl_c_exits_at_once_and_leaves_a_valid_checkpoint(
    tmp_path: Path, train_cmd, start_train
) -> None:
    run_dir = tmp_path / "run"
    at = f"hydra.run.dir={run_dir}"
    long_episodes = ["env.episode_length=1500", "env.data.n_steps=3000", "agent.learning_starts=64"]
    proc = start_train(
        "episodes=50", "checkpoints.save_frequency=1", *long_episodes, at, tiny=False
    )
    wait_for(lambda: len(list((run_dir / "models").glob("model_ep*.json"))) >= 1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert "Second interrupt" in out
    resumed = train_cmd("episodes=1", *long_episodes, at, tiny=False)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Training already complete!" in resumed.stdout


def test_the_best_model_is_chosen_on_the_validation_split_and_the_test_split_stays_out(
    tmp_path: Path, train_cmd
) -> None:
    run_dir = tmp_path / "run"
    at = f"hydra.run.dir={run_dir}"
    proc = train_cmd("episodes=6", "eval_every=3", "logger=tensorboard", at)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test split" not in proc.stdout + proc.stderr
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert "val_total_profit" in rows[0] and not any(k.startswith("test_") for k in rows[0])
    # Scored every 3 episodes and at every checkpoint (save_frequency=2); NaN in between.
    scored = [int(r["episode"]) for r in rows if not math.isnan(float(r["val_total_profit"]))]
    assert scored == [2, 3, 4, 6]
    best = json.loads((run_dir / "models" / "best_model.json").read_text())
    assert best["metric_name"] == "val_total_profit"
    at_checkpoints = {int(r["episode"]): float(r["val_total_profit"]) for r in rows}
    assert best["metric_value"] == max(at_checkpoints[e] for e in (2, 4, 6))
    assert best["metrics"]["val_total_profit"] == best["metric_value"]
    assert "val_total_profit=" in proc.stdout + proc.stderr  # the log line of a scored episode
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val_total_profit")] == [2, 3, 4, 6]


def test_choosing_on_a_test_metric_warns_and_ranks_every_checkpoint(
    tmp_path: Path, train_cmd
) -> None:
    run_dir = tmp_path / "run"
    at = f"hydra.run.dir={run_dir}"
    chosen = ("eval_every=0", "checkpoints.metric_name=test_sharpe_ratio", "logger=tensorboard")
    proc = train_cmd("episodes=4", *chosen, at)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "chooses the best model on the test split: the test split is then no longer held "
        "out" in proc.stdout + proc.stderr
    )
    header, *rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert "test_sharpe_ratio" in header.split(",") and len(rows) == 4
    assert "val_total_profit" not in header.split(",")  # eval_every=0: validation not asked for
    best = (run_dir / "models" / "best_model.json").read_text()
    assert '"metric_name": "test_sharpe_ratio"' in best
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    resumed = train_cmd("episodes=6", *chosen, at)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("total_profit")] == [1, 2, 3, 4, 5, 6]


def test_a_validation_split_too_short_is_refused_before_the_run_directory_is_made(
    tmp_path: Path, train_cmd
) -> None:
    run_dir = tmp_path / "run"
    proc = train_cmd("env.data.val_fraction=0.0025", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "too few rows for the val split" in errors[0], proc.stderr
    assert not run_dir.exists()


def test_training_goes_on_quietly_when_the_console_reader_goes_away(tmp_path: Path) -> None:
    """``python -m finsense.train | head -1``: the run finishes, no "Logging error" flood."""
    done = run_into_closed_pipe(
        train_argv("episodes=4"), cwd=tmp_path, env=subprocess_env(), timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    run_dir = _run_dir(tmp_path)
    assert (run_dir / "models" / "model_ep4.json").exists()
    assert "Episode 4/4" in (run_dir / "logs" / "finsense.log").read_text()


def test_guide_config_file_verbose_and_version_flags(tmp_path: Path, train_cmd) -> None:
    (tmp_path / "config.yaml").write_text(
        "checkpoints:\n  save_frequency: 1\n  max_keep: 2\nagent:\n  learning_rate: 0.0005\n"
    )
    proc = train_cmd("--config", "config.yaml", "--episodes", "3", "--verbose")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = (tmp_path / "outputs").iterdir()
    assert "agent.learning_rate=0.0005" in run_dir.name  # part of the experiment's identity
    assert "checkpoints" not in run_dir.name  # how to save is not
    models = run_dir / "models"
    assert sorted(p.name for p in models.glob("model_ep*.json")) == [
        "model_ep2.json",
        "model_ep3.json",
    ]
    assert "saved models/model_ep3.pt" in proc.stdout  # a DEBUG line: --verbose
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "checkpoints.max_keep=2" in overrides
    # Raising episodes (here on the command line) extends the same run.
    more = train_cmd("--config", "config.yaml", "--episodes", "4")
    assert "Auto-resuming from episode 3" in more.stdout
    assert len(list((tmp_path / "outputs").iterdir())) == 1

    version = train_cmd("--version")
    assert version.returncode == 0 and version.stdout.startswith("finsense 0.1.0 (torch ")


def test_errors_and_warnings_go_to_stderr_progress_to_stdout(tmp_path: Path, train_cmd) -> None:
    refused = train_cmd("checkpoints.max_keep=0")
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr.strip() == "ERROR: checkpoints.max_keep must be >= 1, got 0"

    run = f"hydra.run.dir={tmp_path / 'run'}"
    assert train_cmd("episodes=2", run).returncode == 0
    changed = train_cmd("episodes=3", run, "agent.learning_rate=0.002")
    assert changed.returncode == 0, changed.stderr
    assert "Episode 3/3" in changed.stdout and "WARNING" not in changed.stdout
    assert "WARNING: changed since the checkpoint: agent.learning_rate" in changed.stderr
    assert "Episode" not in changed.stderr
