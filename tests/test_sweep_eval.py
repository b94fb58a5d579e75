"""Sweep evaluation: jobs grouped by configuration over seeds, the best one's deflated Sharpe ratio
checked against the paper's formulas by hand, the command's table, file and errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest
import yaml

from finsense import evaluate, sweep_eval
from finsense.evaluation import TABLE_METRICS, read_equity
from finsense.metrics import TRADING_DAYS_PER_YEAR, sharpe_ratio, simple_returns
from finsense.sweep_eval import ConfigResult, JobResult, aggregate, deflate, median_seed
from finsense.sweeps import FAILED_MARKER
from tests.test_evaluation import WINDOW, known_prices, make_run_dir

GAMMA = 0.5772156649015329  # Euler-Mascheroni


def job(name: str, seed: int, config: str, returns: list[float], **agent: float) -> JobResult:
    metrics = {m: 0.0 for m in TABLE_METRICS} | agent
    hold = {m: 1.0 for m in TABLE_METRICS}
    overrides = tuple(p for p in name.split(",") if not p.startswith("seed="))
    return JobResult(name, seed, config, metrics, hold, np.asarray(returns), overrides)


# -- aggregation -----------------------------------------------------------------------------------
def test_jobs_differing_only_in_seed_are_one_configuration_with_mean_and_std() -> None:
    jobs = [
        job("lr=1,seed=1", 1, "A", [0.01, -0.01, 0.02], total_return=0.10),
        job("lr=1,seed=0", 0, "A", [0.01, 0.00, 0.02], total_return=0.30),
        job("lr=1,seed=2", 2, "A", [0.03, -0.02, 0.01], total_return=0.20),
        job("lr=2,seed=0", 0, "B", [0.01, -0.03, 0.00], total_return=-0.5),
    ]
    configs = aggregate(jobs)
    assert [c.label for c in configs] == ["lr=1", "lr=2"]  # ranked by mean daily Sharpe
    first, second = configs
    assert [j.seed for j in first.jobs] == [0, 1, 2]
    assert first.agent["total_return"]["mean"] == pytest.approx(0.2)
    assert first.agent["total_return"]["std"] == pytest.approx(0.1)  # ddof=1 of .1, .3, .2
    assert first.buy_and_hold["sharpe_ratio"] == {"mean": 1.0, "std": 0.0}
    sharpes = [float(np.mean(j.returns) / np.std(j.returns, ddof=1)) for j in first.jobs]
    assert first.sharpe_per_period["mean"] == pytest.approx(np.mean(sharpes))
    assert first.sharpe_per_period["std"] == pytest.approx(np.std(sharpes, ddof=1))
    # One seed: a mean and no spread.
    assert second.agent["total_return"] == {"mean": -0.5, "std": None}


def test_configurations_are_named_by_their_recorded_overrides_not_their_hashed_dir(
    tmp_path: Path,
) -> None:
    job_dir = tmp_path / "agent.learning_rate=0.001,env.episode~343219c70a7c"
    (job_dir / ".hydra").mkdir(parents=True)
    recorded = ["progress=log", "seed=1", "agent.learning_rate=0.001", "episodes=2"]
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(recorded))
    found = sweep_eval.job_overrides(job_dir, job_dir.name)
    # seed and the keys that never change an experiment (episodes, progress) are dropped.
    assert found == ("agent.learning_rate=0.001",)
    other = ("agent.learning_rate=0.01",)
    assert sweep_eval.configuration_labels([found, other]) == [
        "agent.learning_rate=0.001",
        "agent.learning_rate=0.01",
    ]
    assert sweep_eval.configuration_labels([found]) == [",".join(found)]
    assert sweep_eval.configuration_labels([()]) == ["default"]
    # Unrecorded: the directory name's parts, seed dropped.
    assert sweep_eval.job_overrides(tmp_path / "none", "b=2,seed=3,a=1") == ("a=1", "b=2")


def test_the_median_seed_is_the_lower_middle_one() -> None:
    returns = {
        0: [0.01, 0.02, 0.0],
        1: [0.03, -0.01, 0.0],
        2: [0.01, 0.01, 0.011],
        3: [-0.1, 0.1, 0],
    }
    jobs = tuple(job(f"seed={s}", s, "A", r) for s, r in returns.items())
    config = aggregate(list(jobs))[0]
    by_sharpe = sorted(jobs, key=lambda j: sharpe_ratio(j.returns, periods_per_year=1))
    assert median_seed(config).job == by_sharpe[1].job  # of four: the second lowest
    assert (
        median_seed(ConfigResult("A", jobs[:3], {}, {}, {})).job
        == sorted(jobs[:3], key=lambda j: sharpe_ratio(j.returns, periods_per_year=1))[1].job
    )


# -- the deflated Sharpe ratio, by hand -----------------------------------------------------------
def _by_hand_psr(returns: np.ndarray, benchmark: float) -> float:
    """Bailey & López de Prado (2012), eq. for the PSR, written out from the paper."""
    n = returns.size
    sr = returns.mean() / returns.std(ddof=1)
    d = returns - returns.mean()
    skew = (d**3).mean() / (d**2).mean() ** 1.5
    kurt = (d**4).mean() / (d**2).mean() ** 2
    z = (sr - benchmark) * math.sqrt(n - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
    return NormalDist().cdf(z)


def _by_hand_sr0(n: int, variance: float) -> float:
    """Bailey & López de Prado (2014), the expected maximum Sharpe ratio of N skill-less trials."""
    inv = NormalDist().inv_cdf
    return math.sqrt(variance) * ((1 - GAMMA) * inv(1 - 1 / n) + GAMMA * inv(1 - 1 / (n * math.e)))


def _pattern(mean: float, n: int = 250) -> list[float]:
    """Daily returns with a known mean and a fixed, skewed spread around it."""
    base = np.tile([0.012, -0.008, 0.003, -0.015, 0.02], n // 5)
    return list(base - base.mean() + mean)


def test_the_best_configurations_deflated_sharpe_ratio_matches_the_formulas_by_hand() -> None:
    jobs = [
        job("a,seed=0", 0, "A", _pattern(0.0020)),
        job("a,seed=1", 1, "A", _pattern(0.0030)),
        job("a,seed=2", 2, "A", _pattern(0.0025)),
        job("b,seed=0", 0, "B", _pattern(0.0005)),
        job("c,seed=0", 0, "C", _pattern(-0.0010)),
        job("d,seed=0", 0, "D", _pattern(0.0015)),
    ]
    configs = aggregate(jobs)
    found = deflate(configs)
    assert found is not None
    # Trials: each configuration's mean daily Sharpe ratio over its seeds.
    std = float(np.std(_pattern(0.0), ddof=1))
    trials = [np.mean([0.0020, 0.0030, 0.0025]) / std, 0.0005 / std, -0.0010 / std, 0.0015 / std]
    variance = float(np.var(trials, ddof=1))
    assert found.best == "a" and found.n_trials == 4
    assert found.trial_variance == pytest.approx(variance)
    assert found.benchmark == pytest.approx(_by_hand_sr0(4, variance))
    # The returns tested: the median seed's (seed 2, mean 0.0025), not the seeds pooled.
    assert found.job == "a,seed=2" and found.n_returns == 250
    assert found.sharpe == pytest.approx(0.0025 / std)
    expected = _by_hand_psr(np.asarray(_pattern(0.0025)), _by_hand_sr0(4, variance))
    assert found.dsr == pytest.approx(expected, rel=1e-9)
    # Deflation costs: the same returns alone (no selection) are more convincing.
    assert found.dsr < _by_hand_psr(np.asarray(_pattern(0.0025)), 0.0)


def test_one_configuration_is_no_selection_its_dsr_is_the_psr() -> None:
    found = deflate(aggregate([job("seed=0", 0, "A", _pattern(0.002))]))
    assert found is not None
    assert found.n_trials == 1 and found.benchmark == 0.0 and found.trial_variance is None
    assert found.dsr == pytest.approx(_by_hand_psr(np.asarray(_pattern(0.002)), 0.0), rel=1e-9)
    lines = sweep_eval.format_deflation(found, 1)
    assert "given 1 configuration tried" in lines[0]
    assert any("probabilistic one (N=1)" in line for line in lines)


# -- the command ----------------------------------------------------------------------------------
def make_sweep_job(
    job_dir: Path, env_config: dict[str, Any], seed: int, gamma: float, network_seed: int
) -> None:
    """A trained-looking sweep job whose config records ``seed`` and gamma, with one real
    checkpoint: an untrained network initialised with ``network_seed`` (which sets how it trades
    the test split)."""
    make_run_dir(job_dir, env_config, episodes=(network_seed,))
    path = job_dir / ".hydra" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["seed"] = seed
    config["agent"]["gamma"] = gamma
    path.write_text(yaml.safe_dump(config))


#: Network seeds whose untrained policies trade the test split differently (all of them lose:
#: its prices fall), by (gamma, seed).
NETWORK_SEEDS = {(0.9, 0): 8, (0.9, 1): 12, (0.99, 0): 1, (0.99, 1): 3}


@pytest.fixture
def sweep(tmp_path: Path, env_config: dict[str, Any]) -> Path:
    sweep = tmp_path / "multirun" / "sweep"
    for (gamma, seed), network_seed in NETWORK_SEEDS.items():
        job_dir = sweep / f"agent.gamma={gamma},seed={seed}"
        make_sweep_job(job_dir, env_config, seed, gamma, network_seed)
    return sweep


@pytest.fixture
def env_config(tmp_path: Path) -> dict[str, Any]:
    """A run's env section on :func:`tests.test_evaluation.known_prices` (20 test rows)."""
    path = tmp_path / "prices.csv"
    dates = np.datetime64("2022-01-03") + np.arange(len(known_prices()))
    lines = [f"{d},{p:.2f}" for d, p in zip(dates, known_prices(), strict=True)]
    path.write_text("Date,Close\n" + "\n".join(lines) + "\n")
    return {
        "data": {"source": "file", "path": str(path), "test_fraction": 0.4},
        "window_size": WINDOW,
        "episode_length": 5,
        "fee": 0.001,
    }


def test_cli_evaluates_every_job_and_prints_a_row_per_configuration(
    sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A job that failed is listed, not fatal.
    (sweep / "agent.gamma=0.5,seed=0").mkdir()
    (sweep / "agent.gamma=0.5,seed=0" / FAILED_MARKER).write_text('{"error": "boom"}')
    assert evaluate.main([str(sweep), "seeds=2"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if line.startswith("CONFIGURATION"))
    rows = [line.split()[:2] for line in out[header + 1 : header + 3]]
    assert sorted(rows) == [["agent.gamma=0.9", "2"], ["agent.gamma=0.99", "2"]]
    assert "±" in out[header + 1]
    best = next(line for line in out if line.startswith("Best configuration: "))
    assert "given 2 configurations tried (P[true Sharpe > 0] after selection)" in best
    assert "skipped agent.gamma=0.5,seed=0: its last run failed: boom" in out
    for job_dir in sweep.glob("agent.gamma=0.9*,seed=*"):
        assert (job_dir / "eval" / "test_metrics.json").is_file()

    data = json.loads((sweep / "eval" / "sweep_metrics.json").read_text())
    assert [c["n"] for c in data["configurations"]] == [2, 2]
    assert data["skipped"] == [
        {"job": "agent.gamma=0.5,seed=0", "reason": "its last run failed: boom"}
    ]
    dsr = data["deflated_sharpe"]
    assert dsr["n_trials"] == 2 and dsr["best"] == data["configurations"][0]["label"]
    # The trials: each configuration's mean daily Sharpe ratio, from the jobs' own equity.csv.
    daily = {}
    for job_dir in sweep.glob("agent.gamma=*,seed=*"):
        if (job_dir / "eval").is_dir():
            equity = read_equity(job_dir / "eval" / "equity.csv").agent_equity
            daily[job_dir.name] = simple_returns(equity)
    sharpes = {name: r.mean() / r.std(ddof=1) for name, r in daily.items()}
    trials = [np.mean([sharpes[f"agent.gamma={g},seed={s}"] for s in (0, 1)]) for g in (0.9, 0.99)]
    assert dsr["best"] == "agent.gamma=0.9"  # -1.18 and -2.73 annualised beat -3.90 and -4.09
    lower = min((0, 1), key=lambda s: sharpes[f"agent.gamma=0.9,seed={s}"])
    assert dsr["job"] == f"agent.gamma=0.9,seed={lower}"  # the lower of two middle seeds
    benchmark = _by_hand_sr0(2, float(np.var(trials, ddof=1)))
    assert dsr["benchmark_per_period"] == pytest.approx(benchmark)
    assert dsr["dsr"] == pytest.approx(_by_hand_psr(daily[dsr["job"]], benchmark), rel=1e-9)
    # Per-period units throughout: the tested job's daily Sharpe ratio, annualised, is the one
    # its own test_metrics.json reports.
    tested = json.loads((sweep / dsr["job"] / "eval" / "test_metrics.json").read_text())
    assert dsr["sharpe_per_period"] * math.sqrt(TRADING_DAYS_PER_YEAR) == pytest.approx(
        tested["agent"]["sharpe_ratio"]
    )


def test_a_sweep_without_an_evaluable_job_is_one_line_and_exit_2(
    tmp_path: Path, env_config: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "multirun" / "sweep"
    for seed in (0, 1):
        job_dir = sweep / f"seed={seed}"
        (job_dir / ".hydra").mkdir(parents=True)
        (job_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"env": env_config}))
    assert evaluate.main([str(sweep)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if not line.startswith("[")]
    assert len(errors) == 1
    assert errors[0].startswith(
        f"finsense.evaluate: {sweep}: none of its 2 jobs could be evaluated"
    )
    assert "no checkpoints" in errors[0]
    assert not (sweep / "eval").exists()


def test_a_sweep_on_a_non_trading_env_says_it_needs_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_dir = tmp_path / "multirun" / "sweep" / "seed=0"
    (job_dir / ".hydra").mkdir(parents=True)
    env = {"_target_": "finsense.envs.GymEnv", "id": "CartPole-v1"}
    (job_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"env": env}))
    assert evaluate.main([str(job_dir.parent)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "not a trading env (no test split); sweep evaluation needs one" in err
