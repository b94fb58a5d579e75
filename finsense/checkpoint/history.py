"""A run's older histories: ``models/archive/<UTC time>/``, moved there through a journal.

Going back (``resume=PATH`` to an earlier episode, ``resume=never``) never deletes anything: the
abandoned checkpoints move to an archive folder. The whole move is written to a journal first
(``models/.archive.json``) and every later look at the store finishes a journaled move before
anything else, so a kill at any instant leaves the history whole, in one archive folder.
"""

from __future__ import annotations

import itertools
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finsense.checkpoint.chunks import listed_by
from finsense.checkpoint.durable import (
    _fsync_dir,
    _link_or_copy,
    _one_line,
    _reason,
    _rename_aside,
    copy_file_atomic,
    read_json,
    write_json_atomic,
)
from finsense.checkpoint.layout import (
    _TMP,
    ARCHIVE_DIR,
    ARCHIVE_JOURNAL,
    BEST,
    CHUNKS_DIR,
    _episode_of,
    is_chunk_name,
)
from finsense.errors import CheckpointError

log = logging.getLogger(__name__)


def _set_aside_file(path: Path, reason: str) -> None:
    """Rename one file to ``<name>.corrupt[.K]`` with a warning (never deletes)."""
    log.warning("%s: %s; set aside as %s", path, reason, _rename_aside(path) or "nothing")


def archive(
    models_dir: Path,
    after: int | None = None,
    *,
    move: tuple[Path, ...] = (),
    copy: tuple[Path, ...] = (),
) -> Path | None:
    """Move files of ``models/`` into ``models/archive/<UTC YYYYmmdd-HHMMSS[-n]>/``.

    Nothing is deleted. With ``after=None`` (a fresh start) every file moves. With
    ``after=N`` (training goes back to episode N) only what belongs to the abandoned
    future moves: the files of episodes after N, and ``best_model.*`` when its episode is
    after N (the next save rebuilds the best from the checkpoints that stay). ``move`` and
    ``copy`` name files outside ``models/`` (``metrics.csv``) that go with the history.

    An archived checkpoint keeps its chunks: with ``after=None`` the whole ``chunks/``
    folder moves; otherwise the chunks it lists are hard-linked into the archive's own
    ``chunks/`` (a kept checkpoint may list them too; the next save removes the rest).

    Crash-safe: the whole move is first written to a journal (``models/.archive.json``);
    every later look at the store finishes a journaled move before anything else, so a kill
    at any instant leaves the history whole, in one archive folder.

    Returns:
        The archive folder, or None when there was nothing to move.

    Raises:
        CheckpointError: a file could not be moved (the journal finishes the move later).
    """
    finish_archive(models_dir)
    root = models_dir / ARCHIVE_DIR
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    try:
        names = [
            n
            for n in os.listdir(models_dir)
            if n != ARCHIVE_DIR and n != ARCHIVE_JOURNAL and not _TMP.match(n)
        ]
        if after is not None:
            names = _after(models_dir, names, after)
        if not names and not any(os.path.lexists(p) for p in move):
            return None
        # Made by _finish_archive: a kill before the journal leaves no empty folder.
        target = next(
            folder
            for n in itertools.count()
            if not os.path.lexists(folder := root / (stamp if n == 0 else f"{stamp}-{n}"))
        )
        # A checkpoint stops counting (its JSON goes) before its files move; the best
        # model goes last, so a reader never takes a half-moved history for a best.
        names.sort(key=lambda n: (n.startswith(f"{BEST}."), not n.endswith(".json"), n))
        entries = [["move", name, name] for name in names]
        if after is not None:  # chunks the archived checkpoints share with kept ones
            jsons = [models_dir / n for n in names if n.endswith(".json")]
            shared = set().union(*map(listed_by, jsons))
            chunk = f"{CHUNKS_DIR}/"
            entries += [["link", chunk + d, chunk + d] for d in sorted(shared)]
        entries += [["move", os.path.relpath(p, models_dir), p.name] for p in move]
        entries += [["copy", os.path.relpath(p, models_dir), p.name] for p in copy]
        entries = [e for e in entries if os.path.lexists(models_dir / e[1])]
        write_json_atomic(
            models_dir / ARCHIVE_JOURNAL,
            {"target": target.relative_to(models_dir).as_posix(), "files": entries},
        )
    except OSError as exc:
        raise CheckpointError(
            f"{exc.filename or models_dir}: cannot archive the old checkpoints "
            f"({_reason(exc)}); nothing was moved"
        ) from exc
    finish_archive(models_dir, quiet=True)
    log.info("archived %d files of %s to %s", len(entries), models_dir, target)
    return target


def finish_archive(models_dir: Path, *, quiet: bool = False) -> None:
    """Carry out the move that ``models/.archive.json`` journals, then remove the journal.

    Idempotent: a file already moved is skipped, a copy is made again. A journal that cannot
    be read is set aside (never acted on blindly).
    """
    journal = models_dir / ARCHIVE_JOURNAL
    try:
        plan = read_json(journal)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        _set_aside_file(journal, f"unreadable archive journal ({_one_line(exc)})")
        return
    target = models_dir / str(plan.get("target", ""))
    entries = plan.get("files")
    if (
        not isinstance(entries, list)
        or target.parent != models_dir / ARCHIVE_DIR
        or not all(isinstance(e, list) and len(e) == 3 for e in entries)
        or not all(e[0] != "link" or _chunk_entry(e[2]) for e in entries)
    ):
        _set_aside_file(journal, "archive journal of an unknown shape")
        return
    moved = 0
    try:
        target.mkdir(parents=True, exist_ok=True)
        for op, source, name in entries:
            src, dst = models_dir / source, target / Path(name).name
            if op == "move" and os.path.lexists(src) and not os.path.lexists(dst):
                os.rename(src, dst)
                moved += 1
            elif op == "copy" and os.path.lexists(src):
                copy_file_atomic(src, dst)
            elif op == "link" and os.path.lexists(src):
                dst = target / name
                dst.parent.mkdir(exist_ok=True)
                _link_or_copy(src, dst)
        if (target / CHUNKS_DIR).is_dir():
            _fsync_dir(target / CHUNKS_DIR)
        _fsync_dir(target)
        _fsync_dir(models_dir)
        _fsync_dir(models_dir.parent)
        os.unlink(journal)
        _fsync_dir(models_dir)
    except OSError as exc:
        raise CheckpointError(
            f"{exc.filename or models_dir}: cannot finish archiving the old history to "
            f"{target} ({_reason(exc)}); fix the cause and run again (nothing is lost)"
        ) from exc
    if not quiet:
        log.warning("an archive cut short was completed: %d more files moved to %s", moved, target)


def _after(models_dir: Path, names: list[str], episode: int) -> list[str]:
    """The files among ``names`` that belong to episodes after ``episode``."""
    try:
        best_episode = read_json(models_dir / f"{BEST}.json").get("episode")
    except (OSError, ValueError):
        best_episode = None  # missing or unreadable: best() deals with it, not the archive
    best_later = isinstance(best_episode, int) and best_episode > episode
    later = []
    for name in names:
        if name.startswith(f"{BEST}."):
            if best_later:
                later.append(name)
        elif name.startswith("model_ep"):
            found = _episode_of(name[8:].split(".", 1)[0])
            if found is not None and found > episode:
                later.append(name)
    return later


def _chunk_entry(name: Any) -> bool:
    """Whether an archive journal's ``link`` entry names a chunk (``chunks/<sha256>``)."""
    if not isinstance(name, str):
        return False
    folder, _, digest = name.partition("/")
    return folder == CHUNKS_DIR and is_chunk_name(digest)
