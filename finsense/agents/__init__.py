"""DQN agents: the learner, its Q-networks (MLP, conv1d, GRU) and its replay buffer."""

from __future__ import annotations

from finsense.agents.buffer import Batch, ReplayBuffer
from finsense.agents.dqn import DQNAgent, DQNConfig, greedy_action
from finsense.agents.learners import AutogradLearner, FastLearner, td_target
from finsense.agents.networks import QNetwork
from finsense.agents.optim import FlatAdam
from finsense.agents.sequence_networks import Conv1dQNetwork, GRUQNetwork

__all__ = [
    "AutogradLearner",
    "Batch",
    "Conv1dQNetwork",
    "DQNAgent",
    "DQNConfig",
    "FastLearner",
    "FlatAdam",
    "GRUQNetwork",
    "QNetwork",
    "ReplayBuffer",
    "greedy_action",
    "td_target",
]
