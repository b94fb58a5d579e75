"""Durable file writes and reads: a reader sees the old file or the new one, never a mix.

Every file is written to a temporary name in the same directory (``.<name>.tmp-<pid>-<hex>``),
fsynced and renamed over its target; the directory is then fsynced so the rename survives a power
loss. A crash at any instant leaves the old file or the new one, and at worst a temporary file that
the checkpoint store's next scan removes. Damaged files are renamed aside (``<name>.corrupt[.K]``),
never deleted.

Nothing here imports torch: every FinSense module that writes a whole file uses these functions.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Above this size the SHA-256 is computed in a thread while the bytes are written.
_PARALLEL_HASH_BYTES = 1 << 20

#: Close-on-exec where the platform has it (not on Windows, where handles are not inherited).
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_tmp_counter = itertools.count()


def _reason(exc: BaseException) -> str:
    """The OS reason of an error, on one line (``No space left on device``)."""
    if isinstance(exc, OSError):
        if exc.strerror:
            return exc.strerror
        if exc.errno:
            return os.strerror(exc.errno)
    return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    """The gist of an exception's message on one line (torch's messages run to paragraphs)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    return first if len(first) <= 200 else first[:197] + "..."


def _tmp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (no random numbers drawn: pid, clock, counter)."""
    unique = f"{time.time_ns():x}{next(_tmp_counter):x}"
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{unique}")


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("%s: cannot remove (%s)", path, _reason(exc))


def _fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable (a no-op where the file system or the platform
    cannot do it: Windows has no directory descriptors)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


class _Digest:
    """The SHA-256 of a buffer; computed in a thread when the buffer is large, so that writing
    or loading the same bytes overlaps with it (hashlib releases the GIL on large buffers)."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = data
        self._hex: str | None = None
        self._thread: threading.Thread | None = None
        if memoryview(data).nbytes >= _PARALLEL_HASH_BYTES:
            self._thread = threading.Thread(target=self._compute, daemon=True)
            self._thread.start()

    def _compute(self) -> None:
        self._hex = hashlib.sha256(self._data).hexdigest()

    def hexdigest(self) -> str:
        """The digest (waits for the thread)."""
        if self._thread is not None:
            self._thread.join()
        if self._hex is None:
            self._compute()
        assert self._hex is not None
        return self._hex


def _write_tmp(
    path: Path, data: bytes | memoryview, *, sha256: bool = False, durable: bool = True
) -> tuple[Path, str]:
    """Write ``data`` to a new temporary file beside ``path`` and fsync it (when ``durable``).

    Returns the temporary path and, when asked, the SHA-256 of ``data`` (computed from the same
    in-memory bytes while they are written: no second pass over the file). On failure the
    temporary file is removed and the OSError propagates.
    """
    view = memoryview(data).cast("B")
    digest = _Digest(view) if sha256 else None
    tmp = _tmp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o644)
        try:
            _write_all(fd, view)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _remove_quietly(tmp)
        if digest is not None:
            digest.hexdigest()  # let the thread finish before the buffer goes
        raise
    return tmp, "" if digest is None else digest.hexdigest()


def _replace_from(tmp: Path, path: Path) -> None:
    """``os.replace(tmp, path)``; the temporary file is removed if that fails."""
    try:
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    if os.path.lexists(tmp):  # rename() between two links to one file does nothing
        _remove_quietly(tmp)


def _link_or_copy(source: Path, target: Path) -> None:
    """Atomically make ``target`` a hard link to ``source`` (a fsynced copy where links fail)."""
    if os.path.lexists(target) and os.path.samefile(source, target):
        return  # already linked (and renaming a link over its twin would be a no-op)
    tmp = _tmp_path(target)
    try:
        os.link(source, tmp)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.EACCES):
            raise
        copy_file_atomic(source, target)
        return
    _replace_from(tmp, target)


def copy_file_atomic(source: Path, target: Path) -> None:
    """Atomically replace ``target`` with a fsynced copy of ``source`` (a file of its own)."""
    tmp = _tmp_path(target)
    try:
        shutil.copyfile(source, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _replace_from(tmp, target)


def _rename_aside(path: Path) -> str | None:
    """Rename ``path`` to ``<name>.corrupt[.K]``; the new name, or None when nothing moved."""
    if not os.path.lexists(path):
        return None
    target = path.with_name(path.name + ".corrupt")
    n = 0
    while os.path.lexists(target):
        n += 1
        target = path.with_name(f"{path.name}.corrupt.{n}")
    try:
        os.rename(path, target)
    except OSError as exc:
        log.warning("%s: cannot set aside (%s)", path, _reason(exc))
        return None
    return target.name


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as strict JSON: NaN and infinities become null, numpy scalars plain numbers."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Path):
        return str(value)
    item = getattr(value, "item", None)  # numpy scalars, 0-d arrays and tensors
    if callable(item):
        try:
            return _jsonable(item(), where)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise TypeError(f"{where}: a {type(value).__name__} cannot be written to JSON")


def _json_bytes(data: Mapping[str, Any], compact: tuple[str, ...] = ()) -> bytes:
    """``data`` as indented strict JSON; the values of the top-level keys in ``compact`` (big
    lists of plain values, such as a chunk manifest) last, each on one line without spaces:
    the indenting encoder is pure Python, and a million-row manifest would take 100 ms in it."""
    rest = {k: v for k, v in data.items() if k not in compact}
    text = json.dumps(_jsonable(rest, "metadata"), indent=2, allow_nan=False)
    lines = [
        f"  {json.dumps(str(k))}: {json.dumps(data[k], separators=(',', ':'), allow_nan=False)}"
        for k in compact
        if k in data
    ]
    if lines:
        text = (text[:-2] + ",\n" if rest else "{\n") + ",\n".join(lines) + "\n}"
    return (text + "\n").encode("utf-8")


def write_bytes_atomic(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically and durably (see :func:`write_json_atomic`).

    ``durable=False`` skips the two fsyncs (~10 ms): still atomic, and a killed process loses
    nothing written (the kernel has it), but a power loss may leave the previous content. For
    small records written often whose staleness costs little.

    Raises:
        OSError: the file cannot be written (the temporary file is removed; ``path`` is unchanged).
    """
    path = Path(path)
    tmp, _ = _write_tmp(path, data, durable=durable)
    _replace_from(tmp, path)
    if durable:
        _fsync_dir(path.parent)


def write_json_atomic(
    path: str | Path,
    data: Mapping[str, Any],
    *,
    durable: bool = True,
    compact: tuple[str, ...] = (),
) -> None:
    """Write ``data`` as strict JSON to ``path`` atomically and durably.

    Temporary file in the same directory, fsync, ``os.replace``, fsync of the directory: a reader
    sees the old file or the new one, never a mix, even after a crash. NaN and infinities are
    written as ``null``; numpy scalars as plain numbers.

    Raises:
        OSError: the file cannot be written (the temporary file is removed; ``path`` is unchanged).
        TypeError: ``data`` holds a value JSON cannot represent.
    """
    write_bytes_atomic(path, _json_bytes(data, compact), durable=durable)


def read_json(path: str | Path) -> dict[str, Any]:
    """The JSON object stored in ``path``.

    Raises:
        OSError: the file is missing or unreadable.
        ValueError: the file is not valid UTF-8 JSON or holds something other than an object.
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"holds a JSON {type(data).__name__}, not an object")
    return data
