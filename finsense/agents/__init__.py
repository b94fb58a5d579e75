"""DQN agents: the learner, its Q-network and its replay buffer."""

from __future__ import annotations

from finsense.agents.buffer import Batch, ReplayBuffer
from finsense.agents.dqn import DQNAgent, DQNConfig, greedy_action
from finsense.agents.learners import AutogradLearner, FastLearner, td_target
from finsense.agents.networks import QNetwork
from finsense.agents.optim import FlatAdam

__all__ = [
    "AutogradLearner",
    "Batch",
    "DQNAgent",
    "DQNConfig",
    "FastLearner",
    "FlatAdam",
    "QNetwork",
    "ReplayBuffer",
    "greedy_action",
    "td_target",
]
