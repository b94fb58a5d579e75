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
from finsense.data import MarketData
from finsense.errors import CheckpointError, FinSenseError
from finsense.evaluation import EquityCurve, compare_to_baselines
from finsense.metrics import sharpe_ratio
from finsense.stats import probabilistic_sharpe_ratio

FEE = 0.01
SLIPPAGE_BPS = 5.0
BORROW_RATE = 0.02
COST = FEE + SLIPPAGE_BPS / 10_000  # of every trade leg
CASH = 1_000.0
WINDOW = 3
#: 50 prices; test_fraction 0.4 holds out the last 20 (rows 30..49): the test episode.
N_ROWS, FIRST_TEST = 50, 30
EXECUTIONS = ("next_close", "next_open", "close")


def known_prices() -> np.ndarray:
    """A fixed path that rises, falls and rises again (so trades can win and lose)."""
    t = np.arange(N_ROWS, dtype=np.float64)
    return np.round(100.0 + 10.0 * np.sin(t / 4.0) + 0.3 * t, 2)


def known_opens() -> np.ndarray:
    """Opens near the previous close, a gap up or down each day."""
    t = np.arange(N_ROWS, dtype=np.float64)
    previous = np.concatenate(([known_prices()[0]], known_prices()[:-1]))
    return np.round(previous + 0.8 * np.cos(1.7 * t), 2)


@pytest.fixture
def price_csv(tmp_path: Path) -> Path:
    path = tmp_path / "prices.csv"
    dates = np.datetime64("2022-01-03") + np.arange(N_ROWS)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Date", "Open", "Close"])
        writer.writerows(
            (str(d), f"{o:.2f}", f"{p:.2f}")
            for d, o, p in zip(dates, known_opens(), known_prices(), strict=True)
        )
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
        "execution": "next_close",
        "slippage_bps": SLIPPAGE_BPS,
        "borrow_rate": BORROW_RATE,
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


def hand_run(targets: list[int], execution: str = "next_close") -> tuple[list[float], list[int]]:
    """The env's accounting by hand, one phase after another: the equity after each test row and
    the position held into it, for the target positions chosen at rows 30, 31, ...

    ``close``: trade at the decision row's close, mark at the next. ``next_open``: trade at the
    next row's open, mark at its close. ``next_close``: the position held earns to the next
    close, then the order fills there (the last one is not filled). A short pays a day of
    borrow at each close it is held through.
    """
    close, opens = known_prices(), known_opens()
    cash, units, held = CASH, 0.0, 0
    equity, positions = [CASH], [0]

    def trade(target: int, price: float) -> None:
        nonlocal cash, units, held
        if units:
            cash += units * price - COST * abs(units * price)
            units = 0.0
        if target:
            size = cash / (1 + COST)
            units = target * size / price
            cash -= target * size + COST * size
        held = target

    def borrow(price: float) -> None:
        nonlocal cash
        if units < 0:
            cash -= BORROW_RATE / 252 * abs(units) * price

    for step, target in enumerate(targets):
        t = FIRST_TEST + step
        if execution == "next_close":
            positions.append(held)
            borrow(close[t + 1])
            if target != held and step < len(targets) - 1:
                trade(target, close[t + 1])
        else:
            if target != held:
                trade(target, close[t] if execution == "close" else opens[t + 1])
            positions.append(held)
            borrow(close[t + 1])
        equity.append(cash + units * close[t + 1])
    return equity, positions


STEPS = N_ROWS - 1 - FIRST_TEST  # 19 steps over the 20 test rows


# -- numbers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("execution", EXECUTIONS)
def test_buy_and_hold_is_the_price_ratio_minus_the_entry_cost(
    env_config: dict[str, Any], execution: str
) -> None:
    env_config["execution"] = execution
    result = evaluation.evaluate_policy(ConstantQ(0), env_config, seeds_random=2)
    close, opens = known_prices(), known_opens()
    # The first decision (row 30) fills at row 30's close, row 31's close or row 31's open.
    first = {"close": close, "next_close": close, "next_open": opens}[execution][
        FIRST_TEST + (execution != "close")
    ]
    last = close[-1]
    expected = last / (first * (1 + COST)) - 1
    assert result.buy_and_hold["total_return"] == pytest.approx(expected, rel=1e-12)
    assert result.buy_and_hold["total_profit"] == pytest.approx(CASH * expected, rel=1e-12)
    assert result.buy_and_hold["final_equity"] == pytest.approx(CASH * (1 + expected), rel=1e-12)
    assert result.buy_and_hold["buy_and_hold_return"] == pytest.approx(expected, rel=1e-12)
    assert result.buy_and_hold["total_trades"] == 1
    # Its one trade, still open at the end, counts: it lost on this path.
    assert last * (1 - COST) < first * (1 + COST)
    assert result.buy_and_hold["win_rate"] == 0.0
    equity, _ = hand_run([1] * STEPS, execution)
    assert len(result.curve.buy_and_hold_equity) == STEPS + 1
    np.testing.assert_allclose(result.curve.buy_and_hold_equity, equity, rtol=1e-12)


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_always_long_agent_equals_buy_and_hold(env_config: dict[str, Any], execution: str) -> None:
    env_config["execution"] = execution
    result = evaluation.evaluate_policy(ConstantQ(1), env_config, seeds_random=1)
    equity, positions = hand_run([1] * STEPS, execution)
    np.testing.assert_allclose(result.curve.agent_equity, equity, rtol=1e-12)
    np.testing.assert_allclose(
        result.curve.agent_equity, result.curve.buy_and_hold_equity, rtol=1e-12
    )
    for key, value in result.buy_and_hold.items():
        assert result.agent[key] == pytest.approx(value, rel=1e-12), key
    np.testing.assert_array_equal(result.curve.positions, positions)
    delay = 1 if execution == "next_close" else 0
    assert positions == [0] * (1 + delay) + [1] * (STEPS - delay)


def test_buy_and_holds_open_trade_counts_in_its_win_rate() -> None:
    # It printed 0.00% when a trade still open at the end was not counted (issue 13).
    dates = (np.datetime64("2022-01-03") + np.arange(50)).astype("datetime64[ns]")
    rising = MarketData(dates, np.linspace(100.0, 150.0, 50), "rising")
    result = evaluation.evaluate_policy(ConstantQ(0), {"data": rising, "window_size": 3})
    assert result.buy_and_hold["total_trades"] == 1
    assert result.buy_and_hold["win_rate"] == 1.0


def test_always_flat_agent_keeps_its_cash(env_config: dict[str, Any]) -> None:
    result = evaluation.evaluate_policy(ConstantQ(0), env_config, seeds_random=1)
    assert result.agent["total_profit"] == 0.0
    assert result.agent["total_trades"] == 0
    assert result.agent["max_drawdown"] == 0.0
    np.testing.assert_array_equal(result.curve.agent_equity, CASH)


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_random_policy_is_mean_and_spread_over_seeds_by_hand(
    env_config: dict[str, Any], execution: str
) -> None:
    env_config["execution"] = execution
    seeds = 4
    result = evaluation.evaluate_policy(ConstantQ(0), env_config, seeds_random=seeds)
    profits, trades, curves = [], [], []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        equity, positions = hand_run([int(rng.integers(2)) for _ in range(STEPS)], execution)
        profits.append(equity[-1] - CASH)
        trades.append(metrics.total_trades(positions))
        curves.append(equity)
    assert result.random_seeds == seeds
    assert result.random["total_profit"]["mean"] == pytest.approx(np.mean(profits), rel=1e-9)
    assert result.random["total_profit"]["std"] == pytest.approx(np.std(profits, ddof=1), rel=1e-9)
    assert result.random["total_trades"]["mean"] == pytest.approx(np.mean(trades))
    assert set(result.random) == set(result.agent)
    assert result.curve.random_mean is not None and result.curve.random_std is not None
    np.testing.assert_allclose(result.curve.random_mean, np.mean(curves, axis=0), rtol=1e-12)
    np.testing.assert_allclose(result.curve.random_std, np.std(curves, axis=0, ddof=1), rtol=1e-9)


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_shorting_agent_is_accounted_like_the_env(
    env_config: dict[str, Any], execution: str
) -> None:
    env_config["allow_short"] = True
    env_config["execution"] = execution
    result = evaluation.evaluate_policy(ConstantQ(0, n_actions=3), env_config, seeds_random=1)
    equity, positions = hand_run([-1] * STEPS, execution)
    np.testing.assert_allclose(result.curve.agent_equity, equity, rtol=1e-12)
    np.testing.assert_array_equal(result.curve.positions, positions)


# -- the rules (issue 13) --------------------------------------------------------------------------
def momentum_by_hand(allow_short: bool) -> list[int]:
    """The target after each test decision row: the sign of its close's change."""
    close = known_prices()
    targets = []
    for t in range(FIRST_TEST, N_ROWS - 1):
        up, down = close[t] > close[t - 1], close[t] < close[t - 1]
        targets.append(1 if up else (-1 if down and allow_short else 0))
    return targets


def crossover_by_hand(short: int, long: int, allow_short: bool) -> list[int]:
    """The target after each test decision row: short mean above or below long mean."""
    close = known_prices()
    targets = []
    for t in range(FIRST_TEST, N_ROWS - 1):
        fast = sum(close[t - short + 1 : t + 1]) / short
        slow = sum(close[t - long + 1 : t + 1]) / long
        targets.append(1 if fast > slow else (-1 if fast < slow and allow_short else 0))
    return targets


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize("allow_short", [False, True])
def test_rules_trade_through_the_env_under_its_execution_model_and_costs(
    env_config: dict[str, Any], execution: str, allow_short: bool
) -> None:
    env_config.update(execution=execution, allow_short=allow_short)
    result = evaluation.evaluate_policy(
        ConstantQ(0, 3 if allow_short else 2), env_config, seeds_random=1, ma_windows=(2, 5)
    )
    for rule, targets in (
        ("momentum", momentum_by_hand(allow_short)),
        ("ma_crossover", crossover_by_hand(2, 5, allow_short)),
    ):
        assert len(set(targets)) > 1, rule  # the rule trades on this path
        equity, positions = hand_run(targets, execution)
        np.testing.assert_allclose(result.curve.rules[rule], equity, rtol=1e-12, err_msg=rule)
        scored = result.rules[rule]
        assert scored is not None
        assert scored["final_equity"] == pytest.approx(equity[-1], rel=1e-12)
        assert scored["total_trades"] == metrics.total_trades(positions)
    assert result.notes == ()
    assert result.ma_windows == (2, 5)
    assert result.execution == {
        "model": execution,
        "fee": FEE,
        "slippage_bps": SLIPPAGE_BPS,
        "borrow_rate": BORROW_RATE,
    }


def test_rule_signals_read_no_close_after_their_row() -> None:
    close = known_prices()
    for t in range(5, N_ROWS - 1):
        changed = close.copy()
        changed[t + 1 :] = changed[t + 1 :][::-1] * 1.5
        for signal in (
            lambda c: evaluation.momentum_signal(c, allow_short=True),
            lambda c: evaluation.ma_crossover_signal(c, 2, 5, allow_short=True),
        ):
            np.testing.assert_array_equal(signal(changed)[: t + 1], signal(close)[: t + 1])


def test_crossover_signal_waits_for_its_long_average() -> None:
    signal = evaluation.ma_crossover_signal(np.arange(1.0, 11.0), 2, 4, allow_short=True)
    assert signal.tolist() == [0, 0, 0] + [1] * 7  # rising prices: the short mean leads
    falling = evaluation.ma_crossover_signal(np.arange(10.0, 0.0, -1.0), 2, 4, allow_short=False)
    assert falling.tolist() == [0] * 10  # below, but no shorting: flat


def test_a_crossover_longer_than_the_test_split_is_skipped_with_a_note(
    env_config: dict[str, Any],
) -> None:
    result = evaluation.evaluate_policy(ConstantQ(0), env_config, seeds_random=1)
    assert result.ma_windows == (10, 50)
    assert result.rules["ma_crossover"] is None and "ma_crossover" not in result.curve.rules
    assert result.rules["momentum"] is not None
    (note,) = result.notes
    assert note.startswith("ma_crossover skipped: the test split has 20 rows, fewer than the long")
    assert "ma_long=50" in note


@pytest.mark.parametrize("windows", [(0, 5), (5, 5), (6, 5)])
def test_bad_crossover_windows_are_one_clear_error(
    env_config: dict[str, Any], windows: tuple[int, int]
) -> None:
    with pytest.raises(FinSenseError, match=r"1 <= ma_short < ma_long"):
        evaluation.evaluate_policy(ConstantQ(0), env_config, ma_windows=windows)


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
    assert list(rows[0]) == [
        "date",
        "agent_equity",
        "buy_and_hold_equity",
        "position",
        "momentum_equity",
        "ma_crossover_equity",
        "random_equity_mean",
        "random_equity_std",
    ]
    assert len(rows) == STEPS + 1
    assert rows[0]["date"] == "2022-02-02" and float(rows[0]["agent_equity"]) == CASH
    assert all(row["ma_crossover_equity"] == "" for row in rows)  # skipped: see notes
    back = evaluation.read_equity(run_dir / "eval" / "equity.csv")
    np.testing.assert_array_equal(back.agent_equity, result.curve.agent_equity)
    np.testing.assert_array_equal(back.buy_and_hold_equity, result.curve.buy_and_hold_equity)
    np.testing.assert_array_equal(back.positions, result.curve.positions)
    assert set(back.rules) == {"momentum"}
    np.testing.assert_array_equal(back.rules["momentum"], result.curve.rules["momentum"])
    np.testing.assert_array_equal(back.random_mean, result.curve.random_mean)
    np.testing.assert_array_equal(back.random_std, result.curve.random_std)
    assert data["momentum"] == pytest.approx(result.rules["momentum"])
    assert data["ma_crossover"] is None
    assert data["notes"] == list(result.notes) and len(data["notes"]) == 1
    assert data["ma_windows"] == {"short": 10, "long": 50}
    assert data["execution"] == {
        "model": "next_close",
        "fee": FEE,
        "slippage_bps": SLIPPAGE_BPS,
        "borrow_rate": BORROW_RATE,
    }
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
    header = out.splitlines()[2].split()
    assert header[:6] == ["metric", "agent", "buy", "&", "hold", "momentum"]
    assert "MA 10/50" in out and "skipped" in out
    assert (
        "Every policy fills at next_close, fee 1% + slippage 5 bps a trade, borrow 2% a year" in out
    )
    assert "note: ma_crossover skipped: the test split has 20 rows" in out


def test_cli_takes_the_crossover_windows(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main([str(run_dir), "seeds=1", "ma_short=2", "--ma_long", "5"]) == 0
    out = capsys.readouterr().out
    assert "MA 2/5" in out and "skipped" not in out and "note:" not in out
    data = json.loads((run_dir / "eval" / "test_metrics.json").read_text())
    assert data["ma_windows"] == {"short": 2, "long": 5} and data["ma_crossover"] is not None


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
        "[checkpoint=best|latest|PATH] [seeds=N] [ma_short=N] [ma_long=N] [episodes=N]"
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
        [".", "ma_short=50"],
        [".", "ma_long=x"],
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


def _curve(agent: np.ndarray, hold: np.ndarray) -> EquityCurve:
    n = len(agent)
    return EquityCurve(
        dates=np.arange(n).astype("datetime64[D]").astype("datetime64[ns]"),
        close=hold,
        agent_equity=agent,
        buy_and_hold_equity=hold,
        positions=np.ones(n),
        rules={"momentum": agent.copy()},
    )


def test_statistics_compare_the_agent_with_each_baseline_on_the_test_days() -> None:
    rng = np.random.default_rng(0)
    days = 500
    hold = 100.0 * np.cumprod(1.0 + rng.normal(0.0, 0.01, days))
    agent = 100.0 * np.cumprod(1.0 + rng.normal(0.003, 0.01, days))  # Sharpe ~4.8 a year
    found = compare_to_baselines(_curve(agent, hold))

    assert set(found["sharpe_difference"]) == {"buy_and_hold", "momentum"}
    beat = found["sharpe_difference"]["buy_and_hold"]
    returns_agent, returns_hold = np.diff(agent) / agent[:-1], np.diff(hold) / hold[:-1]
    expected = sharpe_ratio(returns_agent) - sharpe_ratio(returns_hold)
    assert beat["estimate"] == pytest.approx(expected, rel=1e-12)
    assert 0.0 < beat["low"] < beat["estimate"] < beat["high"]
    # A baseline identical to the agent: a difference of exactly 0, every resample.
    assert found["sharpe_difference"]["momentum"] == {"estimate": 0.0, "low": 0.0, "high": 0.0}
    assert found["agent_psr"] == pytest.approx(probabilistic_sharpe_ratio(returns_agent))
    assert found["agent_psr"] > 0.99
    assert found["confidence"] == 0.95 and found["block_length"] == round(499 ** (1 / 3))
    # Seeded: the same curve gives the same file.
    assert compare_to_baselines(_curve(agent, hold)) == found


def test_statistics_skip_a_baseline_whose_equity_went_to_zero() -> None:
    agent = np.linspace(100.0, 120.0, 50)
    hold = np.concatenate([np.linspace(100.0, 1.0, 48), [0.0, 0.0]])  # 0 / 0: no Sharpe ratio
    found = compare_to_baselines(_curve(agent, hold))
    assert "buy_and_hold" not in found["sharpe_difference"]
    assert "momentum" in found["sharpe_difference"]
