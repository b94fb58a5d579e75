"""PPO learns: with planted momentum, its greedy policy beats buy-and-hold and chance out of sample.

The market and the scoring are tests/test_learning.py's (DQN's): FinSense's synthetic market with
AR(1) momentum in the daily returns (``ar_coef=0.2``), a 5-day window, a 0.0005 fee; training on
the train split only, the greedy policy scored over the whole held-out test split (2,000 days).

Settings: log-return rewards scaled by 100 (daily log returns are ~0.01), one hidden layer of 32
units shared by both heads, gamma 0.9 (the signal is in the last day), rollouts of 2,048 steps
(about 8 episodes of 252 days) learned in 10 epochs of minibatches of 256, SB3's learning rate of
3e-4, no entropy bonus, 30,000 env steps (about 3 seconds a pair on one thread). Over 14 pairs
of agent and data seeds, all 14 passed, by a wide margin (Sharpe 0.75 to 2.3; with the autograd
learner, 1.0 to 2.2); all of the 6 tried passed already at 10,000 steps, and with Adam's eps at
1e-5. The stochastic policy stays far from
deterministic (entropy ~0.5, ln 2 being uniform): the reward is mostly noise, and greedy acting is
what exploits the small edge. An untrained network's greedy policy passes for 2 of those 6 pairs
by chance; the three pairs below are ones it fails, so passing them is learning.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from finsense.agents.ppo import ActorCriticMLP, PPOAgent, PPOConfig
from tests.test_learning import (
    WINDOW,
    assert_beats_buy_and_hold_and_random,
    train_on_the_train_split,
)

pytestmark = pytest.mark.slow

STEPS = 30_000
HIDDEN_SIZES = (32,)
CONFIG = PPOConfig(
    learning_rate=3e-4,
    n_steps=2048,
    batch_size=256,
    n_epochs=10,
    gamma=0.9,
    reward_scale=100.0,
)


def train(seed: int, data_seed: int, steps: int = STEPS) -> PPOAgent:
    agent = PPOAgent.from_config(
        WINDOW + 1,
        2,
        network=functools.partial(ActorCriticMLP, hidden_sizes=HIDDEN_SIZES),
        seed=seed,
        **dataclasses.asdict(CONFIG),
    )
    return train_on_the_train_split(agent, seed, data_seed, steps)


@pytest.mark.parametrize(("seed", "data_seed"), [(0, 1), (1, 3), (2, 4)])
def test_greedy_policy_beats_buy_and_hold_and_random_on_the_test_split(
    seed: int, data_seed: int
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        agent = train(seed, data_seed)
    finally:
        torch.set_num_threads(threads)

    assert_beats_buy_and_hold_and_random(data_seed, lambda obs: agent.act(obs, explore=False))
