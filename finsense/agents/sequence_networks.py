"""Q-networks that read the observation window as a sequence: a 1-D CNN and a GRU.

A trading observation (:class:`~finsense.envs.trading.TradingEnv`) is ``window_size`` past log
returns, oldest first, followed by extra features (the current position). The built-in
:class:`~finsense.agents.networks.QNetwork` sees it as a flat vector; the networks here treat its
first ``sequence_length`` entries as a univariate time series, encode it with convolutions
(:class:`Conv1dQNetwork`) or a recurrent layer (:class:`GRUQNetwork`), concatenate the remaining
``obs_dim - sequence_length`` entries (the extra features) to that encoding, and map the result
through one hidden ``Linear`` + ReLU layer to the head. ``sequence_length=None`` reads the whole
observation as the sequence (an env without a window, such as CartPole, or a window without
extras).

Both map ``(..., obs_dim)`` float32 to ``(..., n_actions)`` (a single observation ``(obs_dim,)``
gives ``(n_actions,)``), have the same optional dueling head as ``QNetwork``
(``Q = V + A - mean_a(A)``), start from PyTorch's default initialisation of each layer (so the
same ``torch.manual_seed`` gives the same weights) and draw nothing at random in ``forward``.
They train with the autograd learner (:class:`~finsense.agents.learners.AutogradLearner`;
``agent.learner=auto`` picks it for any network but the built-in MLP).

Constructor arguments are validated: a bad value raises :class:`~finsense.errors.ConfigError`
naming its config key (``agent.network.kernel_size`` ...). :attr:`arch` describes the shape in
plain values and :meth:`from_arch` rebuilds the network from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
import torch
from torch import Tensor, nn

from finsense.errors import ConfigError

#: Where the networks' arguments live in the config; error messages name keys under it.
CONFIG_PREFIX = "agent.network"


# -- argument validation ---------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _fail(key: str, rule: str, value: Any) -> ConfigError:
    return ConfigError(f"{CONFIG_PREFIX}.{key} {rule}, got {value!r}")


def _positive_int(value: Any, key: str) -> int:
    if not _is_int(value) or value < 1:
        raise _fail(key, "must be a positive integer", value)
    return int(value)


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise _fail(key, "must be true or false", value)
    return bool(value)


def _dims(obs_dim: Any, n_actions: Any) -> tuple[int, int]:
    # Both come from the env, not from the user's config: a bad value is a bug (ValueError).
    if not _is_int(obs_dim) or obs_dim < 1:
        raise ValueError(f"obs_dim must be a positive integer, got {obs_dim!r}")
    if not _is_int(n_actions) or n_actions < 1:
        raise ValueError(f"n_actions must be a positive integer, got {n_actions!r}")
    return int(obs_dim), int(n_actions)


def _sequence_length(value: Any, obs_dim: int) -> int:
    if value is None:
        return obs_dim
    if not _is_int(value) or not 1 <= value <= obs_dim:
        raise _fail(
            "sequence_length",
            f"must be null (the whole observation) or an integer from 1 to the observation "
            f"size {obs_dim}",
            value,
        )
    return int(value)


def _dueling_combine(out: Tensor) -> Tensor:
    """``QNetwork._combine`` with ``dueling``: advantages then value -> ``V + A - mean(A)``."""
    advantage, value = out[..., :-1], out[..., -1:]
    return advantage - advantage.mean(-1, keepdim=True) + value


class _SequenceQNetwork(nn.Module):
    """What both networks share: the split of the observation, the hidden layer and the head.

    Subclasses build ``self.hidden`` (``Linear`` to the head's input size) and implement
    :meth:`_encode_sequence` (``(batch, sequence_length)`` -> ``(batch, encoding size)``).
    """

    #: The network's name in the config (``agent.network`` choice) and in :data:`NETWORKS`.
    kind: ClassVar[str]

    obs_dim: int
    n_actions: int
    sequence_length: int
    n_extra: int
    dueling: bool
    hidden: nn.Linear
    head: nn.Linear

    def _init_common(
        self, obs_dim: Any, n_actions: Any, sequence_length: Any, dueling: Any
    ) -> None:
        self.obs_dim, self.n_actions = _dims(obs_dim, n_actions)
        self.sequence_length = _sequence_length(sequence_length, self.obs_dim)
        self.n_extra = self.obs_dim - self.sequence_length
        self.dueling = _flag(dueling, "dueling")

    def _build_head(self, encoding_size: int, hidden_size: int) -> None:
        self.hidden = nn.Linear(encoding_size + self.n_extra, hidden_size)
        self.head = nn.Linear(hidden_size, self.n_actions + 1 if self.dueling else self.n_actions)

    @property
    def arch(self) -> dict[str, Any]:
        """What the network's shape is made of, as plain values (saved next to its weights).

        ``obs_dim``, ``n_actions`` and every constructor argument; ``sequence_length`` as
        resolved (an integer, never ``None``).
        """
        raise NotImplementedError

    @classmethod
    def from_arch(cls, arch: dict[str, Any]) -> Self:
        """A network of the shape described by ``arch`` (as returned by :attr:`arch`)."""
        rest = {k: v for k, v in arch.items() if k not in ("obs_dim", "n_actions")}
        return cls(int(arch["obs_dim"]), int(arch["n_actions"]), **rest)

    def _encode_sequence(self, sequence: Tensor) -> Tensor:
        raise NotImplementedError

    def encode(self, obs: Tensor) -> Tensor:
        """The hidden layer's input: the sequence's encoding, then the extra features.

        ``(..., obs_dim) -> (batch, encoding size + n_extra)``, leading dimensions flattened
        into one batch dimension.
        """
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(
                f"expected observations of size {self.obs_dim}, got shape {tuple(obs.shape)}"
            )
        x = obs.reshape(-1, self.obs_dim)
        encoding = self._encode_sequence(x[:, : self.sequence_length])
        if self.n_extra:
            encoding = torch.cat((encoding, x[:, self.sequence_length :]), 1)
        return encoding

    def trunk(self, obs: Tensor) -> Tensor:
        """The head's input: :meth:`encode` through the hidden ``Linear`` + ReLU."""
        return self.hidden(self.encode(obs)).relu_()

    def forward(self, obs: Tensor) -> Tensor:
        """Q-values of ``obs``: ``(batch, obs_dim) -> (batch, n_actions)`` or unbatched."""
        out = self.head(self.trunk(obs))
        if self.dueling:
            out = _dueling_combine(out)
        return out.reshape(*obs.shape[:-1], self.n_actions)


class Conv1dQNetwork(_SequenceQNetwork):
    """A 1-D CNN over the observation window: ``(batch, obs_dim)`` -> ``(batch, n_actions)``.

    The sequence (the first ``sequence_length`` entries) goes through one ``Conv1d`` + ReLU layer
    per entry of ``channels`` (one input channel, then ``channels[i]`` output channels,
    ``kernel_size`` wide, stride 1), is flattened, concatenated with the extra features, and goes
    through ``Linear(hidden_size)`` + ReLU and the head (``n_actions`` outputs, or ``n_actions + 1``
    with ``dueling``, combined as in ``QNetwork``).

    Design choices:

    - **Flatten, not global average pooling.** In a trading window *when* something happened
      matters as much as *what* happened: yesterday's return says more about today than one a
      month ago. Average pooling over time makes the encoding invariant to where a pattern lies
      in the window (a crash yesterday and one 20 days ago give the same features), so the head
      could no longer weight recent days more. Flattening keeps each time step's features apart,
      at the cost of a hidden layer whose inputs grow with the window:
      ``channels[-1] * (sequence_length - len(channels) * (kernel_size - 1))`` of them, 352
      (22.6k weights) for the defaults and a window of 30, which is small. The window size is
      fixed by the env, so the flattened size is known when the network is built.
    - **No padding** ("valid" convolutions). Every convolution output is computed from real
      returns only, never from padding zeros at the window's edges; each layer shortens the
      sequence by ``kernel_size - 1``. Hence the rule that the layers must leave at least one
      step: ``len(channels) * (kernel_size - 1) < sequence_length``.

    Args:
        obs_dim: length of an observation vector.
        n_actions: number of discrete actions.
        sequence_length: the number of leading observation entries that form the sequence;
            ``None``: all of them (no extra features).
        channels: output channels of each convolution layer (at least one layer).
        kernel_size: width of every convolution kernel.
        hidden_size: units of the hidden layer between the encoding and the head.
        dueling: dueling head, ``Q = V + A - mean_a(A)``.

    Raises:
        ConfigError: an argument is out of range; the message names its ``agent.network.*`` key.
    """

    kind = "conv1d"

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        *,
        sequence_length: int | None = None,
        channels: Sequence[int] = (16, 16),
        kernel_size: int = 5,
        hidden_size: int = 64,
        dueling: bool = False,
    ) -> None:
        super().__init__()
        self._init_common(obs_dim, n_actions, sequence_length, dueling)
        if (
            isinstance(channels, str | bytes)
            or not isinstance(channels, Sequence)
            or len(channels) < 1
            or not all(_is_int(c) and c >= 1 for c in channels)
        ):
            raise _fail("channels", "must be a non-empty list of positive integers", channels)
        self.channels = tuple(int(c) for c in channels)
        self.kernel_size = _positive_int(kernel_size, "kernel_size")
        self.hidden_size = _positive_int(hidden_size, "hidden_size")
        n_layers = len(self.channels)
        steps = self.sequence_length - n_layers * (self.kernel_size - 1)
        if steps < 1:
            largest = (self.sequence_length - 1) // n_layers + 1
            raise _fail(
                "kernel_size",
                f"must be at most {largest} for a sequence of {self.sequence_length} steps "
                f"({CONFIG_PREFIX}.sequence_length) through {n_layers} unpadded conv layers "
                f"({CONFIG_PREFIX}.channels): each layer shortens it by kernel_size - 1",
                self.kernel_size,
            )
        #: Time steps left after the convolutions.
        self.conv_steps = steps
        sizes = (1, *self.channels)
        self.convs = nn.ModuleList(
            nn.Conv1d(i, o, self.kernel_size) for i, o in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self._build_head(self.channels[-1] * steps, self.hidden_size)

    @property
    def arch(self) -> dict[str, Any]:
        return {
            "obs_dim": self.obs_dim,
            "n_actions": self.n_actions,
            "sequence_length": self.sequence_length,
            "channels": list(self.channels),
            "kernel_size": self.kernel_size,
            "hidden_size": self.hidden_size,
            "dueling": self.dueling,
        }

    def _encode_sequence(self, sequence: Tensor) -> Tensor:
        h = sequence.unsqueeze(1)  # (batch, 1 channel, steps)
        for conv in self.convs:
            h = conv(h).relu_()
        return h.flatten(1)


class GRUQNetwork(_SequenceQNetwork):
    """A GRU over the observation window: ``(batch, obs_dim)`` -> ``(batch, n_actions)``.

    The sequence (the first ``sequence_length`` entries, oldest first) is read one value per
    step by a ``batch_first`` ``nn.GRU`` (input size 1, ``hidden_size`` units, ``num_layers``
    layers, no dropout); the last layer's hidden state after the last (most recent) step is
    concatenated with the extra features and goes through ``Linear(head_size)`` + ReLU and the
    head (``n_actions`` outputs, or ``n_actions + 1`` with ``dueling``, combined as in
    ``QNetwork``). The time loop runs inside the GRU kernel (cuDNN on the GPU), not in Python.

    On the GPU, cuDNN's RNN kernels may be nondeterministic for some CUDA versions unless
    ``CUBLAS_WORKSPACE_CONFIG`` is set (PyTorch's reproducibility notes); on the CPU the same
    inputs give the same outputs.

    Args:
        obs_dim: length of an observation vector.
        n_actions: number of discrete actions.
        sequence_length: the number of leading observation entries that form the sequence;
            ``None``: all of them (no extra features).
        hidden_size: units of the GRU's hidden state.
        num_layers: stacked GRU layers.
        head_size: units of the hidden layer between the encoding and the head.
        dueling: dueling head, ``Q = V + A - mean_a(A)``.

    Raises:
        ConfigError: an argument is out of range; the message names its ``agent.network.*`` key.
    """

    kind = "gru"

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        *,
        sequence_length: int | None = None,
        hidden_size: int = 32,
        num_layers: int = 1,
        head_size: int = 64,
        dueling: bool = False,
    ) -> None:
        super().__init__()
        self._init_common(obs_dim, n_actions, sequence_length, dueling)
        self.hidden_size = _positive_int(hidden_size, "hidden_size")
        self.num_layers = _positive_int(num_layers, "num_layers")
        self.head_size = _positive_int(head_size, "head_size")
        self.gru = nn.GRU(1, self.hidden_size, self.num_layers, batch_first=True)
        self._build_head(self.hidden_size, self.head_size)

    @property
    def arch(self) -> dict[str, Any]:
        return {
            "obs_dim": self.obs_dim,
            "n_actions": self.n_actions,
            "sequence_length": self.sequence_length,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "head_size": self.head_size,
            "dueling": self.dueling,
        }

    def _encode_sequence(self, sequence: Tensor) -> Tensor:
        _, h_n = self.gru(sequence.unsqueeze(-1))  # (batch, steps, 1) -> (layers, batch, hidden)
        return h_n[-1]

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # copy.deepcopy (the agent's target network) copies each GRU weight on its own; on the
        # GPU cuDNN then warns and re-packs them on every call. Pack them once, here (a no-op on
        # the CPU, as after .to(device)).
        self.gru.flatten_parameters()


#: The sequence networks by their config name (:attr:`_SequenceQNetwork.kind`).
NETWORKS: dict[str, type[Conv1dQNetwork] | type[GRUQNetwork]] = {
    Conv1dQNetwork.kind: Conv1dQNetwork,
    GRUQNetwork.kind: GRUQNetwork,
}

__all__ = ["CONFIG_PREFIX", "NETWORKS", "Conv1dQNetwork", "GRUQNetwork"]
