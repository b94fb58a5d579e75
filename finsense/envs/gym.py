"""Any gymnasium env FinSense's DQN can learn: a Discrete action space and a 1-D float observation.

:func:`make_env` is ``gymnasium.make`` with FinSense's checks and one wrapper,
:class:`EpisodeMetrics`, which gives the final step of every episode the
``info["episode_metrics"]`` the trainer records (``episode_return`` and ``episode_length``), as
the trading env's final step has its own. A refused id, space or keyword is one
:class:`~finsense.errors.ConfigError` line naming the ``env.*`` key and what to do.

Nothing here draws random numbers: an episode is as deterministic as the wrapped env given
``env.reset(seed=...)`` (the trainer seeds every episode's reset from the run seed and the
episode number).
"""

from __future__ import annotations

import difflib
import re
from typing import Any, SupportsFloat

import gymnasium
import numpy as np
from gymnasium import spaces

from finsense.errors import ConfigError

#: The ``info`` key of the final step that holds the episode's metrics.
METRICS_KEY = "episode_metrics"


class EpisodeMetrics(gymnasium.Wrapper[Any, Any, Any, Any]):
    """Adds ``info["episode_metrics"]`` to the step that ends an episode.

    The metrics are ``{"episode_return": float, "episode_length": int}``: the undiscounted sum of
    the rewards and the number of steps since the last :meth:`reset`, the final step included.
    The step ends the episode when it is ``terminated`` or ``truncated``. An env whose final
    step already has ``episode_metrics`` (``finsense/Trading-v0``) keeps its own, unchanged.
    """

    def __init__(self, env: gymnasium.Env[Any, Any]) -> None:
        super().__init__(env)
        self.episode_return = 0.0
        self.episode_length = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self.episode_return = 0.0
        self.episode_length = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.episode_return += float(reward)
        self.episode_length += 1
        if (terminated or truncated) and METRICS_KEY not in info:
            info = dict(info)  # the wrapped env's own dict stays as it was
            info[METRICS_KEY] = {
                "episode_return": self.episode_return,
                "episode_length": self.episode_length,
            }
        return obs, reward, terminated, truncated, info


def make_env(id: str, **kwargs: Any) -> gymnasium.Env[Any, Any]:
    """``gymnasium.make(id, **kwargs)`` wrapped in :class:`EpisodeMetrics`, checked for DQN.

    Args:
        id: a registered gymnasium id (``CartPole-v1``, ``finsense/Trading-v0`` ...).
        kwargs: passed to ``gymnasium.make`` (the env's own keywords, ``max_episode_steps``).

    Raises:
        ConfigError: gymnasium does not know ``id`` (close ids suggested) or lacks a package
            for it; the env rejects a keyword of ``kwargs``; the action space is not
            ``Discrete`` (from 0); the observation space is not a 1-D float ``Box``.
    """
    try:
        env = gymnasium.make(id, **kwargs)
    except gymnasium.error.DependencyNotInstalled as exc:
        raise ConfigError(
            f"env.id={id} needs a package that is not installed ({_one_line(exc)}); "
            "install it, or set env.id to another env"
        ) from None
    except gymnasium.error.Error as exc:
        if id in gymnasium.registry:
            raise  # a known id whose env failed: not a naming mistake
        raise ConfigError(
            f"env.id={id}: gymnasium has no such environment ({_one_line(exc)}); " + _suggest(id)
        ) from None
    except TypeError as exc:
        if not kwargs:
            raise  # the env's own bug, not a setting of the user's
        rejected = _rejected_keywords(str(exc), kwargs)
        names = ", ".join(f"env.{name}" for name in rejected)
        raise ConfigError(
            f"{names}: {id} does not take {'this setting' if len(rejected) == 1 else 'these'} "
            f"({_one_line(exc)}); remove {'it' if len(rejected) == 1 else 'them'} or use "
            f"a keyword of {id}'s constructor"
        ) from None
    try:
        _check_spaces(id, env)
    except ConfigError:
        env.close()
        raise
    return EpisodeMetrics(env)


def _check_spaces(id: str, env: gymnasium.Env[Any, Any]) -> None:
    action_space, observation_space = env.action_space, env.observation_space
    if not isinstance(action_space, spaces.Discrete):
        raise ConfigError(
            f"env.id={id}: DQN needs a Discrete action space; {id} has {action_space}; "
            "set env.id to an env with discrete actions"
        )
    if int(action_space.start) != 0:
        raise ConfigError(
            f"env.id={id}: DQN needs a Discrete action space starting at 0; {id} has "
            f"{action_space}; set env.id to another env (or wrap it to shift its actions to 0)"
        )
    if not (
        isinstance(observation_space, spaces.Box)
        and len(observation_space.shape) == 1
        and np.issubdtype(observation_space.dtype, np.floating)
    ):
        raise ConfigError(
            f"env.id={id}: FinSense's DQN needs a 1-D float Box observation space; {id} has "
            f"{observation_space}; set env.id to an env with flat float observations (or wrap "
            "it, e.g. gymnasium.wrappers.FlattenObservation, and register that)"
        )


def _suggest(id: str) -> str:
    close = difflib.get_close_matches(id, list(gymnasium.registry), n=3, cutoff=0.6)
    if close:
        return f"did you mean {' or '.join(close)}? Set env.id to a registered id"
    return "set env.id to a registered id (gymnasium.pprint_registry() lists them)"


def _rejected_keywords(message: str, kwargs: dict[str, Any]) -> list[str]:
    """The keywords a ``TypeError`` names (``unexpected keyword argument 'x'``), else all."""
    named = [name for name in re.findall(r"argument '(\w+)'", message) if name in kwargs]
    return named or sorted(kwargs)


def _one_line(exc: BaseException) -> str:
    # gymnasium colours some messages and may wrap them; a ConfigError is one plain line.
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    return " ".join(text.split()).rstrip(".")
