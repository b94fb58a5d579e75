"""``python -m finsense.train agent=ppo`` end to end: exact resume after SIGKILL, evaluation of a
PPO run, and a changed network refused on resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import kill_at_random_moments, load_checkpoint_tensors, subprocess_env
from tests.helpers import assert_same_state

pytestmark = pytest.mark.slow

#: PPO's own tiny settings (``helpers.TINY`` sets DQN keys, which PPO refuses): short episodes,
#: an update every 128 steps (every 3.2 episodes, so checkpoints fall mid-rollout).
PPO_TINY = [
    "agent=ppo",
    "agent.n_steps=128",
    "agent.batch_size=32",
    "agent.n_epochs=2",
    "env.episode_length=40",
    "env.data.n_steps=400",
    "checkpoints.save_frequency=2",
    "progress=log",
]


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "finsense.train", *PPO_TINY, *args]


def _train(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _argv(*args),
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("network", ["actor_critic", "mlp"])
def test_ppo_resumes_bit_exact_after_kill_9(tmp_path: Path, network: str) -> None:
    """Killed with SIGKILL at random moments, then resumed, a PPO run ends with the same weights,
    critic, optimizer state, rollout and generators, bit for bit, as one never interrupted."""
    episodes = 24
    overrides = (f"agent/network={network}", f"episodes={episodes}")
    reference = _train(tmp_path, *overrides, f"hydra.run.dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stdout + reference.stderr
    run_dir = tmp_path / "killed"
    argv = _argv(*overrides, f"hydra.run.dir={run_dir}")
    kills = kill_at_random_moments(argv, tmp_path, run_dir, attempts=3, seed=11, max_delay=0.2)
    assert kills >= 2
    final = _train(tmp_path, *overrides, f"hydra.run.dir={run_dir}")
    assert final.returncode == 0, final.stdout + final.stderr
    expected = load_checkpoint_tensors(tmp_path / "reference" / "models", episodes)
    assert expected["training"]["updates"] == 7  # 960 steps / 128
    assert expected["training"]["rollout"]["size"] == 960 - 7 * 128  # saved mid-rollout
    assert_same_state(expected, load_checkpoint_tensors(run_dir / "models", episodes))
    # The agent's metrics of the last episode are in the checkpoint's JSON too.
    meta = json.loads((run_dir / "models" / f"model_ep{episodes}.json").read_text())
    reference_meta = json.loads(
        (tmp_path / "reference" / "models" / f"model_ep{episodes}.json").read_text()
    )
    for key in ("entropy", "approx_kl", "clip_fraction", "explained_variance"):
        assert meta[key] == reference_meta[key] and isinstance(meta[key], float)


def test_evaluate_runs_on_a_ppo_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = _train(tmp_path, "episodes=4", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stdout + done.stderr
    evaluated = subprocess.run(
        [sys.executable, "-m", "finsense.evaluate", str(run_dir)],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    result = json.loads((run_dir / "eval" / "test_metrics.json").read_text())
    assert "total_profit" in json.dumps(result)


@pytest.mark.parametrize(
    ("first", "then", "says"),
    [
        (
            "agent.network.hidden_sizes=[16]",
            "agent.network.hidden_sizes=[8]",
            "agent.network.hidden_sizes: [16] -> [8]",
        ),
        ("agent.n_steps=128", "agent.n_steps=64", "agent.n_steps: 128 -> 64"),
    ],
)
def test_a_changed_network_or_rollout_length_is_refused_on_resume(
    tmp_path: Path, first: str, then: str, says: str
) -> None:
    run_dir = f"hydra.run.dir={tmp_path / 'run'}"
    done = _train(tmp_path, first, "episodes=2", run_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    refused = _train(tmp_path, then, "episodes=4", run_dir)
    assert refused.returncode != 0
    assert says in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert "cannot follow" in refused.stderr
