"""Gymnasium envs that are not trading envs: the EpisodeMetrics wrapper and make_env's refusals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from finsense.envs.gym import EpisodeMetrics, make_env
from finsense.errors import ConfigError


class Countdown(gymnasium.Env[np.ndarray, np.int64]):
    """``length`` steps; step ``t`` (from 1) pays ``t * scale``; may report its own metrics."""

    def __init__(self, length: int = 3, scale: float = 0.5, own_metrics: bool = False) -> None:
        self.length = length
        self.scale = scale
        self.own_metrics = own_metrics
        self.action_space = spaces.Discrete(2)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
        self.t = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        done = self.t >= self.length
        info: dict[str, Any] = {"t": self.t}
        if done and self.own_metrics:
            info["episode_metrics"] = {"total_profit": 42.0}
        return np.full(1, self.t, dtype=np.float32), self.t * self.scale, done, False, info


def play(
    env: gymnasium.Env, seed: int, actions: Callable[[int], int] | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """One episode from ``reset(seed=seed)``; ``actions(t)`` is step ``t``'s action (default 0).

    Returns every step's ``(obs, reward, terminated, truncated)`` and the final step's info.
    """
    env.reset(seed=seed)
    steps: list[Any] = []
    done = False
    info: dict[str, Any] = {}
    while not done:
        action = 0 if actions is None else actions(len(steps))
        obs, reward, terminated, truncated, info = env.step(action)
        steps.append((obs.tolist(), float(reward), terminated, truncated))
        done = terminated or truncated
    return steps, info


# -- EpisodeMetrics ------------------------------------------------------------------------------
def test_metrics_on_the_final_step_are_the_summed_rewards_and_the_step_count() -> None:
    env = EpisodeMetrics(Countdown(length=4, scale=0.5))
    env.reset(seed=0)
    infos = [env.step(0)[4] for _ in range(4)]
    assert all("episode_metrics" not in info for info in infos[:-1])
    assert infos[-1]["episode_metrics"] == {"episode_return": 5.0, "episode_length": 4}
    assert infos[-1]["t"] == 4  # the env's own info is kept
    assert isinstance(infos[-1]["episode_metrics"]["episode_return"], float)
    assert isinstance(infos[-1]["episode_metrics"]["episode_length"], int)


def test_reset_starts_the_counts_again() -> None:
    env = EpisodeMetrics(Countdown(length=3, scale=1.0))
    env.reset(seed=0)
    env.step(0)  # an episode abandoned after one step
    _, info = play(env, seed=1)
    assert info["episode_metrics"] == {"episode_return": 6.0, "episode_length": 3}
    _, info = play(env, seed=2)
    assert info["episode_metrics"] == {"episode_return": 6.0, "episode_length": 3}


def test_a_truncated_episode_ends_with_metrics_too() -> None:
    env = make_env("CartPole-v1", max_episode_steps=5)
    # Pushing left and right in turn keeps the pole up for the 5 steps.
    steps, info = play(env, seed=0, actions=lambda t: t % 2)
    assert steps[-1][3] and not steps[-1][2]  # cut by the time limit, not terminated
    assert info["episode_metrics"] == {"episode_return": 5.0, "episode_length": 5}


def test_cartpole_metrics_equal_the_rewards_and_steps_of_the_episode() -> None:
    env = make_env("CartPole-v1")
    steps, info = play(env, seed=3)  # always push left: falls within a few dozen steps
    assert info["episode_metrics"] == {
        "episode_return": sum(reward for _, reward, _, _ in steps),
        "episode_length": len(steps),
    }
    assert steps[-1][2]  # terminated


def test_an_envs_own_episode_metrics_pass_through_unchanged() -> None:
    env = EpisodeMetrics(Countdown(length=2, own_metrics=True))
    _, info = play(env, seed=0)
    assert info["episode_metrics"] == {"total_profit": 42.0}


def test_the_trading_env_keeps_its_own_metrics() -> None:
    env = make_env("finsense/Trading-v0")
    _, info = play(env, seed=0)
    assert "total_profit" in info["episode_metrics"]
    assert "episode_return" not in info["episode_metrics"]


def test_an_episode_is_a_function_of_its_reset_seed() -> None:
    actions = np.random.default_rng(0).integers(0, 2, size=600).tolist()
    first = play(make_env("CartPole-v1"), seed=123, actions=actions.__getitem__)
    assert play(make_env("CartPole-v1"), seed=123, actions=actions.__getitem__) == first
    # An env that played another episode before: the reset seed alone decides the next one.
    used = make_env("CartPole-v1")
    play(used, seed=7)
    assert play(used, seed=123, actions=actions.__getitem__) == first
    assert play(make_env("CartPole-v1"), seed=124, actions=actions.__getitem__)[0] != first[0]


# -- make_env ------------------------------------------------------------------------------------
def test_make_env_wraps_gymnasium_make() -> None:
    env = make_env("CartPole-v1")
    assert isinstance(env, EpisodeMetrics)
    assert isinstance(env.action_space, spaces.Discrete) and env.action_space.n == 2
    assert env.observation_space.shape == (4,)
    assert env.spec is not None and env.spec.id == "CartPole-v1"


def test_make_env_passes_keywords_to_gymnasium_make() -> None:
    env = make_env("CartPole-v1", max_episode_steps=7)
    steps, info = play(env, seed=0, actions=lambda t: t % 2)
    assert len(steps) == 7 and steps[-1][3]
    assert info["episode_metrics"]["episode_length"] == 7


def refusal(id: str, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        make_env(id, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_an_unknown_id_is_refused_with_close_ids_suggested() -> None:
    message = refusal("CartPol-v1")
    assert message.startswith("env.id=CartPol-v1: ")
    assert "did you mean CartPole-v1" in message
    assert "set env.id to a registered id" in message.lower()


def test_an_unknown_version_is_refused_with_the_known_ones_suggested() -> None:
    message = refusal("CartPole-v9")
    assert message.startswith("env.id=CartPole-v9: ")
    assert "CartPole-v1" in message


def test_an_unknown_namespace_and_a_malformed_id_are_refused() -> None:
    assert refusal("nowhere/Nothing-v0").startswith("env.id=nowhere/Nothing-v0: ")
    message = refusal("not an id!")
    assert message.startswith("env.id=not an id!: ")
    assert "registered id" in message


def test_a_continuous_action_space_is_refused() -> None:
    message = refusal("Pendulum-v1")
    assert message.startswith("env.id=Pendulum-v1: ")
    assert "DQN needs a Discrete action space; Pendulum-v1 has Box(" in message
    assert "set env.id" in message


def test_a_non_box_observation_space_is_refused() -> None:
    message = refusal("FrozenLake-v1")
    assert message.startswith("env.id=FrozenLake-v1: ")
    assert "1-D float Box observation space" in message
    assert "FrozenLake-v1 has Discrete(16)" in message


@pytest.mark.parametrize(
    ("observation_space", "shown"),
    [
        (spaces.Box(0, 255, shape=(4, 4), dtype=np.uint8), "Box(0, 255, (4, 4), uint8)"),
        (spaces.Box(-1.0, 1.0, shape=(2, 3), dtype=np.float32), "(2, 3)"),
        (spaces.Box(0, 9, shape=(3,), dtype=np.int64), "int64"),
    ],
)
def test_observations_that_are_not_a_1d_float_box_are_refused(
    observation_space: spaces.Space, shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Countdown()
    env.observation_space = observation_space
    monkeypatch.setattr(gymnasium, "make", lambda id, **kwargs: env)
    message = refusal("Odd-v0")
    assert message.startswith("env.id=Odd-v0: ")
    assert "1-D float Box observation space" in message
    assert shown in message


def test_an_action_space_not_starting_at_zero_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    env = Countdown()
    env.action_space = spaces.Discrete(3, start=1)
    monkeypatch.setattr(gymnasium, "make", lambda id, **kwargs: env)
    message = refusal("Shifted-v0")
    assert message.startswith("env.id=Shifted-v0: ")
    assert "starting at 0" in message


def test_a_keyword_the_env_rejects_is_named() -> None:
    message = refusal("CartPole-v1", max_episode_steps=10, pole_colour="red")
    assert message.startswith("env.pole_colour: ")
    assert "max_episode_steps" not in message.split(":")[0]
    assert "remove it" in message


def test_a_type_error_without_keywords_is_a_bug_not_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(id: str, **kwargs: Any) -> gymnasium.Env:
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(gymnasium, "make", broken)
    with pytest.raises(TypeError):
        make_env("CartPole-v1")


def test_a_missing_dependency_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(id: str, **kwargs: Any) -> gymnasium.Env:
        raise gymnasium.error.DependencyNotInstalled("Box2D is not installed, pip install box2d")

    monkeypatch.setattr(gymnasium, "make", missing)
    message = refusal("LunarLander-v3")
    assert message.startswith("env.id=LunarLander-v3 needs a package that is not installed")
    assert "pip install box2d" in message
