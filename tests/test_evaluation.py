"""Evaluation on the test split: hand-computed numbers, the files it writes, the CLI's errors."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from finsense import evaluate, evaluation, metrics
from finsense.errors import CheckpointError, FinSenseError

FEE = 0.01
CASH = 1_000.0
WINDOW = 3
#: 50 prices; test_fraction 0.4 holds out the last 20 (rows 30..49): the test episode.
N_ROWS, FIRST_TEST = 50, 30


def known_prices() -> np.ndarray:
    """A fixed path that rises, falls and rises again (so trades can win and lose)."""
    t = np.arange(N_ROWS, dtype=np.float64)
    return np.round(100.0 + 10.0 * np.sin(t / 4.0) + 0.3 * t, 2)


@pytest.fixture
def price_csv(tmp_path: Path) -> Path:
    path = tmp_path / "prices.csv"
    dates = np.datetime64("2022-01-03") + np.arange(N_ROWS)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Date", "Close"])
        writer.writerows((str(d), f"{p:.2f}") for d, p in zip(dates, known_prices(), strict=True))
    return path


@pytest.fixture
def env_config(price_csv: Path) -> dict[str, Any]:
    """A run config's ``env`` section (training values that the evaluation must override)."""
    return {
        "data": {"source": "file", "path": str(price_csv), "test_fraction": 0.4},
        "window_size": WINDOW,
        "episode_length": 5,
        "random_start": True,
        "fee": FEE,
        "allow_short": False,
        "initial_cash": CASH,
        "reward": "log_return",
    }


class ConstantQ(torch.nn.Module):
    """Q-values that always prefer ``action`` (of ``n_actions``)."""

    def __init__(self, action: int, n_actions: int = 2) -> None:
        super().__init__()
        q = torch.zeros(n_actions)
        q[action] = 1.0
        self.q = torch.nn.Parameter(q)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q.expand(*obs.shape[:-1], -1)


def hand_equity(actions: list[int], positions_of: tuple[int, ...] = (0, 1)) -> list[float]:
    """The env's accounting by hand: trade at row t's close to the target, mark at row t + 1."""
    close = known_prices()
    cash, units, position = CASH, 0.0, 0
    equity = [CASH]
    for step, action in enumerate(actions):
        t = FIRST_TEST + step
        target = positions_of[action]
        if target != position:
            if units:
                cash += units * close[t] - FEE * abs(units * close[t])
                units = 0.0
            if target:
                size = cash / (1 + FEE)
                units = target * size / close[t]
                cash -= target * size + FEE * size
            position = target
        equity.append(cash + units * close[t + 1])
    return equity


STEPS = N_ROWS - 1 - FIRST_TEST  # 19 steps over the 20 test rows


# -- numbers ---------------------------------------------------------------------------------------
def test_buy_and_hold_is_the_price_ratio_minus_the_entry_fee(env_config: dict[str, Any]) -> None:
    result = evaluation.evaluate_policy(ConstantQ(0), env_config, seeds_random=2)
    close = known_prices()
    first, last = close[FIRST_TEST], close[-1]
    expected = last / (first * (1 + FEE)) - 1
    assert result.buy_and_hold["total_return"] == pytest.approx(expected, rel=1e-12)
    assert result.buy_and_hold["total_profit"] == pytest.approx(CASH * expected, rel=1e-12)
    assert result.buy_and_hold["final_equity"] == pytest.approx(CASH * (1 + expected), rel=1e-12)
    assert result.buy_and_hold["total_trades"] == 1
    assert len(result.curve.buy_and_hold_equity) == STEPS + 1
    np.testing.assert_allclose(
        result.curve.buy_and_hold_equity[1:],
        CASH / (1 + FEE) * close[FIRST_TEST + 1 :] / first,
        rtol=1e-12,
    )


def test_always_long_agent_equals_buy_and_hold(env_config: dict[str, Any]) -> None:
    result = evaluation.evaluate_policy(ConstantQ(1), env_config, seeds_random=1)
    np.testing.assert_allclose(result.curve.agent_equity, hand_equity([1] * STEPS), rtol=1e-12)
    np.testing.assert_allclose(
        result.curve.agent_equity, result.curve.buy_and_hold_equity, rtol=1e-12
    )
    for key, value in result.buy_and_hold.items():
        assert result.agent[key] == pytest.approx(value, rel=1e-12), key
    np.testing.assert_array_equal(result.curve.positions, [0] + [1] * STEPS)


def test_always_flat_agent_keeps_its_cash(env_config: dict[str, Any]) -> None:
    result = evaluation.evaluate_policy(ConstantQ(0), env_config, seeds_random=1)
    assert result.agent["total_profit"] == 0.0
    assert result.agent["total_trades"] == 0
    assert result.agent["max_drawdown"] == 0.0
    np.testing.assert_array_equal(result.curve.agent_equity, CASH)


def test_random_policy_is_mean_and_spread_over_seeds_by_hand(env_config: dict[str, Any]) -> None:
    seeds = 4
    result = evaluation.evaluate_policy(ConstantQ(0), env_config, seeds_random=seeds)
    profits, trades = [], []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        actions = [int(rng.integers(2)) for _ in range(STEPS)]
        profits.append(hand_equity(actions)[-1] - CASH)
        trades.append(sum(a != b for a, b in zip([0, *actions], actions, strict=False)))
    assert result.random_seeds == seeds
    assert result.random["total_profit"]["mean"] == pytest.approx(np.mean(profits), rel=1e-9)
    assert result.random["total_profit"]["std"] == pytest.approx(np.std(profits, ddof=1), rel=1e-9)
    assert result.random["total_trades"]["mean"] == pytest.approx(np.mean(trades))
    assert set(result.random) == set(result.agent)


def test_shorting_agent_is_accounted_like_the_env(env_config: dict[str, Any]) -> None:
    env_config["allow_short"] = True
    result = evaluation.evaluate_policy(ConstantQ(0, n_actions=3), env_config, seeds_random=1)
    expected = hand_equity([0] * STEPS, positions_of=(-1, 0, 1))
    np.testing.assert_allclose(result.curve.agent_equity, expected, rtol=1e-12)
    np.testing.assert_array_equal(result.curve.positions, [0] + [-1] * STEPS)


def test_test_metrics_are_the_agent_metrics_prefixed(env_config: dict[str, Any]) -> None:
    net = ConstantQ(1)
    full = evaluation.evaluate_policy(net, env_config, seeds_random=1)
    prefixed = evaluation.test_metrics(net, env_config)
    assert prefixed == {f"test_{k}": pytest.approx(float(v)) for k, v in full.agent.items()}
    assert "test_sharpe_ratio" in prefixed and "test_total_profit" in prefixed


def test_evaluation_leaves_the_network_in_its_mode(env_config: dict[str, Any]) -> None:
    net = ConstantQ(1)
    net.train()
    evaluation.test_metrics(net, env_config)
    assert net.training


def test_eval_env_kwargs_cover_the_whole_test_split_from_its_start() -> None:
    kwargs = evaluation.eval_env_kwargs({"fee": 0.002, "split": "train", "episode_length": 9})
    assert kwargs == {"fee": 0.002, "split": "test", "episode_length": None, "random_start": False}


# -- run directories -------------------------------------------------------------------------------
def make_run_dir(
    run_dir: Path, env_config: dict[str, Any], episodes: tuple[int, ...] = (5, 10)
) -> Path:
    """A run directory as the trainer leaves it: Hydra's config and real checkpoints."""
    from finsense.agents import DQNAgent
    from finsense.checkpoint import CheckpointManager

    config = {
        "env": env_config,
        "agent": {"hidden_sizes": [8]},
        "checkpoints": {"metric_name": "total_profit", "mode": "max"},
        "episodes": max(episodes),
        "seed": 0,
    }
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    manager = CheckpointManager(run_dir / "models", metric_name="total_profit", mode="max")
    for episode in episodes:
        agent = DQNAgent(WINDOW + 1, 2, seed=episode)
        state = agent.state_dict()
        manager.save(
            episode,
            {"policy": state["policy"]},
            {"metrics": {"total_profit": float(episode % 7)}, "epsilon": 0.5, "config": config},
            training_state=state["training"],
        )
    return run_dir


@pytest.fixture
def run_dir(tmp_path: Path, env_config: dict[str, Any]) -> Path:
    return make_run_dir(tmp_path / "run", env_config)


def test_run_evaluation_writes_the_documented_files(run_dir: Path) -> None:
    result = evaluation.run_evaluation(run_dir, seeds_random=3)
    data = json.loads((run_dir / "eval" / "test_metrics.json").read_text())
    assert {"agent", "buy_and_hold", "random", "episode", "checkpoint"} <= set(data)
    for key in evaluation.TABLE_METRICS:
        assert key in data["agent"] and key in data["buy_and_hold"]
        assert set(data["random"][key]) == {"mean", "std"}
    assert data["episode"] == result.episode == 5  # best: metric 5 % 7 = 5 beats 10 % 7 = 3
    assert data["checkpoint"] == "models/best_model.pt"
    assert data["random_seeds"] == 3
    assert data["period"] == {"start": "2022-02-02", "end": "2022-02-21", "steps": STEPS}

    with (run_dir / "eval" / "equity.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["date", "agent_equity", "buy_and_hold_equity", "position"]
    assert len(rows) == STEPS + 1
    assert rows[0]["date"] == "2022-02-02" and float(rows[0]["agent_equity"]) == CASH
    back = evaluation.read_equity(run_dir / "eval" / "equity.csv")
    np.testing.assert_array_equal(back.agent_equity, result.curve.agent_equity)
    np.testing.assert_array_equal(back.buy_and_hold_equity, result.curve.buy_and_hold_equity)
    np.testing.assert_array_equal(back.positions, result.curve.positions)
    assert data["agent"]["total_profit"] == pytest.approx(
        metrics.total_profit(back.agent_equity), abs=1e-9
    )


def test_latest_and_a_path_select_that_checkpoint(run_dir: Path) -> None:
    assert evaluation.run_evaluation(run_dir, "latest", seeds_random=1).episode == 10
    by_path = evaluation.run_evaluation(run_dir, "model_ep5.pt", seeds_random=1)
    assert by_path.episode == 5 and by_path.checkpoint == run_dir / "models" / "model_ep5.pt"


def test_non_finite_metrics_are_written_as_null(run_dir: Path) -> None:
    result = evaluation.run_evaluation(run_dir, seeds_random=1)
    broken = evaluation.EvalResult(
        {**result.agent, "sharpe_ratio": math.nan},
        result.buy_and_hold,
        result.random,
        1,
        result.curve,
    )
    evaluation.write_results(broken, run_dir)
    text = (run_dir / "eval" / "test_metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["agent"]["sharpe_ratio"] is None


def test_relative_data_path_is_found_from_where_training_started(
    tmp_path: Path, env_config: dict[str, Any], price_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_config["data"]["path"] = price_csv.name
    run_dir = make_run_dir(tmp_path / "run", env_config, episodes=(1,))
    hydra = {"hydra": {"runtime": {"cwd": str(tmp_path)}}}
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert evaluation.run_evaluation(run_dir, seeds_random=1).episode == 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: d, "is not a FinSense run directory (no .hydra/config.yaml)"),
    ],
)
def test_a_directory_that_is_no_run_is_a_clear_error(
    tmp_path: Path, make: Any, message: str
) -> None:
    with pytest.raises(FinSenseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluation.run_evaluation(make(tmp_path))


def test_a_damaged_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("env: [unclosed\n")
    with pytest.raises(FinSenseError, match="cannot be read"):
        evaluation.run_evaluation(tmp_path)


def test_a_run_without_checkpoints_is_a_clear_error(
    tmp_path: Path, env_config: dict[str, Any]
) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"env": env_config}))
    with pytest.raises(CheckpointError, match="no checkpoints"):
        evaluation.run_evaluation(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        evaluation.run_evaluation(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        evaluation.run_evaluation(tmp_path, "model_ep3.pt")


def test_a_file_that_is_no_policy_is_a_clear_error(run_dir: Path) -> None:
    torch.save({"policy": {"weights": {}}}, run_dir / "other.pt")
    with pytest.raises(CheckpointError, match="not a FinSense policy"):
        evaluation.run_evaluation(run_dir, "other.pt")
    (run_dir / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        evaluation.run_evaluation(run_dir, "junk.pt")


# -- command line ----------------------------------------------------------------------------------
def test_cli_prints_the_side_by_side_table(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert evaluate.main([str(run_dir), "checkpoint=latest", "seeds=3"]) == 0
    out = capsys.readouterr().out
    assert "agent" in out and "buy & hold" in out and "random (mean ± std, 3 seeds)" in out
    for metric in evaluation.TABLE_METRICS:
        assert metric in out
    assert "(episode 10)" in out


@pytest.mark.parametrize(
    "flags",
    [
        ["checkpoint=latest", "seeds=2"],
        ["--checkpoint", "latest", "--seeds", "2"],
        ["--checkpoint=latest", "--seeds=2"],
    ],
)
def test_cli_finds_the_run_by_the_train_commands_overrides(
    tmp_path: Path,
    env_config: dict[str, Any],
    flags: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Where python -m finsense.train seed=1 episodes=10 puts its run (episodes is not part of it).
    make_run_dir(tmp_path / "outputs" / "seed=1", env_config)
    monkeypatch.chdir(tmp_path)
    assert evaluate.main(["seed=1", "--episodes", "10", *flags]) == 0
    out = capsys.readouterr().out
    assert "(episode 10)" in out and "random (mean ± std, 2 seeds)" in out
    assert out.splitlines()[-1] == "Wrote outputs/seed=1/eval/test_metrics.json and equity.csv"


def test_cli_without_arguments_evaluates_the_default_run(
    tmp_path: Path,
    env_config: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert evaluate.main([]) == 2
    assert capsys.readouterr().err == (
        "finsense.evaluate: no run at outputs/default (no overrides: the default run); pass a "
        "RUN_DIR or the train command's overrides (seed=1 env=googl ...)\n"
    )
    make_run_dir(tmp_path / "outputs" / "default", env_config)
    assert evaluate.main(["--seeds", "1"]) == 0
    assert "Wrote outputs/default/eval/" in capsys.readouterr().out


def test_cli_usage_line_shows_the_run_as_optional(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        evaluate.main(["--help"])
    assert info.value.code == 0
    usage = capsys.readouterr().out.splitlines()[0]
    assert usage == (
        "usage: python -m finsense.evaluate [RUN_DIR | OVERRIDE ...] "
        "[checkpoint=best|latest|PATH] [seeds=N] [episodes=N]"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["nowhere"],
        [".", "checkpoint"],
        [".", "epochs=3"],
        ["seed=7"],
        ["nokey=1"],
        ["--checkpoint"],
        ["--epochs", "3"],
        ["seeds=0"],
    ],
)
def test_cli_errors_are_one_line_and_exit_2(
    tmp_path: Path,
    args: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert evaluate.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("finsense.evaluate: ")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["missing", "no_hydra", "no_checkpoint"])
def test_cli_subprocess_bad_run_dir_is_one_line_without_traceback(
    tmp_path: Path, env_config: dict[str, Any], layout: str
) -> None:
    run_dir = tmp_path / "run"
    if layout != "missing":
        (run_dir / ".hydra").mkdir(parents=True)
    if layout == "no_checkpoint":
        (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"env": env_config}))
    proc = subprocess.run(
        [sys.executable, "-m", "finsense.evaluate", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("finsense.evaluate: "), proc.stderr
    assert "Traceback" not in proc.stderr
