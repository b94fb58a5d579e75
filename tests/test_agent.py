"""The DQN agent: acting, exploration schedule, learning step, target sync, buffer, exact resume."""

from __future__ import annotations

import copy
import io
import random
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from finsense.agents import (
    DQNAgent,
    DQNConfig,
    FlatAdam,
    QNetwork,
    ReplayBuffer,
    greedy_action,
    td_target,
)
from finsense.checkpoint.chunks import Chunked, externalise, substitute
from finsense.device import DEFAULT_THREADS, resolve_device, set_torch_threads
from finsense.envs import TradingEnv
from finsense.errors import CheckpointError, ConfigError
from tests.helpers import assert_same_state

WINDOW = 10
OBS_DIM = WINDOW + 1
ENV_KWARGS: dict[str, Any] = {
    "data": {"source": "synthetic", "n_steps": 400, "seed": 3, "ar_coef": 0.2},
    "window_size": WINDOW,
    "episode_length": 60,
}
#: Small and quick to train, but with every mechanism in play within a few hundred steps:
#: learning starts, training every other step, target syncs and a buffer that wraps around.
SMALL = DQNConfig(
    buffer_size=300,
    learning_starts=50,
    batch_size=16,
    train_freq=2,
    target_update_interval=40,
    hidden_sizes=(16, 16),
    exploration_steps=500,
)


class LayerNormQNetwork(QNetwork):
    """The issue's network: the built-in MLP with a LayerNorm after the first hidden layer.

    Only ``forward`` knows about the LayerNorm, so a hand-written backward pass for the MLP would
    neither train it nor compute this function.
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: tuple[int, ...]) -> None:
        super().__init__(obs_dim, n_actions, hidden_sizes)
        self.norm = nn.LayerNorm(self.hidden_sizes[0])
        with torch.no_grad():  # not the identity at the start, so a wrong path shows at once
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        h = obs
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            h = (self.norm(h) if i == 0 else h).relu()
        return self._combine(self.head(h))


def layer_norm_agent(config: DQNConfig = SMALL, seed: int = 0) -> DQNAgent:
    """An agent with :class:`LayerNormQNetwork`, its initialisation seeded by ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = LayerNormQNetwork(OBS_DIM, 2, config.hidden_sizes)
    return DQNAgent(OBS_DIM, 2, config, seed=seed, network=network)


def flat_params(network: nn.Module) -> torch.Tensor:
    """Every parameter of ``network`` in one vector (a copy)."""
    return torch.cat([p.detach().reshape(-1) for p in network.parameters()])


def run_steps(agent: DQNAgent, env: TradingEnv, steps: int) -> None:
    """Train ``steps`` env steps in whole episodes, reseeding the env per episode as the trainer."""
    done_steps = 0
    while done_steps < steps:
        obs, _ = env.reset(seed=1000 + agent.episodes)
        done = False
        while not done:
            action = agent.act(obs)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            agent.observe(obs, action, float(reward), next_obs, bool(terminated))
            obs, done = next_obs, terminated or truncated
            done_steps += 1
        agent.end_episode()


def fill(agent: DQNAgent, n: int, seed: int = 0) -> None:
    """Store ``n`` random transitions without training (observe would train)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        agent.buffer.add(
            rng.standard_normal(agent.obs_dim).astype(np.float32),
            int(rng.integers(agent.n_actions)),
            float(rng.standard_normal()),
            rng.standard_normal(agent.obs_dim).astype(np.float32),
            bool(rng.random() < 0.1),
        )


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """Through bytes and back as a checkpoint is: torch.save, torch.load(weights_only=True),
    with each chunked tensor replaced by a copy (the store's chunks hold its bytes)."""
    small, chunked = externalise(state)
    buffer = io.BytesIO()
    torch.save(small, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return substitute(loaded, [item.tensor.clone() for _, item in chunked])  # type: ignore[no-any-return]


# -- acting ------------------------------------------------------------------------------------
def test_greedy_action_is_the_argmax_of_the_q_values() -> None:
    agent = DQNAgent(OBS_DIM, 3, SMALL, seed=1)
    rng = np.random.default_rng(0)
    for _ in range(50):
        obs = rng.standard_normal(OBS_DIM).astype(np.float32)
        q = agent.q_network(torch.from_numpy(obs).unsqueeze(0))
        expected = int(q.argmax(1).item())
        assert agent.act(obs, explore=False) == expected
        assert greedy_action(agent.q_network, obs) == expected


def test_greedy_acting_draws_no_random_numbers() -> None:
    agent = DQNAgent(OBS_DIM, 2, SMALL, seed=1)
    before = copy.deepcopy(agent._rng.bit_generator.state)
    for _ in range(10):
        agent.act(np.zeros(OBS_DIM, dtype=np.float32), explore=False)
    assert agent._rng.bit_generator.state == before


def test_epsilon_one_acts_uniformly_at_random_and_zero_greedily() -> None:
    obs = np.ones(OBS_DIM, dtype=np.float32)
    always = DQNAgent(OBS_DIM, 3, DQNConfig(epsilon_start=1.0, epsilon_end=1.0), seed=0)
    counts = np.bincount([always.act(obs) for _ in range(3000)], minlength=3)
    assert np.all(np.abs(counts / 3000 - 1 / 3) < 0.04)

    never = DQNAgent(OBS_DIM, 3, DQNConfig(epsilon_start=0.0, epsilon_end=0.0), seed=0)
    greedy = never.act(obs, explore=False)
    assert all(never.act(obs) == greedy for _ in range(200))


def test_epsilon_greedy_explores_at_rate_epsilon() -> None:
    obs = np.ones(OBS_DIM, dtype=np.float32)
    agent = DQNAgent(OBS_DIM, 2, DQNConfig(epsilon_start=0.3, epsilon_end=0.3), seed=0)
    greedy = agent.act(obs, explore=False)
    other = np.mean([agent.act(obs) != greedy for _ in range(5000)])
    assert other == pytest.approx(0.3 / 2, abs=0.02)  # half the random draws hit greedy anyway


# -- exploration schedule ----------------------------------------------------------------------
def test_epsilon_falls_linearly_in_the_agents_own_steps() -> None:
    config = DQNConfig(epsilon_start=1.0, epsilon_end=0.1, exploration_steps=100)
    agent = DQNAgent(OBS_DIM, 2, config, seed=0)
    obs = np.zeros(OBS_DIM, dtype=np.float32)
    seen = []
    for _ in range(150):
        seen.append(agent.epsilon)
        agent.observe(obs, 0, 0.0, obs, False)
    expected = [1.0 - 0.9 * min(k, 100) / 100 for k in range(150)]
    assert seen == pytest.approx(expected, abs=1e-12)
    assert agent.epsilon == 0.1


def test_epsilon_ignores_how_many_episodes_there_are() -> None:
    config = DQNConfig(exploration_steps=100)
    short, long = DQNAgent(OBS_DIM, 2, config), DQNAgent(OBS_DIM, 2, config)
    obs = np.zeros(OBS_DIM, dtype=np.float32)
    for step in range(60):
        for agent in (short, long):
            agent.observe(obs, 0, 0.0, obs, False)
        short.end_episode()  # one-step episodes ...
        if step % 20 == 19:
            long.end_episode()  # ... against 20-step episodes
        assert short.epsilon == long.epsilon
    assert short.episodes == 60 and long.episodes == 3


def test_zero_exploration_steps_starts_at_epsilon_end() -> None:
    agent = DQNAgent(OBS_DIM, 2, DQNConfig(exploration_steps=0, epsilon_end=0.02))
    assert agent.epsilon == 0.02


# -- learning ----------------------------------------------------------------------------------
def test_no_training_before_learning_starts_then_every_train_freq_steps() -> None:
    config = DQNConfig(learning_starts=10, train_freq=3, gradient_steps=2, batch_size=4)
    agent = DQNAgent(OBS_DIM, 2, config, seed=0)
    calls: list[int] = []
    learn = agent.learn

    def counting_learn() -> float:
        calls.append(agent.steps)
        return learn()

    agent.learn = counting_learn  # type: ignore[method-assign]
    obs = np.zeros(OBS_DIM, dtype=np.float32)
    losses = [agent.observe(obs, 0, 1.0, obs, False) for _ in range(20)]
    assert calls == [12, 12, 15, 15, 18, 18]
    assert [i + 1 for i, loss in enumerate(losses) if loss is not None] == [12, 15, 18]


def test_target_network_syncs_exactly_every_target_update_interval() -> None:
    config = DQNConfig(learning_starts=0, train_freq=1, target_update_interval=10, batch_size=4)
    agent = DQNAgent(OBS_DIM, 2, config, seed=0)
    rng = np.random.default_rng(0)

    def synced() -> bool:
        pairs = zip(agent.target_network.parameters(), agent.q_network.parameters(), strict=True)
        return all(torch.equal(t, o) for t, o in pairs)

    history = []
    for _ in range(25):
        obs = rng.standard_normal(OBS_DIM).astype(np.float32)
        agent.observe(obs, int(rng.integers(2)), float(rng.standard_normal()), obs, False)
        history.append(synced())
    assert [i + 1 for i, s in enumerate(history) if s] == [10, 20]


def test_td_target_double_dqn_against_plain_dqn_by_hand() -> None:
    rewards = torch.tensor([[1.0], [0.5], [-1.0]])
    dones = torch.tensor([[0.0], [0.0], [1.0]])
    q_target = torch.tensor([[2.0, 10.0], [4.0, 1.0], [7.0, 9.0]])
    q_online = torch.tensor([[5.0, 0.0], [0.0, 3.0], [1.0, 2.0]])
    double = td_target(rewards, dones, 0.5, q_target, q_online)
    plain = td_target(rewards, dones, 0.5, q_target)
    # Double DQN: the online net picks actions 0, 1 (, 1); the target net values them.
    assert double.tolist() == [[1.0 + 0.5 * 2.0], [0.5 + 0.5 * 1.0], [-1.0]]
    # DQN: the target net's own maximum.
    assert plain.tolist() == [[1.0 + 0.5 * 10.0], [0.5 + 0.5 * 4.0], [-1.0]]


def reference_step(
    agent: DQNAgent,
    rng: np.random.Generator,
    optimizer: torch.optim.Optimizer,
    online: QNetwork,
    target: QNetwork,
) -> float:
    """A CleanRL-style DQN step with autograd, torch.optim.Adam and clip_grad_norm_."""
    cfg = agent.config
    batch = agent.buffer.sample(rng, cfg.batch_size)
    with torch.no_grad():
        q_next = target(batch.next_observations)
        if cfg.double_q:
            best = online(batch.next_observations).argmax(1, keepdim=True)
            q_next_value = q_next.gather(1, best)
        else:
            q_next_value = q_next.max(1, keepdim=True).values
        y = batch.rewards + cfg.gamma * (1 - batch.dones) * q_next_value
    q = online(batch.observations).gather(1, batch.actions)
    loss = F.smooth_l1_loss(q, y)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(online.parameters(), cfg.max_grad_norm)
    optimizer.step()
    return loss.item()


@pytest.mark.parametrize(
    ("double_q", "dueling", "max_grad_norm"),
    [(True, False, 10.0), (False, False, 10.0), (True, True, 10.0), (True, False, 0.05)],
)
def test_learn_matches_an_autograd_reference(
    double_q: bool, dueling: bool, max_grad_norm: float
) -> None:
    config = DQNConfig(
        batch_size=32,
        hidden_sizes=(24, 16, 8),
        double_q=double_q,
        dueling=dueling,
        max_grad_norm=max_grad_norm,
        learning_rate=1e-2,
    )
    agent = DQNAgent(OBS_DIM, 3, config, seed=5)
    fill(agent, 200)
    online = QNetwork.from_arch(agent.q_network.arch)
    online.load_state_dict(agent.q_network.state_dict())
    target = QNetwork.from_arch(agent.q_network.arch)
    target.load_state_dict(agent.q_network.state_dict())
    optimizer = torch.optim.Adam(online.parameters(), lr=config.learning_rate)
    rng = copy.deepcopy(agent._rng)
    for _ in range(5):
        loss = agent.learn()
        expected = reference_step(agent, rng, optimizer, online, target)
        assert loss == pytest.approx(expected, rel=1e-5, abs=1e-7)
    for name, value in online.state_dict().items():
        torch.testing.assert_close(agent.q_network.state_dict()[name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dueling", [False, True])
def test_hand_written_backward_equals_autograd(dueling: bool) -> None:
    torch.manual_seed(0)
    net = QNetwork(7, 4, (12, 9), dueling)
    reference = copy.deepcopy(net)
    net.flatten_()
    obs = torch.randn(20, 7)
    q, cache = net.forward_cached(obs)
    grad_q = torch.randn(10, 4)  # only the first 10 rows carry a gradient
    net.backward_cached(cache, grad_q)
    (reference(obs)[:10] * grad_q).sum().backward()
    torch.testing.assert_close(q, reference(obs).detach())
    for (name, p), ref in zip(net.named_parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and ref.grad is not None
        torch.testing.assert_close(p.grad, ref.grad, msg=name)


def test_flat_adam_matches_torch_adam() -> None:
    torch.manual_seed(0)
    params = torch.randn(50)
    reference = params.clone().requires_grad_(True)
    adam = FlatAdam(params, lr=0.01)
    torch_adam = torch.optim.Adam([reference], lr=0.01)
    for _ in range(20):
        grad = torch.randn(50)
        params.grad = grad
        reference.grad = grad.clone()
        adam.step()
        torch_adam.step()
    torch.testing.assert_close(params, reference.detach())


# -- learners: autograd for any network, the fast path only where it is the same function ------
@pytest.mark.parametrize(
    ("double_q", "dueling", "max_grad_norm"),
    [(True, False, 10.0), (False, False, 10.0), (True, True, 10.0), (True, False, 0.05)],
)
def test_fast_and_autograd_learners_compute_the_same_update(
    double_q: bool, dueling: bool, max_grad_norm: float
) -> None:
    def agent(learner: str) -> DQNAgent:
        config = DQNConfig(
            batch_size=32,
            hidden_sizes=(24, 16, 8),
            double_q=double_q,
            dueling=dueling,
            max_grad_norm=max_grad_norm,
            learning_rate=1e-2,
            learner=learner,
        )
        made = DQNAgent(OBS_DIM, 3, config, seed=5)
        fill(made, 200)
        return made

    fast, autograd = agent("fast"), agent("autograd")
    assert (fast.learner, autograd.learner) == ("fast", "autograd")
    assert isinstance(fast.optimizer, FlatAdam)
    assert isinstance(autograd.optimizer, torch.optim.Adam)
    for step in range(8):
        loss_fast, loss_autograd = fast.learn(), autograd.learn()
        assert loss_fast == pytest.approx(loss_autograd, rel=1e-5, abs=1e-7), step
        if step == 3:
            fast.sync_target()
            autograd.sync_target()
    for name, value in autograd.q_network.state_dict().items():
        torch.testing.assert_close(fast.q_network.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    obs = torch.randn(7, OBS_DIM)
    torch.testing.assert_close(fast._learner.q_values(obs), autograd.q_network(obs))


def test_a_subclass_network_trains_every_parameter_and_acts_with_its_own_forward() -> None:
    agent = layer_norm_agent()
    assert agent.learner == "autograd"  # auto: the hand-written backward pass knows only the MLP
    fill(agent, 200)
    before = {name: p.detach().clone() for name, p in agent.q_network.named_parameters()}
    for _ in range(10):
        agent.learn()
    for name, p in agent.q_network.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"{name} got no gradient"
        assert not torch.equal(p.detach(), before[name]), f"{name} did not change"
    assert "norm.weight" in before and "norm.bias" in before

    # Acting, learning and evaluation all run the network's forward: the same Q-values.
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.standard_normal((50, OBS_DIM)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(agent._learner.q_values(batch), agent.q_network(batch))
    for obs in batch.numpy():
        greedy = int(agent.q_network(torch.from_numpy(obs).unsqueeze(0)).argmax())
        assert agent.act(obs, explore=False) == greedy == greedy_action(agent.q_network, obs)
    policy = roundtrip({"policy": agent.policy_state_dict()})["policy"]
    evaluated = DQNAgent.load_policy(policy, network=LayerNormQNetwork(OBS_DIM, 2, (16, 16)))
    assert torch.equal(evaluated(batch), agent.q_network(batch))


def test_auto_picks_the_fast_path_only_for_the_built_in_mlp_with_adam() -> None:
    assert DQNAgent(OBS_DIM, 2, SMALL).learner == "fast"
    assert layer_norm_agent().learner == "autograd"
    sgd = DQNAgent(OBS_DIM, 2, SMALL, optimizer_class=torch.optim.SGD)
    assert sgd.learner == "autograd" and isinstance(sgd.optimizer, torch.optim.SGD)
    decay = DQNAgent(OBS_DIM, 2, SMALL, optimizer_kwargs={"weight_decay": 1e-4})
    assert decay.learner == "autograd"
    betas = DQNAgent(OBS_DIM, 2, SMALL, optimizer_kwargs={"betas": (0.8, 0.99)})
    assert betas.learner == "fast" and betas.optimizer.betas == (0.8, 0.99)
    assert DQNAgent(OBS_DIM, 2, DQNConfig(learner="autograd")).learner == "autograd"


def test_the_fast_learner_with_another_network_or_optimizer_is_refused() -> None:
    fast = DQNConfig(hidden_sizes=(16, 16), learner="fast")
    message = (
        r"agent.learner=fast needs the built-in MLP network and the Adam optimizer "
        r"\(got {}\); use agent.learner=auto"
    )
    with pytest.raises(ConfigError, match=message.format("LayerNormQNetwork and Adam")):
        DQNAgent(OBS_DIM, 2, fast, network=LayerNormQNetwork(OBS_DIM, 2, (16, 16)))
    with pytest.raises(ConfigError, match=message.format("QNetwork and SGD")):
        DQNAgent(OBS_DIM, 2, fast, optimizer_class=torch.optim.SGD)


def test_a_checkpoint_resumes_only_with_the_learner_that_wrote_it() -> None:
    fast = DQNAgent(OBS_DIM, 2, SMALL, seed=0)
    fill(fast, 100)
    fast.learn()
    state = roundtrip(fast.state_dict())
    assert state["training"]["learner"] == "fast"
    autograd = DQNAgent(OBS_DIM, 2, DQNConfig(**{**vars(SMALL), "learner": "autograd"}))
    with pytest.raises(
        ConfigError,
        match=r"checkpoint was trained with agent.learner=fast, this run uses autograd "
        r"\(agent.learner=autograd\); resume it with agent.learner=fast",
    ):
        autograd.load_state_dict(state)
    with pytest.raises(ConfigError, match="agent.learner=autograd"):
        fast.load_state_dict(autograd.state_dict())
    # Checkpoints from before the choice existed were all written by the fast path.
    del state["training"]["learner"]
    DQNAgent(OBS_DIM, 2, SMALL, seed=3).load_state_dict(state)


def test_the_autograd_learners_optimizer_keeps_this_runs_hyperparameters_on_resume() -> None:
    config = DQNConfig(learning_rate=1e-3, learner="autograd")
    trained = DQNAgent(OBS_DIM, 2, config)
    fill(trained, 100)
    trained.learn()
    agent = DQNAgent(OBS_DIM, 2, DQNConfig(learning_rate=5e-4, learner="autograd"))
    agent.load_state_dict(roundtrip(trained.state_dict()))
    assert agent.optimizer.param_groups[0]["lr"] == 5e-4
    saved = trained.optimizer.state_dict()["state"]
    for index, state in agent.optimizer.state_dict()["state"].items():
        assert_same_state(state, saved[index])


# -- replay buffer -----------------------------------------------------------------------------
def test_buffer_wraps_around_overwriting_the_oldest() -> None:
    buffer = ReplayBuffer(5, 2)
    for i in range(7):
        buffer.add(
            np.full(2, i, np.float32), i % 2, float(i), np.full(2, i + 0.5, np.float32), i == 6
        )
    assert (buffer.pos, buffer.fill, len(buffer)) == (2, 5, 5)
    assert buffer.rewards[:, 0].tolist() == [5.0, 6.0, 2.0, 3.0, 4.0]
    assert buffer.observations[0, :, 0].tolist() == [5.0, 6.0, 2.0, 3.0, 4.0]
    assert buffer.observations[1, :, 0].tolist() == [5.5, 6.5, 2.5, 3.5, 4.5]
    assert buffer.dones[:, 0].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    batch = buffer.sample(np.random.default_rng(0), 100)
    assert set(batch.rewards[:, 0].tolist()) <= {2.0, 3.0, 4.0, 5.0, 6.0}
    torch.testing.assert_close(batch.next_observations, batch.observations + 0.5)
    assert torch.equal(batch.both_observations[:100], batch.observations)


def test_buffer_samples_only_filled_rows() -> None:
    buffer = ReplayBuffer(100, 1)
    for i in range(3):
        buffer.add(np.array([i], np.float32), 0, float(i), np.array([i], np.float32), False)
    batch = buffer.sample(np.random.default_rng(0), 64)
    assert set(batch.rewards[:, 0].tolist()) == {0.0, 1.0, 2.0}


# -- state: exact resume -----------------------------------------------------------------------
def test_construction_is_seeded_and_leaves_global_generators_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b = DQNAgent(OBS_DIM, 2, SMALL, seed=7), DQNAgent(OBS_DIM, 2, SMALL, seed=7)
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(flat_params(a.q_network), flat_params(b.q_network))
    assert torch.equal(flat_params(a.target_network), flat_params(a.q_network))
    other = DQNAgent(OBS_DIM, 2, SMALL, seed=8)
    assert not torch.equal(flat_params(other.q_network), flat_params(a.q_network))


@pytest.mark.parametrize("learner", ["fast", "autograd"])
def test_resume_from_a_saved_state_equals_training_without_a_break(learner: str) -> None:
    n, m = 350, 400  # the buffer (300) wraps before the break; learning and target syncs span it

    def new_agent(seed: int) -> DQNAgent:
        # autograd: the LayerNorm network with torch.optim.Adam's per-parameter state.
        return (
            DQNAgent(OBS_DIM, 2, SMALL, seed=seed)
            if learner == "fast"
            else layer_norm_agent(seed=seed)
        )

    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    env = TradingEnv(**ENV_KWARGS)
    uninterrupted = new_agent(0)
    assert uninterrupted.learner == learner
    run_steps(uninterrupted, env, n + m)
    reference = uninterrupted.state_dict()
    after_global = (random.random(), np.random.random(), torch.rand(1))

    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    env = TradingEnv(**ENV_KWARGS)
    first = new_agent(0)
    run_steps(first, env, n)
    saved = roundtrip(first.state_dict())
    del first
    random.seed(99)  # whatever happens in between (a new process) is undone by the load
    np.random.seed(99)
    torch.manual_seed(99)
    resumed = new_agent(42)  # another seed even
    resumed.load_state_dict(saved)
    run_steps(resumed, env, m)

    assert resumed.steps == uninterrupted.steps and resumed.episodes == uninterrupted.episodes
    for p, q in zip(
        resumed.q_network.parameters(), uninterrupted.q_network.parameters(), strict=True
    ):
        assert torch.equal(p, q)
    # Target, optimizer, buffer, counters, RNGs, learner: every tensor with torch.equal.
    assert_same_state(resumed.state_dict(), reference)
    assert (random.random(), np.random.random()) == after_global[:2]
    assert torch.equal(torch.rand(1), after_global[2])


def test_state_dict_is_tensors_and_plain_values_and_loads_with_weights_only() -> None:
    agent = DQNAgent(OBS_DIM, 2, SMALL, seed=0)
    run_steps(agent, TradingEnv(**ENV_KWARGS), 120)
    state = agent.state_dict()

    def check(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                assert isinstance(key, str | int), where
                check(item, f"{where}.{key}")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                check(item, f"{where}[{i}]")
        else:
            plain = (torch.Tensor, int, float, str, bool, type(None))
            assert isinstance(value, plain), f"{where} is {type(value).__name__}"

    buffer = state["training"]["buffer"]
    chunked = {k for k, v in buffer.items() if isinstance(v, Chunked)}
    assert chunked == {"observations", "next_observations", "actions", "rewards", "dones"}
    check({k: v for k, v in buffer.items() if k not in chunked}, "buffer")
    check({**state, "training": {**state["training"], "buffer": {}}}, "state")
    loaded = roundtrip(state)
    assert_same_state(
        loaded["training"]["buffer"]["observations"][:120], agent.buffer.observations[0, :120]
    )
    assert_same_state(roundtrip(loaded), loaded)
    assert set(state["policy"]) == {"arch", "weights"}
    assert state["training"]["buffer"]["fill"] == 120
    assert state["training"]["steps"] == 120


def test_state_dict_is_a_copy_that_later_training_does_not_change_but_for_the_buffer() -> None:
    """Like ``nn.Module.state_dict``, the replay buffer's storage is handed over as views (a
    million-row copy would cost more than the save); everything else is a copy."""
    agent = DQNAgent(OBS_DIM, 2, SMALL, seed=0)
    env = TradingEnv(**ENV_KWARGS)
    run_steps(agent, env, 100)
    fill = agent.buffer.fill
    state = roundtrip(agent.state_dict())
    live = agent.state_dict()
    buffer = live["training"].pop("buffer")
    snapshot = copy.deepcopy(live)
    run_steps(agent, env, 100)
    assert_same_state(live, snapshot)
    assert buffer["observations"].tensor.data_ptr() == agent.buffer.observations.data_ptr()
    assert state["training"]["buffer"]["fill"] == fill < agent.buffer.fill


def test_load_policy_rebuilds_the_greedy_network_without_training_state() -> None:
    agent = DQNAgent(OBS_DIM, 2, DQNConfig(hidden_sizes=(8,), dueling=True), seed=3)
    fill(agent, 100)
    for _ in range(20):
        agent.learn()
    policy = roundtrip({"policy": agent.policy_state_dict()})["policy"]
    assert_same_state(policy, agent.state_dict()["policy"])
    net = DQNAgent.load_policy(policy)
    assert isinstance(net, QNetwork) and not net.training
    obs = torch.randn(5, OBS_DIM)
    assert torch.equal(net(obs), agent.q_network(obs))


def test_loading_a_different_network_shape_is_a_config_error() -> None:
    state = DQNAgent(OBS_DIM, 2, DQNConfig(hidden_sizes=(64, 64))).state_dict()
    agent = DQNAgent(OBS_DIM, 2, DQNConfig(hidden_sizes=(128, 128)))
    with pytest.raises(
        ConfigError, match=r"checkpoint hidden_sizes=\[64, 64\] != agent\.network\.hidden_sizes="
    ):
        agent.load_state_dict(state)
    with pytest.raises(ConfigError, match="checkpoint n_actions=2 != the env's action count=3"):
        DQNAgent(OBS_DIM, 3).load_state_dict(state)


def test_loading_a_different_buffer_size_is_a_config_error() -> None:
    state = DQNAgent(OBS_DIM, 2, DQNConfig(buffer_size=100)).state_dict()
    with pytest.raises(ConfigError, match="agent.buffer_size=200"):
        DQNAgent(OBS_DIM, 2, DQNConfig(buffer_size=200)).load_state_dict(state)


def test_loading_a_policy_alone_cannot_resume() -> None:
    state = DQNAgent(OBS_DIM, 2).state_dict()
    with pytest.raises(CheckpointError, match="training"):
        DQNAgent(OBS_DIM, 2).load_state_dict({"policy": state["policy"]})


def test_a_changed_learning_rate_takes_effect_on_resume() -> None:
    state = DQNAgent(OBS_DIM, 2, DQNConfig(learning_rate=1e-3)).state_dict()
    agent = DQNAgent(OBS_DIM, 2, DQNConfig(learning_rate=5e-4))
    agent.load_state_dict(state)
    assert agent.optimizer.lr == 5e-4


# -- device and threads ------------------------------------------------------------------------
def test_cuda_requested_without_cuda_is_a_clear_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"device={name} requested but CUDA is not available"):
            resolve_device(name)
    with pytest.raises(ConfigError, match="use device=cpu"):
        DQNAgent(OBS_DIM, 2, device="cuda")
    with pytest.raises(ConfigError, match="use device=cpu"):
        DQNAgent(OBS_DIM, 2, device=torch.device("cuda", 0))
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_unknown_device_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="device='gpu' is not a device"):
        resolve_device("gpu")


def test_set_torch_threads_defaults_and_validates() -> None:
    before = torch.get_num_threads()
    try:
        set_torch_threads(None)
        assert torch.get_num_threads() == DEFAULT_THREADS
        set_torch_threads(2)
        assert torch.get_num_threads() == 2
        with pytest.raises(ConfigError, match="threads must be a positive integer"):
            set_torch_threads(0)
    finally:
        torch.set_num_threads(before)


# -- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"learning_rate": -0.1}, "agent.learning_rate must be > 0, got -0.1"),
        ({"learning_rate": float("nan")}, "agent.learning_rate must be a finite number"),
        ({"buffer_size": 0}, "agent.buffer_size must be >= 1, got 0"),
        ({"batch_size": 2.5}, "agent.batch_size must be an integer, got 2.5"),
        ({"gamma": 1.5}, r"agent.gamma must be in \[0, 1\], got 1.5"),
        ({"train_freq": 0}, "agent.train_freq must be >= 1"),
        ({"hidden_sizes": ()}, "agent.hidden_sizes must be a non-empty list"),
        ({"hidden_sizes": (64, 0)}, "agent.hidden_sizes must be a non-empty list"),
        ({"hidden_sizes": 64}, "agent.hidden_sizes must be a non-empty list"),
        ({"reward_scale": 0.0}, "agent.reward_scale must be > 0"),
        ({"max_grad_norm": 0.0}, "agent.max_grad_norm must be > 0"),
        ({"epsilon_end": 2.0}, r"agent.epsilon_end must be in \[0, 1\]"),
        ({"exploration_steps": -1}, "agent.exploration_steps must be >= 0"),
        ({"double_q": "yes"}, "agent.double_q must be true or false"),
        ({"learner": "torch"}, "agent.learner must be one of auto, autograd, fast, got 'torch'"),
    ],
)
def test_config_values_out_of_range_are_config_errors(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        DQNConfig(**overrides)


def test_config_takes_hidden_sizes_as_a_list() -> None:
    assert DQNConfig(hidden_sizes=[32, 16]).hidden_sizes == (32, 16)  # type: ignore[arg-type]


# -- too little training to learn anything (issue 17) -------------------------------------------
def test_gradient_steps_count_the_gradient_steps_taken_and_survive_a_restart() -> None:
    agent = DQNAgent(OBS_DIM, 2, SMALL, seed=0)
    run_steps(agent, TradingEnv(**ENV_KWARGS), 120)
    # Steps 50, 52, ..., 120 train (learning_starts=50, train_freq=2): 36 rounds of one step.
    assert agent.gradient_steps == 36
    state = roundtrip(agent.state_dict())
    restored = DQNAgent(OBS_DIM, 2, SMALL, seed=5)
    restored.load_state_dict(state)
    assert restored.gradient_steps == 36
    # A checkpoint written before the counter existed: derived from its steps and the config.
    del state["training"]["gradient_steps"]
    older = DQNAgent(OBS_DIM, 2, SMALL, seed=5)
    older.load_state_dict(state)
    assert older.gradient_steps == 36


def test_no_gradient_step_is_one_warning_naming_the_keys_to_change() -> None:
    config = DQNConfig(learning_starts=1000, hidden_sizes=(8,), exploration_steps=100)
    agent = DQNAgent(OBS_DIM, 2, config, seed=0)
    run_steps(agent, TradingEnv(**ENV_KWARGS), 120)
    assert agent.gradient_steps == 0
    (warning,) = agent.training_warnings()
    assert "no gradient step in 120 env steps (agent.learning_starts=1000)" in warning
    assert "episodes" in warning and "env.episode_length" in warning
    assert "lower agent.learning_starts" in warning and "\n" not in warning


def test_exploration_still_near_its_start_is_one_warning_naming_the_schedule_keys() -> None:
    # 20 episodes x 50 steps with the shipped defaults: one gradient step, epsilon 0.9525.
    config = DQNConfig(learning_starts=100, hidden_sizes=(8,), exploration_steps=20_000)
    agent = DQNAgent(OBS_DIM, 2, config, seed=0)
    run_steps(agent, TradingEnv(**ENV_KWARGS), 120)
    assert agent.gradient_steps > 0
    (warning,) = agent.training_warnings()
    assert "epsilon is still 0.994" in warning and "agent.exploration_steps=20000" in warning
    assert "lower agent.exploration_steps" in warning and "\n" not in warning


def test_both_problems_make_a_single_warning() -> None:
    config = DQNConfig(learning_starts=1000, hidden_sizes=(8,), exploration_steps=20_000)
    agent = DQNAgent(OBS_DIM, 2, config, seed=0)
    run_steps(agent, TradingEnv(**ENV_KWARGS), 120)
    (warning,) = agent.training_warnings()
    assert "agent.learning_starts" in warning and "agent.exploration_steps" in warning


def test_a_run_that_learned_and_explored_has_no_warning() -> None:
    agent = DQNAgent(OBS_DIM, 2, SMALL, seed=0)
    run_steps(agent, TradingEnv(**ENV_KWARGS), 400)  # epsilon 0.24 of the way 1 -> 0.05
    assert agent.training_warnings() == []
    # A constant epsilon is a choice, not an unfinished schedule.
    constant = DQNConfig(learning_starts=10, epsilon_start=0.5, epsilon_end=0.5)
    agent = DQNAgent(OBS_DIM, 2, constant, seed=0)
    run_steps(agent, TradingEnv(**ENV_KWARGS), 60)
    assert agent.training_warnings() == []
