"""What the sequence Q-networks cost beside the built-in MLP: size, acting latency, gradient step.

Usage: ``python benchmarks/sequence_networks.py [--rounds 5] [--calls 2000] [--steps 200]``

For a trading observation of window 30 plus the position (``obs_dim=31``) and 2 actions, at
their defaults: ``mlp`` (``QNetwork``, hidden ``(64, 64)``), ``conv1d`` (``Conv1dQNetwork``) and
``gru`` (``GRUQNetwork``), both with ``sequence_length=30`` (the window; the position is the
extra feature). Printed per network, on one torch thread (as training runs by default):

- ``params``: the number of parameters;
- ``act``: one forward pass of a batch of one observation under ``torch.inference_mode``, as
  ``DQNAgent.act`` runs it, in microseconds;
- ``step``: one :class:`~finsense.agents.learners.AutogradLearner` gradient step (Double DQN
  target, Huber loss, backward, gradient clipping, Adam) on a minibatch of 64, in milliseconds;
  for the MLP also the hand-written :class:`~finsense.agents.learners.FastLearner` step
  (``fast``), which ``agent.learner=auto`` picks for it.

Each figure is the median over ``--rounds`` rounds of the mean time per call; the networks
alternate within each round so that drift in machine load hits all alike.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from finsense.agents import DQNConfig, QNetwork, ReplayBuffer
from finsense.agents.buffer import Batch
from finsense.agents.learners import AutogradLearner, FastLearner
from finsense.agents.sequence_networks import Conv1dQNetwork, GRUQNetwork

OBS_DIM = 31
N_ACTIONS = 2
WINDOW = OBS_DIM - 1
BATCH = 64

NETWORKS: dict[str, Callable[[], nn.Module]] = {
    "mlp": lambda: QNetwork(OBS_DIM, N_ACTIONS, (64, 64)),
    "conv1d": lambda: Conv1dQNetwork(OBS_DIM, N_ACTIONS, sequence_length=WINDOW),
    "gru": lambda: GRUQNetwork(OBS_DIM, N_ACTIONS, sequence_length=WINDOW),
}


def batches(n: int) -> list[Batch]:
    """``n`` minibatches of random transitions, sampled as the agent samples them."""
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(1_000, OBS_DIM)
    for _ in range(1_000):
        buffer.add(
            rng.standard_normal(OBS_DIM).astype(np.float32),
            int(rng.integers(N_ACTIONS)),
            float(rng.standard_normal()),
            rng.standard_normal(OBS_DIM).astype(np.float32),
            bool(rng.random() < 0.05),
        )
    return [buffer.sample(rng, BATCH) for _ in range(n)]


def per_call(fn: Callable[[], object], calls: int) -> float:
    """Mean seconds per call of ``fn`` over ``calls`` calls (after a few warm-up calls)."""
    for _ in range(min(calls, 20)):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def act_time(network: nn.Module, obs: torch.Tensor, calls: int) -> float:
    with torch.inference_mode():
        # As DQNAgent.act: a batch of one, argmax taken as a Python int.
        return per_call(lambda: int(network(obs).argmax()), calls)


def step_time(network: nn.Module, data: list[Batch], fast: bool) -> float:
    config = DQNConfig(batch_size=BATCH)
    online, target = copy.deepcopy(network), copy.deepcopy(network)
    learner: AutogradLearner | FastLearner
    if fast:
        assert isinstance(online, QNetwork) and isinstance(target, QNetwork)
        learner = FastLearner(online, target, config, {})
    else:
        learner = AutogradLearner(online, target, config, torch.optim.Adam, {})
    it = iter(data * 2)
    return per_call(lambda: learner.step(next(it)), len(data) - 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2_000, help="forward calls per round")
    parser.add_argument("--steps", type=int, default=200, help="gradient steps per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    networks = {name: build() for name, build in NETWORKS.items()}
    obs = torch.randn(1, OBS_DIM)
    data = batches(args.steps + 20)
    act: dict[str, list[float]] = {name: [] for name in networks}
    step: dict[str, list[float]] = {name: [] for name in networks}
    fast: list[float] = []
    for _ in range(args.rounds):
        for name, network in networks.items():
            act[name].append(act_time(network, obs, args.calls))
            step[name].append(step_time(network, data, fast=False))
            if name == "mlp":
                fast.append(step_time(network, data, fast=True))

    print(
        f"obs_dim={OBS_DIM}, n_actions={N_ACTIONS}, sequence_length={WINDOW}, batch={BATCH}, "
        f"torch {torch.__version__}, 1 thread, median of {args.rounds} rounds"
    )
    print(f"{'network':<8} {'params':>8} {'act (us)':>9} {'step (ms)':>10} {'fast (ms)':>10}")
    for name, network in networks.items():
        params = sum(p.numel() for p in network.parameters())
        fast_ms = f"{statistics.median(fast) * 1e3:10.3f}" if name == "mlp" else f"{'-':>10}"
        print(
            f"{name:<8} {params:>8,} {statistics.median(act[name]) * 1e6:9.1f} "
            f"{statistics.median(step[name]) * 1e3:10.3f} {fast_ms}"
        )


if __name__ == "__main__":
    main()
