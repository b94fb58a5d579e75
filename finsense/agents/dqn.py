"""Deep Q-learning (Mnih et al., 2015) with Double DQN targets (van Hasselt et al., 2016).

One training step, in the order of the algorithm: act epsilon-greedily (:meth:`DQNAgent.act`),
store the transition (:meth:`DQNAgent.observe`), and every ``train_freq`` steps sample a minibatch,
compute the TD target without gradients, take the Huber loss, step the optimizer (Adam) on
clipped gradients (:meth:`DQNAgent.learn`), and every ``target_update_interval`` steps copy the
online network into the target network. The gradient step is autograd's for any network, or a
hand-written equivalent for the built-in MLP with Adam (:mod:`finsense.agents.learners`).

Everything the agent needs to continue exactly after a restart is in :meth:`DQNAgent.state_dict`,
as tensors and plain Python values (``torch.load(..., weights_only=True)`` reads it back).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from finsense.agents.buffer import ReplayBuffer
from finsense.agents.learners import (
    LEARNERS,
    AutogradLearner,
    FastLearner,
    check_learner,
    choose_learner,
)
from finsense.agents.networks import QNetwork
from finsense.device import resolve_device
from finsense.errors import CheckpointError, ConfigError

#: :meth:`DQNAgent.training_warnings` warns when epsilon is still this much of the way from
#: ``epsilon_end`` back to ``epsilon_start`` at the end of a run: the policy acted mostly at
#: random, so its results say little about what it learned.
EXPLORATION_WARN_FRACTION = 0.9
#: :class:`DQNConfig` fields that describe the default network; in config they are the
#: network's own keys (``agent.network.hidden_sizes``, ``agent.network.dueling``).
_NETWORK_FIELDS = frozenset({"hidden_sizes", "dueling"})


@dataclass(frozen=True)
class DQNConfig:
    """DQN hyperparameters; names follow Stable-Baselines3's ``DQN`` where it has one.

    Steps are env steps (transitions observed by the agent), counted over the agent's whole life,
    across restarts.
    """

    learning_rate: float = 1e-3
    """Adam step size."""
    buffer_size: int = 50_000
    """Replay buffer capacity in transitions; the oldest are overwritten first."""
    learning_starts: int = 1_000
    """Steps of pure collection before the first gradient step."""
    batch_size: int = 64
    """Transitions per gradient step, sampled uniformly with replacement."""
    gamma: float = 0.99
    """Discount factor per step."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this before they are stored. Daily log-return rewards (~0.01)
    learn much better scaled to ~1 (100): Adam's step size is fixed, so tiny targets need a
    resolution the network only reaches late (``tests/test_learning.py``)."""
    train_freq: int = 4
    """Run ``gradient_steps`` gradient steps every this many env steps."""
    gradient_steps: int = 1
    """Gradient steps per training round."""
    target_update_interval: int = 1_000
    """Copy the online network into the target network every this many env steps."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Units of each hidden ReLU layer of the Q-network."""
    max_grad_norm: float = 10.0
    """Clip the gradient's global L2 norm to this value."""
    double_q: bool = True
    """Double DQN: the online network picks the next action, the target network values it."""
    dueling: bool = False
    """Dueling head: Q = V + A - mean(A)."""
    epsilon_start: float = 1.0
    """Exploration rate at step 0."""
    epsilon_end: float = 0.05
    """Exploration rate once ``exploration_steps`` steps are done."""
    exploration_steps: int = 20_000
    """Steps over which epsilon falls linearly from start to end (the agent's own steps, so a run
    extended to more episodes explores exactly as if it had been that long from the start)."""
    learner: str = "auto"
    """How gradient steps are computed: ``autograd`` (any network, any ``torch.optim``
    optimizer), ``fast`` (a hand-written backward pass and flat Adam, only for the built-in MLP
    with Adam, several times faster) or ``auto`` (``fast`` where allowed, else ``autograd``)."""

    def __post_init__(self) -> None:
        # YAML gives lists; a tuple keeps the config hashable and frozen in spirit.
        if isinstance(self.hidden_sizes, list):
            object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first ``agent.<key>`` out of range."""

        def require(ok: bool, key: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"agent.{key} {rule}, got {getattr(self, key)!r}")

        def is_int(value: Any) -> bool:
            return isinstance(value, int | np.integer) and not isinstance(value, bool)

        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                require(is_int(value), f.name, "must be an integer")
            elif f.type in ("float", float):
                ok = isinstance(value, int | float | np.number) and not isinstance(value, bool)
                require(ok and math.isfinite(value), f.name, "must be a finite number")
            elif f.type in ("bool", bool):
                require(isinstance(value, bool | np.bool_), f.name, "must be true or false")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.buffer_size >= 1, "buffer_size", "must be >= 1")
        require(self.learning_starts >= 0, "learning_starts", "must be >= 0")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        if self.batch_size > self.buffer_size:
            # Sampling is with replacement, so it would run, but every batch would repeat
            # transitions many times over and cost memory and time out of all proportion.
            raise ConfigError(
                f"agent.batch_size={self.batch_size} must be <= agent.buffer_size="
                f"{self.buffer_size}; lower agent.batch_size or raise agent.buffer_size"
            )
        require(0.0 <= self.gamma <= 1.0, "gamma", "must be in [0, 1]")
        require(self.reward_scale > 0, "reward_scale", "must be > 0")
        require(self.train_freq >= 1, "train_freq", "must be >= 1")
        require(self.gradient_steps >= 1, "gradient_steps", "must be >= 1")
        require(self.target_update_interval >= 1, "target_update_interval", "must be >= 1")
        sizes = self.hidden_sizes
        require(
            isinstance(sizes, tuple)
            and len(sizes) >= 1
            and all(is_int(h) and h >= 1 for h in sizes),
            "hidden_sizes",
            "must be a non-empty list of positive integers",
        )
        require(self.max_grad_norm > 0, "max_grad_norm", "must be > 0")
        require(0.0 <= self.epsilon_start <= 1.0, "epsilon_start", "must be in [0, 1]")
        require(0.0 <= self.epsilon_end <= 1.0, "epsilon_end", "must be in [0, 1]")
        require(self.exploration_steps >= 0, "exploration_steps", "must be >= 0")
        require(self.learner in LEARNERS, "learner", "must be one of " + ", ".join(LEARNERS))


class DQNAgent:
    """A DQN learner for a discrete action space and a flat float32 observation.

    Args:
        obs_dim: length of an observation vector.
        n_actions: number of discrete actions.
        config: hyperparameters (validated).
        seed: seeds the network initialisation and the agent's own random generator (epsilon
            draws and minibatch sampling); the global ``random``/numpy/torch generators are not
            touched by construction.
        device: where the networks learn (``cpu``, ``cuda``, ``cuda:N``, ``auto`` or a
            ``torch.device``). The replay buffer stays in CPU memory.
        network: the Q-network, any ``torch.nn.Module`` mapping ``(batch, obs_dim)`` float32 to
            ``(batch, n_actions)`` (its ``arch``, when it has one, is checked on resume).
            ``None``: a ``QNetwork`` of ``config.hidden_sizes``/``config.dueling``, seeded by
            ``seed``. Acting, learning and evaluation all run its ``forward``.
        optimizer_class: the ``torch.optim`` optimizer of the autograd learner, built with
            ``lr=config.learning_rate`` and ``optimizer_kwargs``.
        optimizer_kwargs: its other keyword arguments.

    Raises:
        ConfigError: ``config.learner`` is ``fast`` but the network is not exactly
            :class:`QNetwork` or the optimizer not Adam (:func:`choose_learner`).
    """

    #: ``agent.*`` keys a saved state cannot follow a change of: the network (its weights are
    #: shaped by it) and the replay buffer's capacity. Changing them needs a fresh start.
    resume_keys: tuple[str, ...] = ("network", "buffer_size")

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        config: DQNConfig = DQNConfig(),  # noqa: B008 - frozen, so one shared default is safe
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
        network: torch.nn.Module | None = None,
        optimizer_class: Any = torch.optim.Adam,
        optimizer_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.obs_dim = int(obs_dim)
        self.n_actions = int(n_actions)
        self.device = resolve_device(str(device))
        self._rng = np.random.default_rng(seed)
        kwargs = dict(optimizer_kwargs or {})

        if network is None:
            with torch.random.fork_rng(devices=[]):  # leaves the global CPU generator as it was
                torch.default_generator.manual_seed(seed)
                network = QNetwork(obs_dim, n_actions, config.hidden_sizes, config.dueling)
        #: ``"fast"`` or ``"autograd"``: what ``config.learner`` resolved to for this network
        #: and optimizer; saved in :meth:`state_dict` (a resume must use the same).
        self.learner = choose_learner(config.learner, network, optimizer_class, kwargs)
        self.q_network = network.to(self.device)
        self.target_network = copy.deepcopy(self.q_network)
        self._learner: AutogradLearner | FastLearner
        if self.learner == "fast":
            assert isinstance(self.q_network, QNetwork) and isinstance(
                self.target_network, QNetwork
            )
            self._learner = FastLearner(self.q_network, self.target_network, config, kwargs)
        else:
            self._learner = AutogradLearner(
                self.q_network, self.target_network, config, optimizer_class, kwargs
            )
        self.optimizer = self._learner.optimizer
        self.buffer = ReplayBuffer(config.buffer_size, obs_dim, self.device)
        self._steps = 0
        self._episodes = 0
        self._gradient_steps = 0

    @classmethod
    def from_config(
        cls,
        obs_dim: int,
        n_actions: int,
        *,
        network: Callable[[int, int], torch.nn.Module] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        **hyperparameters: Any,
    ) -> DQNAgent:
        """The agent of an ``agent/dqn.yaml`` config node (``_target_`` of ``agent``).

        Args:
            obs_dim, n_actions: the env's observation size and number of actions.
            network: ``agent.network``, a ``_partial_`` that builds the Q-network from
                ``(obs_dim, n_actions)``; called with the torch generator seeded by ``seed``
                (the global generators are left as they were). ``None``: the built-in MLP.
            optimizer: ``agent.optimizer``, a ``_partial_`` ``torch.optim`` class (its own
                keywords kept; the learning rate is ``agent.learning_rate``).
            seed, device: as :class:`DQNAgent`.
            hyperparameters: the fields of :class:`DQNConfig` (``learning_rate``, ...).

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

        config = agent_hyperparameters(DQNConfig, hyperparameters, hidden=_NETWORK_FIELDS)
        optimizer_class, optimizer_kwargs = optimizer_parts(optimizer)
        net: torch.nn.Module | None = None
        if network is not None:
            with seeded(seed):
                net = build_network(network, obs_dim, n_actions)
            check_network(net, int(obs_dim), int(n_actions), "agent.network")
        return cls(
            obs_dim,
            n_actions,
            config,
            seed=seed,
            device=device,
            network=net,
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
    def gradient_steps(self) -> int:
        """Gradient steps taken so far (:meth:`learn` calls, restarts included)."""
        return self._gradient_steps

    @property
    def epsilon(self) -> float:
        """The exploration rate now: linear in :attr:`steps` from start to end, then constant."""
        cfg = self.config
        if self._steps >= cfg.exploration_steps:
            return cfg.epsilon_end
        fraction = self._steps / cfg.exploration_steps
        return cfg.epsilon_start + fraction * (cfg.epsilon_end - cfg.epsilon_start)

    # -- acting and learning ----------------------------------------------------------------
    def act(self, obs: np.ndarray, explore: bool = True) -> int:
        """The action for ``obs``: epsilon-greedy when ``explore``, else greedy.

        Exploring draws one uniform number (and a uniform action when it explores) from the
        agent's generator; greedy acting draws nothing, so evaluating mid-training does not change
        the course of training.
        """
        if explore and self._rng.random() < self.epsilon:
            return int(self._rng.integers(self.n_actions))
        with torch.inference_mode():
            # A batch of one, as in learn(): the same matrix kernels as evaluation's forward.
            x = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(0)
            return int(self._learner.q_values(x).argmax())

    def observe(
        self,
        obs: np.ndarray,
        action: int,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
    ) -> float | None:
        """Store a transition (reward times ``reward_scale``), count the step, train when due.

        Gradient steps run when ``steps >= learning_starts`` and ``steps % train_freq == 0``;
        the target network is synced when ``steps % target_update_interval == 0`` (after that
        step's training).

        Returns:
            The loss of the last gradient step taken now, or ``None`` if none was.
        """
        cfg = self.config
        self.buffer.add(obs, action, reward * cfg.reward_scale, next_obs, terminated)
        self._steps += 1
        loss = None
        if self._steps >= cfg.learning_starts and self._steps % cfg.train_freq == 0:
            for _ in range(cfg.gradient_steps):
                loss = self.learn()
        if self._steps % cfg.target_update_interval == 0:
            self.sync_target()
        return loss

    def learn(self) -> float:
        """One gradient step on a minibatch from the replay buffer; returns its Huber loss."""
        batch = self.buffer.sample(self._rng, self.config.batch_size)
        loss = self._learner.step(batch)
        self._gradient_steps += 1
        return loss

    def sync_target(self) -> None:
        """Copy the online network into the target network."""
        self._learner.sync_target()

    def end_episode(self) -> None:
        """Count a finished episode."""
        self._episodes += 1

    def episode_metrics(self) -> dict[str, float]:
        """What the agent adds to each episode's row of the logs (and the checkpoint JSON's
        ``epsilon`` field): the exploration rate now."""
        return {"epsilon": round(float(self.epsilon), 6)}

    # -- state ------------------------------------------------------------------------------
    @property
    def network_arch(self) -> dict[str, Any]:
        """The network's shape as plain values: ``obs_dim``, ``n_actions`` and the network's own
        ``arch`` when it has one (the built-in networks do)."""
        arch = dict(getattr(self.q_network, "arch", None) or {})
        return {**arch, "obs_dim": self.obs_dim, "n_actions": self.n_actions}

    def policy_state_dict(self) -> dict[str, Any]:
        """The online network alone: ``{"arch": {...}, "weights": {...}}`` (for evaluation)."""
        return {
            "arch": self.network_arch,
            "weights": {k: v.detach().clone() for k, v in self.q_network.state_dict().items()},
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: ``{"policy": ..., "training": ...}``.

        ``policy`` is :meth:`policy_state_dict`. ``training`` holds the learner that wrote it
        (``"fast"`` or ``"autograd"``), the target network, the optimizer state, the replay
        buffer (filled rows, position, fill), the step, episode and gradient step counters,
        epsilon (for reading; it follows from the steps), and the states of the agent's generator
        and of the global python ``random``, numpy and torch (and CUDA) generators. All
        of it is tensors and plain Python values, copied: later training does not change it.
        """
        return {
            "policy": self.policy_state_dict(),
            "training": {
                "learner": self.learner,
                "target": {k: v.clone() for k, v in self.target_network.state_dict().items()},
                "optimizer": self._learner.optimizer_state_dict(),
                "buffer": self.buffer.state_dict(),
                "steps": self._steps,
                "episodes": self._episodes,
                "gradient_steps": self._gradient_steps,
                "epsilon": self.epsilon,
                "rng": {
                    "agent": self._rng.bit_generator.state,
                    **_global_rng_state(self.device),
                },
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, global random generators included.

        The learning rate stays this agent's ``config.learning_rate`` (a changed value takes
        effect on resume); the network's shape, the buffer size and the learner must match the
        checkpoint's. The two learners keep their optimizer state in different forms (one flat
        Adam state, or ``torch.optim``'s per-parameter state of whichever optimizer), so a
        checkpoint resumes only with the learner that wrote it.

        Raises:
            ConfigError: the checkpoint's network shape, buffer size or learner differs from
                this agent's.
            CheckpointError: ``state`` lacks its ``training`` part.
        """
        self._check_arch(state["policy"]["arch"])
        if "training" not in state:
            raise CheckpointError(
                "state has no 'training' part (target network, optimizer, replay buffer); "
                "it can be evaluated with DQNAgent.load_policy but not resumed"
            )
        training = state["training"]
        # Checkpoints written before there was a choice of learner came from the fast path.
        check_learner(str(training.get("learner", "fast")), self.learner, self.config.learner)
        self.buffer.load_state_dict(training["buffer"])
        self.q_network.load_state_dict(state["policy"]["weights"])
        self.target_network.load_state_dict(training["target"])
        self._learner.load_optimizer_state_dict(training["optimizer"])
        self._steps = int(training["steps"])
        self._episodes = int(training["episodes"])
        saved = training.get("gradient_steps")
        # Checkpoints written before the counter existed: what observe() would have run.
        self._gradient_steps = self._scheduled_gradient_steps() if saved is None else int(saved)
        rng = training["rng"]
        self._rng.bit_generator.state = rng["agent"]
        _set_global_rng_state(rng, self.device)

    def _scheduled_gradient_steps(self) -> int:
        """The gradient steps :meth:`observe` takes over :attr:`steps` under this config."""
        cfg = self.config
        first = max(cfg.learning_starts, 1)
        if self._steps < first:
            return 0
        rounds = self._steps // cfg.train_freq - (first - 1) // cfg.train_freq
        return rounds * cfg.gradient_steps

    def training_warnings(self) -> list[str]:
        """Why this agent's training so far may have taught it little: at most one line.

        The trainer logs it when a run completes. Two signs, both of a run too short for the
        schedule (a quick try with the defaults): no gradient step at all (the first comes at
        ``learning_starts`` steps), or epsilon still more than
        :data:`EXPLORATION_WARN_FRACTION` of the way back to ``epsilon_start`` (mostly random
        actions). Each names the keys that fix it.
        """
        cfg = self.config
        problems: list[str] = []
        fixes: list[str] = []
        if self._gradient_steps == 0:
            problems.append(
                f"no gradient step in {self._steps} env steps "
                f"(agent.learning_starts={cfg.learning_starts})"
            )
            fixes.append("agent.learning_starts")
        span = cfg.epsilon_start - cfg.epsilon_end
        # A constant (or rising) epsilon is a deliberate choice, not a schedule left unfinished.
        if span > 0 and (self.epsilon - cfg.epsilon_end) / span > EXPLORATION_WARN_FRACTION:
            problems.append(
                f"epsilon is still {self.epsilon:.3f} after {self._steps} env steps "
                f"(agent.epsilon_start={cfg.epsilon_start} -> agent.epsilon_end="
                f"{cfg.epsilon_end} over agent.exploration_steps={cfg.exploration_steps}), "
                "so the agent acted mostly at random"
            )
            fixes.append("agent.exploration_steps")
        if not problems:
            return []
        return [
            " and ".join(problems)
            + "; raise episodes or env.episode_length, or lower "
            + " and ".join(fixes)
        ]

    def _check_arch(self, arch: Mapping[str, Any]) -> None:
        check_arch(arch, self.network_arch)

    @classmethod
    def load_policy(
        cls,
        policy_state: Mapping[str, Any],
        device: str | torch.device = "cpu",
        network: torch.nn.Module | None = None,
    ) -> torch.nn.Module:
        """The Q-network of a :meth:`policy_state_dict`, in eval mode, without any training state.

        The greedy action of an observation is ``q_network(obs).argmax(-1)``.

        Args:
            policy_state: what :meth:`policy_state_dict` returned.
            device: where the network runs.
            network: the network to load the weights into, for a policy trained with another
                network than the built-in MLP (:func:`finsense.components.policy_network`
                rebuilds it from the run's config); ``None``: ``QNetwork.from_arch``.
                Loading is strict, so a mismatched network is an error, never a silent change.
        """
        if network is None:
            # Initialisation draws from the global generator: undo it.
            with torch.random.fork_rng(devices=[]):
                network = QNetwork.from_arch(policy_state["arch"])
        network.load_state_dict(policy_state["weights"])
        target = resolve_device(str(device))
        return network.to(target).eval()


def check_arch(saved: Mapping[str, Any], mine: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose policy network has another shape than this agent's: one line
    per difference, naming the config key (``agent.network.<key>``) or the env's size."""
    names = {"obs_dim": "the env's observation size", "n_actions": "the env's action count"}
    differences = [
        f"checkpoint {key}={saved.get(key)!r} != {names.get(key, 'agent.network.' + key)}="
        f"{mine.get(key)!r}"
        for key in sorted(set(saved) | set(mine))
        if _plain(saved.get(key)) != _plain(mine.get(key))
    ]
    if differences:
        raise ConfigError(
            "; ".join(differences) + ". Use the checkpoint's settings to resume it, or "
            "resume=never / a new name to start afresh"
        )


def _plain(value: Any) -> Any:
    """Lists and tuples compare alike (JSON and YAML give lists, Python code tuples)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def greedy_action(q_network: torch.nn.Module, obs: np.ndarray) -> int:
    """The action with the highest Q-value for one observation (no gradients).

    The same action as ``DQNAgent.act(obs, explore=False)`` of the agent the network came from.
    """
    device = next(q_network.parameters()).device
    with torch.inference_mode():
        x = torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0)
        return int(q_network(x).argmax())


# -- global random generators --------------------------------------------------------------------
def _global_rng_state(device: torch.device) -> dict[str, Any]:
    """Python ``random``, numpy's legacy global and torch's generators as tensors/plain values."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_global_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].cpu().numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    # A checkpoint loaded with map_location=cuda holds these on the GPU; generators want CPU.
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
