"""Proximal Policy Optimization with the clipped objective (Schulman et al., 2017).

One training round, in the order of the algorithm: act by sampling the policy's categorical
distribution (:meth:`PPOAgent.act`, which also keeps the action's log-probability and the state's
value), store each transition (:meth:`PPOAgent.observe`) until ``n_steps`` are stored (rollouts
run across episode boundaries), then bootstrap the last step, compute generalised advantage
estimates (GAE, Schulman et al., 2016) and returns, and run ``n_epochs`` passes of shuffled
minibatches over the rollout (:meth:`PPOAgent.learn`): clipped surrogate + ``vf_coef`` x value
MSE - ``ent_coef`` x entropy, gradients clipped to ``max_grad_norm``, optionally stopping early
when the approximate KL divergence passes ``1.5 x target_kl``. Names and defaults follow
Stable-Baselines3's ``PPO``.

Episode ends: a terminated step has no future (no bootstrap); an episode cut by a time limit
(:meth:`PPOAgent.end_episode` after a step that did not terminate) bootstraps with the critic's
value of the step's next observation, as does the last step of a rollout.

The policy network is ``agent.network``: :class:`ActorCriticMLP` (actor and critic in one module,
``forward`` -> action logits, ``value`` -> state values), or any network mapping observations to
one output per action (the Q-networks of ``agent/network/``, a user's): then a second network is
built from the same config with one output, as the critic. Everything needed to continue exactly
after a restart, the rollout in progress included, is in :meth:`PPOAgent.state_dict`, as tensors
and plain Python values (``torch.load(..., weights_only=True)`` reads it back).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from finsense.agents.actor_critic import ActorCriticMLP
from finsense.agents.dqn import _global_rng_state, _set_global_rng_state, check_arch
from finsense.agents.learners import LEARNERS, check_learner, choose_learner
from finsense.agents.ppo_learners import STATS, AutogradLearner, FastLearner, ppo_losses
from finsense.device import resolve_device
from finsense.errors import CheckpointError, ConfigError

#: Names of the values :meth:`PPOAgent.episode_metrics` reports (those of the latest update).
METRIC_NAMES: tuple[str, ...] = (
    "entropy",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "policy_loss",
    "value_loss",
)


# -- hyperparameters -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters; names and defaults are Stable-Baselines3's ``PPO``.

    Steps are env steps (transitions observed by the agent), counted over the agent's whole life,
    across restarts.
    """

    learning_rate: float = 3e-4
    """Optimizer step size (constant)."""
    n_steps: int = 2048
    """Transitions per rollout: an update runs every this many env steps (across episodes)."""
    batch_size: int = 64
    """Transitions per minibatch (the last minibatch of an epoch may be smaller)."""
    n_epochs: int = 10
    """Passes over each rollout, each in a fresh random order."""
    gamma: float = 0.99
    """Discount factor per step."""
    gae_lambda: float = 0.95
    """GAE's bias/variance trade-off: 0 is the one-step TD error, 1 the Monte-Carlo return."""
    clip_range: float = 0.2
    """The probability ratio is clipped to [1 - clip_range, 1 + clip_range]."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Clip the gradient's global L2 norm (actor and critic together) to this value."""
    normalize_advantage: bool = True
    """Standardise the advantages of each minibatch (of more than one transition)."""
    target_kl: float | None = None
    """Stop an update's epochs early once a minibatch's approximate KL divergence from the
    rollout's policy passes 1.5 x this (null: never)."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this before they are stored (FinSense's trading preset: 100,
    daily log returns being ~0.01)."""
    learner: str = "auto"
    """How a gradient step is computed: ``autograd`` (any network, any optimizer), ``fast``
    (hand-written, only :class:`ActorCriticMLP` with Adam) or ``auto`` (``fast`` where it applies,
    see :mod:`finsense.agents.ppo_learners`)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first ``agent.<key>`` of a wrong type or out of
        range."""

        def require(ok: bool, key: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"agent.{key} {rule}, got {getattr(self, key)!r}")

        def is_int(value: Any) -> bool:
            return isinstance(value, int | np.integer) and not isinstance(value, bool)

        def is_number(value: Any) -> bool:
            return (
                isinstance(value, int | float | np.number)
                and not isinstance(value, bool)
                and math.isfinite(value)
            )

        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "target_kl":
                require(value is None or is_number(value), f.name, "must be a number or null")
            elif f.type in ("int", int):
                require(is_int(value), f.name, "must be an integer")
            elif f.type in ("float", float):
                require(is_number(value), f.name, "must be a finite number")
            elif f.type in ("bool", bool):
                require(isinstance(value, bool | np.bool_), f.name, "must be true or false")
            elif f.type in ("str", str):
                require(isinstance(value, str), f.name, "must be a string")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.n_steps >= 1, "n_steps", "must be >= 1")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        if self.batch_size > self.n_steps:
            raise ConfigError(
                f"agent.batch_size={self.batch_size} must be <= agent.n_steps={self.n_steps} "
                "(a minibatch is part of one rollout); lower agent.batch_size or raise "
                "agent.n_steps"
            )
        require(self.n_epochs >= 1, "n_epochs", "must be >= 1")
        require(0.0 <= self.gamma <= 1.0, "gamma", "must be in [0, 1]")
        require(0.0 <= self.gae_lambda <= 1.0, "gae_lambda", "must be in [0, 1]")
        require(self.clip_range > 0, "clip_range", "must be > 0")
        require(self.ent_coef >= 0, "ent_coef", "must be >= 0")
        require(self.vf_coef >= 0, "vf_coef", "must be >= 0")
        require(self.max_grad_norm > 0, "max_grad_norm", "must be > 0")
        require(self.target_kl is None or self.target_kl > 0, "target_kl", "must be > 0 or null")
        require(self.reward_scale > 0, "reward_scale", "must be > 0")
        require(self.learner in LEARNERS, "learner", "must be one of " + ", ".join(LEARNERS))


# -- GAE -----------------------------------------------------------------------------------------
def gae(
    rewards: Sequence[float],
    values: Sequence[float],
    ends: Sequence[bool],
    next_values: Sequence[float],
    gamma: float,
    gae_lambda: float,
) -> tuple[list[float], list[float]]:
    """Generalised advantage estimates and returns (``advantage + value``) of one rollout.

    ``ends[t]``: step ``t`` is the last of its trajectory in the rollout (an episode end, or the
    rollout's last step); there the next state's value is ``next_values[t]`` (0 for a terminated
    step, the critic's value of the next observation otherwise). Elsewhere it is
    ``values[t + 1]``. Computed in Python floats (double precision).
    """
    n = len(rewards)
    advantages = [0.0] * n
    last = 0.0
    for t in range(n - 1, -1, -1):
        if ends[t] or t == n - 1:
            last = rewards[t] + gamma * next_values[t] - values[t]
        else:
            delta = rewards[t] + gamma * values[t + 1] - values[t]
            last = delta + gamma * gae_lambda * last
        advantages[t] = last
    returns = [a + v for a, v in zip(advantages, values, strict=True)]
    return advantages, returns


# -- the agent -----------------------------------------------------------------------------------
class PPOAgent:
    """A clipped-objective PPO learner for a discrete action space and a flat float32 observation.

    Args:
        obs_dim: length of an observation vector.
        n_actions: number of discrete actions.
        config: hyperparameters (validated).
        seed: seeds the network initialisation (when built here) and the agent's own torch
            generator (action sampling and minibatch order); the global generators are not
            touched by construction.
        device: where the networks learn (``cpu``, ``cuda``, ``cuda:N``, ``auto``, a
            ``torch.device``). The rollout stays in CPU memory.
        network: the policy network, mapping ``(batch, obs_dim)`` float32 to ``(batch,
            n_actions)`` action logits. When it has a ``value`` method (``(batch, obs_dim)`` ->
            ``(batch,)``), it is the critic too; otherwise ``critic`` is. ``None``: an
            :class:`ActorCriticMLP` seeded by ``seed``.
        critic: the value network, ``(batch, obs_dim)`` -> ``(batch, 1)`` or ``(batch,)``, when
            ``network`` has no ``value`` method.
        optimizer_class: the ``torch.optim`` optimizer over actor and critic, built with
            ``lr=config.learning_rate`` and ``optimizer_kwargs``.
        optimizer_kwargs: its other keyword arguments.

    Raises:
        ConfigError: ``config.learner`` is ``fast`` but the network is not exactly
            :class:`ActorCriticMLP` or the optimizer not Adam.
    """

    #: ``agent.*`` keys a saved state cannot follow a change of: the network (its weights are
    #: shaped by it) and the rollout's length (a rollout in progress is saved).
    resume_keys: tuple[str, ...] = ("network", "n_steps")

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        config: PPOConfig = PPOConfig(),  # noqa: B008 - frozen, so one shared default is safe
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
        network: nn.Module | None = None,
        critic: nn.Module | None = None,
        optimizer_class: Any = torch.optim.Adam,
        optimizer_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.obs_dim = int(obs_dim)
        self.n_actions = int(n_actions)
        self.device = resolve_device(str(device))
        if network is None:
            with torch.random.fork_rng(devices=[]):  # leaves the global CPU generator as it was
                torch.default_generator.manual_seed(seed)
                network = ActorCriticMLP(obs_dim, n_actions)
        shared = callable(getattr(network, "value", None))
        if shared and critic is not None:
            raise ValueError("network has a value method: it is its own critic; pass no critic")
        if not shared and critic is None:
            raise ValueError("network has no value method: pass a critic")
        kwargs = dict(optimizer_kwargs or {})
        #: ``"fast"`` or ``"autograd"``: what ``config.learner`` resolved to for this network
        #: and optimizer; saved in :meth:`state_dict` (a resume must use the same).
        self.learner = choose_learner(
            config.learner,
            network,  # with a separate critic it is never ActorCriticMLP (which has a value head)
            optimizer_class,
            kwargs,
            ActorCriticMLP,
        )
        self.actor = network.to(self.device)
        self.critic = None if critic is None else critic.to(self.device)
        self._learner: AutogradLearner | FastLearner
        # The fast path acts from numpy copies of the weights, taken again after each change.
        self._acting: list[tuple[np.ndarray, np.ndarray]] | None = None
        if self.learner == "fast":
            assert isinstance(self.actor, ActorCriticMLP)
            self._learner = FastLearner(self.actor, config, kwargs)
            self._acting = self.actor.acting_weights()
        else:
            self._learner = AutogradLearner(
                self.actor, self.critic, config, optimizer_class, kwargs
            )
        self.optimizer = self._learner.optimizer
        self._generator = torch.Generator().manual_seed(int(seed))

        n = config.n_steps
        # The rollout, in CPU memory (numpy: cheap per-step writes).
        self._obs = np.zeros((n, self.obs_dim), dtype=np.float32)
        self._actions = np.zeros(n, dtype=np.int64)
        self._log_probs = np.zeros(n, dtype=np.float32)
        self._values = np.zeros(n, dtype=np.float32)
        self._rewards = np.zeros(n, dtype=np.float32)
        self._ends = np.zeros(n, dtype=np.bool_)  # the step is the last of its episode
        self._terminated = np.zeros(n, dtype=np.bool_)
        self._next_values = np.zeros(n, dtype=np.float32)  # V(next obs) where the chain breaks
        self._last_next_obs = np.zeros(self.obs_dim, dtype=np.float32)
        self._pos = 0
        # What act() computed for the observation observe() stores next: the log-probability
        # of the action taken and the state's value.
        self._pending: tuple[float, float] | None = None

        self._steps = 0
        self._episodes = 0
        self._updates = 0
        self._metrics: dict[str, float] = dict.fromkeys(METRIC_NAMES, math.nan)

    @classmethod
    def from_config(
        cls,
        obs_dim: int,
        n_actions: int,
        *,
        network: Callable[[int, int], nn.Module] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        **hyperparameters: Any,
    ) -> PPOAgent:
        """The agent of an ``agent/ppo.yaml`` config node (``_target_`` of ``agent``).

        Args:
            obs_dim, n_actions: the env's observation size and number of actions.
            network: ``agent.network``, a ``_partial_`` that builds the policy network from
                ``(obs_dim, n_actions)``, called with the torch generator seeded by ``seed``
                (the global generators are left as they were). When what it builds has no
                ``value`` method, it is called again with ``(obs_dim, 1)`` for the critic.
                ``None``: :class:`ActorCriticMLP` with its defaults.
            optimizer: ``agent.optimizer``, a ``_partial_`` ``torch.optim`` class (its own
                keywords kept; the learning rate is ``agent.learning_rate``).
            seed, device: as :class:`PPOAgent`.
            hyperparameters: the fields of :class:`PPOConfig`.

        Raises:
            ConfigError: one line naming the key: an unknown hyperparameter, a network whose
                output is not one value per action, ``agent.optimizer.lr`` set.
        """
        from finsense.components import (
            agent_hyperparameters,
            build_network,
            check_network,
            optimizer_parts,
            seeded,
        )

        config = agent_hyperparameters(PPOConfig, hyperparameters)
        optimizer_class, optimizer_kwargs = optimizer_parts(optimizer)
        if network is None:
            network = ActorCriticMLP
        obs_dim, n_actions = int(obs_dim), int(n_actions)
        critic: nn.Module | None = None
        with seeded(seed):
            actor = build_network(network, obs_dim, n_actions)
            if not callable(getattr(actor, "value", None)):
                critic = build_network(network, obs_dim, 1)
        check_network(actor, obs_dim, n_actions, "agent.network")
        if critic is None:
            _check_value(actor, obs_dim)
        else:
            check_network(critic, obs_dim, 1, "agent.network (as the critic, one output)")
        return cls(
            obs_dim,
            n_actions,
            config,
            seed=seed,
            device=device,
            network=actor,
            critic=critic,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
        )

    # -- counters ---------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """Transitions observed so far (over the agent's whole life, restarts included)."""
        return self._steps

    @property
    def episodes(self) -> int:
        """Episodes ended so far (:meth:`end_episode` calls)."""
        return self._episodes

    @property
    def updates(self) -> int:
        """Updates (rollouts learned from) so far."""
        return self._updates

    @property
    def rollout_size(self) -> int:
        """Transitions stored in the rollout in progress."""
        return self._pos

    # -- networks ---------------------------------------------------------------------------
    def _logits_value(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Action logits ``(batch, n_actions)`` and values ``(batch,)`` of a batch."""
        return self._learner.logits_value(x)

    def _policy(self, obs: np.ndarray) -> tuple[list[float], float]:
        """The action logits (Python floats) and the value of one observation.

        The fast path computes them in numpy from :meth:`ActorCriticMLP.acting_weights` (a few
        microseconds; torch spends more than that per call on one observation).
        """
        if self._acting is None:
            with torch.inference_mode():
                x = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(0)
                logits, value = self._logits_value(x)
                return logits[0].tolist(), float(value[0])
        h = np.asarray(obs, dtype=np.float32)
        *hidden, (w, b) = self._acting
        for w_layer, b_layer in hidden:
            h = np.tanh(w_layer @ h + b_layer)
        out = (w @ h + b).tolist()
        return out[:-1], out[-1]

    def _value(self, x: Tensor) -> Tensor:
        if self.critic is not None:
            return self.critic(x).reshape(-1)
        return self.actor.value(x).reshape(-1)  # type: ignore[operator]

    def value_of(self, obs: np.ndarray) -> float:
        """The critic's value of one observation (no gradients)."""
        with torch.inference_mode():
            x = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(0)
            return float(self._value(x)[0])

    # -- acting and learning ----------------------------------------------------------------
    def act(self, obs: np.ndarray, explore: bool = True) -> int:
        """The action for ``obs``: sampled from the policy when ``explore``, else its most
        probable action (drawing nothing, so evaluating mid-training does not change the course
        of training).

        Sampling inverts the policy's cumulative distribution at one uniform draw of the agent's
        own generator, and keeps the action's log-probability and the state's value for the
        :meth:`observe` that follows.
        """
        if not explore:
            with torch.inference_mode():
                # A batch of one: the same kernels as evaluation's forward.
                x = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(0)
                return int(self.actor(x).argmax())
        logits, value = self._policy(obs)
        # Python floats: for a handful of actions cheaper than any array library's calls.
        top, weights, total = _softmax_parts(logits)
        u = float(torch.rand((), dtype=torch.float64, generator=self._generator)) * total
        action, cumulative = len(weights) - 1, 0.0
        for i, w in enumerate(weights):
            cumulative += w
            if u < cumulative:
                action = i
                break
        self._pending = (logits[action] - top - math.log(total), value)
        return action

    def observe(
        self,
        obs: np.ndarray,
        action: int,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
    ) -> float | None:
        """Store a transition (reward times ``reward_scale``); learn once ``n_steps`` are stored.

        ``obs`` is the observation of the latest :meth:`act` (its log-probabilities and value are
        used; without one, they are computed here).

        Returns:
            The mean loss of the update run now, or ``None`` if none ran.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            logits, value = self._policy(obs)
            pending = (_log_prob(logits, action), value)
        t = self._pos
        self._obs[t] = obs
        self._actions[t] = action
        self._log_probs[t], self._values[t] = pending
        self._rewards[t] = reward * self.config.reward_scale
        self._terminated[t] = terminated
        self._ends[t] = terminated
        self._next_values[t] = 0.0
        self._last_next_obs[:] = next_obs
        self._pos = t + 1
        self._steps += 1
        if self._pos == self.config.n_steps:
            return self.learn()
        return None

    def end_episode(self) -> None:
        """The episode ended after the last stored step: a step that did not terminate (a time
        limit) is bootstrapped with the critic's value of its next observation."""
        self._episodes += 1
        self._pending = None
        t = self._pos - 1
        if t >= 0 and not self._ends[t]:
            self._ends[t] = True
            self._next_values[t] = self.value_of(self._last_next_obs)

    def advantages_and_returns(self) -> tuple[Tensor, Tensor]:
        """GAE advantages and returns of the rollout stored so far (float32, ``(size,)``).

        The last stored step, unless it terminated or already ended its episode, is bootstrapped
        with the critic's value of its next observation now (the rollout is cut there).
        """
        n = self._pos
        last = n - 1
        if n and not self._ends[last]:
            self._next_values[last] = self.value_of(self._last_next_obs)
        cfg = self.config
        advantages, returns = gae(
            self._rewards[:n].tolist(),
            self._values[:n].tolist(),
            self._ends[:n].tolist(),
            self._next_values[:n].tolist(),
            cfg.gamma,
            cfg.gae_lambda,
        )
        return (
            torch.tensor(advantages, dtype=torch.float32),
            torch.tensor(returns, dtype=torch.float32),
        )

    def losses(
        self,
        obs: Tensor,
        actions: Tensor,
        old_log_probs: Tensor,
        advantages: Tensor,
        returns: Tensor,
    ) -> dict[str, Tensor]:
        """The PPO losses of one minibatch (:func:`~finsense.agents.ppo_learners.ppo_losses`),
        with gradients through the networks on the autograd path."""
        logits, values = self._logits_value(obs)
        return ppo_losses(logits, values, actions, old_log_probs, advantages, returns, self.config)

    def learn(self) -> float:
        """One PPO update on the rollout stored so far, then clear it; return its mean loss."""
        cfg = self.config
        n = self._pos
        if n == 0:
            return math.nan
        advantages, returns = self.advantages_and_returns()
        dev = self.device
        obs = torch.from_numpy(self._obs[:n]).to(dev)
        actions = torch.from_numpy(self._actions[:n]).to(dev)
        old_log_probs = torch.from_numpy(self._log_probs[:n]).to(dev)
        advantages, returns = advantages.to(dev), returns.to(dev)
        sums = torch.zeros(len(STATS), device=dev)
        kl = STATS.index("approx_kl")
        count = 0
        self.actor.train()
        if self.critic is not None:
            self.critic.train()
        stop = False
        for _ in range(cfg.n_epochs):
            order = torch.randperm(n, generator=self._generator).to(dev)
            # Shuffled once per epoch: each minibatch is then a slice (a view, no copy).
            shuffled = [t[order] for t in (obs, actions, old_log_probs, advantages, returns)]
            for start in range(0, n, cfg.batch_size):
                stats = self._learner.gradient(
                    *(t[start : start + cfg.batch_size] for t in shuffled)
                )
                # As SB3: the minibatch that stops the update counts in the means.
                sums += stats
                count += 1
                if cfg.target_kl is not None and float(stats[kl]) > 1.5 * cfg.target_kl:
                    stop = True
                    break
                self._learner.step()
            if stop:
                break
        if self._acting is not None:
            self._acting = self.actor.acting_weights()  # type: ignore[operator]
        values = torch.from_numpy(self._values[:n])
        var_returns = float(returns.cpu().var(unbiased=False))
        explained = (
            math.nan
            if var_returns == 0
            else 1.0 - float((returns.cpu() - values).var(unbiased=False)) / var_returns
        )
        mean = dict(zip(STATS, (sums / count).tolist(), strict=True))
        mean["explained_variance"] = explained
        self._metrics = {k: round(mean[k], 6) for k in METRIC_NAMES}
        self._updates += 1
        self._pos = 0
        return mean["loss"]

    def episode_metrics(self) -> dict[str, float]:
        """What the agent adds to each episode's row: the latest update's mean ``entropy``,
        ``approx_kl``, ``clip_fraction``, ``policy_loss``, ``value_loss`` over its minibatches
        and the rollout's ``explained_variance`` (NaN before the first update)."""
        return dict(self._metrics)

    def training_warnings(self) -> list[str]:
        """Why training so far may have taught the agent nothing: no update at all."""
        if self._updates:
            return []
        return [
            f"no PPO update in {self._steps} env steps (the first comes at agent.n_steps="
            f"{self.config.n_steps}); raise episodes or env.episode_length, or lower "
            "agent.n_steps"
        ]

    # -- state ------------------------------------------------------------------------------
    @property
    def network_arch(self) -> dict[str, Any]:
        """The policy network's shape as plain values: ``obs_dim``, ``n_actions`` and the
        network's own ``arch`` when it has one."""
        arch = dict(getattr(self.actor, "arch", None) or {})
        return {**arch, "obs_dim": self.obs_dim, "n_actions": self.n_actions}

    def policy_state_dict(self) -> dict[str, Any]:
        """The policy network alone: ``{"arch": {...}, "weights": {...}}`` (for evaluation)."""
        return {
            "arch": self.network_arch,
            "weights": {k: v.detach().clone() for k, v in self.actor.state_dict().items()},
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: ``{"policy": ..., "training": ...}``.

        ``training`` holds the separate critic (or ``None``), the optimizer state, the rollout
        in progress (its filled rows), the step, episode and update counters, the latest update's
        metrics, and the states of the agent's generator and of the global python ``random``,
        numpy and torch (and CUDA) generators: tensors and plain Python values, copied.
        """
        n = self._pos

        def rows(array: np.ndarray) -> Tensor:
            return torch.from_numpy(array[:n].copy())

        critic = None
        if self.critic is not None:
            critic = {k: v.detach().clone() for k, v in self.critic.state_dict().items()}
        return {
            "policy": self.policy_state_dict(),
            "training": {
                "algorithm": "ppo",
                "critic": critic,
                "learner": self.learner,
                "optimizer": self._learner.optimizer_state_dict(),
                "rollout": {
                    "size": n,
                    "obs": rows(self._obs),
                    "actions": rows(self._actions),
                    "log_probs": rows(self._log_probs),
                    "values": rows(self._values),
                    "rewards": rows(self._rewards),
                    "ends": rows(self._ends),
                    "terminated": rows(self._terminated),
                    "next_values": rows(self._next_values),
                    "last_next_obs": torch.from_numpy(self._last_next_obs.copy()),
                },
                "steps": self._steps,
                "episodes": self._episodes,
                "updates": self._updates,
                "metrics": dict(self._metrics),
                "rng": {
                    "agent": self._generator.get_state(),
                    **_global_rng_state(self.device),
                },
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, global random generators included.

        The learning rate (and the optimizer's other settings) stay this agent's config.

        Raises:
            ConfigError: the checkpoint's network shape, critic or rollout does not fit this
                agent.
            CheckpointError: ``state`` lacks its ``training`` part, or is not a PPO state.
        """
        self._check_arch(state["policy"]["arch"])
        if "training" not in state:
            raise CheckpointError(
                "state has no 'training' part (critic, optimizer, rollout); it can be evaluated "
                "but not resumed"
            )
        training = state["training"]
        if training.get("algorithm") != "ppo":
            raise CheckpointError(
                "the checkpoint's training state is not PPO's (another agent wrote it); resume "
                "it with that agent, or resume=never / a new name to start afresh"
            )
        if (training["critic"] is None) != (self.critic is None):
            had = "a value head" if training["critic"] is None else "no value head (a critic)"
            has = "has none" if self.critic is not None else "has one"
            raise ConfigError(
                f"agent.network: the checkpoint's policy network had {had}, this one {has}; "
                "use the checkpoint's agent.network to resume it"
            )
        # Checkpoints written before there was a choice of learner came from autograd.
        check_learner(str(training.get("learner", "autograd")), self.learner, self.config.learner)
        rollout = training["rollout"]
        n = int(rollout["size"])
        if n > self.config.n_steps:
            raise ConfigError(
                f"checkpoint holds a rollout of {n} steps, more than agent.n_steps="
                f"{self.config.n_steps}; resume it with its own agent.n_steps"
            )
        self.actor.load_state_dict(state["policy"]["weights"])
        if self.critic is not None:
            self.critic.load_state_dict(training["critic"])
        self._learner.load_optimizer_state_dict(training["optimizer"])
        if self._acting is not None:
            self._acting = self.actor.acting_weights()  # type: ignore[operator]
        for name, array in (
            ("obs", self._obs),
            ("actions", self._actions),
            ("log_probs", self._log_probs),
            ("values", self._values),
            ("rewards", self._rewards),
            ("ends", self._ends),
            ("terminated", self._terminated),
            ("next_values", self._next_values),
        ):
            array[:n] = rollout[name].cpu().numpy()
            array[n:] = 0
        self._last_next_obs[:] = rollout["last_next_obs"].cpu().numpy()
        self._pos = n
        self._pending = None
        self._steps = int(training["steps"])
        self._episodes = int(training["episodes"])
        self._updates = int(training["updates"])
        self._metrics = {k: float(training["metrics"].get(k, math.nan)) for k in METRIC_NAMES}
        rng = training["rng"]
        self._generator.set_state(rng["agent"].cpu())
        _set_global_rng_state(rng, self.device)

    def _check_arch(self, arch: Mapping[str, Any]) -> None:
        check_arch(arch, self.network_arch)


def _softmax_parts(logits: list[float]) -> tuple[float, list[float], float]:
    """``(top, weights, total)``: the largest logit, ``exp(logit - top)`` of each and their sum, so
    that ``softmax = weights / total`` and ``log_softmax[a] = logits[a] - top - log(total)``."""
    top = max(logits)
    weights = [math.exp(z - top) for z in logits]
    return top, weights, math.fsum(weights)


def _log_prob(logits: list[float], action: int) -> float:
    """``log_softmax(logits)[action]``, in Python floats."""
    top, _, total = _softmax_parts(logits)
    return logits[action] - top - math.log(total)


def _check_value(network: nn.Module, obs_dim: int) -> None:
    """``network.value`` maps a batch of two observations to two values, or one line."""
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            device = next(iter(network.parameters()), torch.empty(0)).device
            out = network.value(torch.zeros(2, obs_dim, device=device))  # type: ignore[operator]
    except Exception as exc:  # noqa: BLE001 - a user's network may fail in any way
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"agent.network: value() fails on a batch of observations of shape (2, {obs_dim}) "
            f"({reason}); it must map (batch, obs_dim) float32 to (batch,)"
        ) from None
    shape = tuple(getattr(out, "shape", ()))
    if shape not in ((2,), (2, 1)):
        raise ConfigError(
            f"agent.network: value() output shape {shape} for a batch of 2 observations; it "
            "must be (2,): one value per observation"
        )
