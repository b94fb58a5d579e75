"""Helper process for ``tests/test_checkpoint.py``: save checkpoints in a loop until killed.

Usage: ``python tests/checkpoint_child.py MODELS_DIR``. It imports torch, prints ``ready``, reads
the first episode to save from stdin, then saves episode after episode (a DQN-sized policy and a
replay buffer in the companion file) and prints ``saved N`` after each, until the parent kills it.
"""

from __future__ import annotations

import itertools
import sys

import torch

from finsense.checkpoint import CheckpointManager


def main() -> None:
    """Save forever, starting from the episode read from stdin."""
    models_dir = sys.argv[1]
    print("ready", flush=True)
    start = int(sys.stdin.readline())
    manager = CheckpointManager(models_dir, max_keep=3)
    gen = torch.Generator().manual_seed(start)
    for episode in itertools.count(start):
        policy = {
            "0.weight": torch.randn(64, 30, generator=gen),
            "0.bias": torch.randn(64, generator=gen),
            "2.weight": torch.randn(64, 64, generator=gen),
            "2.bias": torch.randn(64, generator=gen),
            "4.weight": torch.randn(3, 64, generator=gen),
            "4.bias": torch.randn(3, generator=gen),
        }
        training = {
            "obs": torch.randn(20_000, 31, generator=gen),
            "actions": torch.randint(0, 3, (20_000,), generator=gen),
            "episode": episode,
        }
        metrics = {"total_profit": float(torch.randn(1, generator=gen)), "total_trades": episode}
        manager.save(
            episode,
            {"policy": policy, "episode": episode},
            {"metrics": metrics, "epsilon": 0.1},
            training_state=training,
        )
        print(f"saved {episode}", flush=True)


if __name__ == "__main__":
    main()
