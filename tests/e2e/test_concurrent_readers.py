"""Readers of a run that is training: every read is a whole, consistent checkpoint (issue 10).

``finsense.evaluate`` (and anything else that looks at ``models/``) may read while the trainer
saves, rotates and relinks ``best_model.*``. A reader must never fail on a file the trainer
replaced under it, never get weights of one episode with the metadata of another, and never set
a healthy file aside.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from finsense.checkpoint import CheckpointInfo, CheckpointManager
from finsense.errors import CheckpointError
from tests.e2e.helpers import subprocess_env, train_argv, wait_for

#: How long the reader keeps reading while the trainer runs (the trainer saves every episode).
READ_SECONDS = 20.0


def _state_sha256(state: dict[str, Any]) -> str:
    """The SHA-256 of ``state`` as ``torch.save`` writes it (with the store's zip layout).

    The store hashes the bytes it wrote; re-serialising the loaded dict gives the same bytes
    only when it is the very dict that was saved, so this ties the weights to the metadata.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _check(info: CheckpointInfo, loader: CheckpointManager, reads: dict[str, int]) -> None:
    """Load ``info`` with ``loader`` and assert the (state, metadata) pair belongs together."""
    state, training, metadata = loader.load(info)
    episode = metadata["episode"]
    assert isinstance(episode, int) and "policy" in state
    if info.path.name.startswith("model_ep"):
        assert info.path.name == f"model_ep{episode}.pt", (info.path, metadata)
        assert info.episode == episode
    # The weights and the companion are those the metadata describes (one save, not two).
    assert _state_sha256(state) == metadata["sha256"]["model"], info.path
    assert training is not None and training["steps"] == metadata["steps"], info.path
    reads[info.path.name.split(".")[0].split("_ep")[0]] += 1


@pytest.mark.slow
def test_readers_always_get_a_consistent_checkpoint_while_the_trainer_saves(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    models = run_dir / "models"
    log_path = tmp_path / "train.log"
    with open(log_path, "w") as log_file:
        trainer = subprocess.Popen(
            train_argv(
                "episodes=100000",
                "checkpoints.max_keep=2",
                "checkpoints.save_frequency=1",
                f"hydra.run.dir={run_dir}",
            ),
            cwd=tmp_path,
            env=subprocess_env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    failures: list[str] = []
    reads = {"model": 0, "best_model": 0}
    rotated = 0
    try:
        wait_for(lambda: models.is_dir() and any(models.glob("model_ep*.json")), timeout=120)
        deadline = time.monotonic() + READ_SECONDS
        while time.monotonic() < deadline:
            assert trainer.poll() is None, log_path.read_text()
            manager = CheckpointManager(models, max_keep=2)
            for select in (manager.latest, manager.best):
                try:
                    info = select()
                    if info is None:
                        continue
                    # As finsense.evaluate does: load with the manager that chose it.
                    _check(info, manager, reads)
                except CheckpointError as exc:
                    failures.append(f"{select.__name__}: {exc}")
                    continue
                # As it did before issue 10: a manager of its own, so the files are read again
                # after the trainer may have replaced them (or rotated them away: that one clear
                # message is the only failure allowed).
                try:
                    _check(info, CheckpointManager(models), reads)
                except CheckpointError as exc:
                    if "removed while being loaded" in str(exc) and "\n" not in str(exc):
                        rotated += 1
                    else:
                        failures.append(f"{select.__name__} + fresh load: {exc}")
            corrupt = [p.name for p in models.iterdir() if ".corrupt" in p.name]
            assert not corrupt, corrupt
    finally:
        if trainer.poll() is None:
            trainer.send_signal(signal.SIGINT)
            try:
                trainer.wait(timeout=60)
            except subprocess.TimeoutExpired:
                trainer.kill()
                trainer.wait()
    saved = max(
        (int(p.name[8:-5]) for p in models.glob("model_ep*.json")),
        default=0,
    )
    print(
        f"reads: {reads}, failures: {len(failures)}, rotated away before a fresh load: "
        f"{rotated}, trainer reached episode {saved}"
    )
    print("\n".join(failures[:20]))
    assert not failures, failures[:10]
    assert reads["model"] >= 100 and reads["best_model"] >= 100, reads
    assert saved >= 20, f"the trainer saved too rarely to race with the readers ({saved})"
    assert not [p.name for p in models.iterdir() if ".corrupt" in p.name]
    assert os.path.exists(models / "best_model.json")
