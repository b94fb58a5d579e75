"""Checkpoints mirrored to object storage: ``checkpoints.remote=URL`` (any fsspec URL).

The local run directory stays the working copy. After every commit of the local store the run's
``models/`` is mirrored to ``URL/<run directory name>/models/`` with the store's own commit rule:
chunks first, then the model file and its companion, the JSON last (each one object, written
whole), so a reader of the remote side never sees a half checkpoint. Rotation, the best model and
chunk collection follow on the remote side (:func:`upload`). A corrupt remote object is set aside
there (``<name>.corrupt``), never deleted.

On start a run whose local directory has no valid checkpoint newer than the remote's pulls the
newest valid remote one (:func:`pull`): every file is checked against its SHA-256 before it lands
locally, and the local store then loads it with ``weights_only`` as any other.

Uploads run in a background thread (:class:`Mirror`): the trainer waits for the previous one only
before its next save, at an interrupt and at the end. A failed upload is one warning; training goes
on and the next upload catches up, since each one makes the remote match the local committed state.

Nothing here imports torch (``finsense.status URL`` lists remote runs through it); ``fsspec`` and
the back-end of the URL (``s3fs``, ``gcsfs``: the ``finsense[s3]`` / ``finsense[gcs]`` extras) are
imported when a remote is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finsense.checkpoint.durable import _one_line, _remove_quietly, write_bytes_atomic
from finsense.checkpoint.layout import (
    ARCHIVE_DIR,
    BEST,
    CHUNKS_DIR,
    FORMAT_VERSION,
    Listing,
    _files,
    episode_stem,
    is_chunk_name,
    stored_sizes,
)
from finsense.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

#: The extra that brings each protocol's fsspec back-end.
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
#: Files of the run directory (beside ``models/``) mirrored after each upload, for ``status``.
RUN_FILES = ("metrics.csv",)


@contextlib.contextmanager
def keeping_random_state() -> Iterator[None]:
    """Put Python's global ``random`` state back as it was after the block.

    That state is part of the training state the agent saves, and FinSense draws nothing from it
    while training; the remote back-ends may (modules that draw at import, aiohttp when requests
    queue for a connection, botocore's retry jitter), so remote work that runs while no upload
    is in progress is wrapped in this.
    """
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


def is_url(text: str) -> bool:
    """Whether ``text`` is a URL (``s3://...``, ``file:///...``) rather than a local path."""
    return "://" in text


class RemoteModels:
    """One run's ``models/`` on a remote file system: names, objects, set-asides.

    Args:
        url: the ``checkpoints.remote`` URL (the folder holding runs).
        run_name: the run directory's name; the run's models live at ``URL/<run_name>/models``.
        fs: the fsspec file system of ``url`` (opened by :func:`open_remote`).
        root: ``url`` without its protocol, as ``fs`` spells paths.
    """

    def __init__(self, url: str, run_name: str, fs: Any, root: str) -> None:
        self.base_url = url.rstrip("/")
        self.run_name = run_name
        self.fs = fs
        self.run_path = f"{root.rstrip('/')}/{run_name}"
        self.path = f"{self.run_path}/models"
        self.url = f"{self.base_url}/{run_name}/models"
        #: Local file systems get the durable local writer (temporary name, fsync, rename);
        #: object stores write each object whole anyway.
        self.local = "file" in _protocols(fs)
        #: Concurrent requests of a batch: fewer than the HTTP client's connections (10 for
        #: s3fs), since aiohttp draws from Python's global ``random`` when requests queue for a
        #: connection, and the trainer saves that state: uploading must not change it.
        self._batch = {"batch_size": 8} if getattr(fs, "async_impl", False) else {}

    def __repr__(self) -> str:
        return f"RemoteModels({self.url!r})"

    def display(self, name: str) -> str:
        """The URL of ``name`` (``s3://bucket/prefix/run/models/model_ep10.pt``)."""
        return f"{self.url}/{name}"

    # -- listing -----------------------------------------------------------------------------
    def _names(self, path: str) -> frozenset[str]:
        """File names directly in ``path`` (none when it does not exist)."""
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return frozenset()
        return frozenset(
            str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
            for e in entries
            if e.get("type") == "file"
        )

    def listing(self) -> Listing:
        """The files of the remote ``models/`` (one listing; nothing is read)."""
        return Listing(self._names(self.path))

    def chunk_names(self) -> set[str]:
        """The chunks stored remotely (``models/chunks/<sha256>``)."""
        return {n for n in self._names(f"{self.path}/{CHUNKS_DIR}") if is_chunk_name(n)}

    # -- objects -----------------------------------------------------------------------------
    def read(self, name: str) -> bytes:
        """The bytes of ``models/<name>``.

        Raises:
            FileNotFoundError: there is no such object.
        """
        return bytes(self.fs.cat_file(f"{self.path}/{name}"))

    def read_many(self, names: list[str]) -> dict[str, bytes | BaseException]:
        """The bytes of several objects of ``models/`` (concurrently where the back-end can);
        an object that cannot be read maps to its exception."""
        if not names:
            return {}
        paths = [f"{self.path}/{n}" for n in names]
        got = self.fs.cat(paths, on_error="return", **self._batch)
        if not isinstance(got, dict):  # one path: fsspec returns its bytes
            got = {paths[0]: got}
        return {n: _bytes_or_error(got.get(p)) for n, p in zip(names, paths, strict=True)}

    def write(self, name: str, data: bytes | memoryview) -> None:
        """Write ``models/<name>`` whole (the old object stays visible until the new one is)."""
        self._write_path(f"{self.path}/{name}", data)

    def write_many(self, items: Mapping[str, bytes | memoryview]) -> None:
        """Write several objects of ``models/`` (concurrently where the back-end can)."""
        if not items:
            return
        if self.local:
            for name, data in items.items():
                self.write(name, data)
            return
        self.fs.pipe({f"{self.path}/{n}": bytes(d) for n, d in items.items()}, **self._batch)

    def write_run_file(self, name: str, data: bytes) -> None:
        """Write ``<run>/<name>`` (beside ``models/``): ``metrics.csv``."""
        self._write_path(f"{self.run_path}/{name}", data)

    def read_run_file(self, name: str) -> bytes | None:
        """``<run>/<name>``, or None when it is not there."""
        try:
            return bytes(self.fs.cat_file(f"{self.run_path}/{name}"))
        except FileNotFoundError:
            return None

    def _write_path(self, path: str, data: bytes | memoryview) -> None:
        if self.local:
            local = Path(path)
            local.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(local, bytes(data))
        else:
            self.fs.pipe_file(path, bytes(data))

    def remove(self, name: str) -> None:
        """Remove ``models/<name>`` (nothing when it is already gone)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(f"{self.path}/{name}")

    def remove_many(self, names: list[str]) -> None:
        """Remove several objects of ``models/`` (one request for up to 1,000 on S3), in
        order where the back-end removes one at a time; missing ones are skipped."""
        if self.local or len(names) == 1:
            for name in names:
                self.remove(name)
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm([f"{self.path}/{n}" for n in names])

    def move(self, name: str, to: str) -> None:
        """Rename ``models/<name>`` to ``models/<to>`` (a copy, then a delete, on object stores)."""
        if self.local:
            target = Path(self.path) / to
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(self.path) / name, target)
        else:
            self.fs.mv(f"{self.path}/{name}", f"{self.path}/{to}")

    def copy(self, name: str, to: str) -> None:
        """Copy ``models/<name>`` to ``models/<to>``."""
        if self.local:
            self.write(to, self.read(name))
        else:
            self.fs.copy(f"{self.path}/{name}", f"{self.path}/{to}")

    def set_aside(self, names: Iterable[str], present: Iterable[str], reason: str) -> None:
        """Rename the objects ``names`` that are ``present`` to ``<name>.corrupt[.K]``, with one
        warning naming them and ``reason`` (never deletes)."""
        taken = set(present)
        moved: list[str] = []
        for name in names:
            if name not in taken:
                continue
            target, n = f"{name}.corrupt", 0
            while target in taken:
                n += 1
                target = f"{name}.corrupt.{n}"
            try:
                self.move(name, target)
            except (OSError, ValueError) as exc:
                log.warning("%s: cannot set aside (%s)", self.display(name), _one_line(exc))
                continue
            taken.add(target)
            moved.append(target)
        log.warning(
            "%s: %s; set aside remotely as %s",
            self.url,
            reason,
            ", ".join(moved) or "nothing",
        )


def _bytes_or_error(value: Any) -> bytes | BaseException:
    if isinstance(value, BaseException):
        return value
    if value is None:
        return FileNotFoundError("missing")
    return bytes(value)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = getattr(fs, "protocol", ())
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _filesystem(url: str, what: str) -> tuple[Any, str]:
    """fsspec's file system and path of ``url``.

    Raises:
        ConfigError: an unknown protocol, or its back-end is not installed (names the extra).
    """
    try:
        import fsspec.core
    except ImportError:  # pragma: no cover - fsspec is a dependency
        raise ConfigError(f"{what}={url}: needs fsspec (pip install fsspec)") from None
    protocol = url.split("://", 1)[0] if is_url(url) else "file"
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except ImportError:
        extra = _EXTRAS.get(protocol)
        fix = f"pip install 'finsense[{extra}]'" if extra else "install its fsspec back-end"
        raise ConfigError(f"{what}={url}: {protocol}:// needs an extra package: {fix}") from None
    except ValueError as exc:
        raise ConfigError(f"{what}={url}: not a usable URL ({_one_line(exc)})") from None
    return fs, str(root)


def open_remote(url: str, run_name: str, *, what: str = "checkpoints.remote") -> RemoteModels:
    """The remote ``models/`` of run ``run_name`` under ``url``, checked to be reachable.

    On a local file system (``file://``, a mounted disk) the folder is created; elsewhere the
    bucket (the URL's first path component) must exist and be listable with the credentials at
    hand (the back-end's standard ones: ``AWS_*`` variables, ``~/.aws``, ``GOOGLE_APPLICATION_
    CREDENTIALS``, ...).

    Raises:
        ConfigError: the URL cannot be used (unknown protocol, missing extra).
        CheckpointError: the remote cannot be reached or the bucket does not exist; one line.
    """
    fs, root = _filesystem(url, what)
    remote = RemoteModels(url, run_name, fs, root)
    if not remote.local:
        _quiet_dropped_connections()
    try:
        if remote.local:
            Path(remote.path).mkdir(parents=True, exist_ok=True)
        else:
            top = root.strip("/").split("/", 1)[0]
            fs.invalidate_cache(top)
            fs.ls(top, detail=False)
    except FileNotFoundError:
        raise CheckpointError(
            f"{what}={url}: {root.strip('/').split('/', 1)[0]} does not exist; create the "
            f"bucket first, or set {what}=null to train without a remote copy"
        ) from None
    except Exception as exc:  # back-ends raise many types (botocore, aiohttp, auth): all one line
        raise CheckpointError(
            f"{what}={url}: cannot reach the remote ({_one_line(exc)}); check the URL, the "
            f"network and the credentials, or set {what}=null to train without a remote copy"
        ) from None
    return remote


class _DroppedConnectionFilter(logging.Filter):
    """Moves asyncio's report of an HTTP request task that died with its connection to debug.

    When a server goes away mid-upload, aiohttp's task writing the request body ends with a
    connection error that nothing retrieves, and asyncio logs it as an ERROR with a traceback
    ("Task exception was never retrieved", a known aiohttp behaviour). The upload itself fails
    and is reported as one warning line and retried, so the traceback would only be noise in the
    user's console; it is kept in the debug log instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not record.getMessage().startswith("Task exception was never retrieved"):
            return True
        if isinstance(exc, OSError) or type(exc).__module__.startswith("aiohttp"):
            log.debug("a request task died with its connection: %s", _one_line(exc))
            return False
        return True


_DROPPED_CONNECTIONS = _DroppedConnectionFilter()


def _quiet_dropped_connections() -> None:
    """Install :class:`_DroppedConnectionFilter` on asyncio's logger (once)."""
    logger = logging.getLogger("asyncio")
    if _DROPPED_CONNECTIONS not in logger.filters:
        logger.addFilter(_DROPPED_CONNECTIONS)


# -- checking what is read -------------------------------------------------------------------
class _DamagedError(Exception):
    """A remote checkpoint failed verification: ``name`` is the object at fault."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class _UnusableError(Exception):
    """A remote checkpoint that is not damaged but cannot be used (a newer format)."""


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _chunk_rows(meta: Mapping[str, Any]) -> dict[str, int]:
    """The chunk digests a checkpoint's JSON lists, with the sizes of their files."""
    return stored_sizes(meta)


def _parse_meta(data: bytes, name: str, episode: int | None) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _DamagedError(name, f"unreadable JSON ({_one_line(exc)})") from None
    if not isinstance(meta, dict):
        raise _DamagedError(name, "not a FinSense checkpoint JSON")
    version, sums = meta.get("format_version"), meta.get("sha256")
    if (
        type(version) is not int
        or not isinstance(sums, dict)
        or not isinstance(sums.get("model"), str)
    ):
        raise _DamagedError(name, "not a FinSense checkpoint JSON (no format_version or sha256)")
    if version > FORMAT_VERSION:
        raise _UnusableError(
            f"{name}: written by a newer FinSense (format_version {version} > "
            f"{FORMAT_VERSION}); upgrade FinSense to read it"
        )
    if episode is not None and meta.get("episode") != episode:
        raise _DamagedError(name, f"episode mismatch (the JSON says {meta.get('episode')!r})")
    return meta


def _check(data: bytes, name: str, sha: Any, size: Any) -> None:
    if isinstance(size, int) and len(data) != size:
        raise _DamagedError(name, f"size mismatch ({len(data)} bytes, expected {size})")
    if not isinstance(sha, str) or _sha256(data) != sha:
        raise _DamagedError(name, "checksum mismatch")


# -- uploading -------------------------------------------------------------------------------
@dataclass
class UploadReport:
    """What one :func:`upload` wrote and removed on the remote side."""

    objects: int = 0
    bytes: int = 0
    removed: int = 0


class _ChangedError(Exception):
    """A local file changed while it was uploaded (the next upload tries again)."""


def _local_checkpoints(models_dir: Path) -> list[tuple[str, bytes, dict[str, Any]]]:
    """The committed local checkpoints, newest first then the best: (stem, JSON bytes, meta)."""
    listing = Listing(frozenset(os.listdir(models_dir)))
    stems = [episode_stem(e) for e in listing.saved() if listing.has(episode_stem(e), "pt")]
    if listing.has(BEST, "json") and listing.has(BEST, "pt"):
        stems.append(BEST)
    found = []
    for stem in stems:
        try:
            data = (models_dir / f"{stem}.json").read_bytes()
            meta = json.loads(data.decode("utf-8"))
        except FileNotFoundError:
            continue  # rotated away meanwhile
        except (OSError, UnicodeDecodeError, ValueError):
            continue  # damaged: the local store sets it aside; nothing to mirror
        if isinstance(meta, dict):
            found.append((stem, data, meta))
    return found


@dataclass
class RemoteView:
    """What the remote ``models/`` holds, as far as this process knows: filled by a listing,
    kept up to date by the uploads of the one writer, and dropped after a failure (the next
    upload lists again), so an upload that changes little costs few requests."""

    names: set[str] | None = None  #: the files of ``models/``
    chunks: set[str] | None = None  #: the chunks of ``models/chunks/``
    json_sha256: dict[str, str] = field(default_factory=dict)  #: stem -> SHA-256 of its JSON

    def clear(self) -> None:
        """Forget everything (after a failure)."""
        self.names = self.chunks = None
        self.json_sha256.clear()


def upload(models_dir: Path, remote: RemoteModels, view: RemoteView | None = None) -> UploadReport:
    """Make the remote ``models/`` hold the local committed checkpoints, and only them.

    ``metrics.csv`` beside ``models/`` goes first. Then for each local checkpoint (newest first,
    then ``best_model``) whose JSON the remote does not hold as it is: its chunks missing
    remotely, then its model file and companion, then its JSON (an older remote JSON of the same
    name is removed first, so it stops counting before its files change). Every local file is
    checked against its SHA-256 as it is read. Then remote episodic checkpoints the local store
    no longer keeps are removed (their JSONs first), and chunks no remote checkpoint lists.

    ``view`` is what the remote is known to hold (see :class:`RemoteView`); updated here.

    Raises:
        OSError and the back-end's errors: the remote failed (what was written stays
        consistent: a checkpoint counts only once its JSON is there); _ChangedError: a local file
        changed meanwhile.
    """
    view = RemoteView() if view is None else view
    report = UploadReport()
    # First the run's files: a remote metrics.csv then covers every remote checkpoint (rows
    # after the episode a run resumes from are dropped then, as on any resume).
    for name in RUN_FILES:
        try:
            data = (models_dir.parent / name).read_bytes()
        except FileNotFoundError:
            continue
        remote.write_run_file(name, data)
    local = _local_checkpoints(models_dir)
    if view.names is None:
        view.names = set(remote.listing().names)
    names = view.names
    for stem, json_bytes, meta in local:
        digest = _sha256(json_bytes)
        json_name = f"{stem}.json"
        if json_name in names and stem not in view.json_sha256:
            with contextlib.suppress(FileNotFoundError):
                view.json_sha256[stem] = _sha256(remote.read(json_name))
        if json_name in names and view.json_sha256.get(stem) == digest:
            continue
        if view.chunks is None:
            view.chunks = remote.chunk_names()
        _upload_checkpoint(models_dir, remote, stem, json_bytes, meta, view, report)
        view.json_sha256[stem] = digest
    kept = {stem for stem, _, _ in local}
    newest = max(Listing(frozenset(os.listdir(models_dir))).saved(), default=-1)
    # One newer than every local checkpoint is not this run's to rotate (a newer FinSense's,
    # or one that failed verification here): it stays.
    rotated = [
        episode_stem(e)
        for e in Listing(frozenset(names)).saved()
        if episode_stem(e) not in kept and e <= newest
    ]
    files = [[p.name for p in _files(Path(), stem) if p.name in names] for stem in rotated]
    report.removed += _remove(remote, view, [f"{stem}.json" for stem in rotated])  # JSON first
    report.removed += _remove(remote, view, [n for group in files for n in group])
    for stem in rotated:
        view.json_sha256.pop(stem, None)
    metas = [meta for _, _, meta in local]
    if BEST not in kept and f"{BEST}.json" in names:
        remote_best = read_remote_json(remote, f"{BEST}.json")
        if remote_best is None:
            return report  # what its chunks are is unknown: collect nothing this time
        metas.append(remote_best)
    report.removed += _collect(remote, view, metas)
    return report


def _remove(remote: RemoteModels, view: RemoteView, names: list[str]) -> int:
    """Remove the objects ``names`` of ``models/`` (in one request where the back-end can)."""
    present = [n for n in names if view.names is None or n in view.names or "/" in n]
    if present:
        remote.remove_many(present)
    for name in present:
        if view.names is not None:
            view.names.discard(name)
        if view.chunks is not None and name.startswith(f"{CHUNKS_DIR}/"):
            view.chunks.discard(name.split("/", 1)[1])
    return len(present)


def _upload_checkpoint(
    models_dir: Path,
    remote: RemoteModels,
    stem: str,
    json_bytes: bytes,
    meta: dict[str, Any],
    view: RemoteView,
    report: UploadReport,
) -> None:
    """One checkpoint: its missing chunks, model file, companion, then its JSON."""
    assert view.names is not None and view.chunks is not None
    missing = [d for d in _chunk_rows(meta) if d not in view.chunks]
    batch: dict[str, bytes] = {}
    for digest in missing:
        data = _read_local(models_dir / CHUNKS_DIR / digest)
        if _sha256(data) != digest:
            raise _ChangedError(f"{models_dir / CHUNKS_DIR / digest}: changed while being uploaded")
        batch[f"{CHUNKS_DIR}/{digest}"] = data
        if sum(len(b) for b in batch.values()) >= 32 << 20:  # bounded memory
            _write_batch(remote, batch, report)
    _write_batch(remote, batch, report)
    view.chunks.update(missing)
    found = meta.get("sha256")
    sums: dict[str, Any] = found if isinstance(found, dict) else {}
    pt, train, json_path = _files(models_dir, stem)
    files = [(pt, sums.get("model"))]
    if sums.get("training"):
        files.append((train, sums.get("training")))
    contents: list[tuple[str, bytes]] = []
    for path, sha in files:
        data = _read_local(path)
        if _sha256(data) != sha:
            raise _ChangedError(f"{path}: changed while being uploaded")
        contents.append((path.name, data))
    # An older copy stops counting before its files change.
    _remove(remote, view, [json_path.name])
    for name, data in contents:
        remote.write(name, data)
        view.names.add(name)
        report.objects += 1
        report.bytes += len(data)
    if not sums.get("training"):
        _remove(remote, view, [train.name])
    remote.write(json_path.name, json_bytes)
    view.names.add(json_path.name)
    report.objects += 1
    report.bytes += len(json_bytes)


def _write_batch(remote: RemoteModels, batch: dict[str, bytes], report: UploadReport) -> None:
    remote.write_many(batch)
    report.objects += len(batch)
    report.bytes += sum(len(b) for b in batch.values())
    batch.clear()


def _read_local(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _ChangedError(f"{path}: removed while being uploaded") from None


def _collect(remote: RemoteModels, view: RemoteView, metas: list[dict[str, Any]]) -> int:
    """Remove remote chunks no mirrored checkpoint lists (after the uploads: the remote set of
    checkpoints is the local one now)."""
    keep: set[str] = set()
    for meta in metas:
        keep |= set(_chunk_rows(meta))
    if view.chunks is None:
        view.chunks = remote.chunk_names()
    unused = sorted(view.chunks - keep)
    return _remove(remote, view, [f"{CHUNKS_DIR}/{digest}" for digest in unused])


# -- pulling ---------------------------------------------------------------------------------
def _fetch(
    remote: RemoteModels, stem: str, episode: int | None, listing: Listing
) -> tuple[bytes, dict[str, Any], dict[str, bytes], dict[str, bytes]]:
    """The verified objects of remote checkpoint ``stem``: JSON bytes, metadata, its files by
    local name, and its chunks by digest.

    Raises:
        _DamagedError: an object is missing or does not match the JSON.
        _UnusableError: a newer format.
    """
    json_name = f"{stem}.json"
    try:
        json_bytes = remote.read(json_name)
    except FileNotFoundError:
        raise _DamagedError(json_name, "missing JSON") from None
    meta = _parse_meta(json_bytes, json_name, episode)
    sums, sizes = meta["sha256"], meta.get("size_bytes")
    sizes = sizes if isinstance(sizes, dict) else {}
    wanted = {f"{stem}.pt": (sums.get("model"), sizes.get("model"))}
    if sums.get("training"):
        wanted[f"{stem}.train.pt"] = (sums["training"], sizes.get("training"))
    rows = _chunk_rows(meta)
    names = list(wanted) + [f"{CHUNKS_DIR}/{d}" for d in rows]
    got = remote.read_many(names)
    files: dict[str, bytes] = {}
    for name, (sha, size) in wanted.items():
        data = got[name]
        if isinstance(data, FileNotFoundError):
            raise _DamagedError(name, "missing file")
        if isinstance(data, BaseException):
            raise data
        _check(data, name, sha, size)
        files[name] = data
    chunks: dict[str, bytes] = {}
    for digest, size in rows.items():
        data = got[f"{CHUNKS_DIR}/{digest}"]
        if isinstance(data, FileNotFoundError):
            raise _DamagedError(f"{CHUNKS_DIR}/{digest}", "missing chunk")
        if isinstance(data, BaseException):
            raise data
        _check(data, f"{CHUNKS_DIR}/{digest}", digest, size if size >= 0 else None)
        chunks[digest] = data
    return json_bytes, meta, files, chunks


def _land(
    models_dir: Path,
    stem: str,
    json_bytes: bytes,
    files: dict[str, bytes],
    chunks: dict[str, bytes],
) -> None:
    """Write a fetched checkpoint into the local ``models/`` with the store's commit rule:
    chunks, model file, companion, the JSON last (each durable and atomic)."""
    chunk_dir = models_dir / CHUNKS_DIR
    if chunks:
        chunk_dir.mkdir(exist_ok=True)
    for digest, data in chunks.items():
        if not (chunk_dir / digest).exists():
            write_bytes_atomic(chunk_dir / digest, data)
    json_path = models_dir / f"{stem}.json"
    _remove_quietly(json_path)  # an older local copy stops counting before its files change
    for name, data in files.items():
        write_bytes_atomic(models_dir / name, data)
    if f"{stem}.train.pt" not in files:
        _remove_quietly(models_dir / f"{stem}.train.pt")
    write_bytes_atomic(json_path, json_bytes)


def pull(models_dir: Path, remote: RemoteModels, newer_than: int) -> int | None:
    """Copy the newest valid remote checkpoint newer than episode ``newer_than`` into the local
    ``models/`` (and the remote best model when it belongs to that history); its episode, or
    None when the remote has none.

    Remote checkpoints that fail verification are set aside remotely (``*.corrupt``) with a
    warning and the next older one is tried.

    Raises:
        CheckpointError: the remote cannot be read (one line).
    """
    try:
        listing = remote.listing()
        for episode in listing.saved():
            if episode <= newer_than:
                return None
            stem = episode_stem(episode)
            if not listing.has(stem, "pt"):
                continue
            try:
                json_bytes, _, files, chunks = _fetch(remote, stem, episode, listing)
            except _DamagedError as bad:
                damaged_chunk = (
                    bad.name.startswith(f"{CHUNKS_DIR}/") and "missing" not in bad.reason
                )
                extra = [bad.name] if damaged_chunk else []  # so that no later upload reuses it
                present = set(listing.names) | set(extra)
                names = [p.name for p in _files(Path(), stem)] + extra
                remote.set_aside(names, present, f"{bad.name}: {bad.reason}")
                listing = remote.listing()
                continue
            except _UnusableError as why:
                log.warning("%s/%s; skipped", remote.url, why)
                continue
            _land(models_dir, stem, json_bytes, files, chunks)
            _pull_best(models_dir, remote, listing, episode)
            _pull_run_files(models_dir.parent, remote)
            log.debug("pulled %s from %s", stem, remote.url)
            return episode
    except (CheckpointError, ConfigError):
        raise
    except Exception as exc:  # the back-ends' errors: the remote cannot be read now
        raise CheckpointError(
            f"checkpoints.remote: cannot read {remote.url} ({_one_line(exc)}); run again once "
            "it is reachable, or set checkpoints.remote=null to resume from the local copy only"
        ) from None
    return None


def _pull_best(models_dir: Path, remote: RemoteModels, listing: Listing, episode: int) -> None:
    """Land the remote best model too when it is of the history just pulled (its episode at or
    before ``episode``); a damaged one is set aside remotely (the local store rebuilds a best
    from the checkpoints then)."""
    if not (listing.has(BEST, "json") and listing.has(BEST, "pt")):
        return
    try:
        json_bytes, meta, files, chunks = _fetch(remote, BEST, None, listing)
    except _DamagedError as bad:
        damaged_chunk = bad.name.startswith(f"{CHUNKS_DIR}/") and "missing" not in bad.reason
        extra = [bad.name] if damaged_chunk else []
        names = [p.name for p in _files(Path(), BEST)] + extra
        remote.set_aside(names, set(listing.names) | set(extra), f"{bad.name}: {bad.reason}")
        return
    except _UnusableError as why:
        log.warning("%s/%s; skipped", remote.url, why)
        return
    best_episode = meta.get("episode")
    if type(best_episode) is int and best_episode <= episode:
        _land(models_dir, BEST, json_bytes, files, chunks)


def _pull_run_files(run_dir: Path, remote: RemoteModels) -> None:
    """``metrics.csv`` from the remote when the local run has none (the trainer drops its rows
    after the restored episode, as on any resume)."""
    for name in RUN_FILES:
        if (run_dir / name).exists():
            continue
        data = remote.read_run_file(name)
        if data is not None:
            write_bytes_atomic(run_dir / name, data)


# -- archiving -------------------------------------------------------------------------------
def archive(remote: RemoteModels, after: int | None) -> str | None:
    """Move the remote history aside, as the local store does (``resume=never``: all of it;
    ``resume=PATH`` to episode N: what comes after N) into ``models/archive/<UTC time>/``.

    The chunks the moved checkpoints list are copied there first, then each checkpoint's files
    and JSON; only then does the JSON leave ``models/`` (it stops counting), then its files.
    Nothing is deleted that is not copied. Returns the archive folder's URL, or None.
    """
    listing = remote.listing()
    stems = [episode_stem(e) for e in listing.saved() if after is None or e > after]
    metas: dict[str, dict[str, Any]] = {}
    for stem in [*stems, BEST]:
        if not listing.has(stem, "json"):
            continue
        try:
            meta = json.loads(remote.read(f"{stem}.json").decode("utf-8"))
        except (FileNotFoundError, UnicodeDecodeError, ValueError):
            meta = {}
        if stem == BEST and after is not None:
            best_episode = meta.get("episode") if isinstance(meta, dict) else None
            if type(best_episode) is int and best_episode <= after:
                continue
        metas[stem] = meta if isinstance(meta, dict) else {}
    if not metas:
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    folder = f"{ARCHIVE_DIR}/{stamp}"
    for meta in metas.values():
        for digest in _chunk_rows(meta):
            try:
                remote.copy(f"{CHUNKS_DIR}/{digest}", f"{folder}/{CHUNKS_DIR}/{digest}")
            except FileNotFoundError:
                continue
    for stem in metas:
        names = [p.name for p in _files(Path(), stem) if p.name in listing.names]
        for name in sorted(names, key=lambda n: n.endswith(".json")):  # JSON copied last
            remote.copy(name, f"{folder}/{name}")
        for name in sorted(names, key=lambda n: not n.endswith(".json")):  # JSON removed first
            remote.remove(name)
    return f"{remote.url}/{folder}"


# -- the background uploader -----------------------------------------------------------------
class Mirror:
    """Uploads a ``models/`` directory to its remote in a background thread, one upload at a
    time (:meth:`start` after a local commit; :meth:`wait` before the next one changes files).

    A failed upload is one warning; the next one makes the remote whole again.
    """

    def __init__(self, models_dir: Path, remote: RemoteModels) -> None:
        self.models_dir = Path(models_dir)
        self.remote = remote
        self._thread: threading.Thread | None = None
        self._view = RemoteView()
        #: Whether the last upload succeeded (None before the first).
        self.ok: bool | None = None
        self.failures = 0
        #: Seconds the last upload took, and the trainer's total wait for uploads.
        self.last_seconds = 0.0
        self.waited_seconds = 0.0

    def start(self) -> None:
        """Upload in the background what the local store has committed."""
        self.wait()
        self._thread = threading.Thread(target=self._run, name="finsense-upload", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the upload in progress (if any) has finished."""
        thread, self._thread = self._thread, None
        if thread is not None:
            started = time.perf_counter()
            thread.join()
            self.waited_seconds += time.perf_counter() - started

    def upload_now(self) -> bool:
        """Upload in this thread (after waiting for one in progress); whether it succeeded."""
        self.wait()
        with keeping_random_state():
            self._run()
        return bool(self.ok)

    def _run(self) -> None:
        started = time.perf_counter()
        # See keeping_random_state: a successful upload draws nothing (batches stay below the
        # connection pool); a failed one may (botocore's retry jitter), so it puts back the
        # state it found. (While the trainer trains, only this thread touches that state.)
        random_state = random.getstate()
        try:
            report = upload(self.models_dir, self.remote, self._view)
        except Exception as exc:  # any back-end failure: warn, train on, catch up next time
            random.setstate(random_state)
            self._view.clear()  # what the remote holds is unknown now: look again next time
            self.failures += 1
            self.ok = False
            log.warning(
                "%s: upload failed (%s); training goes on, the next save uploads what is missing",
                self.remote.url,
                _one_line(exc),
            )
        else:
            if self.ok is False:
                log.warning(
                    "%s: upload succeeded again; the remote copy is up to date", self.remote.url
                )
            self.ok = True
            log.debug(
                "%s: uploaded %d objects (%d bytes), removed %d, in %.3f s",
                self.remote.url,
                report.objects,
                report.bytes,
                report.removed,
                time.perf_counter() - started,
            )
        self.last_seconds = time.perf_counter() - started


def read_remote_json(remote: RemoteModels, name: str) -> dict[str, Any] | None:
    """The JSON object ``models/<name>`` of a remote run, or None (unverified; for status)."""
    try:
        data = json.loads(remote.read(name).decode("utf-8"))
    except Exception as exc:  # missing or unreadable: status shows what it can
        log.debug("skipping %s: %s", remote.display(name), exc)
        return None
    return data if isinstance(data, dict) else None


def remote_runs(url: str) -> tuple[Any, str, list[str]]:
    """The file system, root path and run names (folders holding ``models/``) under ``url``.

    Raises:
        ConfigError, CheckpointError: as :func:`open_remote`.
    """
    fs, root = _filesystem(url, "URL")
    try:
        fs.invalidate_cache(root)
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        return fs, root, []
    except Exception as exc:  # the back-ends' errors: one line
        raise CheckpointError(f"{url}: cannot reach the remote ({_one_line(exc)})") from None
    runs = []
    for entry in entries:
        if entry.get("type") != "directory":
            continue
        name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
        try:
            fs.invalidate_cache(f"{root.rstrip('/')}/{name}")
            inner = fs.ls(f"{root.rstrip('/')}/{name}", detail=False)
        except FileNotFoundError:
            continue
        if any(str(p).rstrip("/").rsplit("/", 1)[-1] == "models" for p in inner):
            runs.append(name)
    return fs, root, sorted(runs)


__all__ = [
    "Mirror",
    "RemoteModels",
    "RemoteView",
    "UploadReport",
    "archive",
    "is_url",
    "open_remote",
    "pull",
    "read_remote_json",
    "remote_runs",
    "upload",
]
