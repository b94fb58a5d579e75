"""Experience replay: a preallocated ring of transitions, sampled uniformly with a given RNG."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from finsense.checkpoint.chunks import Chunked
from finsense.errors import ConfigError

#: log2 of the rows per stamp (see :meth:`ReplayBuffer.state_dict`): blocks of 1,024 rows.
_STAMP_SHIFT = 10


class Batch(NamedTuple):
    """A minibatch of transitions, as tensors on the learning device."""

    observations: Tensor  # (batch, obs_dim) float32
    actions: Tensor  # (batch, 1) int64
    rewards: Tensor  # (batch, 1) float32
    dones: Tensor  # (batch, 1) float32: 1.0 where the episode terminated (no bootstrapping)
    next_observations: Tensor  # (batch, obs_dim) float32
    both_observations: Tensor  # (2 * batch, obs_dim): observations, then next_observations


class ReplayBuffer:
    """The last ``capacity`` transitions ``(s, a, r, s', terminated)`` in preallocated CPU memory.

    Samples are moved to ``device`` (the learner's); storage stays in CPU memory either way.

    Storage is torch tensors whose memory numpy arrays share, so :meth:`add` is a few numpy row
    writes and :meth:`sample` a few ``index_select`` calls, with no copies in between. ``s`` and
    ``s'`` live in one ``(2, capacity, obs_dim)`` tensor, so a sample of both is one gather and
    comes out as one contiguous block.

    Only ``terminated`` is stored as ``done``: an episode cut by a time limit (``truncated``) still
    bootstraps from its next state.

    Every block of 1,024 rows carries a stamp, the count of transitions added when a row of it
    was last written, so that a checkpoint rewrites only the blocks that changed since the last
    one (see :class:`~finsense.checkpoint.chunks.Chunked`).
    """

    def __init__(self, capacity: int, obs_dim: int, device: torch.device | str = "cpu") -> None:
        self.capacity = int(capacity)
        self.obs_dim = int(obs_dim)
        self.device = torch.device(device)
        self._on_cpu = self.device.type == "cpu"
        self.observations = torch.zeros((2, self.capacity, self.obs_dim), dtype=torch.float32)
        # Columns of one, so that a sample is (batch, 1) like the Q-values gathered with it.
        self.actions = torch.zeros((self.capacity, 1), dtype=torch.int64)
        self.rewards = torch.zeros((self.capacity, 1), dtype=torch.float32)
        self.dones = torch.zeros((self.capacity, 1), dtype=torch.float32)
        # Writable numpy views of the same memory.
        self._obs = self.observations.numpy()
        self._actions = self.actions.numpy()
        self._rewards = self.rewards.numpy()
        self._dones = self.dones.numpy()
        self.pos = 0  # the row the next transition is written to
        self.fill = 0  # how many rows hold transitions
        self.added = 0  # transitions ever added: the stamps' clock
        self._stamps = [0] * -(-self.capacity >> _STAMP_SHIFT)  # 0: never written

    def __len__(self) -> int:
        return self.fill

    def add(
        self,
        obs: np.ndarray,
        action: int,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
    ) -> None:
        """Store one transition, overwriting the oldest once the buffer is full."""
        pos = self.pos
        self._obs[0, pos] = obs
        self._obs[1, pos] = next_obs
        self._actions[pos] = action
        self._rewards[pos] = reward
        self._dones[pos] = terminated
        self.added += 1
        self._stamps[pos >> _STAMP_SHIFT] = self.added
        pos += 1
        self.pos = 0 if pos == self.capacity else pos
        if self.fill < self.capacity:
            self.fill += 1

    def sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        """``batch_size`` transitions drawn uniformly, with replacement, using ``rng``."""
        if self.fill == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        index = torch.from_numpy(rng.integers(0, self.fill, size=batch_size))
        both = self.observations.index_select(1, index)
        actions = self.actions.index_select(0, index)
        rewards = self.rewards.index_select(0, index)
        dones = self.dones.index_select(0, index)
        if not self._on_cpu:
            both, actions = both.to(self.device), actions.to(self.device)
            rewards, dones = rewards.to(self.device), dones.to(self.device)
        return Batch(both[0], actions, rewards, dones, both[1], both.view(-1, self.obs_dim))

    def state_dict(self) -> dict[str, Any]:
        """The ring's position, fill and stamps, and its storage as
        :class:`~finsense.checkpoint.chunks.Chunked` views of the live memory (no copy, as
        ``nn.Module.state_dict`` returns its parameters: save it before adding more)."""
        stamps = list(self._stamps)
        rows = 1 << _STAMP_SHIFT
        return {
            "capacity": self.capacity,
            "obs_dim": self.obs_dim,
            "pos": self.pos,
            "fill": self.fill,
            "added": self.added,
            "stamps": torch.tensor(stamps, dtype=torch.int64),
            "observations": Chunked(self.observations[0], stamps, rows),
            "next_observations": Chunked(self.observations[1], stamps, rows),
            "actions": Chunked(self.actions, stamps, rows),
            "rewards": Chunked(self.rewards, stamps, rows),
            "dones": Chunked(self.dones, stamps, rows),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (or a checkpoint of it, where each
        :class:`~finsense.checkpoint.chunks.Chunked` is a tensor); the capacity and ``obs_dim``
        must match. Reads the storage of FinSense 0.x checkpoints too (the filled rows only,
        observations and next observations in one tensor)."""
        if int(state["capacity"]) != self.capacity:
            raise ConfigError(
                f"checkpoint replay buffer holds {state['capacity']} transitions != config "
                f"agent.buffer_size={self.capacity}; set agent.buffer_size={state['capacity']} "
                "to resume this run"
            )
        if int(state["obs_dim"]) != self.obs_dim:
            raise ConfigError(
                f"checkpoint replay buffer observations have {state['obs_dim']} values != "
                f"{self.obs_dim} for this env; resume with the env settings of the checkpoint"
            )
        n = int(state["fill"])
        stored = {k: v.tensor if isinstance(v, Chunked) else v for k, v in state.items()}
        if "next_observations" in stored:  # the whole ring, as this version saves it
            self.observations[0].copy_(stored["observations"])
            self.observations[1].copy_(stored["next_observations"])
            for name in ("actions", "rewards", "dones"):
                getattr(self, name).copy_(stored[name])
            self.added = int(state["added"])
            self._stamps = [int(s) for s in stored["stamps"].tolist()]
        else:  # the filled rows only, before stamps
            for name in ("observations", "actions", "rewards", "dones"):
                target: Tensor = getattr(self, name)
                target.zero_()
                if name == "observations":
                    target[:, :n] = stored[name]
                else:
                    target[:n] = stored[name]
            self.added = n
            self._stamps = [0] * len(self._stamps)
            for block in range(-(-n >> _STAMP_SHIFT)):
                self._stamps[block] = n
        self.fill = n
        self.pos = int(state["pos"])
