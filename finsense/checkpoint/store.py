"""The checkpoint store: saves, finds, verifies, rotates, loads and archives checkpoints.

Rules the store keeps:

- A visible checkpoint is a complete one: every file is written to a temporary name in the same
  directory (``.<name>.tmp-<pid>-<hex>``), fsynced and renamed; the chunks of the training state
  (:mod:`~finsense.checkpoint.chunks`) come first, the JSON that lists them last. A crash at any
  instant leaves the old set or the new one; what it leaves behind (temporary files, a ``.pt``
  without its JSON, chunks no JSON lists) is cleaned up by the next scan or save.
- A checkpoint is data, never code: files are always read with ``torch.load(weights_only=True)``.
- Nothing valid is deleted: rotation removes only old episodic checkpoints after a successful
  save; damaged files are renamed aside; ``best_model.*`` is never rotated away.
- One writer per run directory: :class:`RunLock`. While another process holds the lock of the run
  this ``models/`` directory belongs to (its parent), scans only read: they skip damaged files
  instead of renaming them, so a status or evaluation command cannot disturb a running trainer.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finsense.checkpoint import history
from finsense.checkpoint.chunks import (
    Chunked,
    ChunkError,
    _has_chunked,
    collect,
    externalise,
    read_chunked,
    substitute,
    write_chunks,
)
from finsense.checkpoint.durable import (
    _Digest,
    _fsync_dir,
    _json_bytes,
    _jsonable,
    _link_or_copy,
    _one_line,
    _reason,
    _remove_quietly,
    _rename_aside,
    _write_tmp,
    read_json,
    write_json_atomic,
)
from finsense.checkpoint.encoding import _deserialise, _serialise_pair
from finsense.checkpoint.layout import (
    BEST,
    CHUNKS_DIR,
    FORMAT_VERSION,
    Listing,
    _files,
    _stem,
    episode_stem,
)
from finsense.checkpoint.policies import RetentionPolicy
from finsense.errors import CheckpointError, ConfigError
from finsense.lockfile import RunLock, _held_locks

log = logging.getLogger(__name__)

#: JSON keys written on one line (see :func:`~finsense.checkpoint.durable._json_bytes`).
_COMPACT = ("chunked",)
#: A read that fails while its files change under it (a running trainer saving, rotating or
#: relinking ``best_model.*``) is tried this many times in all, 10, 20, 40... ms apart.
_READ_ATTEMPTS = 6
_READ_BACKOFF_S = 0.01


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _file_keys(pt: Path) -> tuple[tuple[int, int, int] | None, ...]:
    """The :func:`_stat_key` of a checkpoint's model file, companion and JSON, in that order.

    Every change the store makes to a checkpoint is a rename, a new hard link or an unlink, so
    it changes at least one key: equal keys before and after a read mean it saw stable files.
    """
    return tuple(_stat_key(path) for path in _files(pt.parent, _stem(pt)))


@dataclass(frozen=True)
class CheckpointInfo:
    """A verified checkpoint on disk.

    Attributes:
        episode: the episode it was saved after (for ``best_model``: the episode it copies);
            -1 when unknown (a file named by the user without metadata).
        path: its model file (``models/model_ep10.pt``, ``models/best_model.pt``).
        metadata: its parsed JSON (caller's keys plus the store's: ``episode``, ``metrics``,
            ``is_best``, ``metric_name``, ``metric_value``, ``format_version``,
            ``sha256``, ``size_bytes``, ``written_at``, and ``chunked``: the manifest of the
            training state's chunked tensors, when it has any).
    """

    episode: int
    path: Path
    metadata: dict[str, Any]

    @property
    def json_path(self) -> Path:
        """The metadata file beside the model file."""
        return _files(self.path.parent, _stem(self.path))[2]

    @property
    def training_path(self) -> Path | None:
        """The companion file with the training state, or None when the checkpoint has none."""
        sums = self.metadata.get("sha256")
        if isinstance(sums, dict) and sums.get("training"):
            return _files(self.path.parent, _stem(self.path))[1]
        return None

    @property
    def metric_value(self) -> float:
        """The value of the metric it was ranked by (nan when unrecorded)."""
        value = self.metadata.get("metric_value")
        return float(value) if isinstance(value, int | float) else math.nan


class _VerifyError(Exception):
    """A checkpoint failed verification: ``path`` is the file at fault."""

    def __init__(self, path: Path, reason: str, *, set_aside: bool = True) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.set_aside = set_aside  # False for conditions that are not damage (permissions, ...)


@dataclass
class _Loaded:
    """A checkpoint verified by a scan, kept until :meth:`CheckpointManager.load` takes it."""

    path: Path
    keys: tuple[tuple[int, int, int] | None, ...]
    state: dict[str, Any]
    training: dict[str, Any] | None
    #: The metadata the files were verified against (the CheckpointInfo's own dict).
    metadata: dict[str, Any] | None = None


class CheckpointManager:
    """Saves, finds, verifies, rotates and loads the checkpoints of one ``models/`` directory.

    Args:
        models_dir: the directory (created if missing); its parent is the run directory whose
            :class:`RunLock` marks the one writer.
        max_keep: how many episodic checkpoints (``model_ep*``) to keep, newest first; >= 1.
        save_best: keep ``best_model.*`` as a copy of the best episode by ``metric_name``.
        metric_name: the key of ``metadata["metrics"]`` that ranks checkpoints.
        mode: ``max`` (higher is better) or ``min``.
        map_location: where loaded tensors go (``torch.load``'s ``map_location``).

    Raises:
        ConfigError: ``max_keep``, ``mode`` or ``metric_name`` is invalid.
        CheckpointError: ``models_dir`` cannot be created.
    """

    def __init__(
        self,
        models_dir: str | Path,
        *,
        max_keep: int = 5,
        save_best: bool = True,
        metric_name: str = "total_profit",
        mode: str = "max",
        map_location: str = "cpu",
    ) -> None:
        #: Which checkpoints stay (see :class:`~finsense.checkpoint.policies.RetentionPolicy`).
        self.retention = RetentionPolicy(max_keep, bool(save_best), metric_name, mode)
        self.models_dir = Path(models_dir)
        self.map_location = map_location
        self._mutex = threading.RLock()
        self._loaded: _Loaded | None = None
        #: The manifest entry of each chunked key as last saved or loaded here (see
        #: :func:`finsense.checkpoint.chunks.write_chunks`).
        self._chunk_cache: dict[str, dict[str, Any]] = {}
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"{self.models_dir}: cannot create the models directory ({_reason(exc)})"
            ) from exc

    @property
    def max_keep(self) -> int:
        """How many episodic checkpoints stay."""
        return self.retention.max_keep

    @property
    def save_best(self) -> bool:
        """Whether ``best_model.*`` is kept."""
        return self.retention.keep_best

    @property
    def metric_name(self) -> str:
        """The metric that ranks checkpoints."""
        return self.retention.metric_name

    @property
    def mode(self) -> str:
        """``max`` (higher is better) or ``min``."""
        return self.retention.mode

    def __repr__(self) -> str:
        return (
            f"CheckpointManager({str(self.models_dir)!r}, max_keep={self.max_keep}, "
            f"save_best={self.save_best}, metric_name={self.metric_name!r}, mode={self.mode!r})"
        )

    # -- saving ------------------------------------------------------------------------------
    def save(
        self,
        episode: int,
        state: dict[str, Any],
        metadata: dict[str, Any],
        *,
        training_state: dict[str, Any] | None = None,
    ) -> CheckpointInfo:
        """Write the checkpoint of ``episode``; update ``best_model.*``; rotate old ones.

        Order: model file, companion, JSON (each to a temporary name, fsynced, renamed), fsync
        of the directory; then ``best_model.*`` if this episode improves on it; then rotation.
        The model file is a standard torch zip; the companion skips the zip's CRC-32 (the
        SHA-256 covers it). Draws no random numbers.

        Args:
            episode: the episode just finished (>= 0); names the files ``model_ep{episode}.*``.
            state: the small part (policy weights, ...): tensors and plain Python values.
            metadata: JSON-able values; must hold ``metrics`` (name -> number) and may hold
                any other values of the caller's (the trainer's agent metrics, the config,
                counters), written as given. NaN is written as null.
            training_state: the large part (replay buffer, optimizer, ...), written to the
                companion ``model_ep{episode}.train.pt``; None for none.

        Returns:
            The new checkpoint.

        Raises:
            ConfigError: ``metric_name`` is not a key of ``metadata["metrics"]`` or not a number.
            CheckpointError: a file could not be written (no space, file too large, permission);
                temporary files are removed and every earlier checkpoint is still valid.
        """
        if isinstance(episode, bool) or not isinstance(episode, int) or episode < 0:
            raise ValueError(f"episode must be an int >= 0, not {episode!r}")
        value = self._metric_of(metadata)
        model_bytes, training_bytes, chunked = self._serialise(state, training_state)
        with self._mutex:
            self._finish_archive()
            pt, train, json_path = _files(self.models_dir, episode_stem(episode))
            improved = False
            if self.save_best and not math.isnan(value):
                current = self._current_best_value()
                improved = current is None or self._better(value, current)
            self._loaded = None
            meta = self._metadata(episode, metadata, value, is_best=improved)
            meta = self._commit(pt, train, json_path, model_bytes, training_bytes, meta, chunked)
            info = CheckpointInfo(episode, pt, meta)
            if improved:
                try:
                    self._write_best(pt, train if training_bytes is not None else None, dict(meta))
                except OSError as exc:
                    raise CheckpointError(
                        f"{self.models_dir / (BEST + '.pt')}: cannot update the best model "
                        f"({_reason(exc)}); {pt.name} itself is saved"
                    ) from exc
                log.debug("%s is the new best (%s=%s)", pt.name, self.metric_name, value)
            try:
                self._rotate(keep=episode)
            except OSError as exc:  # the save itself is complete; the next one rotates again
                log.warning("%s: cannot rotate old checkpoints (%s)", self.models_dir, _reason(exc))
            self._collect(chunked)
            return info

    def improves(self, metrics: Mapping[str, Any]) -> bool:
        """Whether an episode with these ``metrics`` would beat the best model.

        Cheap (reads ``best_model.json``); False when ``save_best`` is off or the metric is NaN.
        """
        if not self.save_best:
            return False
        value = self._metric_of({"metrics": metrics})
        if math.isnan(value):
            return False
        with self._mutex:
            current = self._current_best_value()
        return current is None or self._better(value, current)

    def update_best(
        self,
        episode: int,
        state: dict[str, Any],
        metadata: dict[str, Any],
        *,
        training_state: dict[str, Any] | None = None,
    ) -> CheckpointInfo | None:
        """Make ``episode`` the best model if it beats it, without an episodic checkpoint.

        For an episode off the save grid that sets a new best: ``best_model.*`` is written with
        the same care as a checkpoint (temporary names, fsync, the old best's JSON removed first,
        the new JSON last), so a crash leaves either the old best or the new one, or best files
        without a JSON that the next look at the best removes before rebuilding it from the
        episodic checkpoints. Arguments as for :meth:`save`. Draws no random numbers.

        Returns:
            The new best, or None when ``episode`` does not beat the best (nothing is written).

        Raises:
            ConfigError, CheckpointError: as for :meth:`save`.
        """
        value = self._metric_of(metadata)
        if not self.improves(metadata["metrics"]):
            return None
        model_bytes, training_bytes, chunked = self._serialise(state, training_state)
        with self._mutex:
            self._finish_archive()
            self._loaded = None
            meta = self._metadata(episode, metadata, value, is_best=True)
            best_pt, best_train, best_json = _files(self.models_dir, BEST)
            meta = self._commit(
                best_pt, best_train, best_json, model_bytes, training_bytes, meta, chunked
            )
            log.debug("episode %d is the new best (%s=%s)", episode, self.metric_name, value)
            self._collect(chunked)
            return CheckpointInfo(episode, best_pt, meta)

    @staticmethod
    def _serialise(
        state: dict[str, Any], training_state: dict[str, Any] | None
    ) -> tuple[memoryview, memoryview | None, list[tuple[str, Chunked]]]:
        """The model file's and companion's bytes, and the chunked tensors of the training
        state (each replaced by a placeholder in the companion)."""
        if _has_chunked(state):
            raise TypeError(
                "state holds a Chunked tensor; only the training state may (the model file "
                "stays a standalone torch.save file)"
            )
        chunked: list[tuple[str, Chunked]] = []
        if training_state is not None:
            training_state, chunked = externalise(training_state)
        model_bytes, training_bytes = _serialise_pair(state, training_state)
        return model_bytes, training_bytes, chunked

    def _collect(self, chunked: list[tuple[str, Chunked]]) -> None:
        """Remove chunks no checkpoint lists any more (after a commit; never fatal)."""
        if not chunked and not (self.models_dir / CHUNKS_DIR).is_dir():
            return
        try:
            removed = collect(self.models_dir)
        except OSError as exc:
            log.warning("%s: cannot remove unused chunks (%s)", self.models_dir, _reason(exc))
            return
        if removed:
            log.debug("%s: removed %d unused chunks", self.models_dir / CHUNKS_DIR, removed)

    def _metadata(
        self, episode: int, metadata: Mapping[str, Any], value: float, *, is_best: bool
    ) -> dict[str, Any]:
        """The JSON of a checkpoint before the store's own fields (checksums, sizes, time)."""
        meta = dict(metadata)
        meta.update(
            episode=episode,
            is_best=is_best,
            metric_name=self.metric_name,
            metric_value=value,
            mode=self.mode,
            format_version=FORMAT_VERSION,
        )
        return meta

    def _commit(
        self,
        pt: Path,
        train: Path,
        json_path: Path,
        model_bytes: memoryview,
        training_bytes: memoryview | None,
        meta: dict[str, Any],
        chunked: Sequence[tuple[str, Chunked]] = (),
    ) -> dict[str, Any]:
        """Write the files of one checkpoint and return its metadata as written.

        The chunks of ``chunked`` not stored yet come first (``chunks/``, fsynced). Every other
        file goes to a temporary name first; only then are they renamed, model, companion, JSON,
        so that a failure while writing (the likely one: no space) changes nothing: new chunks
        are removed again, and chunks are only ever listed by the JSON written last.
        """
        tmps: list[Path] = []
        renamed: list[Path] = []
        created: list[Path] = []
        current = self.models_dir / CHUNKS_DIR  # the file being written, for the error message
        try:
            if chunked:
                manifest, created = write_chunks(chunked, self.models_dir, self._chunk_cache)
                meta["chunked"] = manifest
            current = pt
            tmp_pt, model_sha = _write_tmp(pt, model_bytes, sha256=True)
            tmps.append(tmp_pt)
            tmp_train: Path | None = None
            training_sha: str | None = None
            if training_bytes is not None:
                current = train
                tmp_train, training_sha = _write_tmp(train, training_bytes, sha256=True)
                tmps.append(tmp_train)
            meta["sha256"] = {"model": model_sha, "training": training_sha}
            meta["size_bytes"] = {
                "model": model_bytes.nbytes,
                "training": None if training_bytes is None else training_bytes.nbytes,
            }
            meta["written_at"] = datetime.now(UTC).isoformat(timespec="milliseconds")
            manifest = meta.pop("chunked", None)  # plain JSON values already; compact below
            meta = _jsonable(meta, "metadata")
            if manifest is not None:
                meta["chunked"] = manifest
            current = json_path
            tmp_json, _ = _write_tmp(json_path, _json_bytes(meta, _COMPACT))
            tmps.append(tmp_json)

            # An older checkpoint of this same episode stops counting before its files change.
            if os.path.lexists(json_path):
                os.unlink(json_path)
            current = pt
            os.replace(tmp_pt, pt)
            renamed.append(pt)
            current = train
            if tmp_train is not None:
                os.replace(tmp_train, train)
                renamed.append(train)
            elif os.path.lexists(train):
                os.unlink(train)  # the companion of an older save of this episode
            current = self.models_dir
            _fsync_dir(self.models_dir)
            current = json_path
            os.replace(tmp_json, json_path)
            current = self.models_dir
            _fsync_dir(self.models_dir)
        except OSError as exc:
            for tmp in tmps:
                _remove_quietly(tmp)
            if not os.path.lexists(json_path):
                for path in renamed + created:  # files without their JSON count for nothing
                    _remove_quietly(path)
            raise CheckpointError(
                f"{current}: cannot save checkpoint {pt.name} ({_reason(exc)}); "
                "earlier checkpoints are intact"
            ) from exc
        if chunked:
            self._chunk_cache = {entry["key"]: entry for entry in meta["chunked"]}
        return meta

    def _write_best(self, pt: Path, train: Path | None, meta: dict[str, Any]) -> None:
        """Point ``best_model.*`` at the checkpoint ``pt`` (hard links; JSON last)."""
        best_pt, best_train, best_json = _files(self.models_dir, BEST)
        meta["is_best"] = True
        # The old best stops counting first: a crash below leaves best files without a JSON,
        # which the next look at the best removes before rebuilding it from the checkpoints.
        _remove_quietly(best_json)
        _link_or_copy(pt, best_pt)
        if train is not None:
            _link_or_copy(train, best_train)
        else:
            _remove_quietly(best_train)
        _fsync_dir(self.models_dir)
        write_json_atomic(best_json, meta, compact=_COMPACT)

    def _rotate(self, keep: int) -> None:
        """Remove episodic checkpoints beyond the ``max_keep`` newest (never ``keep``)."""
        saved = self._scan().saved()
        kept = self.retention.kept(saved, keep)
        for episode in saved:
            if episode in kept:
                continue
            pt, train, json_path = _files(self.models_dir, episode_stem(episode))
            for path in (json_path, pt, train):  # JSON first: the checkpoint stops counting
                _remove_quietly(path)
            log.debug("rotated out %s", pt.name)

    # -- the metric --------------------------------------------------------------------------
    def _metric_of(self, metadata: Mapping[str, Any]) -> float:
        return self.retention.metric_of(metadata)

    def _better(self, value: float, than: float) -> bool:
        return self.retention.better(value, than)

    def _best_record(self) -> tuple[str, dict[str, Any] | None]:
        """Read ``best_model.json`` (unverified): ``ok``, ``other`` (another metric or mode),
        ``missing`` or ``bad``, with its content when it parses."""
        try:
            meta = read_json(self.models_dir / f"{BEST}.json")
        except FileNotFoundError:
            return "missing", None
        except (OSError, ValueError):
            return "bad", None
        if meta.get("metric_name") != self.metric_name or meta.get("mode", "max") != self.mode:
            return "other", meta
        value = meta.get("metric_value")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            return "bad", None  # NaN or an infinity (no episode can beat it): rebuilt
        return "ok", meta

    def _current_best_value(self) -> float | None:
        """The best value so far, for a save to compare with.

        When ``best_model.json`` is missing, damaged or ranks by another metric, the best is
        first rebuilt from the valid checkpoints on disk, so a save never takes a worse
        checkpoint for the best.
        """
        status, meta = self._best_record()
        if status == "ok" and meta is not None:
            return float(meta["metric_value"])
        if status == "bad":
            self._set_aside(
                BEST,
                _VerifyError(
                    self.models_dir / f"{BEST}.json", "unreadable JSON or no finite metric_value"
                ),
            )
        elif status == "other" and meta is not None:
            log.warning(
                "%s ranks by %s (%s); rebuilding it for %s (%s)",
                self.models_dir / f"{BEST}.json",
                meta.get("metric_name"),
                meta.get("mode", "max"),
                self.metric_name,
                self.mode,
            )
        info = self._rebuild_best(writable=True)
        return None if info is None else info.metric_value

    # -- finding -----------------------------------------------------------------------------
    def _scan(self) -> Listing:
        """One listing of ``models/`` (names only)."""
        return Listing(frozenset(os.listdir(self.models_dir)))

    def _writable(self) -> bool:
        """Whether this process may repair the directory: no other process holds the run lock."""
        run_dir = self.models_dir.parent
        try:
            if run_dir.resolve() in _held_locks:
                return True
        except OSError:
            return False
        return not RunLock.is_locked(run_dir)

    def latest(self, *, resumable: bool = False) -> CheckpointInfo | None:
        """The newest valid episodic checkpoint, or None.

        One directory listing; candidates newest first; the first whose JSON parses, whose files
        match their SHA-256 and which loads safely wins (only it is read). Invalid ones are
        renamed aside (``*.corrupt``) with a warning naming the file and the reason; temporary
        files and model files without a JSON (unfinished saves) are removed. While another
        process holds the run lock nothing is renamed or removed: invalid ones are skipped.
        With ``resumable``, a valid checkpoint without a companion (training state) is skipped
        with a warning and left in place: training cannot continue from it exactly.
        """
        with self._mutex:
            writable = self._writable()
            if writable:
                self._finish_archive()
            listing = self._scan()
            if writable:
                self._clean_unfinished(listing)
            for episode in self._newest_first(listing):
                info = self._verified(episode_stem(episode), episode, writable)
                if info is not None and resumable and info.training_path is None:
                    log.warning(
                        "%s: records no training state (sha256.training is null), so training "
                        "cannot resume from it; skipped, left in place",
                        info.json_path,
                    )
                    continue
                if info is not None:
                    if writable and self.save_best:
                        self._complete_best(info)
                    return info
            return None

    def check_format(self) -> None:
        """Refuse a ``models/`` directory holding checkpoints of a newer FinSense.

        Their ``format_version`` is above :data:`FORMAT_VERSION`: this version cannot read them
        and must never overwrite them (a save of the same episode, a rotation or a rebuilt best
        would). Reads only the JSON files; changes nothing.

        Raises:
            CheckpointError: one names the first such file and what to do.
        """
        names = sorted(n for n in self._scan().names if n.endswith(".json") and n[0] != ".")
        for name in names:
            try:
                version = read_json(self.models_dir / name).get("format_version")
            except (OSError, ValueError):
                continue  # damage is for latest()/best() to deal with
            if type(version) is int and version > FORMAT_VERSION:
                raise CheckpointError(
                    f"{self.models_dir / name}: written by a newer FinSense (format_version "
                    f"{version} > {FORMAT_VERSION}); upgrade FinSense to continue this run, "
                    "or train in another run directory (name=NEW)"
                )

    def all_episodes(self) -> list[int]:
        """Episodes of the episodic checkpoints on disk (model file and JSON present), ascending.

        From one listing; nothing is read or verified.
        """
        listing = self._scan()
        return sorted(e for e in listing.saved() if listing.has(episode_stem(e), "pt"))

    def best(self) -> CheckpointInfo | None:
        """The verified best checkpoint (``best_model.pt``), or None when there is none.

        A damaged ``best_model.*`` is set aside and one left without its JSON by an update cut
        short is removed; the best is then rebuilt from the valid episodic checkpoints on disk.
        """
        with self._mutex:
            writable = self._writable()
            if writable:
                self._finish_archive()
            present = self._scan().best()
            if "json" in present:
                info = self._verified(BEST, None, writable)
                if info is not None:
                    return info
            elif not present:
                return None
            elif writable:
                for kind in present:
                    log.warning(
                        "%s: no %s.json beside it (an unfinished update); removed",
                        self.models_dir / f"{BEST}.{kind}",
                        BEST,
                    )
                    _remove_quietly(self.models_dir / f"{BEST}.{kind}")
            return self._rebuild_best(writable)

    def best_value(self) -> float | None:
        """The best ``metric_name`` value so far (from ``best_model.json``), or None.

        When that file is missing or damaged, falls back to :meth:`best` (which rebuilds it); None
        when it ranks by another metric or mode.
        """
        with self._mutex:
            status, meta = self._best_record()
            if status == "ok" and meta is not None:
                return float(meta["metric_value"])
            if status == "other":
                return None
            info = self.best()
            if info is None or info.metadata.get("metric_name") != self.metric_name:
                return None
            value = info.metric_value
            return None if math.isnan(value) else value

    def _clean_unfinished(self, listing: Listing) -> None:
        """Remove temporary files and episodic files without their JSON (a save cut short)."""
        for name in listing.temporary():
            log.info("%s: temporary file of an unfinished write; removed", self.models_dir / name)
            _remove_quietly(self.models_dir / name)
        for name in listing.unfinished():
            log.warning(
                "%s: no %s.json beside it (an unfinished save); removed",
                self.models_dir / name,
                _stem(Path(name)),
            )
            _remove_quietly(self.models_dir / name)

    def _newest_first(self, listing: Listing) -> Iterator[int]:
        """The saved episodes of ``listing``, newest first, for :meth:`latest` to try in turn.

        A candidate whose JSON is gone once it has been tried was rotated away or set aside
        meanwhile (a running trainer saves on): ``models/`` is then listed again and the
        episodes not tried yet come next, the now-newest first (a few times at most).
        """
        tried: set[int] = set()
        for relisted in range(_READ_ATTEMPTS):
            for episode in listing.saved():
                if episode in tried:
                    continue
                tried.add(episode)
                yield episode
                gone = not os.path.lexists(self.models_dir / f"{episode_stem(episode)}.json")
                if gone and relisted + 1 < _READ_ATTEMPTS:
                    break
            else:
                return
            listing = self._scan()

    def _verified(
        self, stem: str, episode: int | None, writable: bool, *, set_aside: bool = True
    ) -> CheckpointInfo | None:
        """Verify checkpoint ``stem`` in full; if invalid, set it aside (when allowed): None.

        Only a failure on files that stayed the same while they were read is damage. A failure
        that a concurrent commit explains (a stat key of the three files changed, or the JSON is
        gone: a running trainer saved the episode again, rotated it away or relinked
        ``best_model.*``) is never set aside: the files are read again, up to ``_READ_ATTEMPTS``
        times in all; a checkpoint whose JSON and model file are both gone was rotated away and
        is skipped at once.
        """
        pt, _, json_path = _files(self.models_dir, stem)
        for attempt in range(_READ_ATTEMPTS):
            keys = _file_keys(pt)
            try:
                meta = self._read_meta(json_path, episode)
                state, training = self._read_verified(pt, meta, with_training=True)
            except _VerifyError as bad:
                now = _file_keys(pt)
                if now == keys and now[2] is not None:  # stable files: the damage is on disk
                    if writable and set_aside and bad.set_aside:
                        self._set_aside(stem, bad)
                    else:
                        log.warning("%s: %s; skipped", bad.path, bad.reason)
                    return None
                if now[0] is None and now[2] is None:
                    log.info("%s: removed while being read (rotated away); skipped", pt)
                    return None
                if attempt + 1 == _READ_ATTEMPTS:
                    log.warning(
                        "%s: %s while another process was rewriting it; skipped, left in place",
                        bad.path,
                        bad.reason,
                    )
                    return None
                time.sleep(_READ_BACKOFF_S * 2**attempt)
                continue
            found = meta.get("episode")
            number = found if isinstance(found, int) and not isinstance(found, bool) else -1
            # The keys from before the read: load() reuses this state only while they hold.
            self._loaded = _Loaded(pt, keys, state, training, meta)
            return CheckpointInfo(number, pt, meta)
        return None  # not reached: the last attempt returns above

    def _set_aside(self, stem: str, bad: _VerifyError) -> None:
        """Rename every file of checkpoint ``stem`` to ``<name>.corrupt[.K]`` (never deletes);
        a damaged chunk too, so that no later save lists it again."""
        moved = [_rename_aside(path) for path in _files(self.models_dir, stem)]
        if bad.path.parent == self.models_dir / CHUNKS_DIR:
            moved.append(_rename_aside(bad.path))
        shown = ", ".join(name for name in moved if name) or "nothing"
        log.warning("%s: %s; set aside as %s", bad.path, bad.reason, shown)

    def _rebuild_best(self, writable: bool) -> CheckpointInfo | None:
        """Make the best valid episodic checkpoint on disk the best model; return it (or None).

        Read-only (``writable`` false): return that episodic checkpoint without linking it.
        """
        if not self.save_best:
            return None
        candidates: list[tuple[float, int]] = []
        listing = self._scan()
        for episode in listing.saved():
            if listing.has(episode_stem(episode), "pt"):
                json_path = self.models_dir / f"{episode_stem(episode)}.json"
                try:
                    value = self._metric_of(read_json(json_path))
                except (OSError, ValueError, ConfigError):
                    continue
                if math.isfinite(value):
                    candidates.append((value, episode))
        candidates.sort(key=lambda c: self.retention.ranking_key(*c), reverse=True)
        for value, episode in candidates:
            # Invalid ones are left where they are: latest() sets them aside, newest first.
            info = self._verified(episode_stem(episode), episode, writable, set_aside=False)
            if info is None:
                continue
            if not writable:
                return info
            meta = dict(info.metadata)
            meta.update(metric_name=self.metric_name, metric_value=value, mode=self.mode)
            try:
                self._write_best(info.path, info.training_path, meta)
            except OSError as exc:
                log.warning("%s: cannot rebuild the best model (%s)", info.path, _reason(exc))
                return info
            log.warning(
                "best model rebuilt from %s (%s=%s)", info.path.name, self.metric_name, value
            )
            return CheckpointInfo(episode, self.models_dir / f"{BEST}.pt", meta)
        return None

    def _complete_best(self, latest: CheckpointInfo) -> None:
        """Finish a best update cut short: ``latest`` says it is the best but best_model lags."""
        if not latest.metadata.get("is_best") or latest.metadata.get("metric_name") != (
            self.metric_name
        ):
            return
        status, meta = self._best_record()
        if status != "ok" or meta is None or meta.get("episode") == latest.episode:
            return
        if not self._better(latest.metric_value, float(meta["metric_value"])):
            return
        try:
            self._write_best(latest.path, latest.training_path, dict(latest.metadata))
        except OSError as exc:
            log.warning("%s: cannot update the best model (%s)", latest.path, _reason(exc))
            return
        log.warning("best model updated to %s (an update was cut short)", latest.path.name)

    # -- reading -----------------------------------------------------------------------------
    @staticmethod
    def _read_meta(json_path: Path, episode: int | None) -> dict[str, Any]:
        try:
            meta = read_json(json_path)
        except FileNotFoundError:
            raise _VerifyError(json_path, "missing JSON") from None
        except ValueError as exc:
            raise _VerifyError(json_path, f"unreadable JSON ({_one_line(exc)})") from None
        except OSError as exc:
            raise _VerifyError(
                json_path, f"cannot read ({_reason(exc)})", set_aside=False
            ) from None
        version = meta.get("format_version")
        sums = meta.get("sha256")
        if (
            isinstance(version, bool)
            or not isinstance(version, int)
            or not isinstance(sums, dict)
            or not isinstance(sums.get("model"), str)
        ):
            raise _VerifyError(
                json_path, "not a FinSense checkpoint JSON (no format_version or sha256)"
            )
        if version > FORMAT_VERSION:
            raise _VerifyError(
                json_path,
                f"written by a newer FinSense (format_version {version} > {FORMAT_VERSION}); "
                "upgrade FinSense to read it",
                set_aside=False,
            )
        if episode is not None and meta.get("episode") != episode:
            raise _VerifyError(
                json_path, f"episode mismatch (the JSON says {meta.get('episode')!r})"
            )
        return meta

    @staticmethod
    def _read_sized(path: Path, size: Any, what: str) -> bytes:
        """The bytes of ``path``, checked against the recorded size when there is one."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise _VerifyError(path, f"missing {what}") from None
        except OSError as exc:
            raise _VerifyError(path, f"cannot read ({_reason(exc)})", set_aside=False) from None
        if isinstance(size, int) and len(data) != size:
            if len(data) < size:
                raise _VerifyError(path, f"truncated ({len(data)} of {size} bytes)")
            raise _VerifyError(path, f"size mismatch ({len(data)} bytes, expected {size})")
        return data

    def _safe_load(self, data: bytes, path: Path) -> dict[str, Any]:
        try:
            obj = _deserialise(data, self.map_location)
        except Exception as exc:  # untrusted bytes: torch raises many types; none is a bug here
            raise _VerifyError(
                path, f"not a FinSense checkpoint or unsafe to load ({_one_line(exc)})"
            ) from None
        if not isinstance(obj, dict):
            raise _VerifyError(path, f"not a FinSense checkpoint (holds a {type(obj).__name__})")
        return obj

    def _read_verified(
        self, pt: Path, meta: Mapping[str, Any] | None, *, with_training: bool
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Read ``pt`` (and its companion), check them against ``meta``, load them safely.

        A file's SHA-256 is computed while ``torch.load(weights_only=True)`` parses the same
        bytes (that loader is built for untrusted input); nothing is returned unless both pass,
        and a checksum mismatch is reported before any load error.
        """
        sums = meta.get("sha256") if meta else None
        sizes = meta.get("size_bytes") if meta else None
        sums = sums if isinstance(sums, dict) else {}
        sizes = sizes if isinstance(sizes, dict) else {}
        train = _files(pt.parent, _stem(pt))[1]
        wanted = [(pt, sums.get("model"), sizes.get("model"), "model file")]
        if with_training and sums.get("training"):
            wanted.append(
                (train, sums["training"], sizes.get("training"), f"companion {train.name}")
            )
        elif with_training and not sums and train.exists():
            wanted.append((train, None, None, "companion"))
        loaded: list[dict[str, Any]] = []
        for path, sha, size, what in wanted:
            data = self._read_sized(path, size, what)
            digest = _Digest(data) if isinstance(sha, str) else None
            failure: _VerifyError | None = None
            try:
                loaded.append(self._safe_load(data, path))
            except _VerifyError as error:
                failure = error
            if digest is not None and digest.hexdigest() != sha:
                raise _VerifyError(path, "checksum mismatch")
            if failure is not None:
                raise failure
        training = loaded[1] if len(loaded) > 1 else None
        if training is not None and meta and "chunked" in meta:
            training = self._with_chunks(training, meta, pt)
        return loaded[0], training

    def _with_chunks(
        self, training: dict[str, Any], meta: Mapping[str, Any], pt: Path
    ) -> dict[str, Any]:
        """``training`` with its placeholders replaced by the verified chunked tensors."""
        manifest = meta["chunked"]
        json_path = _files(pt.parent, _stem(pt))[2]
        try:
            if not isinstance(manifest, list):
                raise ValueError("'chunked' is not a list")
            tensors = read_chunked(manifest, pt.parent)
            training = substitute(training, tensors)
        except ChunkError as bad:
            raise _VerifyError(bad.path, bad.reason, set_aside=bad.damaged) from None
        except ValueError as exc:
            raise _VerifyError(json_path, f"malformed chunk manifest ({exc})") from None
        if pt.parent == self.models_dir:
            # What these chunks hold is known now: a save of the same rows reuses them unread.
            self._chunk_cache = {entry["key"]: entry for entry in manifest}
        return training

    def load(
        self, checkpoint: CheckpointInfo | str | Path, *, with_training_state: bool = True
    ) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
        """Read a checkpoint safely: ``(state, training_state or None, metadata)``.

        ``checkpoint`` is a :class:`CheckpointInfo` from this manager or a path to a ``.pt``
        anywhere (its ``.train.pt`` and ``.json`` are looked for beside it). When a JSON is
        there the files are checked against its SHA-256; a file without one is loaded
        unverified (its metadata is then ``{}``). Always ``torch.load(weights_only=True)``.

        The state always matches the metadata returned, even while a running trainer rewrites
        the files: a :class:`CheckpointInfo` just returned by :meth:`latest` or :meth:`best` of
        this manager comes with the files that call verified (no second read); otherwise a read
        that fails while the files change under it is tried again with the new ones (see
        :meth:`_verified`), and only a failure on files that stayed the same is damage.

        Raises:
            CheckpointError: the file is missing, damaged, or needs pickled code to load
                ("not a FinSense checkpoint or unsafe to load"), or a running trainer removed it
                or kept rewriting it while it was read ("...; run again").
        """
        chosen = isinstance(checkpoint, CheckpointInfo)
        if isinstance(checkpoint, CheckpointInfo):
            pt = checkpoint.path
        else:
            path = Path(checkpoint).expanduser()
            named = path.name.endswith((".json", ".train.pt"))
            pt = _files(path.parent, _stem(path))[0] if named else path
        with self._mutex:
            cached, self._loaded = self._loaded, None
        if (
            isinstance(checkpoint, CheckpointInfo)
            and cached is not None
            and cached.path == pt
            and cached.metadata is checkpoint.metadata
        ):
            # The very bytes verified against this metadata: still the checkpoint the caller
            # chose after the trainer has rotated it away or relinked best_model.* since.
            training = cached.training if with_training_state else None
            return cached.state, training, checkpoint.metadata
        raced = False
        for attempt in range(_READ_ATTEMPTS):
            before = _file_keys(pt)
            try:
                state, training, meta = self._load_files(
                    pt, checkpoint, cached, with_training=with_training_state
                )
                return state, training if with_training_state else None, meta
            except _VerifyError as bad:
                now = _file_keys(pt)
                if now[0] is None and now[2] is None and (raced or chosen):
                    raise CheckpointError(
                        f"{pt}: removed while being loaded (a running trainer keeps only the "
                        "newest checkpoints.max_keep); run again"
                    ) from None
                # A chosen checkpoint whose JSON is gone but whose model file is there is in
                # the middle of a save or best update: worth another look, as is any change.
                changed = now != before
                if changed or (chosen and now[2] is None and now[0] is not None):
                    raced = raced or changed
                    if attempt + 1 < _READ_ATTEMPTS:
                        time.sleep(_READ_BACKOFF_S * 2**attempt)
                        continue
                if changed:
                    raise CheckpointError(
                        f"{bad.path}: {bad.reason}; it kept changing while being read "
                        "(is a trainer writing this run?); run again"
                    ) from None
                raise CheckpointError(f"{bad.path}: {bad.reason}") from None
        raise AssertionError("not reached: the last attempt returns or raises")

    def _load_files(
        self,
        pt: Path,
        checkpoint: CheckpointInfo | str | Path,
        cached: _Loaded | None,
        *,
        with_training: bool,
    ) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
        """One attempt of :meth:`load`: the JSON, then the files it describes.

        Raises:
            _VerifyError: a file is missing, unreadable or does not match the JSON.
        """
        json_path = _files(pt.parent, _stem(pt))[2]
        if not pt.is_file():
            raise _VerifyError(pt, "no such checkpoint file")
        meta: dict[str, Any] | None = None
        try:
            meta = read_json(json_path)
        except FileNotFoundError:
            if isinstance(checkpoint, CheckpointInfo):
                meta = checkpoint.metadata
            else:
                log.info("%s: no %s beside it; loaded without verification", pt, json_path.name)
        except (OSError, ValueError) as exc:
            raise _VerifyError(
                json_path, f"unreadable ({_one_line(exc)}); the checkpoint cannot be verified"
            ) from None
        # Taken after the JSON was read: equal keys mean the cached state is of these files.
        if cached is not None and cached.path == pt and cached.keys == _file_keys(pt):
            state, training = cached.state, cached.training
        else:
            state, training = self._read_verified(pt, meta, with_training=with_training)
        return state, training, meta or {}

    # -- history -----------------------------------------------------------------------------
    def archive(
        self,
        after: int | None = None,
        *,
        move: tuple[Path, ...] = (),
        copy: tuple[Path, ...] = (),
    ) -> Path | None:
        """Move files of ``models/`` into ``models/archive/<UTC time>/`` (nothing is deleted):
        see :func:`finsense.checkpoint.history.archive`.

        Raises:
            CheckpointError: a file could not be moved (the journal finishes the move later).
        """
        with self._mutex:
            self._loaded = None
            self._chunk_cache = {}  # a new future starts: only a load may vouch for chunks now
            return history.archive(self.models_dir, after, move=move, copy=copy)

    def _finish_archive(self, *, quiet: bool = False) -> None:
        history.finish_archive(self.models_dir, quiet=quiet)
