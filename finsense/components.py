"""Build a run's components from its config, the Hydra way: ``_target_`` + ``instantiate``.

Every component is a config node whose ``_target_`` names what to build and whose other keys are
its keyword arguments: the env (``env/``), the agent (``agent/``) with its network
(``agent/network/``, a ``_partial_`` the agent completes with the observation size and the number
of actions) and optimizer (a ``_partial_`` ``torch.optim`` class), and the loggers (``logger/``,
one node per logger). A user's own piece is a YAML file in their own config folder
(``--config-dir myconf agent/network=mine``) naming their class.

Everything here runs before the run directory changes, and turns what can go wrong with a user's
piece into one line that names the key: a ``_target_`` that cannot be imported, a keyword its
target does not take, a network whose output is not one value per action.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import gymnasium
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from finsense.errors import ConfigError, FinSenseError

#: The episode metrics of an env that reports none of its own (``finsense.envs.gym.EpisodeMetrics``
#: adds them), the main one first: what ``checkpoints.metric_name: null`` picks.
DEFAULT_EPISODE_METRICS: tuple[str, ...] = ("episode_return", "episode_length")


def _targets(node: Any, key: str) -> list[tuple[str, str]]:
    """Every ``(key, _target_)`` in ``node``, depth first."""
    out: list[tuple[str, str]] = []
    if isinstance(node, DictConfig):
        if "_target_" in node:
            out.append((key, str(node["_target_"])))
        for child in node:
            out.extend(_targets(node[child], f"{key}.{child!s}"))
    return out


def check_targets(node: DictConfig, key: str) -> None:
    """Import every ``_target_`` under ``node`` (``key`` is its name in the config).

    Raises:
        ConfigError: ``agent.network._target_=mypkg.Net cannot be imported (No module named
            'mypkg'); ...``.
    """
    from hydra.utils import get_object

    for where, target in _targets(node, key):
        try:
            get_object(target)
        except Exception as exc:  # noqa: BLE001 - whatever the import raised, it is one line
            cause = exc.__cause__ or exc
            reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
            raise ConfigError(
                f"{where}._target_={target} cannot be imported ({reason}); check the name, and "
                "that its package is installed and importable (on PYTHONPATH)"
            ) from None


def _signature_keys(target: str) -> list[str]:
    from hydra.utils import get_object

    try:
        params = inspect.signature(get_object(target)).parameters
    except (TypeError, ValueError):
        return []
    return [n for n, p in params.items() if p.kind is not p.VAR_KEYWORD]


def instantiate(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)`` with every failure as one line naming the key.

    A :class:`FinSenseError` the target raises (its own check of a value) passes through as it
    is. A keyword the target does not take names the closest one it does.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    from finsense.config import unknown_key

    check_targets(node, key)
    try:
        return hydra_instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, FinSenseError):
            raise cause from None
        found = re.search(r"full_key: (\S+)", str(exc))
        where = found.group(1) if found else key  # Hydra's key of the failing node in the run
        reason = str(cause or exc).splitlines()[0]
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", reason)
        if unexpected:
            sub = where[len(key) + 1 :] if where.startswith(key + ".") else ""
            target = OmegaConf.select(node, sub) if sub else node
            known = _signature_keys(str(target["_target_"])) if target is not None else []
            raise unknown_key(unexpected.group(1), where, known) from None
        raise ConfigError(f"{where}: {reason}") from None


def call_partial(factory: Callable[..., Any], key: str, *args: Any) -> Any:
    """Complete a ``_partial_`` component (a network with its sizes), keyword errors as one line.

    Raises:
        ConfigError: the call's ``TypeError`` (an unknown or missing keyword), naming ``key``.
    """
    from finsense.config import unknown_key

    try:
        return factory(*args)
    except TypeError as exc:
        reason = str(exc).splitlines()[0]
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", reason)
        func = getattr(factory, "func", factory)
        if unexpected:
            try:
                params = inspect.signature(func).parameters
                known = [n for n, p in params.items() if p.kind is not p.VAR_KEYWORD]
            except (TypeError, ValueError):
                known = []
            raise unknown_key(unexpected.group(1), key, known[len(args) :]) from None
        raise ConfigError(f"{key}: {reason}") from None


# -- the env ------------------------------------------------------------------------------------
def build_env(cfg: DictConfig, **overrides: Any) -> gymnasium.Env[Any, Any]:
    """The env of ``cfg.env`` (keyword ``overrides`` win: ``split="test"``).

    Raises:
        ConfigError: the env cannot be built, or its spaces are not a flat ``Box`` of
            observations and a ``Discrete`` set of actions.
    """
    from finsense.envs.gym import EpisodeMetrics

    env = instantiate(cfg.env, "env", **overrides)
    if not isinstance(env, gymnasium.Env):
        raise ConfigError(
            f"env._target_={cfg.env._target_} built a {type(env).__name__}, not a gymnasium.Env"
        )
    if not getattr(env.unwrapped, "episode_metric_names", None) and not _has_wrapper(
        env, EpisodeMetrics
    ):
        env = EpisodeMetrics(env)  # an env of one's own: its return and length are the metrics
    obs_space, action_space = env.observation_space, env.action_space
    if not isinstance(action_space, gymnasium.spaces.Discrete):
        raise ConfigError(
            f"env: the action space is {action_space}; FinSense's agents need a Discrete one"
        )
    if not (isinstance(obs_space, gymnasium.spaces.Box) and len(obs_space.shape) == 1):
        raise ConfigError(
            f"env: the observation space is {obs_space}; FinSense's agents need a 1-D Box "
            "(flatten it with gymnasium.wrappers.FlattenObservation)"
        )
    return env


def _has_wrapper(env: gymnasium.Env[Any, Any], kind: type) -> bool:
    while isinstance(env, gymnasium.Wrapper):
        if isinstance(env, kind):
            return True
        env = env.env
    return isinstance(env, kind)


def episode_metric_names(env: gymnasium.Env[Any, Any]) -> tuple[str, ...]:
    """The names of the episode metrics ``env`` reports, its main one first: the env's own
    ``episode_metric_names`` attribute (``TradingEnv``: ``total_profit``, ...), else the
    return and length :class:`finsense.envs.gym.EpisodeMetrics` adds."""
    names = getattr(env.unwrapped, "episode_metric_names", None)
    return tuple(names) if names else DEFAULT_EPISODE_METRICS


def resume_keys(env: gymnasium.Env[Any, Any]) -> tuple[str, ...]:
    """The ``env.*`` keys a saved agent cannot follow a change of (the observation or action
    layout): the env's ``resume_keys`` attribute, else none (the network's own check catches a
    changed observation size)."""
    return tuple(getattr(env.unwrapped, "resume_keys", ()))


# -- the agent ----------------------------------------------------------------------------------
def build_agent(
    cfg: DictConfig, env: gymnasium.Env[Any, Any], device: str | torch.device = "cpu"
) -> Any:
    """The agent of ``cfg.agent`` for ``env``'s spaces, seeded by ``cfg.seed``."""
    obs_dim = int(np.prod(env.observation_space.shape or (1,)))
    n_actions = int(env.action_space.n)  # type: ignore[attr-defined]
    return instantiate(
        cfg.agent, "agent", obs_dim=obs_dim, n_actions=n_actions, seed=int(cfg.seed), device=device
    )


def agent_hyperparameters(
    config_class: Any, hyperparameters: Mapping[str, Any], hidden: Collection[str] = ()
) -> Any:
    """``config_class(**hyperparameters)`` for an agent's ``from_config``: a key that is not one of
    its fields (or is one of ``hidden``) is one line naming it and the closest known key.

    Raises:
        ConfigError: an unknown key, or a value the config class refuses.
    """
    from finsense.config import unknown_key

    known = [f.name for f in dataclasses.fields(config_class) if f.name not in hidden]
    for key in hyperparameters:
        if key not in known:
            raise unknown_key(key, "agent", known + ["network", "optimizer"])
    return config_class(**hyperparameters)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Inside: the global torch CPU generator seeded by ``seed`` (a network's initialisation
    draws from it); after: the generator as it was before."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def build_network(
    factory: Callable[..., Any], obs_dim: int, n_outputs: int, key: str = "agent.network"
) -> torch.nn.Module:
    """``factory(obs_dim, n_outputs)`` (``agent.network``'s ``_partial_``), which must build a
    ``torch.nn.Module``; errors are one line naming ``key``."""
    network = call_partial(factory, key, int(obs_dim), int(n_outputs))
    if not isinstance(network, torch.nn.Module):
        raise ConfigError(f"{key} built a {type(network).__name__}, not a torch.nn.Module")
    return network


def optimizer_parts(
    optimizer: Callable[..., torch.optim.Optimizer] | None,
) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The class and keyword arguments of ``agent.optimizer`` (a ``_partial_`` ``torch.optim``
    class; ``None``: Adam), for an agent to build over its parameters with
    ``lr=agent.learning_rate``.

    Raises:
        ConfigError: not a ``torch.optim.Optimizer`` class, or ``agent.optimizer.lr`` set.
    """
    if optimizer is None:
        return torch.optim.Adam, {}
    optimizer_class = getattr(optimizer, "func", optimizer)
    kwargs = dict(getattr(optimizer, "keywords", None) or {})
    if not (
        isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)
    ):
        raise ConfigError(
            f"agent.optimizer._target_ must be a torch.optim.Optimizer class, got "
            f"{optimizer_class!r}"
        )
    if "lr" in kwargs:
        raise ConfigError(
            "agent.optimizer.lr: set the learning rate with agent.learning_rate "
            "(one key, the one sweeps and the logs use)"
        )
    return optimizer_class, kwargs


def check_network(network: torch.nn.Module, obs_dim: int, n_actions: int, key: str) -> None:
    """Run a batch of two zero observations through ``network``: one value per action, or one
    line naming ``key``. Draws no random numbers (the global generators are restored)."""
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            device = next(iter(network.parameters()), torch.empty(0)).device
            out = network(torch.zeros(2, obs_dim, device=device))
    except Exception as exc:  # noqa: BLE001 - a user's network may fail in any way
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"{key}: fails on a batch of observations of shape (2, {obs_dim}) ({reason}); "
            "it must map (batch, obs_dim) float32 to (batch, n_actions)"
        ) from None
    shape = tuple(getattr(out, "shape", ()))
    if shape != (2, n_actions):
        raise ConfigError(
            f"{key}: output shape {shape} for a batch of 2 observations; it must be "
            f"(2, {n_actions}): one value per action"
        )


def policy_network(config: Mapping[str, Any], arch: Mapping[str, Any]) -> torch.nn.Module:
    """The policy network a run's recorded ``config`` describes, of the shape ``arch`` records
    (``obs_dim``, ``n_actions``), in eval mode with fresh weights to load into.

    The network is rebuilt from the config (``agent.network``), never unpickled from the
    checkpoint: a checkpoint is data. Configs written before ``agent.network`` existed describe
    the built-in MLP by ``arch`` alone.
    """
    from finsense.agents import QNetwork

    node = (config.get("agent") or {}).get("network") if isinstance(config, Mapping) else None
    with torch.random.fork_rng(devices=[]):  # initialisation draws from the global generator
        if not isinstance(node, Mapping) or "_target_" not in node:
            return QNetwork.from_arch(dict(arch)).eval()
        factory = instantiate(OmegaConf.create(dict(node)), "agent.network")
        network = build_network(factory, arch["obs_dim"], arch["n_actions"])
    return network.eval()
