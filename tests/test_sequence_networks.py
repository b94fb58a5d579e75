"""The sequence Q-networks (1-D CNN, GRU): shapes, the observation split, dueling, training with
the autograd learner, determinism and argument validation."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from finsense.agents import DQNAgent, DQNConfig
from finsense.agents.learners import AutogradLearner
from finsense.agents.sequence_networks import NETWORKS, Conv1dQNetwork, GRUQNetwork
from finsense.errors import ConfigError

WINDOW = 10
OBS_DIM = WINDOW + 1  # a trading observation: the window, then the position
N_ACTIONS = 3
CLASSES = (Conv1dQNetwork, GRUQNetwork)
#: Small enough to be quick, with learning, training every other step, target syncs and a buffer
#: that wraps around all within a few hundred steps.
SMALL = DQNConfig(
    buffer_size=300,
    learning_starts=50,
    batch_size=16,
    train_freq=2,
    target_update_interval=40,
    exploration_steps=500,
)

NetworkClass = type[Conv1dQNetwork] | type[GRUQNetwork]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread, as training runs by default: these tiny ops only lose from more, and
    many times over on a machine whose cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(cls: NetworkClass, seed: int = 0, **kwargs: Any) -> nn.Module:
    """``cls(OBS_DIM, N_ACTIONS, **kwargs)`` initialised from ``seed`` (global generator kept)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(OBS_DIM, N_ACTIONS, **kwargs)


def observations(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((n, OBS_DIM)).astype(np.float32))


def run_agent(agent: DQNAgent, steps: int, seed: int = 0) -> None:
    """Act and observe ``steps`` random transitions (random next states and rewards)."""
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal(OBS_DIM).astype(np.float32)
    for _ in range(steps):
        action = agent.act(obs)
        next_obs = rng.standard_normal(OBS_DIM).astype(np.float32)
        agent.observe(obs, action, float(rng.standard_normal()), next_obs, rng.random() < 0.05)
        obs = next_obs


# -- shapes and the split of the observation ----------------------------------------------------
@pytest.mark.parametrize("dueling", [False, True])
@pytest.mark.parametrize("sequence_length", [None, OBS_DIM - 1])
@pytest.mark.parametrize("cls", CLASSES)
def test_batch_and_single_observations_give_one_q_value_per_action(
    cls: NetworkClass, sequence_length: int | None, dueling: bool
) -> None:
    net = build(cls, sequence_length=sequence_length, dueling=dueling)
    batch = observations(7)
    q = net(batch)
    assert q.shape == (7, N_ACTIONS) and q.dtype == torch.float32
    single = net(batch[3])
    assert single.shape == (N_ACTIONS,)
    torch.testing.assert_close(single, q[3])
    with torch.inference_mode():  # acting: a batch of one
        assert net(batch[:1]).shape == (1, N_ACTIONS)
    with pytest.raises(ValueError, match=f"observations of size {OBS_DIM}"):
        net(torch.zeros(2, OBS_DIM + 1))


@pytest.mark.parametrize("cls", CLASSES)
def test_the_sequence_is_encoded_and_the_extra_features_pass_through(cls: NetworkClass) -> None:
    net = build(cls, sequence_length=WINDOW)
    batch = observations(5)
    encoded = net.encode(batch)
    # The extras are appended unchanged after the sequence's encoding ...
    assert torch.equal(encoded[:, -1], batch[:, WINDOW])
    # ... which depends on the sequence alone,
    changed = batch.clone()
    changed[:, WINDOW] += 1.0
    assert torch.equal(net.encode(changed)[:, :-1], encoded[:, :-1])
    # and on every step of it, the oldest as much as the newest.
    for step in (0, WINDOW - 1):
        changed = batch.clone()
        changed[:, step] += 1.0
        assert not torch.equal(net.encode(changed)[:, :-1], encoded[:, :-1])
    # Without a sequence_length the whole observation is the sequence: no pass-through.
    whole = build(cls)
    assert whole.n_extra == 0 and whole.sequence_length == OBS_DIM


def test_an_env_without_a_window_reads_its_whole_observation_as_the_sequence() -> None:
    # CartPole: 4 numbers. The GRU takes any length; the CNN's kernels must fit in it.
    obs = torch.randn(8, 4)
    assert GRUQNetwork(4, 2)(obs).shape == (8, 2)
    assert Conv1dQNetwork(4, 2, channels=[8], kernel_size=4)(obs).shape == (8, 2)
    with pytest.raises(ConfigError, match="agent.network.kernel_size must be at most 4"):
        Conv1dQNetwork(4, 2, channels=[8], kernel_size=5)


# -- dueling ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES)
def test_the_dueling_head_is_value_plus_mean_zero_advantages(cls: NetworkClass) -> None:
    net = build(cls, sequence_length=WINDOW, dueling=True)
    batch = observations(9)
    out = net.head(net.trunk(batch))
    assert out.shape == (9, N_ACTIONS + 1)  # the advantages, then the value
    advantage, value = out[:, :-1], out[:, -1:]
    q = net(batch)
    assert q.shape == (9, N_ACTIONS)
    torch.testing.assert_close(q, value + advantage - advantage.mean(1, keepdim=True))
    # The advantages Q - V average to zero over the actions: V is the mean Q-value.
    torch.testing.assert_close((q - value).mean(1), torch.zeros(9), atol=1e-6, rtol=0)
    torch.testing.assert_close(q.mean(1, keepdim=True), value)


# -- training -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dueling", [False, True])
@pytest.mark.parametrize("cls", CLASSES)
def test_one_autograd_step_gives_every_parameter_a_gradient(
    cls: NetworkClass, dueling: bool
) -> None:
    net = build(cls, sequence_length=WINDOW, dueling=dueling)
    config = DQNConfig(learning_starts=10**6, batch_size=32)
    agent = DQNAgent(OBS_DIM, N_ACTIONS, config, seed=0, network=net)
    assert agent.learner == "autograd" and isinstance(agent._learner, AutogradLearner)
    run_agent(agent, 100)  # collection only: learning_starts is not reached
    assert agent.gradient_steps == 0
    agent.learn()
    names = [name for name, _ in net.named_parameters()]
    assert any(name.startswith(("convs.", "gru.")) for name in names)
    for name, p in net.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"{name} got no gradient"


@pytest.mark.parametrize("cls", CLASSES)
def test_training_changes_every_parameter_and_is_bit_identical_for_a_seed(
    cls: NetworkClass,
) -> None:
    def trained(seed: int) -> tuple[DQNAgent, dict[str, torch.Tensor]]:
        net = build(cls, seed=seed, sequence_length=WINDOW)
        before = {name: p.detach().clone() for name, p in net.named_parameters()}
        agent = DQNAgent(OBS_DIM, N_ACTIONS, SMALL, seed=seed, network=net)
        run_agent(agent, 200)
        return agent, before

    a, before = trained(0)
    assert a.gradient_steps == 76  # at steps 50, 52, ..., 200
    for name, p in a.q_network.named_parameters():
        assert not torch.equal(p.detach(), before[name]), f"{name} did not change"

    b, _ = trained(0)
    for (name, pa), pb in zip(
        a.q_network.named_parameters(), b.q_network.parameters(), strict=True
    ):
        assert torch.equal(pa, pb), f"{name} differs between two runs of the same seed"
    for pa, pb in zip(a.target_network.parameters(), b.target_network.parameters(), strict=True):
        assert torch.equal(pa, pb)


# -- determinism, shape description, weights round trip ------------------------------------------
@pytest.mark.parametrize("cls", CLASSES)
def test_the_same_seed_gives_the_same_initial_weights(cls: NetworkClass) -> None:
    a, b, other = build(cls, seed=3), build(cls, seed=3), build(cls, seed=4)
    for (name, pa), pb, po in zip(
        a.named_parameters(), b.parameters(), other.parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, po), name
    batch = observations(4)
    assert torch.equal(a(batch), a(batch))  # nothing random in forward


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (Conv1dQNetwork, {"sequence_length": WINDOW, "channels": [8, 4, 4], "kernel_size": 3}),
        (Conv1dQNetwork, {"hidden_size": 16, "dueling": True}),
        (GRUQNetwork, {"sequence_length": WINDOW, "hidden_size": 8, "num_layers": 2}),
        (GRUQNetwork, {"head_size": 16, "dueling": True}),
    ],
)
def test_arch_is_plain_values_that_rebuild_the_network(
    cls: NetworkClass, kwargs: dict[str, Any]
) -> None:
    net = build(cls, **kwargs)
    arch = net.arch
    assert json.loads(json.dumps(arch)) == arch
    assert arch["obs_dim"] == OBS_DIM and arch["n_actions"] == N_ACTIONS
    assert arch["sequence_length"] == kwargs.get("sequence_length", OBS_DIM)
    for key, value in kwargs.items():
        assert arch[key] == value
    assert NETWORKS[cls.kind] is cls

    # Weights saved as a checkpoint saves them, loaded into a network of the same shape.
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    rebuilt = build(cls, seed=99, **kwargs)
    rebuilt.load_state_dict(torch.load(buffer, weights_only=True))
    batch = observations(6)
    assert torch.equal(rebuilt(batch), net(batch))
    from_arch = cls.from_arch(arch)
    from_arch.load_state_dict(net.state_dict())
    assert from_arch.arch == arch and torch.equal(from_arch(batch), net(batch))
    # The agent's target network is a deepcopy.
    assert torch.equal(copy.deepcopy(net)(batch), net(batch))


def test_config_values_of_the_yaml_kinds_are_accepted() -> None:
    # As Hydra builds agent.network: a _partial_ with the YAML's values, completed with the sizes.
    node = OmegaConf.create(
        {
            "_target_": "finsense.agents.sequence_networks.Conv1dQNetwork",
            "_partial_": True,
            "sequence_length": WINDOW,
            "channels": [8, 8],
            "kernel_size": 3,
        }
    )
    net = instantiate(node)(OBS_DIM, 2)
    assert isinstance(net, Conv1dQNetwork) and net.arch["channels"] == [8, 8]
    assert json.loads(json.dumps(net.arch)) == net.arch
    net = Conv1dQNetwork(
        np.int64(OBS_DIM), 2, sequence_length=np.int64(WINDOW), channels=[np.int64(4)]
    )
    assert net.arch["channels"] == [4] and type(net.arch["sequence_length"]) is int
    assert GRUQNetwork(OBS_DIM, 2, dueling=np.bool_(True)).dueling is True


# -- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "kwargs", "key"),
    [
        (Conv1dQNetwork, {"sequence_length": OBS_DIM + 1}, "sequence_length"),
        (Conv1dQNetwork, {"sequence_length": 0}, "sequence_length"),
        (GRUQNetwork, {"sequence_length": 4.0}, "sequence_length"),
        (GRUQNetwork, {"sequence_length": True}, "sequence_length"),
        (Conv1dQNetwork, {"kernel_size": OBS_DIM + 1}, "kernel_size"),
        (Conv1dQNetwork, {"sequence_length": WINDOW, "kernel_size": 6}, "kernel_size"),
        (Conv1dQNetwork, {"kernel_size": 0}, "kernel_size"),
        (Conv1dQNetwork, {"channels": []}, "channels"),
        (Conv1dQNetwork, {"channels": [16, 0]}, "channels"),
        (Conv1dQNetwork, {"channels": 16}, "channels"),
        (Conv1dQNetwork, {"channels": "16"}, "channels"),
        (Conv1dQNetwork, {"hidden_size": 0}, "hidden_size"),
        (Conv1dQNetwork, {"dueling": "yes"}, "dueling"),
        (GRUQNetwork, {"hidden_size": -1}, "hidden_size"),
        (GRUQNetwork, {"hidden_size": 8.5}, "hidden_size"),
        (GRUQNetwork, {"num_layers": 0}, "num_layers"),
        (GRUQNetwork, {"head_size": 0}, "head_size"),
        (GRUQNetwork, {"dueling": 1}, "dueling"),
    ],
)
def test_bad_arguments_are_config_errors_naming_their_key(
    cls: NetworkClass, kwargs: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as error:
        cls(OBS_DIM, N_ACTIONS, **kwargs)
    message = str(error.value)
    assert message.startswith(f"agent.network.{key} "), message
    assert "\n" not in message and f"got {kwargs[key]!r}" in message


def test_the_kernel_size_error_says_how_large_it_may_be() -> None:
    # 2 unpadded layers of width k shorten 10 steps by 2 * (k - 1): k = 5 leaves 2 steps.
    assert Conv1dQNetwork(OBS_DIM, 2, sequence_length=WINDOW, kernel_size=5).conv_steps == 2
    with pytest.raises(ConfigError, match=r"kernel_size must be at most 5 .*got 6$"):
        Conv1dQNetwork(OBS_DIM, 2, sequence_length=WINDOW, kernel_size=6)
    # One layer as wide as the sequence leaves one step.
    assert Conv1dQNetwork(OBS_DIM, 2, channels=[4], kernel_size=OBS_DIM).conv_steps == 1


def test_the_env_given_sizes_are_checked_as_bugs_not_config() -> None:
    with pytest.raises(ValueError, match="obs_dim"):
        GRUQNetwork(0, 2)
    with pytest.raises(ValueError, match="n_actions"):
        Conv1dQNetwork(OBS_DIM, 0)
