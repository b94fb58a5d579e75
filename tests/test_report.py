"""Report figures: valid PNGs for a run and a sweep, and one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from finsense import evaluation, metrics, report
from finsense.config import EPISODE_METRIC_NAMES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ENV: dict[str, Any] = {
    "data": {"source": "synthetic", "n_steps": 400, "seed": 3, "test_fraction": 0.3},
    "window_size": 10,
    "episode_length": 50,
    "random_start": True,
    "fee": 0.001,
    "allow_short": False,
    "initial_cash": 10_000.0,
    "reward": "log_return",
}
METRIC_COLUMNS = EPISODE_METRIC_NAMES


class Momentum(torch.nn.Module):
    """Long after an up day, flat after a down day: a policy that trades often."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        last_return = obs[..., -2] * self.scale
        return torch.stack([torch.zeros_like(last_return), last_return], dim=-1)


def write_run(
    run_dir: Path,
    episodes: int = 40,
    *,
    shift: float = 0.0,
    mode: str = "max",
    extra: dict[str, Any] | None = None,
) -> Path:
    """A finished run as the trainer and checkpoint store leave it, written by hand; ``extra``
    is merged into its recorded config (``seed``, ``agent``)."""
    config = {
        "env": ENV,
        "checkpoints": {"metric_name": "total_profit", "mode": mode},
        "episodes": episodes,
        **(extra or {}),
    }
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    rng = np.random.default_rng(episodes)
    profits = np.cumsum(rng.normal(5.0, 60.0, episodes)) + shift
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["episode", *METRIC_COLUMNS, "epsilon", "steps", "seconds"])
        for episode, profit in enumerate(profits, start=1):
            epsilon = max(0.05, 1.0 - episode / (0.8 * episodes))
            writer.writerow(
                [episode, profit, profit / 1e4, 0.5, -0.1, 12, 0.5, 0.02, 1e4 + profit]
                + [epsilon, 50 * episode, 0.1]
            )
    models = run_dir / "models"
    models.mkdir()
    best = int(np.argmax(profits) if mode == "max" else np.argmin(profits)) + 1
    for episode, name in [(e, f"model_ep{e}") for e in range(30, episodes + 1, 5)] + [
        (best, "best_model")
    ]:
        value = float(profits[episode - 1])
        meta = {
            "episode": episode,
            "metric_name": "total_profit",
            "metric_value": value,
            "metrics": {"total_profit": value},
        }
        (models / f"{name}.json").write_text(json.dumps(meta))
        (models / f"{name}.pt").write_bytes(b"weights")
    result = evaluation.evaluate_policy(Momentum(), ENV, seeds_random=2)
    evaluation.write_results(result, run_dir)
    return run_dir


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > 10_000, f"{path} is only {len(data)} bytes"


def test_a_run_gets_three_valid_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = write_run(tmp_path / "run")
    assert report.main([str(run_dir)]) == 0
    for name in ("training_curve.png", "equity.png", "drawdown.png"):
        assert_png(run_dir / "report" / name)
    assert capsys.readouterr().err == ""


def test_a_sweep_gets_one_comparison_figure_and_a_ranked_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "multirun" / "2024-01-01_00-00-00"
    for job, shift in (
        ("agent.gamma=0.9", 0.0),
        ("agent.gamma=0.99", 500.0),
        ("agent.gamma=0.5", -500.0),
    ):
        write_run(sweep / job, shift=shift)
    (sweep / "multirun.yaml").write_text("{}\n")
    assert report.main([str(sweep)]) == 0
    assert_png(sweep / "report" / "sweep_comparison.png")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RANK", "JOB", "BEST", "EPISODE", "EPISODES"]
    ranked = [line.split()[1] for line in lines[1:4]]
    assert ranked == ["agent.gamma=0.99", "agent.gamma=0.9", "agent.gamma=0.5"]


def test_jobs_with_mode_min_rank_lowest_first(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    write_run(sweep / "low", shift=-500.0, mode="min")
    write_run(sweep / "high", shift=500.0, mode="min")
    jobs = report.summarize_jobs(sweep, [sweep / "high", sweep / "low"])
    assert [j.job for j in jobs] == ["low", "high"]


def _seed_sweep(sweep: Path) -> dict[tuple[float, int], float]:
    """Two gammas x three seeds (plus a lone gamma with one seed); returns each job's shift."""
    shifts = {}
    for gamma, base in ((0.9, 0.0), (0.99, 300.0), (0.5, -200.0)):
        for seed, jitter in ((0, -40.0), (1, 10.0), (2, 90.0)):
            if gamma == 0.5 and seed > 0:
                continue
            shifts[(gamma, seed)] = base + jitter
            write_run(
                sweep / f"agent.gamma={gamma},seed={seed}",
                shift=base + jitter,
                extra={"seed": seed, "agent": {"gamma": gamma}},
            )
    return shifts


def test_jobs_differing_only_in_seed_are_aggregated_and_ranked_by_mean(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    shifts = _seed_sweep(sweep)
    jobs = report.summarize_jobs(sweep, sorted(p for p in sweep.iterdir()))
    configs = report.aggregate_seeds(sweep, jobs)
    assert [c.label for c in configs] == ["agent.gamma=0.99", "agent.gamma=0.9", "agent.gamma=0.5"]
    assert [[j.seed for j in c.jobs] for c in configs] == [[0, 1, 2], [0, 1, 2], [0]]
    # Every job has the same curve moved by its shift: best and final move with it.
    base = report.summarize_jobs(sweep, [sweep / "agent.gamma=0.9,seed=0"])[0]
    base_best = base.best_value - shifts[(0.9, 0)]
    base_final = base.final_value - shifts[(0.9, 0)]
    for config, gamma in zip(configs, (0.99, 0.9), strict=False):
        moved = np.array([shifts[(gamma, seed)] for seed in (0, 1, 2)])
        assert config.best_mean == pytest.approx(base_best + moved.mean())
        assert config.best_std == pytest.approx(moved.std(ddof=1))
        assert config.final_mean == pytest.approx(base_final + moved.mean())
        assert config.final_std == pytest.approx(moved.std(ddof=1))
        for job in config.jobs:
            assert job.best_value == pytest.approx(base_best + shifts[(gamma, job.seed)])
    lone = configs[2]
    assert lone.best_std is None and lone.best_mean == pytest.approx(base_best - 240.0)


def test_a_seed_sweep_prints_the_aggregate_table_and_draws_error_bars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "multirun" / "seeds"
    _seed_sweep(sweep)
    assert report.main([str(sweep)]) == 0
    assert_png(sweep / "report" / "seed_aggregate.png")
    assert_png(sweep / "report" / "sweep_comparison.png")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RANK", "CONFIGURATION", "SEEDS", "BEST", "MEAN", "±", "STD"] + [
        "FINAL",
        "MEAN",
        "±",
        "STD",
    ]
    ranked = [line.split()[:3] for line in lines[1:] if line[:1].isdigit()]
    assert ranked == [
        ["1", "agent.gamma=0.99", "3"],
        ["2", "agent.gamma=0.9", "3"],
        ["3", "agent.gamma=0.5", "1"],
    ]
    first = lines.index(next(line for line in lines if line.startswith("1 ")))
    beneath = [line.split()[:2] for line in lines[first + 1 : first + 4]]
    assert beneath == [[f"seed={s}", f"agent.gamma=0.99,seed={s}"] for s in (0, 1, 2)]
    assert "±" in lines[first] and "total_profit=" in lines[first]
    assert lines[-1].endswith("seed_aggregate.png")


def test_drawdown_curve_bottoms_at_the_max_drawdown_metric() -> None:
    equity = np.array([100.0, 110.0, 99.0, 104.5, 120.0, 90.0, 95.0])
    curve = report.drawdown_curve(equity)
    assert curve.min() == pytest.approx(metrics.max_drawdown(metrics.simple_returns(equity)))
    assert curve.min() == pytest.approx(90.0 / 120.0 - 1.0)
    assert curve[0] == 0.0 and np.all(curve <= 0.0)


def test_trades_are_marked_at_the_close_where_they_happen() -> None:
    buys, sells = report._trades(np.array([0, 0, 1, 1, 0, 1]))
    assert buys.tolist() == [1, 4] and sells.tolist() == [3]


def test_missing_matplotlib_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert report.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "finsense.report needs matplotlib: pip install 'finsense[report]'\n"
    )


@pytest.mark.parametrize("sub", ["missing", "."])
def test_a_directory_without_runs_is_one_line_and_exit_2(
    tmp_path: Path, sub: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report.main([str(tmp_path / sub)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("finsense.report: ")


def test_a_run_is_found_by_the_train_commands_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert report.main(["seed=7", "env=googl"]) == 2
    assert capsys.readouterr().err == (
        "finsense.report: no run at outputs/env=googl,seed=7 (overrides: seed=7 env=googl); "
        "train it with: python -m finsense.train seed=7 env=googl\n"
    )
    # A directory that is there but holds no run: the lookup found it, the report says so.
    (tmp_path / "outputs" / "env=googl,seed=7").mkdir(parents=True)
    assert report.main(["env=googl", "seed=7", "--episodes", "9"]) == 2
    assert "outputs/env=googl,seed=7 is not a FinSense run directory" in capsys.readouterr().err


def test_the_usage_line_shows_the_run_as_optional(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        report.main(["--help"])
    usage = capsys.readouterr().out.splitlines()[0]
    assert usage == "usage: python -m finsense.report [RUN_DIR | OVERRIDE ...]"
    assert report.main(["a", "b"]) == 2
    assert capsys.readouterr().err == "finsense.report: one RUN_DIR at most, got a b\n"


def test_a_run_without_metrics_or_checkpoints_says_what_it_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"env": ENV}))
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("finsense.report: skipped ") for line in err)
    assert any("metrics.csv" in line for line in err) and any("checkpoint" in line for line in err)


@pytest.mark.slow
def test_report_evaluates_when_equity_is_missing(tmp_path: Path) -> None:
    from finsense.agents import DQNAgent
    from finsense.checkpoint import CheckpointManager

    run_dir = write_run(tmp_path / "run")
    for name in ("best_model", "model_ep30", "model_ep35", "model_ep40"):
        for suffix in (".json", ".pt"):
            (run_dir / "models" / f"{name}{suffix}").unlink()
    (run_dir / "eval" / "equity.csv").unlink()
    agent = DQNAgent(ENV["window_size"] + 1, 2, seed=0)
    state = agent.state_dict()
    CheckpointManager(run_dir / "models").save(
        40,
        {"policy": state["policy"]},
        {"metrics": {"total_profit": 1.0}},
        training_state=state["training"],
    )
    proc = subprocess.run(
        [sys.executable, "-m", "finsense.report", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("training_curve.png", "equity.png", "drawdown.png"):
        assert_png(run_dir / "report" / name)
    assert json.loads((run_dir / "eval" / "test_metrics.json").read_text())["episode"] == 40


@pytest.mark.slow
def test_a_real_training_run_is_evaluated_and_reported(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    tiny = [
        "episodes=6",
        "env.episode_length=40",
        "env.data.n_steps=400",
        "agent.learning_starts=64",
        "agent.batch_size=16",
        "checkpoints.save_frequency=2",
        "progress=log",
        f"hydra.run.dir={run_dir}",
    ]

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )

    trained = run("finsense.train", *tiny)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    evaluated = run("finsense.evaluate", str(run_dir), "checkpoint=latest", "seeds=3")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "(episode 6)" in evaluated.stdout and "buy & hold" in evaluated.stdout
    data = json.loads((run_dir / "eval" / "test_metrics.json").read_text())
    assert data["episode"] == 6 and data["checkpoint"] == "models/model_ep6.pt"
    reported = run("finsense.report", str(run_dir))
    assert reported.returncode == 0, reported.stderr
    for name in ("training_curve.png", "equity.png", "drawdown.png"):
        assert_png(run_dir / "report" / name)


def test_a_sweep_mixing_lengths_and_invocations_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from finsense import sweeps

    sweep = tmp_path / "multirun" / "sweep"
    write_run(sweep / "seed=0", episodes=10)
    write_run(sweep / "seed=1", episodes=40)
    assert report.main([str(sweep)]) == 0
    err = capsys.readouterr().err
    assert "note: the jobs ran different numbers of episodes (10 to 40)" in err
    assert "invocations" not in err  # no manifest: nothing known to differ

    for job, invocation in (("seed=0", "20260101T000000-1"), ("seed=1", "20260102T000000-2")):
        (sweep / job / "metrics.csv").write_text((sweep / "seed=1" / "metrics.csv").read_text())
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(sweeps.INVOCATION_ENV, invocation)  # as the sweep's process exports it
            sweeps.record(sweep, sweep / job, "complete")
    assert report.main([str(sweep)]) == 0
    err = capsys.readouterr().err
    assert "different numbers of episodes" not in err
    assert (
        "note: the jobs come from 2 sweep invocations: 20260101T000000-1, 20260102T000000-2" in err
    )
    assert report.main([str(sweep)]) == 0
    out = capsys.readouterr().out.splitlines()
    # Ranked apart, one table per invocation, oldest first.
    assert out[0] == "Sweep invocation 20260101T000000-1: 1 jobs"
    assert out[1].split()[:2] == ["RANK", "JOB"] and out[2].split()[1] == "seed=0"
    assert out[4] == "Sweep invocation 20260102T000000-2: 1 jobs"
    assert out[6].split()[1] == "seed=1"
