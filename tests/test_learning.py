"""DQN learns: with planted momentum, its greedy policy beats buy-and-hold and chance out of sample.

The market is FinSense's synthetic one with AR(1) momentum in the daily returns (``ar_coef=0.2``):
an up day makes another up day more likely. A long/flat agent that learns to follow yesterday's
move earns more than holding, after fees. Training runs on the train split only; the greedy
policy is then scored over the whole held-out test split (the last 20% of days, 2,000 days).

Settings tuned over many pairs of agent and data seeds: log-return rewards scaled by 100 (at
~0.01 a day the learned policy stays close to chance), a 5-day window (the signal is in the last
day), one hidden layer of 32 units and batches of 128 (the reward is mostly noise; a small network
that averages over more samples overfits it less), gamma 0.9 and 30,000 env steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from finsense.agents import DQNAgent, DQNConfig
from finsense.envs import TradingEnv

pytestmark = pytest.mark.slow

STEPS = 30_000
WINDOW = 5
CONFIG = DQNConfig(
    hidden_sizes=(32,),
    batch_size=128,
    gamma=0.9,
    reward_scale=100.0,
    exploration_steps=10_000,
)


def env_kwargs(data_seed: int) -> dict[str, Any]:
    data = {"source": "synthetic", "n_steps": 10_000, "seed": data_seed, "ar_coef": 0.2}
    return {"data": data, "window_size": WINDOW, "fee": 0.0005}


def train(seed: int, data_seed: int, learner: str = "auto") -> DQNAgent:
    agent = DQNAgent(WINDOW + 1, 2, dataclasses.replace(CONFIG, learner=learner), seed=seed)
    return train_on_the_train_split(agent, seed, data_seed, STEPS)


def train_on_the_train_split(agent: Any, seed: int, data_seed: int, steps: int) -> Any:
    """The trainer's loop on the train split (252-day episodes, reseeded each) until ``agent`` has
    observed ``steps`` transitions; returns the agent."""
    env = TradingEnv(split="train", episode_length=252, **env_kwargs(data_seed))
    episode = 0
    while agent.steps < steps:
        episode += 1
        obs, _ = env.reset(seed=seed * 100_000 + episode)
        done = False
        while not done:
            action = agent.act(obs)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            agent.observe(obs, action, float(reward), next_obs, bool(terminated))
            obs, done = next_obs, terminated or truncated
        agent.end_episode()
    return agent


def score_on_test_split(data_seed: int, policy: Callable[[np.ndarray], int]) -> dict[str, Any]:
    """The episode metrics of ``policy`` over the whole test split."""
    env = TradingEnv(split="test", episode_length=None, random_start=False, **env_kwargs(data_seed))
    obs, _ = env.reset(seed=0)
    done = False
    info: dict[str, Any] = {}
    while not done:
        obs, _, terminated, truncated, info = env.step(policy(obs))
        done = terminated or truncated
    return dict(info["episode_metrics"])


def assert_beats_buy_and_hold_and_random(
    data_seed: int, policy: Callable[[np.ndarray], int]
) -> None:
    """Over the whole test split, ``policy`` earns more than buy-and-hold and than the mean of 10
    random policies, with a positive Sharpe ratio."""
    trained = score_on_test_split(data_seed, policy)
    random_returns = []
    for random_seed in range(10):
        rng = np.random.default_rng(random_seed)
        metrics = score_on_test_split(data_seed, lambda _: int(rng.integers(2)))  # noqa: B023
        random_returns.append(metrics["total_return"])

    summary = (
        f"agent {trained['total_return']:+.3f}, buy-and-hold {trained['buy_and_hold_return']:+.3f},"
        f" random {np.mean(random_returns):+.3f}"
    )
    assert trained["total_return"] > trained["buy_and_hold_return"], summary
    assert trained["total_return"] > float(np.mean(random_returns)), summary
    assert trained["sharpe_ratio"] > 0, summary


# "auto" is the fast path for this MLP; "autograd" is the general path any other network takes.
@pytest.mark.parametrize(
    ("seed", "data_seed", "learner"),
    [(0, 1, "auto"), (1, 3, "auto"), (2, 4, "auto"), (0, 1, "autograd")],
)
def test_greedy_policy_beats_buy_and_hold_and_random_on_the_test_split(
    seed: int, data_seed: int, learner: str
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        agent = train(seed, data_seed, learner)
    finally:
        torch.set_num_threads(threads)

    assert_beats_buy_and_hold_and_random(data_seed, lambda obs: agent.act(obs, explore=False))
