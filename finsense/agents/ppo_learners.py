"""How the PPO agent takes a gradient step: autograd for any network, or a hand-written fast path.

Both learners compute the same update of one minibatch: the losses of :func:`ppo_losses`
(clipped surrogate, value MSE, entropy bonus), the gradient of their weighted sum clipped to a
global L2 norm of ``max_grad_norm``, then an optimizer step.

- :class:`AutogradLearner` is the general path: autograd and any ``torch.optim`` optimizer, for
  any policy network (and separate critic).
- :class:`FastLearner` is an optimisation of exactly that path for the built-in
  :class:`~finsense.agents.actor_critic.ActorCriticMLP` with Adam: the gradient of the losses
  with respect to the logits and values written out (below), a hand-written backward pass
  through the MLP and :class:`~finsense.agents.optim.FlatAdam` on one flat parameter tensor.
  ``tests/test_ppo.py`` checks the two agree.

The fast path's gradients, for a minibatch of ``B`` rows with ``r = exp(log p(a) - old)`` and
normalised advantages ``A``: the clipped surrogate ``-mean(min(A r, A clip(r)))`` has
``dL/dr = -A / B`` where ``A r <= A clip(r)`` (elsewhere the clipped branch is taken, flat in
``r``), so ``dL/dlog p(a) = r dL/dr`` and ``dL/dlogits = dL/dlog p(a) (onehot(a) - p)``; the
entropy bonus ``-c_ent mean(H)``, ``H = -sum p log p``, adds ``c_ent / B p (log p + H)``; the
value loss ``c_vf mean((v - R)^2)`` has ``dL/dv = 2 c_vf (v - R) / B``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from finsense.agents.actor_critic import ActorCriticMLP
from finsense.agents.learners import load_torch_optimizer_state, torch_optimizer_state
from finsense.agents.optim import FlatAdam

if TYPE_CHECKING:
    from finsense.agents.ppo import PPOConfig

#: The minibatch statistics a learner returns, in order.
STATS = ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")


def normalized(advantages: Tensor, config: PPOConfig) -> Tensor:
    """The minibatch's advantages, standardised when ``normalize_advantage`` (and more than one)."""
    if config.normalize_advantage and len(advantages) > 1:
        return (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    return advantages


def ppo_losses(
    logits: Tensor,
    values: Tensor,
    actions: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    returns: Tensor,
    config: PPOConfig,
) -> dict[str, Tensor]:
    """The PPO losses of one minibatch (SB3's ``PPO.train``, one iteration).

    Returns:
        ``loss`` (with gradients: policy_loss + vf_coef * value_loss - ent_coef * entropy),
        ``policy_loss`` (the clipped surrogate, negated), ``value_loss`` (MSE to the returns),
        ``entropy`` (mean), ``approx_kl`` (``mean((r - 1) - log r)``) and ``clip_fraction``
        (the share of ratios outside the clip range; these two detached).
    """
    log_softmax = torch.log_softmax(logits, -1)
    log_probs = log_softmax.gather(1, actions.unsqueeze(1)).squeeze(1)
    entropy = -(log_softmax.exp() * log_softmax).sum(-1).mean()
    advantages = normalized(advantages, config)
    log_ratio = log_probs - old_log_probs
    ratio = torch.exp(log_ratio)
    surrogate = advantages * ratio
    clipped = advantages * torch.clamp(ratio, 1 - config.clip_range, 1 + config.clip_range)
    policy_loss = -torch.min(surrogate, clipped).mean()
    value_loss = torch.nn.functional.mse_loss(returns, values)
    loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = ((ratio - 1).abs() > config.clip_range).float().mean()
    return {
        "loss": loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": approx_kl,
        "clip_fraction": clip_fraction,
    }


class AutogradLearner:
    """The general PPO step: autograd and a ``torch.optim`` optimizer over actor and critic.

    Args:
        actor: the policy network (its own critic when ``critic`` is ``None``).
        critic: a separate value network, or ``None``.
        config: the agent's hyperparameters.
        optimizer_class: a ``torch.optim.Optimizer`` class, built with
            ``lr=config.learning_rate`` and ``optimizer_kwargs``.
        optimizer_kwargs: its other keyword arguments.
    """

    name = "autograd"

    def __init__(
        self,
        actor: nn.Module,
        critic: nn.Module | None,
        config: PPOConfig,
        optimizer_class: type[torch.optim.Optimizer],
        optimizer_kwargs: Mapping[str, Any],
    ) -> None:
        self.actor = actor
        self.critic = critic
        self.config = config
        self.params = list(actor.parameters())
        if critic is not None:
            self.params += list(critic.parameters())
        options: dict[str, Any] = {"lr": config.learning_rate, **optimizer_kwargs}
        self.optimizer = optimizer_class(self.params, **options)

    def logits_value(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Action logits ``(batch, n_actions)`` and values ``(batch,)`` of a batch."""
        if self.critic is not None:
            return self.actor(x), self.critic(x).reshape(-1)
        both = getattr(self.actor, "logits_and_value", None)
        if both is not None:
            logits, value = both(x)
            return logits, value.reshape(-1)
        return self.actor(x), self.actor.value(x).reshape(-1)  # type: ignore[operator]

    def gradient(
        self,
        obs: Tensor,
        actions: Tensor,
        old_log_probs: Tensor,
        advantages: Tensor,
        returns: Tensor,
    ) -> Tensor:
        """Compute the minibatch's loss gradient (into ``.grad``); return :data:`STATS`."""
        logits, values = self.logits_value(obs)
        out = ppo_losses(logits, values, actions, old_log_probs, advantages, returns, self.config)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        return torch.stack([out[key].detach() for key in STATS])

    def step(self) -> None:
        """Clip the gradient's global norm and take the optimizer step."""
        nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()

    def optimizer_state_dict(self) -> dict[str, Any]:
        """The optimizer's ``state_dict``, deep-copied (torch's shares the state tensors)."""
        return torch_optimizer_state(self.optimizer)

    def load_optimizer_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the optimizer's state; its hyperparameters (``lr`` ...) stay this agent's."""
        load_torch_optimizer_state(self.optimizer, state)


class FastLearner:
    """:class:`AutogradLearner`'s step for the built-in :class:`ActorCriticMLP` and Adam,
    without autograd (the gradients in the module docstring).

    Flattens the network (:meth:`ActorCriticMLP.flatten_`), so Adam and the gradient norm are
    one tensor op each. The optimizer is :class:`FlatAdam` with ``optimizer_kwargs`` (``betas``,
    ``eps``).
    """

    name = "fast"

    def __init__(
        self, actor: ActorCriticMLP, config: PPOConfig, optimizer_kwargs: Mapping[str, Any]
    ) -> None:
        self.actor = actor
        self.config = config
        self.params, self.grads = actor.flatten_()
        self.optimizer = FlatAdam(self.params, lr=config.learning_rate, **dict(optimizer_kwargs))

    def logits_value(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Action logits and values of a batch (:meth:`ActorCriticMLP.forward_cached`)."""
        logits, values, _ = self.actor.forward_cached(x)
        return logits, values

    def gradient(
        self,
        obs: Tensor,
        actions: Tensor,
        old_log_probs: Tensor,
        advantages: Tensor,
        returns: Tensor,
    ) -> Tensor:
        """Write the minibatch's loss gradient into the flat gradient; return :data:`STATS`."""
        cfg = self.config
        n = len(actions)
        logits, values, cache = self.actor.forward_cached(obs)
        log_p = torch.log_softmax(logits, 1)
        p = log_p.exp()
        entropies = (p * log_p).sum(1).neg_()
        log_ratio = log_p.gather(1, actions.unsqueeze(1)).squeeze(1).sub_(old_log_probs)
        ratio = log_ratio.exp()
        advantages = normalized(advantages, cfg)
        surrogate = advantages * ratio
        clipped = advantages * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)
        policy_loss = torch.minimum(surrogate, clipped).mean().neg_()
        value_error = values - returns
        value_loss = value_error.square().mean()
        entropy = entropies.mean()
        loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy

        # dL/dlog p(a) = -A r / B where the unclipped branch is the minimum, else 0.
        grad_log_pa = torch.where(surrogate <= clipped, advantages, 0.0).mul_(ratio).div_(-n)
        grad_logits = p * grad_log_pa.neg().unsqueeze(1)
        grad_logits.scatter_add_(1, actions.unsqueeze(1), grad_log_pa.unsqueeze(1))
        if cfg.ent_coef:
            grad_logits.addcmul_(p, log_p + entropies.unsqueeze(1), value=cfg.ent_coef / n)
        grad_values = value_error.mul_(2.0 * cfg.vf_coef / n)
        self.actor.backward_cached(cache, grad_logits, grad_values)

        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = ((ratio - 1).abs() > cfg.clip_range).float().mean()
        return torch.stack([loss, policy_loss, value_loss, entropy, approx_kl, clip_fraction])

    def step(self) -> None:
        """Clip the gradient's global norm as ``clip_grad_norm_`` does; take the Adam step."""
        norm = float(torch.linalg.vector_norm(self.grads))
        scale = self.config.max_grad_norm / (norm + 1e-6)
        if scale < 1.0:
            self.grads.mul_(scale)
        self.optimizer.step()

    def optimizer_state_dict(self) -> dict[str, Any]:
        """:meth:`FlatAdam.state_dict` (copies)."""
        return self.optimizer.state_dict()

    def load_optimizer_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the moments and step count; ``lr``, betas and eps stay this agent's."""
        self.optimizer.load_state_dict(dict(state))
