"""The checkpoint store with a remote mirror (``checkpoints.remote=URL``).

:class:`MirroredCheckpointManager` is a :class:`~finsense.checkpoint.store.CheckpointManager`
whose every local commit (a save, a best update, an archive) is followed by an upload in the
background (:class:`~finsense.checkpoint.remote.Mirror`), and which waits for that upload before
it changes local files again. On resume (``latest(resumable=True)``) it pulls the newest valid
remote checkpoint when it is newer than every valid local one. The local store's own code paths
are those of the plain manager: this class only adds steps before and after them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finsense.checkpoint import remote as remote_store
from finsense.checkpoint.remote import Mirror, RemoteModels, keeping_random_state
from finsense.checkpoint.store import CheckpointInfo, CheckpointManager
from finsense.errors import CheckpointError

log = logging.getLogger(__name__)


class MirroredCheckpointManager(CheckpointManager):
    """A :class:`CheckpointManager` whose commits are mirrored to ``remote``.

    Args:
        models_dir: the local ``models/`` directory (the working copy).
        remote: the run's remote ``models/`` (:func:`finsense.checkpoint.remote.open_remote`).
        **kwargs: as for :class:`CheckpointManager`.
    """

    def __init__(self, models_dir: str | Path, remote: RemoteModels, **kwargs: Any) -> None:
        super().__init__(models_dir, **kwargs)
        self.remote = remote
        self.mirror = Mirror(self.models_dir, remote)
        self._pulled: Path | None = None
        self._looked_remotely = False

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, remote={self.remote.url!r})"

    # -- writes: wait for the upload in progress, commit locally, upload in the background ---
    def save(
        self,
        episode: int,
        state: dict[str, Any],
        metadata: dict[str, Any],
        *,
        training_state: dict[str, Any] | None = None,
    ) -> CheckpointInfo:
        """:meth:`CheckpointManager.save`, then an upload in the background."""
        self.mirror.wait()
        info = super().save(episode, state, metadata, training_state=training_state)
        self.mirror.start()
        return info

    def update_best(
        self,
        episode: int,
        state: dict[str, Any],
        metadata: dict[str, Any],
        *,
        training_state: dict[str, Any] | None = None,
    ) -> CheckpointInfo | None:
        """:meth:`CheckpointManager.update_best`, then an upload in the background."""
        if not self.improves(metadata["metrics"]):
            return None
        self.mirror.wait()
        info = super().update_best(episode, state, metadata, training_state=training_state)
        if info is not None:
            self.mirror.start()
        return info

    def archive(
        self,
        after: int | None = None,
        *,
        move: tuple[Path, ...] = (),
        copy: tuple[Path, ...] = (),
    ) -> Path | None:
        """:meth:`CheckpointManager.archive`, and the same history moved aside remotely.

        Raises:
            CheckpointError: also when the remote history cannot be moved (the command stops
                before training, so the remote never mixes two histories).
        """
        self.mirror.wait()
        archived = super().archive(after, move=move, copy=copy)
        try:
            with keeping_random_state():
                moved = remote_store.archive(self.remote, after)
        except Exception as exc:  # the back-ends' errors: one line
            raise CheckpointError(
                f"checkpoints.remote: cannot move the old history aside in {self.remote.url} "
                f"({remote_store._one_line(exc)}); run again once it is reachable"
            ) from None
        if moved is not None:
            log.warning("remote history moved to %s", moved)
        return archived

    # -- resume ------------------------------------------------------------------------------
    def latest(self, *, resumable: bool = False) -> CheckpointInfo | None:
        """:meth:`CheckpointManager.latest`; the first resumable look also pulls the newest
        valid remote checkpoint when it is newer than every valid local one (the newer wins)."""
        if not resumable or self._looked_remotely:
            return super().latest(resumable=resumable)
        self._looked_remotely = True
        self.mirror.wait()
        local = super().latest(resumable=True)
        with keeping_random_state():
            newer_than = -1 if local is None else local.episode
            pulled = remote_store.pull(self.models_dir, self.remote, newer_than)
        if pulled is None:
            return local
        info = super().latest(resumable=True)
        if info is not None and info.episode == pulled:
            self._pulled = info.path
        return info

    def origin(self, path: Path) -> str | None:
        """The remote URL a checkpoint was pulled from on this start, or None."""
        if self._pulled is not None and Path(path) == self._pulled:
            return self.remote.display(path.name)
        return None

    # -- the end -----------------------------------------------------------------------------
    def close(self) -> None:
        """Wait for the upload in progress; if none succeeded yet (an already complete run, or
        the last one failed), upload once more now. A failure is one warning."""
        self.mirror.wait()
        if self.mirror.ok:
            return
        if not self.mirror.upload_now():
            log.warning(
                "%s: the remote copy lags behind the local one; run the same command again "
                "once the remote is reachable to upload the rest",
                self.remote.url,
            )
