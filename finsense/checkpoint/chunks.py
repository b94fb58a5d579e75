"""Large tensors of the training state as content-addressed chunks, shared between checkpoints.

A replay buffer of a million transitions is hundreds of megabytes, and ten episodes later a
fraction of a percent of it has changed. So a tensor that its owner wraps in :class:`Chunked` is
not serialised into the checkpoint's companion file. It is cut into chunks of whole rows, about
:data:`CHUNK_BYTES` each, compressed with Zstandard (level 1, with the frame's content checksum),
and every chunk is stored once, as ``models/chunks/<sha256>``, named by the SHA-256 of the bytes
stored. A save writes only the chunks whose content is not stored yet. The
checkpoint's JSON lists its chunks and their digests (its *manifest*) and is still written last:
it is still what makes a checkpoint count. A chunk that no checkpoint lists any more is removed
after the commit (:func:`collect`); a chunk is never rewritten in place.

Knowing what changed without hashing the whole tensor at every save: the owner may pass
``stamps``, one number per block of ``rows_per_stamp`` rows, which must grow whenever a row of
the block is written (the replay buffer stamps a block with its count of transitions added).
A chunk whose largest stamp equals the one recorded when this store last saved or loaded it is
the same bytes, so its digest is reused without reading it. Without stamps every chunk is hashed
at every save (only new content is written either way).

Why compress: a trading env's observations are sliding windows of returns, so consecutive rows
repeat 29 of their 30 returns; Zstandard's fastest level stores the default run's buffer in about
a twentieth of its size, at several hundred MB/s each way. Incompressible data (random floats)
costs little: Zstandard stores such blocks raw.

Loading reads every stored chunk once, straight into the tensor's memory (or, compressed, into a
buffer it is decompressed from into that memory), checks its SHA-256 on those bytes, and does
several chunks at a time (reads, ``hashlib`` and Zstandard release the GIL).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import zstandard

from finsense.checkpoint.durable import (
    _O_CLOEXEC,
    _fsync_dir,
    _reason,
    _remove_quietly,
    _replace_from,
    _write_tmp,
    read_json,
)
from finsense.checkpoint.layout import CHUNKS_DIR, is_chunk_name, stored_sizes

#: Target size of one chunk: small enough that a save rewrites little of a ring buffer beyond
#: the rows it changed, large enough that a million-row buffer is about a thousand files.
CHUNK_BYTES = 256 * 1024
#: Below this many bytes to hash or read, one thread does it all.
_PARALLEL_BYTES = 4 << 20
_WORKERS = 4
#: The key of the small dict that stands for a chunked tensor in the companion file.
PLACEHOLDER = "__finsense_chunked__"
#: How chunks are stored (the manifest entry's ``codec``).
CODEC = "zstd"
_ZSTD_LEVEL = 1
#: A chunk is stored compressed when that leaves at most this fraction of its bytes.
_WORTH = 0.8
_O_READ = os.O_RDONLY | _O_CLOEXEC | getattr(os, "O_BINARY", 0)
_readv = getattr(os, "readv", None)  # not on Windows
_local = threading.local()  # one (de)compression context per thread: they are not thread-safe

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True, eq=False)
class Chunked:
    """A tensor of the training state to store as content-addressed chunks of whole rows.

    Attributes:
        tensor: a CPU tensor with rows along dim 0. It is read during the save only (a view of
            live memory is fine: :meth:`CheckpointManager.save` returns before training goes on).
        stamps: optional, one integer per block of ``rows_per_stamp`` rows, that grows whenever a
            row of the block is written (a monotone counter: equal stamps mean equal rows). With
            it a save hashes only the chunks whose stamps moved; without it, every chunk.
        rows_per_stamp: rows per stamp (>= 1).

    A loaded checkpoint gives back a plain tensor in its place.
    """

    tensor: torch.Tensor
    stamps: Sequence[int] | None = None
    rows_per_stamp: int = 1


class ChunkError(Exception):
    """A chunk is missing, unreadable or does not match its digest."""

    def __init__(self, path: Path, reason: str, *, damaged: bool = True) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.damaged = damaged  # False for conditions that are not damage (permissions, ...)


# -- the companion's placeholders ------------------------------------------------------------
def externalise(obj: Any) -> tuple[Any, list[tuple[str, Chunked]]]:
    """``obj`` with every :class:`Chunked` replaced by ``{PLACEHOLDER: index}``, and the
    ``(key, Chunked)`` pairs in index order (key: the ``/``-joined path, e.g.
    ``buffer/observations``)."""
    found: list[tuple[str, Chunked]] = []

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, Chunked):
            found.append((path, value))
            return {PLACEHOLDER: len(found) - 1}
        if isinstance(value, dict):
            return {k: walk(v, f"{path}/{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple) and any(_has_chunked(v) for v in value):
            items = [walk(v, f"{path}/{i}" if path else str(i)) for i, v in enumerate(value)]
            return items if isinstance(value, list) else tuple(items)
        return value

    return walk(obj, ""), found


def _has_chunked(value: Any) -> bool:
    if isinstance(value, Chunked):
        return True
    if isinstance(value, dict):
        return any(_has_chunked(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_chunked(v) for v in value)
    return False


def substitute(obj: Any, tensors: Sequence[torch.Tensor]) -> Any:
    """Put ``tensors[i]`` back where ``{PLACEHOLDER: i}`` stands (inverse of externalise)."""
    if isinstance(obj, dict):
        if len(obj) == 1 and PLACEHOLDER in obj:
            index = obj[PLACEHOLDER]
            if type(index) is not int or not 0 <= index < len(tensors):
                raise ValueError(f"placeholder {index!r} names no chunked tensor of the manifest")
            return tensors[index]
        return {k: substitute(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        items = [substitute(v, tensors) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


# -- saving ----------------------------------------------------------------------------------
def _bytes_of(tensor: torch.Tensor) -> np.ndarray:
    """The bytes of a contiguous CPU tensor as a uint8 array sharing its memory."""
    flat = tensor.reshape(-1)
    return flat.view(torch.uint8).numpy() if flat.numel() else np.empty(0, np.uint8)


def _rows_per_chunk(tensor: torch.Tensor, rows_per_stamp: int) -> int:
    rows = tensor.shape[0] if tensor.dim() else 1
    row_bytes = tensor.numel() * tensor.element_size() // max(rows, 1)
    per_chunk = max(1, CHUNK_BYTES // max(row_bytes, 1))
    if per_chunk <= rows_per_stamp:
        return rows_per_stamp
    return per_chunk - per_chunk % rows_per_stamp


def _signatures(item: Chunked, n_chunks: int, rows_per_chunk: int) -> list[int | None]:
    """The largest stamp of each chunk (None for every chunk when there are no stamps)."""
    if item.stamps is None:
        return [None] * n_chunks
    stamps = np.asarray(item.stamps, dtype=np.int64)
    group = rows_per_chunk // item.rows_per_stamp
    padded = np.full(n_chunks * group, np.iinfo(np.int64).min, dtype=np.int64)
    count = min(len(stamps), len(padded))
    padded[:count] = stamps[:count]
    return [int(s) for s in padded.reshape(n_chunks, group).max(axis=1)]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _map(fn: Callable[[_T], _R], items: list[_T], nbytes: int) -> list[_R]:
    """``[fn(x) for x in items]``, in threads when there is much to do (``nbytes`` of it)."""
    if nbytes < _PARALLEL_BYTES or len(items) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(_WORKERS, len(items))) as pool:
        return list(pool.map(fn, items))


def _sha256(data: memoryview | bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _compressor() -> zstandard.ZstdCompressor:
    cctx = getattr(_local, "cctx", None)
    if cctx is None:
        cctx = _local.cctx = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def _pack(piece: memoryview) -> tuple[bytes | memoryview, str, bool]:
    """The bytes to store for a chunk, their SHA-256 (its name) and whether they are compressed:
    only when that saves at least :data:`_WORTH` of the bytes (random floats are stored raw and
    load at the speed of a read)."""
    packed = _compressor().compress(piece)
    if len(packed) <= _WORTH * piece.nbytes:
        return packed, _sha256(packed), True
    return piece, _sha256(piece), False


def write_chunks(
    items: Sequence[tuple[str, Chunked]],
    models_dir: Path,
    known: Mapping[str, Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Store the chunks of ``items`` that are not stored yet; return the manifest and the new
    chunk files (removed by the caller if the checkpoint is not committed).

    ``known`` maps a key to the manifest entry of that key last saved or loaded by the store;
    a chunk whose stamp signature equals the recorded one reuses the recorded digest unread,
    as long as its file is still there. Every new chunk is fsynced, then the chunk directory.

    Raises:
        OSError: a chunk could not be written (files created by this call are removed).
    """
    chunks_dir = models_dir / CHUNKS_DIR
    chunks_dir.mkdir(exist_ok=True)
    present = {name for name in os.listdir(chunks_dir) if is_chunk_name(name)}
    manifest: list[dict[str, Any]] = []
    todo: list[tuple[list[Any], memoryview]] = []  # (the manifest row to fill, its raw bytes)
    for key, item in items:
        tensor = item.tensor.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensor = tensor.contiguous()
        rows_per_stamp = max(1, int(item.rows_per_stamp))
        rows_per_chunk = _rows_per_chunk(tensor, rows_per_stamp)
        rows = tensor.shape[0] if tensor.dim() else 1
        n_chunks = math.ceil(rows / rows_per_chunk)
        data = _bytes_of(tensor).data
        row_bytes = data.nbytes // max(rows, 1)
        entry: dict[str, Any] = {
            "key": key,
            "dtype": _dtype_name(tensor.dtype),
            "shape": list(tensor.shape),
            "rows_per_chunk": rows_per_chunk,
            "codec": CODEC,
        }
        before = known.get(key)
        same_layout = before is not None and all(
            before.get(k) == entry[k] for k in ("dtype", "shape", "rows_per_chunk", "codec")
        )
        old = before["chunks"] if before is not None and same_layout else None
        chunks: list[list[Any]] = []
        for i, signature in enumerate(_signatures(item, n_chunks, rows_per_chunk)):
            start = i * rows_per_chunk * row_bytes
            piece = data[start : min(start + rows_per_chunk * row_bytes, data.nbytes)]
            # [digest, raw bytes, stamp signature, compressed bytes (None: stored raw)]
            row: list[Any] = [None, piece.nbytes, signature, None]
            if (
                old is not None
                and signature is not None
                and old[i][2] == signature
                and old[i][1] == piece.nbytes
                and old[i][0] in present
            ):
                row[0], row[3] = old[i][0], old[i][3]
            else:
                todo.append((row, piece))
            chunks.append(row)
        entry["chunks"] = chunks
        manifest.append(entry)
    pieces = [piece for _, piece in todo]
    total = sum(p.nbytes for p in pieces)
    new: dict[str, bytes | memoryview] = {}
    for (row, _), (stored, digest, packed) in zip(todo, _map(_pack, pieces, total), strict=True):
        row[0], row[3] = digest, len(stored) if packed else None
        if digest not in present:
            new.setdefault(digest, stored)
    created: list[Path] = []

    def write(pair: tuple[str, bytes | memoryview]) -> Path:
        digest, stored = pair
        path = chunks_dir / digest
        tmp, _ = _write_tmp(path, stored)
        _replace_from(tmp, path)
        return path

    try:
        # In threads only for a big write (a first save): a handful of chunks is written in the
        # calling thread, so a save's system calls stay in one thread (strace's kill points).
        for path in _map(write, list(new.items()), sum(map(len, new.values()))):
            created.append(path)
        if new:
            _fsync_dir(chunks_dir)
    except BaseException:
        for digest in new:
            _remove_quietly(chunks_dir / digest)
        raise
    return manifest, created


# -- loading ---------------------------------------------------------------------------------
def _check_entry(
    entry: Any,
) -> tuple[torch.dtype, list[int], int, list[tuple[str, int, int | None]]]:
    """The dtype, shape, rows per chunk and ``(digest, raw size, stored size)`` list of a
    manifest entry."""
    if not isinstance(entry, Mapping):
        raise ValueError("a manifest entry is not a mapping")
    dtype = getattr(torch, str(entry.get("dtype")), None)
    shape = entry.get("shape")
    per_chunk = entry.get("rows_per_chunk")
    chunks = entry.get("chunks")
    if (
        not isinstance(dtype, torch.dtype)
        or not isinstance(shape, list)
        or not all(type(n) is int and n >= 0 for n in shape)
        or type(per_chunk) is not int
        or per_chunk < 1
        or not isinstance(chunks, list)
        or entry.get("codec") != CODEC
    ):
        raise ValueError(f"manifest entry {entry.get('key')!r} of an unknown shape or codec")
    listed: list[tuple[str, int, int | None]] = []
    for row in chunks:
        if (
            not isinstance(row, list)
            or len(row) != 4
            or not isinstance(row[0], str)
            or not is_chunk_name(row[0])
            or type(row[1]) is not int
            or (row[3] is not None and type(row[3]) is not int)
        ):
            raise ValueError(f"manifest entry {entry.get('key')!r} lists a malformed chunk")
        listed.append((row[0], row[1], row[3]))
    return dtype, shape, per_chunk, listed


def read_chunked(manifest: Sequence[Any], directory: Path) -> list[torch.Tensor]:
    """The tensors a manifest describes, read from ``directory/chunks`` and verified.

    Every chunk is read once, straight into its place in the new tensor (a stored-raw one) or
    into a buffer of its stored size that is decompressed into that place (no second copy), and
    its SHA-256 is computed from those bytes: nothing is read or hashed twice.

    Raises:
        ChunkError: a chunk is missing, short, too long, does not match its digest or does not
            decompress to its listed size (the first such chunk in manifest order).
        ValueError: the manifest is malformed.
    """
    chunks_dir = os.fspath(directory / CHUNKS_DIR)
    tensors: list[torch.Tensor] = []
    jobs: list[tuple[str, int | None, memoryview]] = []
    for entry in manifest:
        dtype, shape, per_chunk, listed = _check_entry(entry)
        tensor = torch.empty(shape, dtype=dtype)
        data = _bytes_of(tensor).data
        rows = shape[0] if shape else 1
        row_bytes = data.nbytes // max(rows, 1)
        if sum(size for _, size, _ in listed) != data.nbytes or len(listed) != math.ceil(
            rows / per_chunk
        ):
            raise ValueError(f"manifest entry {entry.get('key')!r}: chunk sizes do not add up")
        offset = 0
        for digest, size, stored in listed:
            if offset % (per_chunk * row_bytes or 1) != 0 and size:
                raise ValueError(f"manifest entry {entry.get('key')!r}: misaligned chunk")
            jobs.append((digest, stored, data[offset : offset + size]))
            offset += size
        tensors.append(tensor)
    _each(partial(_read_one, chunks_dir), jobs, sum(view.nbytes for *_, view in jobs))
    return tensors


def _each(fn: Callable[[_T], None], items: Sequence[_T], nbytes: int) -> None:
    """``fn(x)`` for each of ``items``, in a few threads when there is much to do (``nbytes``).

    The threads take the items in order from one shared counter and all stop taking at the first
    failure: every item before the highest one taken has run, so the exception raised is the one
    of the first failing item, as in one thread.
    """
    workers = min(_workers(), len(items)) if nbytes >= _PARALLEL_BYTES else 1
    if workers < 2:
        for item in items:
            fn(item)
        return
    taken = itertools.count()
    failed: dict[int, BaseException] = {}

    def run() -> None:
        while not failed:
            index = next(taken)  # atomic: one C call
            if index >= len(items):
                return
            try:
                fn(items[index])
            except Exception as exc:  # re-raised below, in the calling thread
                failed[index] = exc
                return

    with ThreadPoolExecutor(max_workers=workers - 1) as pool:
        helpers = [pool.submit(run) for _ in range(workers - 1)]
        try:
            run()  # the calling thread is one of the workers
        except BaseException as exc:  # Ctrl+C: the helpers stop after their current item
            failed[-1] = exc
            raise
        for helper in helpers:
            helper.result()
    if failed:
        raise failed[min(failed)]


def _workers() -> int:
    """Threads for a big read: the CPUs this process may use, at most :data:`_WORKERS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(_WORKERS, cpus))


def _read_one(chunks_dir: str, job: tuple[str, int | None, memoryview]) -> None:
    """Read one stored chunk into ``view`` (its place), decompressed, checking its SHA-256."""
    digest, stored, view = job
    path = os.path.join(chunks_dir, digest)
    expected = view.nbytes if stored is None else stored
    try:
        fd = os.open(path, _O_READ)
    except FileNotFoundError:
        raise ChunkError(Path(path), "missing chunk") from None
    except OSError as exc:
        raise ChunkError(Path(path), f"cannot read chunk ({_reason(exc)})", damaged=False) from None
    try:
        size = os.fstat(fd).st_size
        if size > expected:
            raise ChunkError(Path(path), f"chunk longer than the {expected} bytes listed")
        into = view if stored is None else memoryview(bytearray(stored))
        got = _read_into(fd, into)
    except OSError as exc:
        raise ChunkError(Path(path), f"cannot read chunk ({_reason(exc)})", damaged=False) from None
    finally:
        os.close(fd)
    if got < expected:
        raise ChunkError(Path(path), f"truncated chunk ({got} of {expected} bytes)")
    if hashlib.sha256(into).hexdigest() != digest:
        raise ChunkError(Path(path), "chunk checksum mismatch")
    if stored is not None:
        _decompress_into(into, view, Path(path))


def _read_into(fd: int, view: memoryview) -> int:
    """Read from ``fd`` until ``view`` is full or the file ends; the bytes read."""
    got = 0
    while got < view.nbytes:
        if _readv is not None:  # into place, no intermediate bytes
            n = _readv(fd, [view[got:]])
        else:
            piece = os.read(fd, view.nbytes - got)
            n = len(piece)
            view[got : got + n] = piece
        if not n:
            break
        got += n
    return got


def _decompress_into(data: memoryview, view: memoryview, path: Path) -> None:
    """Decompress the one Zstandard frame ``data`` straight into ``view``, which it must fill
    exactly (the digest matched, so a failure here means the chunk was written wrong)."""
    try:
        size = zstandard.frame_content_size(data)
        if size not in (-1, view.nbytes):
            raise ChunkError(path, f"chunk holds {size} bytes, not the {view.nbytes} listed")
        # The reader decompresses into the given memory (releasing the GIL); the read past the
        # end consumes the frame's epilogue, which checks its content checksum.
        with _decompressor().stream_reader(data) as reader:
            got = 0
            while got < view.nbytes:
                n = reader.readinto(view[got:])
                if not n:
                    break
                got += n
            if got < view.nbytes:
                raise ChunkError(path, f"chunk holds {got} bytes, not the {view.nbytes} listed")
            if reader.read(1):
                raise ChunkError(path, f"chunk holds more than the {view.nbytes} bytes listed")
    except zstandard.ZstdError as exc:
        raise ChunkError(path, f"chunk does not decompress ({exc})") from None


# -- garbage collection ----------------------------------------------------------------------
def digests(meta: Mapping[str, Any]) -> set[str]:
    """The chunk digests a checkpoint's JSON lists."""
    return set(stored_sizes(meta))


def listed_by(json_path: Path) -> set[str]:
    """The chunk digests the JSON at ``json_path`` lists (none when it cannot be read)."""
    try:
        return digests(read_json(json_path))
    except (OSError, ValueError):
        return set()


def referenced(models_dir: Path, names: Iterable[str]) -> set[str] | None:
    """Every digest listed by the checkpoint JSONs among ``names`` of ``models_dir``; None when
    one of them cannot be read (then nothing may be collected)."""
    found: set[str] = set()
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            found |= digests(read_json(models_dir / name))
        except FileNotFoundError:
            continue  # rotated away meanwhile: it lists nothing any more
        except (OSError, ValueError):
            return None
    return found


def collect(models_dir: Path) -> int:
    """Remove the chunks (and unfinished chunk writes) that no checkpoint JSON lists; the count.

    Only the writer of the run calls this, after a commit: a kill at any instant leaves at worst
    chunks that the next collection removes.
    """
    chunks_dir = models_dir / CHUNKS_DIR
    try:
        stored = os.listdir(chunks_dir)
    except FileNotFoundError:
        return 0
    keep = referenced(models_dir, os.listdir(models_dir))
    if keep is None:
        return 0
    removed = 0
    for name in stored:
        if (is_chunk_name(name) and name not in keep) or (name.startswith(".") and ".tmp-" in name):
            _remove_quietly(chunks_dir / name)
            removed += 1
    return removed
