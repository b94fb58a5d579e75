"""Backtests: a trained policy scored on data it never saw, observed as in training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from finsense import evaluate, evaluation
from finsense.agents import DQNAgent
from finsense.backtest import data_name, parse_env_overrides
from finsense.checkpoint import CheckpointManager
from finsense.data import synthetic_prices
from finsense.envs import TradingEnv
from finsense.errors import CheckpointError, ConfigError
from finsense.trainer import Trainer, TrainSettings

WINDOW = 3


def write_prices(path: Path, n_steps: int, seed: int, volatility: float) -> Path:
    """A CSV of synthetic closes (and opens) with Date, Open and Close columns."""
    market = synthetic_prices(n_steps=n_steps, seed=seed, volatility=volatility)
    lines = ["Date,Open,Close"]
    lines += [
        f"{str(d)[:10]},{c:.4f},{c:.4f}" for d, c in zip(market.dates, market.close, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def env_section(path: Path) -> dict[str, Any]:
    return {
        "_target_": "finsense.envs.TradingEnv",
        "data": {"source": "file", "path": str(path), "test_fraction": 0.3},
        "window_size": WINDOW,
        "episode_length": 10,
        "random_start": True,
        "fee": 0.001,
        "allow_short": False,
        "initial_cash": 10_000.0,
        "reward": "log_return",
        "execution": "next_close",
        "slippage_bps": 2.0,
        "borrow_rate": 0.005,
    }


class EnvBeforeTheSpec(TradingEnv):
    """The trading env as it was before it declared what a policy observes."""

    observation_spec = None  # type: ignore[assignment]


def train_run(run_dir: Path, prices: Path, observation_spec: bool = True) -> Path:
    """A run as ``python -m finsense.train`` leaves it: its config and two real checkpoints of a
    DQN trained on ``prices`` (without the policy's observation spec, as older runs, when not
    ``observation_spec``)."""
    env_config = env_section(prices)
    config = {
        "env": env_config,
        "agent": {"hidden_sizes": [8]},
        "checkpoints": {"metric_name": "total_profit", "mode": "max"},
        "episodes": 2,
        "seed": 0,
    }
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    kind = TradingEnv if observation_spec else EnvBeforeTheSpec
    env = kind(**{k: v for k, v in env_config.items() if k != "_target_"})
    manager = CheckpointManager(run_dir / "models", metric_name="total_profit")
    settings = TrainSettings(episodes=2, save_frequency=1)
    Trainer(env, DQNAgent(WINDOW + 1, 2, seed=0), manager, run_dir, settings, config).run()
    return run_dir


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    return write_prices(tmp_path / "prices.csv", 300, seed=0, volatility=0.01)


@pytest.fixture
def new_csv(tmp_path: Path) -> Path:
    """Other prices, three times as volatile: their own scale would differ from training's."""
    return write_prices(tmp_path / "new.csv", 200, seed=5, volatility=0.03)


@pytest.fixture
def run_dir(tmp_path: Path, prices: Path) -> Path:
    return train_run(tmp_path / "run", prices)


def own_scale(path: Path) -> float:
    return TradingEnv(env_section(path)["data"], window_size=WINDOW).feature_scale


def test_backtest_on_a_new_file_scores_every_row_as_the_policy_observes(
    run_dir: Path, prices: Path, new_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert evaluate.main([str(run_dir), "seeds=2"]) == 0
    own = (run_dir / "eval" / "test_metrics.json").read_bytes()
    capsys.readouterr()

    assert evaluate.main([str(run_dir), f"env.data.path={new_csv}", "seeds=2"]) == 0
    out = capsys.readouterr().out
    assert f"All 200 rows of {new_csv}: " in out and "checkpoint models/best_model.pt" in out
    assert "Observed as in training: 3 daily log returns" in out and "saved with the policy" in out
    assert "note: ma_crossover stays flat until row 49" in out and "skipped" not in out
    for metric in evaluation.TABLE_METRICS:
        assert metric in out
    where = run_dir / "eval" / "backtest" / "new"
    assert out.splitlines()[-1] == f"Wrote {where / 'test_metrics.json'} and equity.csv"
    assert (run_dir / "eval" / "test_metrics.json").read_bytes() == own  # untouched

    data = json.loads((where / "test_metrics.json").read_text())
    assert data["split"] == "all" and data["data"] == {"source": str(new_csv), "rows": 200}
    assert data["period"]["steps"] == 200 - WINDOW - 1
    assert data["backtest"] == {
        "overrides": [f"env.data.path={new_csv}"],
        "new_data": True,
        "name": "new",
    }
    assert data["observation"]["feature_scale"] == own_scale(prices) != own_scale(new_csv)
    assert data["observation"]["from"] == "checkpoint" and data["observation"]["window_size"] == 3
    assert (where / "equity.csv").read_text().count("\n") == 1 + 200 - WINDOW


def test_env_names_another_market_and_keeps_the_runs_trading_rules(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(run_dir), "env=synthetic", "env.data.n_steps=400", "env.fee=0.002", "seeds=1"]
    assert evaluate.main(args) == 0
    assert "All 400 rows of synthetic(seed=0, n_steps=400" in capsys.readouterr().out
    where = run_dir / "eval" / "backtest" / "synthetic-seed0" / "test_metrics.json"
    data = json.loads(where.read_text())
    assert data["split"] == "all" and data["data"]["rows"] == 400
    assert data["execution"] == {
        "model": "next_close",
        "fee": 0.002,
        "slippage_bps": 2.0,
        "borrow_rate": 0.005,
    }
    assert not (run_dir / "eval" / "test_metrics.json").exists()


def test_new_trading_rules_on_the_runs_own_data_keep_its_test_split(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(run_dir), "env.execution=close", "env.slippage_bps=0", "seeds=1"]
    assert evaluate.main(args) == 0
    assert capsys.readouterr().out.startswith("Test split ")
    data = json.loads((run_dir / "eval" / "backtest" / "prices" / "test_metrics.json").read_text())
    assert data["split"] == "test" and data["backtest"]["new_data"] is False
    assert data["execution"]["model"] == "close" and data["execution"]["slippage_bps"] == 0
    plain = evaluation.run_evaluation(run_dir, seeds_random=1)
    assert data["period"] == plain.to_json(run_dir)["period"]


def test_a_checkpoint_without_an_observation_spec_is_backtested_with_the_runs_scale(
    tmp_path: Path, prices: Path, new_csv: Path
) -> None:
    run_dir = train_run(tmp_path / "old", prices, observation_spec=False)
    policy = torch.load(run_dir / "models" / "best_model.pt", weights_only=True)["policy"]
    assert "observation" not in policy
    plain = evaluation.run_evaluation(run_dir, seeds_random=1)
    assert plain.observation["from"] == "run data" and plain.split == "test"
    result = evaluation.run_evaluation(
        run_dir, seeds_random=1, env_overrides=[f"env.data.path={new_csv}"]
    )
    assert result.split == "all"
    assert result.observation["feature_scale"] == own_scale(prices)
    assert result.observation["from"] == "run data"

    prices.unlink()  # the run's data gone: the scale cannot be recovered
    with pytest.raises(CheckpointError, match="written before checkpoints held the policy's"):
        evaluation.run_evaluation(
            run_dir, seeds_random=1, env_overrides=[f"env.data.path={new_csv}"]
        )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("env.data.path=missing.csv", "missing.csv"),
        ("env.window_size=5", "the policy fixes what it observes"),
        ("env.allow_short=true", "the policy fixes what it observes"),
        ("env.feature_scale=0.1", "the policy fixes what it observes"),
        ("env.episode_length=10", "an evaluation scores every row of new data"),
        ("env.data.test_fraction=0.5", "an evaluation scores every row of new data"),
        ("env.reward=profit", "no evaluation metric reads the reward"),
        ("env.fe=0.1", "env.fe is not a key of env (did you mean env.fee?)"),
        ("env.data.pth=x.csv", "env.data.pth is not a key of env.data (did you mean"),
        ("env.fee=0.1,0.2", "not a sweep"),
        ("env=gym", "env=gym: a backtest runs the policy on a trading env's prices"),
        ("env=nosuch", "env=nosuch"),
        ("seed=1", "with a RUN_DIR only env overrides apply"),
    ],
)
def test_a_refused_override_is_one_line_and_exit_2(
    run_dir: Path, override: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert evaluate.main([str(run_dir), override]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert captured.err.startswith("finsense.evaluate: ") and message in captured.err
    assert not (run_dir / "eval").exists()


def test_overrides_are_read_with_hydras_value_syntax() -> None:
    parsed = parse_env_overrides(["env=csv", "env.data.path='a b.csv'", "env.fee=2e-3"])
    assert parsed.group == "csv" and parsed.data == {"path": "a b.csv"}
    assert parsed.rules == {"fee": 0.002}
    with pytest.raises(ConfigError, match="not an env override"):
        parse_env_overrides(["seed=1"])


def test_data_names_are_short_and_safe_directory_names() -> None:
    assert data_name({"source": "file", "path": "data/my prices.csv"}) == "my_prices"
    assert data_name({"source": "sample", "sample": "GOOGL"}) == "googl"
    assert data_name({"source": "synthetic", "seed": 3}) == "synthetic-seed3"
    assert data_name({}) == "synthetic"
