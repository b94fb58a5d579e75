"""Agents: DQN (its learners, Q-networks: MLP, conv1d, GRU, and replay buffer) and PPO."""

from __future__ import annotations

from finsense.agents.actor_critic import ActorCriticMLP
from finsense.agents.buffer import Batch, ReplayBuffer
from finsense.agents.dqn import DQNAgent, DQNConfig, greedy_action
from finsense.agents.learners import AutogradLearner, FastLearner, td_target
from finsense.agents.networks import QNetwork
from finsense.agents.optim import FlatAdam
from finsense.agents.ppo import PPOAgent, PPOConfig
from finsense.agents.sequence_networks import Conv1dQNetwork, GRUQNetwork

__all__ = [
    "ActorCriticMLP",
    "AutogradLearner",
    "Batch",
    "Conv1dQNetwork",
    "DQNAgent",
    "DQNConfig",
    "FastLearner",
    "FlatAdam",
    "GRUQNetwork",
    "PPOAgent",
    "PPOConfig",
    "QNetwork",
    "ReplayBuffer",
    "greedy_action",
    "td_target",
]
