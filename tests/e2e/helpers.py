"""Shared helpers for the end-to-end tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from finsense.checkpoint import CheckpointManager
from tests.helpers import assert_same_state

# A tiny but real configuration: short episodes, small buffer, learning from step 64.
TINY = [
    "env.episode_length=40",
    "env.data.n_steps=400",
    "agent.learning_starts=64",
    "agent.buffer_size=2000",
    "agent.batch_size=16",
    "agent.target_update_interval=50",
    "agent.exploration_steps=400",
    "checkpoints.save_frequency=2",
    "progress=log",
]


def train_argv(*args: str, tiny: bool = True, multirun: bool = False) -> list[str]:
    """The command line of a real ``python -m finsense.train`` run (``TINY`` settings first).

    ``--multirun`` and ``--config-dir DIR`` come before the overrides: Hydra's argparse stops
    reading flags at the first override. With another env than the default (``env=...``) the
    tiny market keys it does not have are left out (the synthetic market's size; all of them
    for a non-trading env).
    """
    flags = ["--multirun"] if multirun else []
    rest = list(args)
    if "--config-dir" in rest:
        i = rest.index("--config-dir")
        flags += rest[i : i + 2]
        del rest[i : i + 2]
    envs = [a.partition("=")[2] for a in rest if a.startswith("env=")]
    tiny_args = list(TINY) if tiny else []
    if envs and envs[-1] != "synthetic":
        trading = envs[-1] in ("googl", "csv")
        tiny_args = [
            t
            for t in tiny_args
            if not (t.startswith("env.data.n_steps") or (not trading and t.startswith("env.")))
        ]
    return [sys.executable, "-m", "finsense.train", *flags, *tiny_args, *rest]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def wait_for(predicate: Callable[[], bool], timeout: float = 120.0, poll: float = 0.02) -> None:
    """Poll until ``predicate()`` holds or fail the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError("timed out waiting for condition")


def load_checkpoint_tensors(models_dir: Path, episode: int) -> dict[str, Any]:
    """Both files of one checkpoint and its chunks (the replay buffer), verified and loaded
    safely; the model file also with a bare ``torch.load(weights_only=True)``, as users do."""
    path = models_dir / f"model_ep{episode}.pt"
    policy, training, _ = CheckpointManager(models_dir).load(path)
    assert_same_state(torch.load(path, weights_only=True), policy)
    return {"policy": policy, "training": training}


def run_dir_files(
    run_dir: Path, *, exclude: Sequence[str] = (".hydra", "logs")
) -> dict[str, bytes]:
    """Every file under a run dir (except Hydra's record and logs) with its bytes."""
    out = {}
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if path.is_file() and rel.parts[0] not in exclude and path.name != ".finsense.lock":
            out[str(rel)] = path.read_bytes()
    return out


def status_output(cwd: Path, *args: str) -> str:
    """The stdout of ``python -m finsense.status ARGS`` run in ``cwd`` (asserting it succeeded)."""
    proc = subprocess.run(
        [sys.executable, "-m", "finsense.status", *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def kill_when(proc: subprocess.Popen[Any], predicate: Callable[[], bool], timeout: float) -> None:
    """SIGKILL ``proc`` once ``predicate()`` holds; fail at once if ``proc`` exits first (a bad
    command line would otherwise cost the whole timeout). The process is killed either way."""
    try:
        wait_for(lambda: proc.poll() is not None or predicate(), timeout=timeout)
        assert proc.poll() is None, f"the process exited early with code {proc.returncode}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def kill_at_random_moments(
    argv: list[str], cwd: Path, run_dir: Path, *, attempts: int, seed: int, max_delay: float
) -> int:
    """Start ``argv`` (a training run into ``run_dir``) up to ``attempts`` times; each time, once it
    has logged a new episode (a row of metrics.csv), SIGKILL it after a random delay of up to
    ``max_delay`` seconds: inside an episode, between episodes or in the middle of a save.

    Returns:
        How many times the run was killed (fewer than ``attempts`` if it finished first).
    """
    metrics = run_dir / "metrics.csv"
    rng = random.Random(seed)

    def rows() -> int:
        return len(metrics.read_text().splitlines()) if metrics.exists() else 0

    kills = 0
    for _ in range(attempts):
        before = rows()
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda p=proc, b=before: rows() > b or p.poll() is not None)  # type: ignore[misc]
        time.sleep(rng.uniform(0.0, max_delay))
        if proc.poll() is not None:
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    return kills
