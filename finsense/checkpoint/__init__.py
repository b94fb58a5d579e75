"""The checkpoint store: every file under a run's ``models/`` directory, and the run lock.

It knows files, not reinforcement learning: it saves and loads dicts of tensors and plain Python
values plus a JSON metadata dict. It never imports the agent, the env or Hydra.

One job per module, lowest layer first:

- :mod:`~finsense.checkpoint.durable`: durable file writes and reads (temporary file, fsync,
  rename, directory fsync); files set aside, never deleted. No torch.
- :mod:`~finsense.checkpoint.layout`: the on-disk layout of ``models/`` (file names, the format
  version) and its listing. No torch; ``finsense.status`` reads runs through it.
- :mod:`~finsense.checkpoint.encoding`: serialisation and the ``weights_only`` safety check.
- :mod:`~finsense.checkpoint.chunks`: large tensors of the training state (the replay buffer)
  as content-addressed chunks shared between checkpoints, and their collection.
- :mod:`~finsense.checkpoint.policies`: when a checkpoint is due (:class:`SavePolicy`) and
  which ones stay (:class:`RetentionPolicy`). No torch.
- :mod:`~finsense.checkpoint.history`: older histories moved to ``models/archive/`` through a
  journal.
- :mod:`~finsense.checkpoint.store`: :class:`CheckpointManager` (saving, the best model,
  rotation, verification and repair, loading) and :class:`CheckpointInfo`.
- The run lock, :class:`RunLock`, lives in :mod:`finsense.lockfile`.

Importing this package does not import torch: the names of the store (which needs torch) are
imported on first use, so ``from finsense.checkpoint.layout import ...`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from finsense.checkpoint.durable import read_json, write_bytes_atomic, write_json_atomic
from finsense.checkpoint.layout import FORMAT_VERSION, metadata_path
from finsense.lockfile import LOCK_FILE, RunLock

if TYPE_CHECKING:
    from finsense.checkpoint.store import CheckpointInfo, CheckpointManager

__all__ = [
    "FORMAT_VERSION",
    "LOCK_FILE",
    "CheckpointInfo",
    "CheckpointManager",
    "RunLock",
    "read_json",
    "metadata_path",
    "write_bytes_atomic",
    "write_json_atomic",
]

#: Names imported from :mod:`finsense.checkpoint.store` when first used (it imports torch).
_LAZY = frozenset({"CheckpointInfo", "CheckpointManager"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module("finsense.checkpoint.store"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
