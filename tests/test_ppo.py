"""PPO (finsense.agents.ppo): GAE and the losses against plain hand computations, config
validation, greedy acting, exact state round trips and other networks as actor."""

from __future__ import annotations

import copy
import functools
import io
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

import finsense.train  # noqa: F401  (registers the schema and the run-dir resolvers)
from finsense.agents import QNetwork
from finsense.agents.ppo import ActorCriticMLP, PPOAgent, PPOConfig, gae
from finsense.agents.sequence_networks import GRUQNetwork
from finsense.components import build_agent, policy_network
from finsense.config import to_plain
from finsense.errors import ConfigError
from tests.helpers import assert_same_state

OBS_DIM = 5
N_ACTIONS = 3


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _agent(seed: int = 0, network: Any = None, **hyper: Any) -> PPOAgent:
    return PPOAgent.from_config(OBS_DIM, N_ACTIONS, network=network, seed=seed, **hyper)


class _Env:
    """A tiny deterministic stand-in env: random observations and rewards; an episode ends after
    ``length`` steps, terminated when its number is even, truncated (time limit) when odd."""

    def __init__(self, seed: int = 0, length: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        self.length = length
        self.episode = 0

    def reset(self) -> np.ndarray:
        self.episode += 1
        self.t = 0
        return self.rng.standard_normal(OBS_DIM).astype(np.float32)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        self.t += 1
        obs = self.rng.standard_normal(OBS_DIM).astype(np.float32)
        reward = float(self.rng.standard_normal()) + 0.1 * action
        end = self.t >= self.length
        return obs, reward, end and self.episode % 2 == 0, end and self.episode % 2 == 1


def _run(agent: PPOAgent, env: _Env, episodes: int) -> None:
    """The trainer's loop (``Trainer.run_episode``) for ``episodes`` episodes."""
    for _ in range(episodes):
        obs = env.reset()
        done = False
        while not done:
            action = agent.act(obs)
            next_obs, reward, terminated, truncated = env.step(action)
            agent.observe(obs, action, reward, next_obs, terminated)
            obs = next_obs
            done = terminated or truncated
        agent.end_episode()


def _parameters(agent: PPOAgent) -> list[torch.Tensor]:
    params = list(agent.actor.parameters())
    if agent.critic is not None:
        params += list(agent.critic.parameters())
    return [p.detach().clone() for p in params]


# -- GAE and the losses against hand computations ------------------------------------------------
def test_gae_and_returns_equal_a_hand_computation() -> None:
    """Five steps: a truncated episode (bootstrapped), a terminated one (not), and a rollout
    cut mid-episode (bootstrapped)."""
    gamma, lam, scale = 0.9, 0.8, 2.0
    agent = _agent(n_steps=10, batch_size=5, gamma=gamma, gae_lambda=lam, reward_scale=scale)
    rng = np.random.default_rng(3)
    obs = rng.standard_normal((6, OBS_DIM)).astype(np.float32)
    cut = rng.standard_normal((2, OBS_DIM)).astype(np.float32)  # the truncation's next obs, ...
    rewards = [0.5, -1.0, 2.0, 0.25, 1.5]
    # (next observation, terminated, episode ends after this step)
    steps = [
        (obs[1], False, False),
        (cut[0], False, True),  # truncated: the next episode starts at obs[2]
        (obs[3], False, False),
        (cut[1], True, True),  # terminated: the next episode starts at obs[4]
        (obs[5], False, False),  # the rollout is cut here
    ]
    starts = [obs[0], obs[1], obs[2], obs[3], obs[4]]
    for t, (next_obs, terminated, ends) in enumerate(steps):
        action = agent.act(starts[t])
        agent.observe(starts[t], action, rewards[t], next_obs, terminated)
        if ends:
            agent.end_episode()
    advantages, returns = agent.advantages_and_returns()

    value = agent.value_of
    expected_adv = [0.0] * 5
    following = 0.0
    for t in reversed(range(5)):
        next_obs, terminated, ends = steps[t]
        if terminated:
            next_value, carry = 0.0, 0.0
        elif ends or t == 4:
            next_value, carry = value(next_obs), 0.0
        else:
            next_value, carry = value(starts[t + 1]), 1.0
        delta = scale * rewards[t] + gamma * next_value - value(starts[t])
        following = delta + gamma * lam * carry * following
        expected_adv[t] = following
    expected_ret = [a + value(s) for a, s in zip(expected_adv, starts, strict=True)]
    torch.testing.assert_close(advantages, torch.tensor(expected_adv), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(returns, torch.tensor(expected_ret), rtol=1e-6, atol=1e-6)


def test_gae_function_plain_cases() -> None:
    # lambda = 1, gamma = 1, no ends: the advantage is the Monte-Carlo return minus the value.
    adv, ret = gae([1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [False] * 3, [0.0, 0.0, 2.0], 1.0, 1.0)
    assert adv == [4.5, 3.5, 2.5] and ret == [5.0, 4.0, 3.0]
    # lambda = 0: the one-step TD error.
    adv, _ = gae([1.0, 2.0], [0.5, 1.0], [False, True], [0.0, 3.0], 0.5, 0.0)
    assert adv == [1.0 + 0.5 * 1.0 - 0.5, 2.0 + 0.5 * 3.0 - 1.0]


@pytest.mark.parametrize("normalize", [True, False])
def test_losses_equal_a_hand_computation(normalize: bool) -> None:
    clip, vf_coef, ent_coef = 0.2, 0.7, 0.05
    agent = _agent(
        n_steps=8,
        batch_size=8,
        clip_range=clip,
        vf_coef=vf_coef,
        ent_coef=ent_coef,
        normalize_advantage=normalize,
    )
    gen = torch.Generator().manual_seed(1)
    n = 8
    obs = torch.randn(n, OBS_DIM, generator=gen)
    actions = torch.randint(0, N_ACTIONS, (n,), generator=gen)
    old_log_probs = torch.log(torch.rand(n, generator=gen) * 0.8 + 0.1)
    advantages = torch.randn(n, generator=gen)
    returns = torch.randn(n, generator=gen)
    out = agent.losses(obs, actions, old_log_probs, advantages, returns)

    net = agent.actor
    assert isinstance(net, ActorCriticMLP)
    with torch.no_grad():
        logits = net(obs).double().tolist()
        values = net.value(obs).double().tolist()
    adv = advantages.double().tolist()
    if normalize:
        mean = sum(adv) / n
        std = math.sqrt(sum((a - mean) ** 2 for a in adv) / (n - 1))
        adv = [(a - mean) / (std + 1e-8) for a in adv]
    surrogate = entropy = value_loss = kl = clipped = 0.0
    for i in range(n):
        z = sum(math.exp(v) for v in logits[i])
        probs = [math.exp(v) / z for v in logits[i]]
        log_prob = math.log(probs[int(actions[i])])
        ratio = math.exp(log_prob - float(old_log_probs[i]))
        surrogate += min(adv[i] * ratio, adv[i] * min(max(ratio, 1 - clip), 1 + clip))
        entropy -= sum(p * math.log(p) for p in probs)
        value_loss += (float(returns[i]) - values[i]) ** 2
        kl += (ratio - 1) - math.log(ratio)
        clipped += abs(ratio - 1) > clip
    policy_loss = -surrogate / n
    expected = {
        "policy_loss": policy_loss,
        "value_loss": value_loss / n,
        "entropy": entropy / n,
        "approx_kl": kl / n,
        "clip_fraction": clipped / n,
        "loss": policy_loss + vf_coef * value_loss / n - ent_coef * entropy / n,
    }
    assert 0 < expected["clip_fraction"] < 1  # both branches of the clip are exercised
    for key, value in expected.items():
        assert float(out[key].detach()) == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_one_update_changes_every_parameter_of_actor_and_critic() -> None:
    for network in (
        None,
        functools.partial(ActorCriticMLP, hidden_sizes=[8, 8], shared=False),
        functools.partial(QNetwork, hidden_sizes=[8]),
    ):
        agent = _agent(network=network, n_steps=16, batch_size=8, n_epochs=2, ent_coef=0.01)
        before = _parameters(agent)
        _run(agent, _Env(length=8), 2)
        assert agent.updates == 1 and agent.rollout_size == 0
        after = _parameters(agent)
        assert len(before) == len(after) > 0
        for old, new in zip(before, after, strict=True):
            assert not torch.equal(old, new)
        metrics = agent.episode_metrics()
        assert set(metrics) == {
            "entropy",
            "approx_kl",
            "clip_fraction",
            "explained_variance",
            "policy_loss",
            "value_loss",
        }
        assert all(math.isfinite(v) for v in metrics.values())


def test_metrics_are_nan_before_the_first_update_and_a_warning_says_why() -> None:
    agent = _agent(n_steps=64, batch_size=8)
    _run(agent, _Env(length=5), 2)
    assert all(math.isnan(v) for v in agent.episode_metrics().values())
    (warning,) = agent.training_warnings()
    assert "no PPO update in 10 env steps" in warning and "agent.n_steps=64" in warning
    _run(agent, _Env(length=60), 1)
    assert agent.updates == 1 and agent.training_warnings() == []


def test_target_kl_stops_an_update_early() -> None:
    eager = _agent(n_steps=32, batch_size=8, n_epochs=10, learning_rate=0.05, target_kl=1e-6)
    before = _parameters(eager)
    _run(eager, _Env(length=8), 4)
    # The first minibatch has a KL of zero (the rollout's own policy): one step, then a stop.
    assert eager.updates == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, _parameters(eager), strict=True))
    assert eager.episode_metrics()["approx_kl"] > 0


# -- acting --------------------------------------------------------------------------------------
def test_greedy_act_draws_nothing_and_is_the_argmax_of_the_logits() -> None:
    agent = _agent()
    obs = np.random.default_rng(0).standard_normal(OBS_DIM).astype(np.float32)
    own, torch_global = agent._generator.get_state(), torch.get_rng_state()
    np_global = np.random.get_state()[1].copy()
    action = agent.act(obs, explore=False)
    assert torch.equal(agent._generator.get_state(), own)
    assert torch.equal(torch.get_rng_state(), torch_global)
    assert np.array_equal(np.random.get_state()[1], np_global)
    with torch.no_grad():
        assert action == int(agent.actor(torch.from_numpy(obs)[None]).argmax(-1))
    agent.act(obs)  # sampling draws from the agent's own generator only
    assert not torch.equal(agent._generator.get_state(), own)
    assert torch.equal(torch.get_rng_state(), torch_global)


def test_sampling_follows_the_policy() -> None:
    agent = _agent(seed=5)
    obs = np.zeros(OBS_DIM, dtype=np.float32)
    with torch.no_grad():
        probs = torch.softmax(agent.actor(torch.from_numpy(obs)[None])[0], -1)
    counts = np.bincount([agent.act(obs) for _ in range(3000)], minlength=N_ACTIONS)
    np.testing.assert_allclose(counts / 3000, probs.numpy(), atol=0.04)


def test_construction_is_seeded_and_leaves_global_generators_alone() -> None:
    state = torch.get_rng_state()
    a, b, c = _agent(seed=1), _agent(seed=1), _agent(seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert_same_state(a.state_dict()["policy"], b.state_dict()["policy"])
    w = "pi_trunk.0.weight"
    assert not torch.equal(a.actor.state_dict()[w], c.actor.state_dict()[w])


# -- state ---------------------------------------------------------------------------------------
def _reload(state: dict[str, Any]) -> dict[str, Any]:
    """Through torch.save / torch.load(weights_only=True), as the checkpoint store does."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded


@pytest.mark.parametrize(
    "network",
    [None, functools.partial(QNetwork, hidden_sizes=[8]), functools.partial(GRUQNetwork)],
    ids=["actor_critic", "qnetwork", "gru"],
)
def test_state_dict_round_trip_mid_rollout_continues_bit_identically(network: Any) -> None:
    hyper = {"n_steps": 24, "batch_size": 8, "n_epochs": 2}
    a = _agent(seed=0, network=network, **hyper)
    env_a = _Env(seed=1, length=7)
    _run(a, env_a, 5)  # 35 steps: one update, 11 steps of the next rollout stored
    assert a.updates == 1 and a.rollout_size == 11
    saved = _reload(a.state_dict())
    env_b = copy.deepcopy(env_a)
    b = _agent(seed=99, network=network, **hyper)  # another seed: everything comes from the state
    b.load_state_dict(saved)
    assert_same_state(b.state_dict(), saved)
    # Both continue on the same transitions (the same env draws; the same sampled actions).
    _run(a, env_a, 6)
    _run(b, env_b, 6)
    assert a.updates == b.updates == 3
    for pa, pb in zip(_parameters(a), _parameters(b), strict=True):
        assert torch.equal(pa, pb)
    assert_same_state(a.state_dict(), b.state_dict())


def test_load_refuses_another_network_shape_naming_the_key() -> None:
    a = _agent(network=functools.partial(ActorCriticMLP, hidden_sizes=[16]))
    b = _agent(network=functools.partial(ActorCriticMLP, hidden_sizes=[8]))
    with pytest.raises(ConfigError, match=r"agent\.network\.hidden_sizes=\[8\]"):
        b.load_state_dict(a.state_dict())


def test_load_refuses_a_longer_rollout_than_n_steps() -> None:
    a = _agent(n_steps=32, batch_size=8)
    _run(a, _Env(length=10), 2)
    with pytest.raises(ConfigError, match=r"agent\.n_steps=16"):
        _agent(n_steps=16, batch_size=8).load_state_dict(a.state_dict())


# -- other networks as actor ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "network",
    [functools.partial(QNetwork, hidden_sizes=[16], dueling=True), functools.partial(GRUQNetwork)],
    ids=["qnetwork", "gru"],
)
def test_a_q_network_is_the_actor_with_a_separate_critic(network: Any) -> None:
    agent = _agent(network=network, n_steps=16, batch_size=8, n_epochs=1)
    assert agent.critic is not None and type(agent.critic) is type(agent.actor)
    assert agent.critic(torch.zeros(2, OBS_DIM)).shape == (2, 1)
    _run(agent, _Env(length=9), 2)
    assert agent.updates == 1
    policy = agent.state_dict()["policy"]
    assert policy["arch"]["n_actions"] == N_ACTIONS
    assert "critic" in agent.state_dict()["training"]


# -- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hyper", "says"),
    [
        ({"n_steps": 0}, "agent.n_steps must be >= 1, got 0"),
        ({"n_steps": 2.5}, "agent.n_steps must be an integer"),
        ({"batch_size": 128, "n_steps": 64}, "agent.batch_size=128 must be <= agent.n_steps=64"),
        ({"n_epochs": 0}, "agent.n_epochs must be >= 1"),
        ({"gamma": 1.5}, "agent.gamma must be in [0, 1]"),
        ({"gae_lambda": -0.1}, "agent.gae_lambda must be in [0, 1]"),
        ({"clip_range": 0.0}, "agent.clip_range must be > 0"),
        ({"ent_coef": -1.0}, "agent.ent_coef must be >= 0"),
        ({"vf_coef": float("nan")}, "agent.vf_coef must be a finite number"),
        ({"max_grad_norm": 0}, "agent.max_grad_norm must be > 0"),
        ({"target_kl": 0.0}, "agent.target_kl must be > 0 or null"),
        ({"target_kl": "x"}, "agent.target_kl must be a number or null"),
        ({"normalize_advantage": 1}, "agent.normalize_advantage must be true or false"),
        ({"learning_rate": -1e-3}, "agent.learning_rate must be > 0"),
        ({"reward_scale": 0}, "agent.reward_scale must be > 0"),
        ({"n_step": 10}, "agent.n_step is not a key of agent (did you mean agent.n_steps?)"),
    ],
)
def test_bad_hyperparameters_are_one_line_naming_the_key(hyper: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as err:
        _agent(**hyper)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_defaults_are_sb3s() -> None:
    cfg = PPOConfig()
    assert (cfg.learning_rate, cfg.n_steps, cfg.batch_size, cfg.n_epochs) == (3e-4, 2048, 64, 10)
    assert (cfg.gamma, cfg.gae_lambda, cfg.clip_range, cfg.ent_coef) == (0.99, 0.95, 0.2, 0.0)
    assert (cfg.vf_coef, cfg.max_grad_norm, cfg.normalize_advantage, cfg.target_kl) == (
        0.5,
        0.5,
        True,
        None,
    )


def test_the_optimizer_learning_rate_is_refused() -> None:
    with pytest.raises(ConfigError, match="agent.optimizer.lr: set the learning rate"):
        _agent(optimizer=functools.partial(torch.optim.Adam, lr=0.1))


def _compose(*overrides: str) -> Any:
    with initialize_config_module(config_module="finsense.conf", version_base="1.3"):
        return compose(config_name="config", overrides=["agent=ppo", *overrides])


class _Spaces:
    """What build_agent reads of an env."""

    class observation_space:  # noqa: N801 - gymnasium's attribute names
        shape = (OBS_DIM,)

    class action_space:  # noqa: N801
        n = N_ACTIONS


def test_agent_ppo_composes_and_builds_with_the_yaml_defaults() -> None:
    cfg = _compose()
    agent = build_agent(cfg, _Spaces())  # type: ignore[arg-type]
    assert isinstance(agent, PPOAgent) and isinstance(agent.actor, ActorCriticMLP)
    assert agent.config.reward_scale == 100.0 and agent.config.n_steps == 2048
    assert agent.critic is None
    # Evaluation rebuilds the policy network from the recorded config and loads its weights.
    state = agent.state_dict()["policy"]
    network = policy_network(to_plain(cfg), state["arch"])
    network.load_state_dict(state["weights"])
    obs = torch.randn(4, OBS_DIM)
    with torch.no_grad():
        assert torch.equal(network(obs).argmax(-1), agent.actor(obs).argmax(-1))


def test_agent_ppo_with_a_q_network_from_the_config_group() -> None:
    agent = build_agent(_compose("agent/network=mlp"), _Spaces())  # type: ignore[arg-type]
    assert isinstance(agent.actor, QNetwork) and isinstance(agent.critic, QNetwork)
    assert agent.critic.n_actions == 1


def test_a_dqn_key_is_refused_with_the_key_named() -> None:
    with pytest.raises(ConfigError, match=r"agent\.learning_starts is not a key of agent"):
        build_agent(_compose("+agent.learning_starts=64"), _Spaces())  # type: ignore[arg-type]


# -- the fast path: the same update as autograd's ------------------------------------------------
def _minibatch(seed: int = 3, n: int = 12) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, OBS_DIM, generator=g)
    actions = torch.randint(N_ACTIONS, (n,), generator=g)
    # Old log-probabilities off the current ones by up to +-0.5: both branches of the clip.
    old_log_probs = -1.1 + (torch.rand(n, generator=g) - 0.5)
    advantages = torch.randn(n, generator=g)
    returns = torch.randn(n, generator=g)
    return obs, actions, old_log_probs, advantages, returns


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "separate"])
@pytest.mark.parametrize(("ent_coef", "normalize"), [(0.0, True), (0.05, False)])
def test_fast_gradient_equals_autograds(shared: bool, ent_coef: float, normalize: bool) -> None:
    network = functools.partial(ActorCriticMLP, hidden_sizes=[8, 6], shared=shared)
    hyper = {"ent_coef": ent_coef, "normalize_advantage": normalize, "vf_coef": 0.7}
    fast = _agent(network=network, learner="fast", **hyper)
    slow = _agent(network=network, learner="autograd", **hyper)
    assert (fast.learner, slow.learner) == ("fast", "autograd")
    batch = _minibatch()
    stats_fast = fast._learner.gradient(*batch)
    stats_slow = slow._learner.gradient(*batch)
    torch.testing.assert_close(stats_fast, stats_slow, rtol=1e-5, atol=1e-6)
    assert 0 < float(stats_slow[-1]) < 1  # some ratios clipped, some not
    for (name, p_fast), p_slow in zip(
        fast.actor.named_parameters(), slow.actor.parameters(), strict=True
    ):
        assert p_slow.grad is not None and p_fast.grad is not None
        assert p_slow.grad.abs().sum() > 0, name
        torch.testing.assert_close(p_fast.grad, p_slow.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_fast_and_autograd_updates_agree_and_acting_follows_the_weights() -> None:
    network = functools.partial(ActorCriticMLP, hidden_sizes=[16, 16], shared=False)
    hyper = {"n_steps": 32, "batch_size": 8, "n_epochs": 3}
    fast = _agent(network=network, learner="fast", **hyper)
    slow = _agent(network=network, learner="autograd", **hyper)
    env = _Env(seed=2, length=8)
    for _ in range(4):  # the same transitions, with observe computing what act would keep
        obs = env.reset()
        for _ in range(8):
            next_obs, reward, terminated, _ = env.step(1)
            fast.observe(obs, 1, reward, next_obs, terminated)
            slow.observe(obs, 1, reward, next_obs, terminated)
            obs = next_obs
        fast.end_episode()
        slow.end_episode()
    assert fast.updates == slow.updates == 1
    for p_fast, p_slow in zip(fast.actor.parameters(), slow.actor.parameters(), strict=True):
        torch.testing.assert_close(p_fast, p_slow, rtol=1e-4, atol=1e-5)
    # Acting reads numpy copies of the weights, taken again after the update: the same policy
    # as the network's own forward.
    x = torch.randn(4, OBS_DIM)
    for row in x:
        logits, value = fast._policy(row.numpy())
        log_probs = torch.log_softmax(torch.tensor(logits), -1).numpy()
        with torch.no_grad():
            expected = torch.log_softmax(fast.actor(row[None]), -1)[0]
            expected_value = float(fast.actor.value(row[None])[0])
        np.testing.assert_allclose(log_probs, expected.numpy(), rtol=1e-5, atol=1e-6)
        assert value == pytest.approx(expected_value, rel=1e-5, abs=1e-6)


def test_learner_auto_is_fast_only_for_the_built_in_network_with_adam() -> None:
    assert _agent().learner == "fast"
    assert _agent(network=functools.partial(QNetwork, hidden_sizes=[8])).learner == "autograd"

    class Subclass(ActorCriticMLP):
        pass

    assert _agent(network=Subclass).learner == "autograd"
    adamw = functools.partial(torch.optim.AdamW, weight_decay=0.01)
    assert _agent(optimizer=adamw).learner == "autograd"
    eps = functools.partial(torch.optim.Adam, eps=1e-5)
    assert _agent(optimizer=eps).learner == "fast"
    with pytest.raises(ConfigError, match=r"agent\.learner=fast needs the built-in"):
        _agent(network=functools.partial(QNetwork, hidden_sizes=[8]), learner="fast")
    with pytest.raises(ConfigError, match=r"agent\.learner must be one of auto, autograd, fast"):
        _agent(learner="quick")


def test_a_checkpoint_resumes_only_with_the_learner_that_wrote_it() -> None:
    fast = _agent(n_steps=16, batch_size=8)
    _run(fast, _Env(length=8), 3)
    state = fast.state_dict()
    assert state["training"]["learner"] == "fast"
    with pytest.raises(ConfigError, match=r"agent\.learner=fast, this run uses autograd"):
        _agent(n_steps=16, batch_size=8, learner="autograd").load_state_dict(state)
