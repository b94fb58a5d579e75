"""Helper process for ``tests/test_checkpoint.py``: save checkpoints in a loop until killed.

Usage: ``python tests/checkpoint_child.py MODELS_DIR``. It imports torch, prints ``ready``, reads
the first episode to save from stdin, then saves episode after episode (a DQN-sized policy and a
replay buffer in the companion file, and a ring of rows stored as chunks: see :func:`ring`) and
prints ``saved N`` after each, until the parent kills it.
"""

from __future__ import annotations

import itertools
import sys

import torch

from finsense.checkpoint import CheckpointManager
from finsense.checkpoint.chunks import Chunked

RING_ROWS, RING_WIDTH, ROWS_PER_EPISODE, ROWS_PER_STAMP = 20_000, 31, 1_500, 1_024


def ring_rows(episode: int) -> range:
    """The rows of the ring that ``episode`` writes (modulo ``RING_ROWS``)."""
    first = episode * ROWS_PER_EPISODE
    return range(first, first + ROWS_PER_EPISODE)


def ring(start: int, episode: int) -> torch.Tensor:
    """The ring after episodes ``start..episode``: each row holds the episode that last wrote it
    (0.0 where none did), as a replay buffer's rows hold the transition last added there."""
    rows = torch.zeros(RING_ROWS, RING_WIDTH)
    for e in range(start, episode + 1):
        rows[[r % RING_ROWS for r in ring_rows(e)]] = float(e)
    return rows


def main() -> None:
    """Save forever, starting from the episode read from stdin."""
    models_dir = sys.argv[1]
    print("ready", flush=True)
    start = int(sys.stdin.readline())
    manager = CheckpointManager(models_dir, max_keep=3)
    gen = torch.Generator().manual_seed(start)
    rows = torch.zeros(RING_ROWS, RING_WIDTH)
    stamps = [0] * -(-RING_ROWS // ROWS_PER_STAMP)
    for episode in itertools.count(start):
        for r in ring_rows(episode):
            rows[r % RING_ROWS] = float(episode)
            stamps[(r % RING_ROWS) // ROWS_PER_STAMP] = episode + 1
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
            "start": start,
            "ring": Chunked(rows, list(stamps), ROWS_PER_STAMP),
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
