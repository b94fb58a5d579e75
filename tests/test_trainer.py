"""The trainer in process, with a fake env and a fake agent: it knows no algorithm and no market.

Everything the trainer does (resume, budgets, checkpoints, loggers, drift refusals, signals) is
driven here through :class:`finsense.trainer.Agent` and a plain gymnasium env, so a second
algorithm or a non-trading env meets exactly this contract.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch

from finsense.checkpoint import CheckpointManager
from finsense.errors import ConfigError
from finsense.trainer import Trainer, TrainSettings


class CountingEnv(gymnasium.Env[np.ndarray, np.int64]):
    """Episodes of ``length`` steps; reward = action; the observation is the step index."""

    def __init__(self, length: int = 5, metrics: bool = True) -> None:
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(2)
        self.length = length
        self.metrics = metrics
        self.t = 0
        self.total = 0.0

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t, self.total = 0, 0.0
        return np.zeros(1, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        self.total += float(action)
        done = self.t >= self.length
        info: dict[str, Any] = {}
        if done and self.metrics:
            info["episode_metrics"] = {"episode_return": self.total, "episode_length": self.t}
        return np.full(1, self.t, np.float32), float(action), done, False, info


class FakeAgent:
    """Acts from its own seeded generator; its "weights" are a running sum of what it saw."""

    resume_keys = ("width",)

    def __init__(self, seed: int = 0, on_step: Any = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.weights = torch.zeros(3, dtype=torch.float64)
        self._steps = 0
        self.episodes = 0
        self.on_step = on_step

    @property
    def steps(self) -> int:
        return self._steps

    def act(self, obs: np.ndarray, explore: bool = True) -> int:
        return int(self.rng.integers(2)) if explore else 1

    def observe(
        self, obs: Any, action: int, reward: float, next_obs: Any, terminated: bool
    ) -> None:
        self._steps += 1
        self.weights += torch.tensor([reward, float(next_obs[0]), self.rng.random()])
        if self.on_step is not None:
            self.on_step(self._steps)

    def end_episode(self) -> None:
        self.episodes += 1

    def episode_metrics(self) -> dict[str, float]:
        return {"temperature": 1.0 / (1 + self.episodes)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": {"weights": self.weights.clone()},
            "training": {
                "steps": self._steps,
                "episodes": self.episodes,
                "rng": self.rng.bit_generator.state,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = state["policy"]["weights"].clone()
        self._steps = int(state["training"]["steps"])
        self.episodes = int(state["training"]["episodes"])
        self.rng.bit_generator.state = state["training"]["rng"]


class RecordingLogger:
    def __init__(self) -> None:
        self.starts: list[int] = []
        self.logged: list[int] = []
        self.closed = 0

    def start(self, run_dir: Path, start_episode: int, config: dict[str, Any]) -> None:
        self.starts.append(start_episode)

    def log(self, episode: int, row: dict[str, Any]) -> None:
        self.logged.append(episode)

    def close(self) -> None:
        self.closed += 1


def _trainer(
    run_dir: Path,
    episodes: int,
    *,
    agent: FakeAgent | None = None,
    env: gymnasium.Env | None = None,
    max_steps: int | None = None,
    config: dict[str, Any] | None = None,
    loggers: list[Any] | None = None,
) -> Trainer:
    manager = CheckpointManager(run_dir / "models", max_keep=3, metric_name="episode_return")
    settings = TrainSettings(episodes=episodes, seed=7, max_steps=max_steps, save_frequency=2)
    return Trainer(
        env or CountingEnv(),
        agent or FakeAgent(),
        manager,
        run_dir,
        settings,
        config=config if config is not None else {"agent": {"width": 4}, "lr": 0.1},
        loggers=loggers,
    )


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_trains_checkpoints_and_logs_with_any_agent_and_env(tmp_path: Path) -> None:
    logger = RecordingLogger()
    result = _trainer(tmp_path, 5, loggers=[logger]).run()
    assert (result.last_episode, result.finished) == (5, True)
    rows = _rows(tmp_path)
    assert [int(r["episode"]) for r in rows] == [1, 2, 3, 4, 5]
    assert set(rows[0]) == {
        "episode",
        "episode_return",
        "episode_length",
        "temperature",
        "steps",
        "seconds",
    }
    assert logger.starts == [0] and logger.logged == [1, 2, 3, 4, 5] and logger.closed == 1
    meta = json.loads((tmp_path / "models" / "model_ep4.json").read_text())
    # The agent's own values sit at the JSON's top level (DQN's "epsilon"), not among the metrics.
    assert meta["temperature"] == pytest.approx(1 / 5)
    assert set(meta["metrics"]) == {"episode_return", "episode_length"}
    assert meta["metric_name"] == "episode_return" and meta["steps"] == 20
    kept = sorted(p.name for p in (tmp_path / "models").glob("model_ep*.json"))
    assert kept == ["model_ep2.json", "model_ep4.json", "model_ep5.json"]


def test_resumed_run_ends_like_the_uninterrupted_one(tmp_path: Path) -> None:
    straight = FakeAgent()
    _trainer(tmp_path / "a", 6, agent=straight).run()
    _trainer(tmp_path / "b", 4).run()
    logger = RecordingLogger()
    resumed = FakeAgent()
    result = _trainer(tmp_path / "b", 6, agent=resumed, loggers=[logger]).run()
    assert result.start_episode == 4 and logger.starts == [4] and logger.logged == [5, 6]
    assert torch.equal(resumed.weights, straight.weights)
    assert [int(r["episode"]) for r in _rows(tmp_path / "b")] == list(range(1, 7))


def test_max_steps_ends_with_the_episode_that_reaches_it_and_can_be_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    result = _trainer(tmp_path, 1000, max_steps=12).run()
    # 5 steps per episode: the third episode reaches 12 steps and is the last, and is saved.
    assert (result.last_episode, result.finished) == (3, True)
    assert (tmp_path / "models" / "model_ep3.pt").exists()
    with caplog.at_level(logging.INFO, logger="finsense.trainer"):
        again = _trainer(tmp_path, 1000, max_steps=12).run()
    assert again.already_complete and "Training already complete!" in caplog.text
    more = _trainer(tmp_path, 1000, max_steps=22).run()
    assert (more.start_episode, more.last_episode) == (3, 5)


def test_a_key_the_agent_cannot_follow_is_refused_others_are_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _trainer(tmp_path, 2).run()
    with pytest.raises(ConfigError, match=r"agent\.width: 4 -> 8.*resume=never"):
        _trainer(tmp_path, 4, config={"agent": {"width": 8}, "lr": 0.1}).run()
    assert len(_rows(tmp_path)) == 2  # refused before anything changed
    with caplog.at_level(logging.WARNING, logger="finsense.trainer"):
        result = _trainer(tmp_path, 4, config={"agent": {"width": 4}, "lr": 0.2}).run()
    assert result.last_episode == 4 and "lr: 0.1 -> 0.2" in caplog.text


def test_an_env_without_episode_metrics_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="EpisodeMetrics"):
        _trainer(tmp_path, 2, env=CountingEnv(metrics=False)).run()


def test_a_launchers_signal_handler_is_called_after_the_checkpoint_is_saved(
    tmp_path: Path,
) -> None:
    seen: list[tuple[int, bool]] = []
    models = tmp_path / "models"

    def launcher(signum: int, frame: Any) -> None:  # submitit's requeue handler stands here
        seen.append((signum, (models / "model_ep3.pt").exists()))

    previous = signal.signal(signal.SIGUSR1, launcher)
    try:
        agent = FakeAgent(on_step=lambda step: step == 12 and os.kill(os.getpid(), signal.SIGUSR1))
        result = _trainer(tmp_path, 10, agent=agent).run()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert result.interrupted_by == signal.SIGUSR1 and result.last_episode == 3
    assert seen == [(signal.SIGUSR1, True)]  # once, and only after episode 3 was saved


class SpecEnv(CountingEnv):
    """A CountingEnv that declares what a policy observes, as the trading env does."""

    observation_spec = {"feature_scale": 0.5, "window_size": 1}


def test_the_envs_observation_spec_is_saved_in_the_policy_part_and_loads_weights_only(
    tmp_path: Path,
) -> None:
    _trainer(tmp_path, 2, env=SpecEnv()).run()
    policy = torch.load(tmp_path / "models" / "model_ep2.pt", weights_only=True)["policy"]
    assert policy["observation"] == {"feature_scale": 0.5, "window_size": 1}
    # Resuming hands the agent the policy part, spec and all.
    assert _trainer(tmp_path, 3, env=SpecEnv()).run().start_episode == 2


def test_a_policy_of_an_env_without_an_observation_spec_is_saved_as_the_agent_gives_it(
    tmp_path: Path,
) -> None:
    _trainer(tmp_path, 2).run()
    policy = torch.load(tmp_path / "models" / "model_ep2.pt", weights_only=True)["policy"]
    assert "observation" not in policy
