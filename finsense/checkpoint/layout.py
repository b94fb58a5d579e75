"""The on-disk layout of a run's ``models/`` directory: file names and their listing.

Layout of ``models/`` (``N`` is the episode)::

    model_epN.pt         the small part of a checkpoint (policy weights, ...)
    model_epN.train.pt   the large part (replay buffer, optimizer, RNG states), when there is one
    model_epN.json       metadata + the SHA-256 and size of both files; written last, it is what
                         makes the checkpoint count
    best_model.pt / best_model.train.pt / best_model.json   the best episode so far (hard links)
    chunks/<sha256>      large tensors of the training states (the replay buffer), cut into
                         chunks named by their SHA-256 and shared between checkpoints; a JSON
                         lists its chunks (see :mod:`finsense.checkpoint.chunks`)
    *.corrupt[.K]        files that failed verification, set aside and never deleted
    archive/<UTC time>/  an older history, moved aside by :meth:`CheckpointManager.archive`

Nothing here imports torch or opens a file, so readers of the layout (``finsense.status``) stay
cheap.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Version of the on-disk format; a JSON with a higher one was written by a newer FinSense.
#: 2: large tensors of the training state are chunks in ``chunks/`` (the JSON's ``chunked``).
FORMAT_VERSION = 2
#: Subfolder of ``models/`` that :meth:`CheckpointManager.archive` moves old histories into.
ARCHIVE_DIR = "archive"
#: The journal of an archive move in progress (see :meth:`CheckpointManager.archive`).
ARCHIVE_JOURNAL = ".archive.json"
#: Subfolder of ``models/`` holding the content-addressed chunks of training states.
CHUNKS_DIR = "chunks"
#: Stem of the best checkpoint's files.
BEST = "best_model"
#: Prefix of an episodic checkpoint's files (``model_ep10.pt``).
EPISODE_PREFIX = "model_ep"

#: A temporary file of a write in progress (see :func:`finsense.checkpoint.durable._tmp_path`).
_TMP = re.compile(r"^\..+\.tmp-[0-9]+-[0-9a-f]+$")
#: The kinds of file a checkpoint has.
_KINDS = ("pt", "train.pt", "json")
#: A name set aside by :func:`finsense.checkpoint.durable._rename_aside`.
_CORRUPT = re.compile(r"\.corrupt(\.\d+)?$")


def metadata_path(path: str | Path) -> Path:
    """The JSON beside a checkpoint file (``model_ep10.json`` for ``model_ep10.pt``)."""
    path = Path(path)
    return _files(path.parent, _stem(path))[2]


def _stem(path: Path) -> str:
    """``model_ep10`` for ``model_ep10.pt``, ``.train.pt`` or ``.json``."""
    name = path.name
    for suffix in (".train.pt", ".pt", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _files(directory: Path, stem: str) -> tuple[Path, Path, Path]:
    """The model file, its companion (training state) and its JSON."""
    return directory / f"{stem}.pt", directory / f"{stem}.train.pt", directory / f"{stem}.json"


def is_chunk_name(name: str) -> bool:
    """Whether ``name`` is a chunk's file name: 64 lowercase hex digits (its SHA-256)."""
    return len(name) == 64 and not name.strip("0123456789abcdef")


def episode_stem(episode: int) -> str:
    """``model_ep10`` for episode 10: the stem of an episodic checkpoint's files."""
    return f"{EPISODE_PREFIX}{episode}"


def is_set_aside(name: str) -> bool:
    """Whether ``name`` is a file set aside as damaged (``model_ep10.pt.corrupt[.K]``)."""
    return _CORRUPT.search(name) is not None


def _episode_of(number: str) -> int | None:
    """``10`` for ``"10"``; None for what is not a canonical episode number (``"010"``, ``"x"``)."""
    if number.isdigit() and number.isascii() and (number[0] != "0" or number == "0"):
        return int(number)
    return None


@dataclass(frozen=True)
class Listing:
    """The names one ``os.listdir`` of ``models/`` found; nothing is opened.

    Derived views use comprehensions over the names (no regex per name): 10,000 names parse in
    a few milliseconds.
    """

    names: frozenset[str]

    def saved(self) -> list[int]:
        """Episodes whose ``model_epN.json`` exists, newest first."""
        numbers = [n[8:-5] for n in self.names if n.endswith(".json") and n.startswith("model_ep")]
        return sorted(
            [int(x) for x in numbers if x.isascii() and x.isdigit() and (x[0] != "0" or x == "0")],
            reverse=True,
        )

    def has(self, stem: str, kind: str) -> bool:
        """Whether ``<stem>.<kind>`` is there (kind: ``pt``, ``train.pt`` or ``json``)."""
        return f"{stem}.{kind}" in self.names

    def best(self) -> list[str]:
        """The kinds of ``best_model.*`` present."""
        return [kind for kind in _KINDS if f"{BEST}.{kind}" in self.names]

    def unfinished(self) -> list[str]:
        """Episodic model files whose JSON is missing (a save or rotation cut short)."""
        names = self.names
        models = [n for n in names if n.endswith(".pt") and n.startswith("model_ep")]
        stems = [n[:-9] if n.endswith(".train.pt") else n[:-3] for n in models]
        return sorted(
            name
            for name, stem in zip(models, stems, strict=True)
            if stem + ".json" not in names and _episode_of(stem[8:]) is not None
        )

    def temporary(self) -> list[str]:
        """Temporary files of writes that never finished."""
        return sorted(n for n in self.names if n.startswith(".") and _TMP.match(n))

    def set_aside(self) -> list[str]:
        """Files set aside as damaged (``*.corrupt[.K]``)."""
        return sorted(n for n in self.names if is_set_aside(n))


def stored_sizes(meta: Mapping[str, Any]) -> dict[str, int]:
    """The chunks a checkpoint's JSON lists: digest -> bytes of its file (-1 when unrecorded)."""
    sizes: dict[str, int] = {}
    manifest = meta.get("chunked")
    for entry in manifest if isinstance(manifest, list) else ():
        rows = entry.get("chunks") if isinstance(entry, Mapping) else None
        for row in rows if isinstance(rows, list) else ():
            if not (isinstance(row, list) and row and isinstance(row[0], str)):
                continue
            compressed = row[3] if len(row) >= 4 else None
            size = compressed if compressed is not None else (row[1] if len(row) >= 2 else None)
            sizes[row[0]] = size if type(size) is int else -1
    return sizes
