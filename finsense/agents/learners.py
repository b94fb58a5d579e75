"""How the DQN agent takes a gradient step: autograd for any network, or a hand-written fast path.

Both learners compute the same update: the Double DQN (or DQN) target of :func:`td_target` without
gradients, the Huber loss (delta 1) of the TD error averaged over the batch, the gradient clipped
to a global L2 norm of ``max_grad_norm``, then an optimizer step.

- :class:`AutogradLearner` is the general path: ``network(obs)``, ``loss.backward()``,
  ``clip_grad_norm_`` and any ``torch.optim`` optimizer (Adam by default). Every parameter of the
  network learns, whatever its layers.
- :class:`FastLearner` is an optimisation of exactly that path for the built-in
  :class:`~finsense.agents.networks.QNetwork` with Adam: a hand-written backward pass and
  :class:`~finsense.agents.optim.FlatAdam` on one flat parameter tensor, several times cheaper for
  networks this small (``benchmarks/train_throughput.py``). It knows only ``QNetwork``'s own
  layers, so it is never used for a subclass, whose ``forward`` may differ
  (``tests/test_agent.py`` checks the two paths agree).

:func:`choose_learner` resolves ``agent.learner`` (``auto``, ``autograd`` or ``fast``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from finsense.agents.networks import QNetwork
from finsense.agents.optim import FlatAdam
from finsense.errors import ConfigError

if TYPE_CHECKING:
    from finsense.agents.buffer import Batch
    from finsense.agents.dqn import DQNConfig

#: The values ``agent.learner`` takes.
LEARNERS = ("auto", "autograd", "fast")

#: ``torch.optim.Adam`` keywords :class:`FlatAdam` implements too (the learning rate aside).
_FLAT_ADAM_KWARGS = frozenset({"betas", "eps"})


def fast_path_allowed(
    network: torch.nn.Module,
    optimizer_class: type[torch.optim.Optimizer],
    optimizer_kwargs: Mapping[str, Any],
    fast_network: type[torch.nn.Module] = QNetwork,
) -> bool:
    """Whether a hand-written fast path computes exactly what autograd would.

    Only for the built-in network itself (``type(network) is fast_network``: a subclass may
    change ``forward`` or add parameters the hand-written backward pass does not know) and for
    Adam with nothing but ``betas``/``eps`` set (what :class:`FlatAdam` implements).
    """
    return (
        type(network) is fast_network
        and optimizer_class is torch.optim.Adam
        and set(optimizer_kwargs) <= _FLAT_ADAM_KWARGS
    )


def choose_learner(
    requested: str,
    network: torch.nn.Module,
    optimizer_class: type[torch.optim.Optimizer],
    optimizer_kwargs: Mapping[str, Any],
    fast_network: type[torch.nn.Module] = QNetwork,
) -> str:
    """The learner ``agent.learner=requested`` means here: ``"fast"`` or ``"autograd"``.

    ``auto`` picks ``fast`` whenever :func:`fast_path_allowed`, else ``autograd``.

    Raises:
        ConfigError: ``fast`` requested for a network or optimizer it does not implement.
    """
    allowed = fast_path_allowed(network, optimizer_class, optimizer_kwargs, fast_network)
    if requested == "auto":
        return "fast" if allowed else "autograd"
    if requested == "fast" and not allowed:
        raise ConfigError(
            "agent.learner=fast needs the built-in MLP network and the Adam optimizer (got "
            f"{type(network).__name__} and {optimizer_class.__name__}"
            f"{' with ' + ', '.join(sorted(optimizer_kwargs)) if optimizer_kwargs else ''}); "
            "use agent.learner=auto"
        )
    return requested


def check_learner(saved: str, learner: str, requested: str) -> None:
    """Refuse to resume a checkpoint written by another learner (their optimizer states differ).

    Args:
        saved: the learner that wrote the checkpoint.
        learner: the one this agent resolved to; ``requested``: its ``agent.learner`` value.

    Raises:
        ConfigError: one line naming both and what to do.
    """
    if saved != learner:
        raise ConfigError(
            f"checkpoint was trained with agent.learner={saved}, this run uses {learner} "
            f"(agent.learner={requested}); resume it with agent.learner={saved}, or "
            "resume=never / a new name to start afresh"
        )


def torch_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A ``torch.optim`` optimizer's ``state_dict``, deep-copied (torch's shares the tensors)."""
    return copy.deepcopy(optimizer.state_dict())


def load_torch_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Restore an optimizer's state; its hyperparameters (``lr`` ...) stay as they are."""
    mine = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(dict(state))
    for group, hyper in zip(optimizer.param_groups, mine, strict=True):
        group.update(hyper)


def td_target(
    rewards: Tensor,
    dones: Tensor,
    gamma: float,
    q_next_target: Tensor,
    q_next_online: Tensor | None = None,
) -> Tensor:
    """The TD target ``y = r + gamma * (1 - done) * Q_target(s', a')``, shape ``(batch, 1)``.

    Args:
        rewards: ``(batch, 1)`` rewards of the transitions.
        dones: ``(batch, 1)``, 1.0 where ``s'`` is terminal (then ``y = r``).
        gamma: discount factor.
        q_next_target: ``(batch, n_actions)``, the target network's Q-values of ``s'``.
        q_next_online: ``(batch, n_actions)``, the online network's Q-values of ``s'``. Given:
            Double DQN, ``a' = argmax_a Q_online(s', a)``; ``None``: DQN,
            ``a' = argmax_a Q_target(s', a)``.
    """
    if q_next_online is not None:
        q_next = q_next_target.gather(1, q_next_online.argmax(1, keepdim=True))
    else:
        q_next = q_next_target.amax(1, keepdim=True)
    return torch.addcmul(rewards, 1.0 - dones, q_next, value=gamma)


class AutogradLearner:
    """The general DQN gradient step: autograd and a ``torch.optim`` optimizer, any network.

    Args:
        online: the network that acts and learns.
        target: its copy for the TD target (synced by :meth:`sync_target`).
        config: the agent's hyperparameters (``gamma``, ``double_q``, ``max_grad_norm``,
            ``learning_rate``).
        optimizer_class: a ``torch.optim.Optimizer`` class, built with
            ``lr=config.learning_rate`` and ``optimizer_kwargs``.
        optimizer_kwargs: further keyword arguments of the optimizer.
    """

    name = "autograd"

    def __init__(
        self,
        online: torch.nn.Module,
        target: torch.nn.Module,
        config: DQNConfig,
        optimizer_class: type[torch.optim.Optimizer],
        optimizer_kwargs: Mapping[str, Any],
    ) -> None:
        self.online = online
        self.target = target
        self.config = config
        # The target only ever runs under no_grad; not requiring grad keeps it out of any graph.
        self.target.requires_grad_(False)
        self.params = [p for p in online.parameters() if p.requires_grad]
        options: dict[str, Any] = {"lr": config.learning_rate, **optimizer_kwargs}
        self.optimizer = optimizer_class(self.params, **options)

    def q_values(self, obs: Tensor) -> Tensor:
        """The online network's Q-values of a batch: its own ``forward``."""
        return self.online(obs)

    def step(self, batch: Batch) -> float:
        """One gradient step on ``batch``; returns its mean Huber loss."""
        cfg = self.config
        with torch.no_grad():
            target = td_target(
                batch.rewards,
                batch.dones,
                cfg.gamma,
                self.target(batch.next_observations),
                self.online(batch.next_observations) if cfg.double_q else None,
            )
        q = self.online(batch.observations).gather(1, batch.actions)
        loss = F.smooth_l1_loss(q, target)  # Huber with delta 1, as the fast path
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        return loss.item()

    def sync_target(self) -> None:
        """Copy the online network (parameters and buffers) into the target network."""
        self.target.load_state_dict(self.online.state_dict())

    def optimizer_state_dict(self) -> dict[str, Any]:
        """The optimizer's ``state_dict``, deep-copied (torch's shares the state tensors)."""
        return torch_optimizer_state(self.optimizer)

    def load_optimizer_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the optimizer's state; its hyperparameters (``lr`` ...) stay this agent's."""
        load_torch_optimizer_state(self.optimizer, state)


class FastLearner:
    """:class:`AutogradLearner`'s step for the built-in ``QNetwork`` and Adam, without autograd.

    Flattens both networks (:meth:`QNetwork.flatten_`): each one's parameters, and the online
    one's gradients, become views of one flat tensor, so Adam, the gradient norm and the target
    sync are one tensor op each. Same arguments as :class:`AutogradLearner`, except that the
    optimizer is :class:`FlatAdam` with ``optimizer_kwargs`` (``betas``, ``eps``).
    """

    name = "fast"

    def __init__(
        self,
        online: QNetwork,
        target: QNetwork,
        config: DQNConfig,
        optimizer_kwargs: Mapping[str, Any],
    ) -> None:
        self.online = online
        self.target = target
        self.config = config
        self.params, self.grads = online.flatten_()
        self.target_params, _ = target.flatten_()
        self.optimizer = FlatAdam(self.params, lr=config.learning_rate, **dict(optimizer_kwargs))

    def q_values(self, obs: Tensor) -> Tensor:
        """The online network's Q-values of a batch (``forward`` with fewer ops)."""
        return self.online.forward_flat(obs)

    def step(self, batch: Batch) -> float:
        """One gradient step on ``batch``; returns its mean Huber loss."""
        cfg = self.config
        n = cfg.batch_size
        # Q(s, .), and for Double DQN also the online Q(s', .), in one forward pass.
        q_all, cache = self.online.forward_cached(
            batch.both_observations if cfg.double_q else batch.observations
        )
        q = q_all[:n]

        # TD target y = r + gamma * (1 - terminated) * Q_target(s', a'), no gradient through it.
        target = td_target(
            batch.rewards,
            batch.dones,
            cfg.gamma,
            self.target.forward_flat(batch.next_observations),
            q_all[n:] if cfg.double_q else None,
        )

        # Huber loss (delta 1) of the TD error d = Q(s, a) - y: with c = clamp(d, -1, 1) it is
        # mean(c * (d - c / 2)), and its gradient dL/dQ(s, a) is c / n.
        td_error = q.gather(1, batch.actions).sub_(target)
        clipped = td_error.clamp(-1.0, 1.0)
        loss = torch.dot(clipped.view(-1), td_error.sub_(clipped, alpha=0.5).view(-1))
        grad_q = torch.zeros_like(q).scatter_(1, batch.actions, clipped.div_(n))

        # Backpropagate, clip the global gradient norm as clip_grad_norm_ does, step Adam.
        self.online.backward_cached(cache, grad_q)
        scale = cfg.max_grad_norm / (float(torch.linalg.vector_norm(self.grads)) + 1e-6)
        if scale < 1.0:
            self.grads.mul_(scale)
        self.optimizer.step()
        return float(loss) / n

    def sync_target(self) -> None:
        """Copy the online network's parameters into the target network."""
        self.target_params.copy_(self.params)

    def optimizer_state_dict(self) -> dict[str, Any]:
        """:meth:`FlatAdam.state_dict` (copies)."""
        return self.optimizer.state_dict()

    def load_optimizer_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the moments and step count; ``lr``, betas and eps stay this agent's."""
        self.optimizer.load_state_dict(dict(state))
