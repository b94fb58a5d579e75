"""Components from config, end to end: shipped networks, a user's network, env and logger.

The "bring your own" examples are read from README.md and run as written there (with the tiny
test settings added), so the README cannot drift from what works.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.e2e.helpers import (
    kill_at_random_moments,
    load_checkpoint_tensors,
    subprocess_env,
    train_argv,
)
from tests.helpers import assert_same_state

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"


def _bring_your_own() -> tuple[dict[str, str], list[list[str]]]:
    """The files (name -> text) and the commands of README's "Bring your own" section."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Bring your own") :]
    section = section[: section.index("\n## ")]
    files = {
        name: body for _lang, name, body in re.findall(r"```(\w+) (\S+)\n(.*?)```", section, re.S)
    }
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    commands = [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]
    return files, commands


def _train(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    argv = train_argv(*args)
    return subprocess.run(
        argv, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


def _evaluate(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "finsense.evaluate", *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _write(root: Path, files: dict[str, str]) -> None:
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")


def test_readme_bring_your_own_examples_run_as_written(tmp_path: Path) -> None:
    files, commands = _bring_your_own()
    assert {"mynets.py", "myenvs.py", "mylog.py"} <= set(files) and len(commands) == 3
    _write(tmp_path, files)
    runs = []
    for i, command in enumerate(commands):
        assert command[:3] == ["python", "-m", "finsense.train"], command
        run_dir = tmp_path / f"run{i}"
        done = _train(tmp_path, *command[3:], "episodes=6", f"hydra.run.dir={run_dir}")
        assert done.returncode == 0, done.stdout + done.stderr
        runs.append(run_dir)
    network_run, env_run, logger_run = runs

    # The user's network: every parameter learned, LayerNorm's included (it starts at 1 and 0).
    weights = load_checkpoint_tensors(network_run / "models", 6)["policy"]["policy"]["weights"]
    assert not torch.equal(weights["body.1.weight"], torch.ones_like(weights["body.1.weight"]))
    assert not torch.equal(weights["body.1.bias"], torch.zeros_like(weights["body.1.bias"]))
    meta = json.loads((network_run / "models" / "model_ep6.json").read_text())
    assert meta["learner"] == "autograd"
    evaluated = _evaluate(tmp_path, str(network_run))
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr

    # The user's env: its return and length are the episode metrics, the best by the return.
    best = json.loads((env_run / "models" / "best_model.json").read_text())
    assert best["metric_name"] == "episode_return"
    assert set(best["metrics"]) == {"episode_return", "episode_length"}
    assert best["metrics"]["episode_length"] == 50

    # The user's logger: one line per episode, beside metrics.csv.
    lines = (logger_run / "episodes.jsonl").read_text().splitlines()
    assert [json.loads(line)["episode"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert len((logger_run / "metrics.csv").read_text().splitlines()) == 7


def _kill_and_resume(tmp_path: Path, *overrides: str, episodes: int = 24) -> None:
    """A run killed with SIGKILL three times at random moments, then resumed, ends with the same
    weights, buffers and optimizer state, bit for bit, as one never interrupted."""
    target = f"episodes={episodes}"
    reference = _train(tmp_path, *overrides, target, f"hydra.run.dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stdout + reference.stderr
    run_dir = tmp_path / "killed"
    argv = train_argv(*overrides, target, f"hydra.run.dir={run_dir}")
    kills = kill_at_random_moments(argv, tmp_path, run_dir, attempts=3, seed=7, max_delay=0.3)
    assert kills >= 2
    final = _train(tmp_path, *overrides, target, f"hydra.run.dir={run_dir}")
    assert final.returncode == 0, final.stdout + final.stderr
    assert_same_state(
        load_checkpoint_tensors(tmp_path / "reference" / "models", episodes),
        load_checkpoint_tensors(run_dir / "models", episodes),
    )


@pytest.mark.parametrize("network", ["conv1d", "gru"])
def test_shipped_sequence_networks_resume_bit_exact_after_kill_9(
    tmp_path: Path, network: str
) -> None:
    _kill_and_resume(tmp_path, f"agent/network={network}", "env.window_size=10")


def test_a_users_network_resumes_bit_exact_after_kill_9(tmp_path: Path) -> None:
    files, _ = _bring_your_own()
    _write(tmp_path, files)
    _kill_and_resume(tmp_path, "--config-dir", "myconf", "agent/network=layernorm")


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["agent.network._target_=nope.Net"], "agent.network._target_=nope.Net cannot be imported"),
        (["agent/network=gru", "agent.learner=fast"], "agent.learner=fast"),
        (["+agent.network.width=3"], "agent.network.width is not a key of agent.network"),
        (["env._target_=torch.nn.Linear"], "env.data is not a key of env; remove it"),
        (["agent.optimizer._target_=torch.nn.Linear"], "agent.optimizer._target_ must be a"),
        (["agent/network=nope"], "agent/network"),
    ],
)
def test_a_wrong_component_is_one_line_and_leaves_nothing(
    tmp_path: Path, overrides: list[str], says: str
) -> None:
    done = _train(tmp_path, *overrides, "episodes=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode != 0
    assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()


def test_a_network_with_the_wrong_output_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "badnet.py").write_text(
        "import torch\n\n"
        "class OneOut(torch.nn.Module):\n"
        "    def __init__(self, obs_dim, n_actions):\n"
        "        super().__init__()\n"
        "        self.layer = torch.nn.Linear(obs_dim, 1)\n\n"
        "    def forward(self, obs):\n"
        "        return self.layer(obs)\n"
    )
    done = _train(
        tmp_path,
        "agent.network._target_=badnet.OneOut",
        "~agent.network.hidden_sizes",
        "~agent.network.dueling",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "agent.network: output shape (2, 1) for a batch of 2 observations" in done.stderr
    assert not (tmp_path / "run").exists()


def test_adamw_trains_through_autograd_and_is_recorded(tmp_path: Path) -> None:
    done = _train(
        tmp_path,
        "agent.optimizer._target_=torch.optim.AdamW",
        "+agent.optimizer.weight_decay=0.01",
        "episodes=2",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    meta = json.loads((tmp_path / "run" / "models" / "model_ep2.json").read_text())
    assert meta["learner"] == "autograd"
    assert meta["config"]["agent"]["optimizer"]["_target_"] == "torch.optim.AdamW"
    state = torch.load(tmp_path / "run" / "models" / "model_ep2.train.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert groups[0]["weight_decay"] == 0.01


def test_gym_env_trains_and_evaluates_by_episode_return(tmp_path: Path) -> None:
    run_dir = tmp_path / "cartpole"
    done = _train(
        tmp_path,
        "env=gym",
        "env.id=CartPole-v1",
        "agent.reward_scale=1",
        "max_steps=300",
        "episodes=1000",
        f"hydra.run.dir={run_dir}",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "episode_return=" in done.stdout
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    steps = [int(r.split(",")[-2]) for r in rows[1:]]
    assert steps[-1] >= 300 > steps[-2]  # ends with the episode that reaches max_steps
    evaluated = _evaluate(tmp_path, str(run_dir), "episodes=3")
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert "over 3 episodes" in evaluated.stdout
    result = json.loads((run_dir / "eval" / "episodes.json").read_text())
    assert len(result["returns"]) == 3 and result["mean_return"] > 0
    for tool, says in (("report", "not a trading env"), ("export", "not a trading env")):
        done = subprocess.run(
            [sys.executable, "-m", f"finsense.{tool}", str(run_dir)],
            cwd=tmp_path,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert (run_dir / "report" / "training_curve.png").is_file()
