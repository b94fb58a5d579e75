"""Exporting a policy: the files, the spec, and using them where FinSense cannot be imported."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from finsense import export
from finsense.agents import DQNAgent, QNetwork, greedy_action
from finsense.agents.dqn import DQNConfig
from finsense.checkpoint import CheckpointManager
from finsense.envs.trading import TradingEnv
from finsense.errors import CheckpointError, FinSenseError
from finsense.evaluation import greedy_actor, run_env_kwargs, run_episode
from tests.e2e.helpers import subprocess_env, train_argv

safetensors_torch = pytest.importorskip("safetensors.torch")

WINDOW = 5


def env_section(allow_short: bool) -> dict[str, Any]:
    """A run config's ``env`` section: small synthetic market (240 train rows, 60 test rows)."""
    return {
        "data": {"source": "synthetic", "n_steps": 300, "seed": 3, "test_fraction": 0.2},
        "window_size": WINDOW,
        "episode_length": 20,
        "random_start": True,
        "fee": 0.001,
        "allow_short": allow_short,
        "initial_cash": 10_000.0,
        "reward": "log_return",
    }


def make_run_dir(
    run_dir: Path,
    *,
    dueling: bool = False,
    allow_short: bool = False,
    episodes: tuple[int, ...] = (2, 4),
) -> Path:
    """A run directory as the trainer leaves it: Hydra's config and real store checkpoints.

    Episode 2 ranks best (profit 2 % 3 beats 4 % 3), so best and latest differ.
    """
    hidden = [8, 6]
    config = {
        "env": env_section(allow_short),
        "agent": {"hidden_sizes": hidden, "dueling": dueling},
        "checkpoints": {"metric_name": "total_profit", "mode": "max"},
        "episodes": max(episodes),
        "seed": 0,
    }
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    manager = CheckpointManager(run_dir / "models", metric_name="total_profit", mode="max")
    agent_config = DQNConfig(hidden_sizes=tuple(hidden), dueling=dueling)
    n_actions = 3 if allow_short else 2
    for episode in episodes:
        agent = DQNAgent(WINDOW + 1, n_actions, agent_config, seed=episode)
        state = agent.state_dict()
        manager.save(
            episode,
            {"policy": state["policy"]},
            {"metrics": {"total_profit": float(episode % 3)}, "epsilon": 0.5, "config": config},
            training_state=state["training"],
        )
    return run_dir


def policy_of(path: Path) -> QNetwork:
    """The checkpoint's policy network, as finsense.evaluate loads it."""
    state, _, _ = CheckpointManager(path.parent).load(path, with_training_state=False)
    return DQNAgent.load_policy(state["policy"])


def test_export_writes_weights_program_and_spec(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path / "run", dueling=True, allow_short=True)
    result = export.export_policy(run_dir)
    out = run_dir / "export" / "best_model"
    assert result.out_dir == out and result.episode == 2
    assert [p.name for p in result.files] == ["policy.safetensors", "policy.pt2", "policy.json"]
    network = policy_of(run_dir / "models" / "best_model.pt")

    weights = safetensors_torch.load_file(out / "policy.safetensors")
    expected = network.state_dict()
    assert list(weights) == sorted(expected)  # safetensors stores names sorted
    for name, tensor in expected.items():
        assert weights[name].dtype == torch.float32
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0)

    spec = json.loads((out / "policy.json").read_text())
    assert spec == json.loads(json.dumps(result.spec))
    for name in ("policy.safetensors", "policy.pt2"):
        digest = hashlib.sha256((out / name).read_bytes()).hexdigest()
        assert spec["files"]["sha256"][name] == digest
    meta = json.loads((run_dir / "models" / "best_model.json").read_text())
    assert spec["checkpoint"]["sha256"] == meta["sha256"]["model"]
    assert spec["checkpoint"]["sha256_verified"] is True
    assert spec["checkpoint"]["episode"] == 2
    assert spec["checkpoint"]["path"] == "models/best_model.pt"
    assert spec["checkpoint"]["metrics"] == {"total_profit": 2.0}
    assert spec["network"]["obs_dim"] == WINDOW + 1 and spec["network"]["n_actions"] == 3
    assert spec["network"]["dueling"] is True and spec["network"]["hidden_sizes"] == [8, 6]
    assert [layer["weight"] for layer in spec["network"]["layers"]] == [
        "hidden.0.weight",
        "hidden.1.weight",
        "head.weight",
    ]
    assert spec["actions"] == {
        "0": {"position": -1, "name": "short"},
        "1": {"position": 0, "name": "flat"},
        "2": {"position": 1, "name": "long"},
    }
    assert spec["observation"]["shape"] == [WINDOW + 1]
    assert spec["observation"]["window_size"] == WINDOW
    env = TradingEnv(**run_env_kwargs(run_dir, {"env": env_section(True)}))
    assert spec["observation"]["returns"]["feature_scale"] == env.feature_scale
    assert spec["execution"]["model"] == "next_close"
    assert spec["execution"]["fill"].startswith("at the next close")
    assert spec["execution"]["slippage_bps"] == 2.0 and spec["execution"]["borrow_rate"] == 0.005
    assert spec["env"] == env_section(True)
    assert spec["data"]["train_rows"] == 210 and spec["data"]["rows"] == 300
    assert spec["data"]["val_fraction"] == 0.1 and spec["data"]["first_val_date"] is not None

    program = torch.export.load(out / "policy.pt2").module()
    obs = torch.randn(7, WINDOW + 1)
    for batch in (obs, obs[:1]):  # the batch dimension is dynamic, a batch of one included
        torch.testing.assert_close(program(batch), network(batch), rtol=0, atol=1e-6)


def test_spec_describes_the_env_observation_exactly(tmp_path: Path) -> None:
    """Observations rebuilt from raw closes with the spec's scale and layout equal the env's."""
    run_dir = make_run_dir(tmp_path / "run", allow_short=True, episodes=(1,))
    spec = export.export_policy(run_dir).spec
    obs_spec = spec["observation"]
    scale = obs_spec["returns"]["feature_scale"]
    clip = obs_spec["returns"]["clip"]
    w = obs_spec["window_size"]
    positions = {int(k): v["position"] for k, v in spec["actions"].items()}

    env = TradingEnv(**run_env_kwargs(run_dir, {"env": env_section(True)}))
    close = env.data.close
    row = env.split_rows[0]  # the test episode starts at the first test row
    rng = np.random.default_rng(0)
    obs, _ = env.reset()
    position, done = 0, False
    while not done:
        returns = np.log(close[row - w + 1 : row + 1] / close[row - w : row])
        expected = np.append(np.clip(returns / scale, -clip, clip), position).astype(np.float32)
        np.testing.assert_array_equal(obs, expected)
        action = int(rng.integers(len(positions)))
        obs, _, terminated, truncated, _ = env.step(action)
        position, row, done = positions[action], row + 1, terminated or truncated


def test_latest_a_path_and_out_choose_the_checkpoint_and_directory(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path / "run")
    latest = export.export_policy(run_dir, "latest")
    assert latest.out_dir == run_dir / "export" / "model_ep4" and latest.episode == 4
    elsewhere = tmp_path / "shipped"
    by_path = export.export_policy(run_dir, "model_ep2.pt", out=elsewhere)
    assert by_path.out_dir == elsewhere and by_path.episode == 2
    assert (elsewhere / "policy.json").is_file()
    assert by_path.spec["checkpoint"]["path"] == "models/model_ep2.pt"


def test_errors_are_finsense_errors(tmp_path: Path) -> None:
    with pytest.raises(FinSenseError, match="does not exist"):
        export.export_policy(tmp_path / "missing")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"env": env_section(False)}))
    with pytest.raises(CheckpointError, match="no checkpoints"):
        export.export_policy(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        export.export_policy(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        export.export_policy(tmp_path, "model_ep3.pt")


def test_a_missing_safetensors_package_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = make_run_dir(tmp_path / "run", episodes=(1,))
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(FinSenseError, match=r"pip install 'finsense\[export\]'"):
        export.export_policy(run_dir)
    assert not (run_dir / "export" / "best_model" / "policy.json").exists()


def test_cli_exports_and_names_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = make_run_dir(tmp_path / "run")
    assert export.main([str(run_dir), "checkpoint=latest"]) == 0
    out = capsys.readouterr().out
    assert "(episode 4)" in out and "policy.pt2" in out
    assert (run_dir / "export" / "model_ep4" / "policy.json").is_file()


@pytest.mark.parametrize("args", [["nowhere"], [".", "checkpoint"], [".", "format=onnx"]])
def test_cli_errors_are_one_line_and_exit_2(
    tmp_path: Path,
    args: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert export.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("finsense.export: ")


# -- without FinSense ---------------------------------------------------------------------------
#: Runs in a child python that cannot import FinSense: rebuilds the Q function from
#: policy.safetensors + policy.json alone, and loads policy.pt2; both must act as FinSense did.
STANDALONE = textwrap.dedent(
    """
    import sys

    sys.modules["finsense"] = None  # the editable install's finder would find it otherwise
    sys.path[:] = [p for p in sys.path if p not in ("", ".", REPO)]
    try:
        import finsense  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("finsense is importable")

    import json
    import numpy as np
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    export_dir, data = sys.argv[1], sys.argv[2]
    spec = json.load(open(f"{export_dir}/policy.json"))
    weights = load_file(f"{export_dir}/policy.safetensors")

    def q_function(obs):  # the spec's "forward", in plain torch
        net, h = spec["network"], obs
        for layer in net["layers"]:
            h = F.linear(h, weights[layer["weight"]], weights[layer["bias"]])
            if layer["activation"] == "relu":
                h = torch.relu(h)
        if net["dueling"]:
            a, v = h[:, : net["n_actions"]], h[:, net["n_actions"] :]
            h = a - a.mean(dim=1, keepdim=True) + v
        return h

    saved = np.load(data)
    obs = torch.from_numpy(saved["obs"])
    assert obs.dtype == torch.float32 and list(obs.shape[1:]) == spec["observation"]["shape"]
    program = torch.export.load(f"{export_dir}/policy.pt2").module()
    with torch.no_grad():
        for name, q in (("safetensors", q_function(obs)), ("pt2", program(obs))):
            assert q.shape == (len(obs), spec["network"]["n_actions"]), (name, q.shape)
            np.testing.assert_array_equal(q.argmax(1).numpy(), saved["actions"], err_msg=name)
            np.testing.assert_allclose(q.numpy(), saved["q"], rtol=0, atol=1e-6, err_msg=name)
        q_one = program(obs[:1]).numpy()
        np.testing.assert_allclose(q_one, saved["q"][:1], rtol=0, atol=1e-6)
    leaked = [m for m, v in sys.modules.items() if m.startswith("finsense") and v is not None]
    assert not leaked, leaked
    print("standalone OK", len(obs))
    """
)


def greedy_test_episode(run_dir: Path, checkpoint: Path) -> dict[str, np.ndarray]:
    """The test split's observations as finsense.evaluate meets them, FinSense's greedy action
    on each (one observation at a time, as it acts) and its Q-values."""
    network = policy_of(checkpoint)
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    env = TradingEnv(**run_env_kwargs(run_dir, config))
    seen: list[np.ndarray] = []
    actions: list[int] = []
    act = greedy_actor(network)

    def recording(obs: np.ndarray) -> int:
        seen.append(obs)
        actions.append(act(obs))
        return actions[-1]

    run_episode(env, recording)
    obs = np.stack(seen)
    assert actions == [greedy_action(network, o) for o in obs]
    assert obs.dtype == np.float32
    with torch.no_grad():
        q = network(torch.from_numpy(obs)).numpy()
    return {"obs": obs, "actions": np.asarray(actions, dtype=np.int64), "q": q}


def run_standalone(export_dir: Path, data: dict[str, np.ndarray], tmp_path: Path) -> None:
    data_path = tmp_path / "test_split.npz"
    np.savez(data_path, obs=data["obs"], actions=data["actions"], q=data["q"])
    script = tmp_path / "standalone.py"
    repo = str(Path(__file__).resolve().parents[1])
    script.write_text(f"REPO = {repo!r}\n" + STANDALONE)
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    proc = subprocess.run(
        # -I: no PYTHONPATH, no user site-packages, not the script's directory on sys.path.
        [sys.executable, "-I", str(script), str(export_dir), str(data_path)],
        cwd=outside,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"standalone OK {len(data['obs'])}" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("dueling", "allow_short"), [(False, False), (True, True)])
def test_exported_policy_acts_as_finsense_without_finsense(
    tmp_path: Path, dueling: bool, allow_short: bool
) -> None:
    run_dir = make_run_dir(tmp_path / "run", dueling=dueling, allow_short=allow_short)
    result = export.export_policy(run_dir)
    data = greedy_test_episode(run_dir, result.checkpoint)
    run_standalone(result.out_dir, data, tmp_path)


@pytest.mark.slow
def test_a_trained_run_exported_by_the_cli_acts_the_same_without_finsense(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train = subprocess.run(
        train_argv("episodes=2", f"hydra.run.dir={run_dir}"),
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stdout + train.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "finsense.export", str(run_dir), "checkpoint=latest"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(episode 2)" in proc.stdout
    out = run_dir / "export" / "model_ep2"
    spec = json.loads((out / "policy.json").read_text())
    assert spec["checkpoint"]["episode"] == 2 and spec["checkpoint"]["sha256_verified"]
    data = greedy_test_episode(run_dir, run_dir / "models" / "model_ep2.pt")
    run_standalone(out, data, tmp_path)


@pytest.mark.slow
def test_cli_subprocess_without_a_checkpoint_is_one_line(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"env": env_section(False)}))
    proc = subprocess.run(
        [sys.executable, "-m", "finsense.export", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "has no checkpoints" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("execution", "fill"),
    [
        ("next_close", "at the next close"),
        ("next_open", "at the next open"),
        ("close", "at the current close"),
    ],
)
def test_spec_says_when_the_env_filled_the_trades(execution: str, fill: str) -> None:
    env = TradingEnv({"source": "sample"}, execution=execution, slippage_bps=3.0)
    spec = export._execution_spec(env)
    assert spec["model"] == execution and spec["fill"].startswith(fill)
    assert spec["slippage_bps"] == 3.0
    if execution == "close":
        assert "the close the signal saw" in spec["plainly"]
