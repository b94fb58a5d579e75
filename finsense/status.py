"""``python -m finsense.status [DIR ...]``: one line per run, from metadata alone.

Finds every run directory below each DIR (default: ``outputs/`` and ``multirun/`` under the
current directory) and reports how far it got, its latest checkpoint, its best metric, when it
last changed and whether it is running, interrupted, complete, failed, damaged or empty.

This is the fast path: it reads directory listings and small JSON/YAML/CSV files only. It never
imports torch and never verifies checksums (``finsense.checkpoint`` does that when a run resumes),
so it answers in well under a second for a sweep of 100 runs.

A run directory is one that holds a ``models/`` directory, a ``metrics.csv`` or a ``.hydra/``
directory. The on-disk layout it reads (through the torch-free ``finsense.checkpoint.layout``) is
the one ``finsense.checkpoint`` and ``finsense.trainer`` write: ``models/model_ep{N}.pt`` +
``model_ep{N}.json`` (the JSON is written last, so it marks a finished save),
``models/best_model.json``, ``*.corrupt`` files set aside by the store, and the
``.finsense.lock`` file the trainer holds with ``fcntl.flock`` while it trains.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from finsense.checkpoint.layout import BEST, Listing, episode_stem
from finsense.cli import quiet_on_closed_stdout
from finsense.errors import FinSenseError
from finsense.lockfile import lock_held
from finsense.sweeps import FAILED_MARKER, failed_error, read_manifest

log = logging.getLogger(__name__)

#: Folders searched when no DIR is given, relative to the current directory.
DEFAULT_DIRS: tuple[str, ...] = ("outputs", "multirun")
#: The file the trainer holds an exclusive ``flock`` on while it trains.
#: Subfolders of a run directory that never hold other runs (checkpoints, old histories, Hydra).
NOT_RUNS: frozenset[str] = frozenset({"models", "archive", ".hydra"})


@dataclass(frozen=True)
class RunStatus:
    """What ``finsense.status`` knows about one run directory.

    Attributes:
        run_dir: the run directory, relative to the current directory when it lies below it.
        episodes_done: episodes finished: the latest valid checkpoint's episode (0 if none); while
            the run is running, the last episode in ``metrics.csv`` when that is further on.
        episodes_total: the episode target (``episodes`` in ``.hydra/config.yaml``, else the newest
            checkpoint's ``episodes_total``); ``None`` when neither says.
        latest_checkpoint: file name of the newest checkpoint whose JSON parses, e.g.
            ``model_ep290.pt``; ``None`` when there is none.
        best_metric_name: ``metric_name`` of ``best_model.json``, or ``None``.
        best_metric_value: its ``metric_value`` (``None`` when absent or not finite).
        best_episode: the episode of the best checkpoint, or ``None``.
        updated_at: last update, local time: the newest checkpoint's ``written_at`` or the mtime of
            ``metrics.csv``, whichever is later; ``None`` when the run has written neither.
        state: ``running``, ``running (damaged)``, ``failed`` (a sweep job whose last run failed),
            ``damaged``, ``complete``, ``interrupted`` or ``empty``.
        corrupt_files: names of the ``*.corrupt`` files in ``models/``, sorted.
        sweep_invocation: for a sweep job, the id of the sweep invocation that last ran it (from
            the sweep's ``sweep_manifest.jsonl``); ``None`` otherwise.
    """

    run_dir: str
    episodes_done: int
    episodes_total: int | None
    latest_checkpoint: str | None
    best_metric_name: str | None
    best_metric_value: float | None
    best_episode: int | None
    updated_at: datetime | None
    state: str
    corrupt_files: tuple[str, ...] = ()
    sweep_invocation: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The status as a JSON-ready dict (``updated_at`` as ISO 8601 with UTC offset)."""
        return {
            "run_dir": self.run_dir,
            "episodes_done": self.episodes_done,
            "episodes_total": self.episodes_total,
            "latest_checkpoint": self.latest_checkpoint,
            "best_metric_name": self.best_metric_name,
            "best_metric_value": self.best_metric_value,
            "best_episode": self.best_episode,
            "updated_at": self.updated_at.isoformat(timespec="seconds")
            if self.updated_at
            else None,
            "state": self.state,
            "corrupt_files": list(self.corrupt_files),
            "sweep_invocation": self.sweep_invocation,
        }


# -- finding runs ---------------------------------------------------------------------------------
def find_run_dirs(root: Path) -> Iterator[Path]:
    """Every run directory at or below ``root``, depth first.

    Descends into a run directory's other subfolders too (a run may nest others), but never into
    its ``models/``, ``archive/`` or ``.hydra/``, and never follows symlinked folders.
    """
    stack = [root]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as it:
                entries = [e for e in it if e.is_dir(follow_symlinks=False)]
        except OSError as exc:
            log.debug("cannot list %s: %s", here, exc)
            continue
        names = {e.name for e in entries}
        is_run = (
            "models" in names
            or ".hydra" in names
            or (here / "metrics.csv").is_file()
            or (here / FAILED_MARKER).is_file()
        )
        if is_run:
            yield here
        stack.extend(
            Path(e.path)
            for e in sorted(entries, key=lambda e: e.name, reverse=True)
            if not (is_run and e.name in NOT_RUNS)
        )


# -- reading one run ------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when it is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        log.debug("skipping %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _as_int(value: Any) -> int | None:
    """``value`` if it is a real int (not a bool), else ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _as_float(value: Any) -> float | None:
    """``value`` as a finite float, else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _episodes_from_hydra(run_dir: Path) -> int | None:
    """``episodes`` from ``.hydra/config.yaml`` (the latest command's target), or ``None``."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    import yaml  # only runs with a Hydra record pay for it

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.load(f, Loader=loader)
    except (OSError, yaml.YAMLError) as exc:
        log.debug("skipping %s: %s", path, exc)
        return None
    return _as_int(cfg.get("episodes")) if isinstance(cfg, dict) else None


def _last_csv_episode(path: Path) -> int | None:
    """The ``episode`` (first column) of the last row of ``metrics.csv``, read from its tail."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        first = line.split(",", 1)[0].strip()
        if first.isdigit():
            return int(first)
    return None


def _parse_time(value: Any) -> datetime | None:
    """An ISO 8601 ``written_at`` as an aware local datetime, or ``None``."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.astimezone() if when.tzinfo else None


def _local_mtime(path: Path) -> datetime | None:
    """``path``'s modification time as an aware local datetime, or ``None`` if it is missing."""
    try:
        return datetime.fromtimestamp(path.stat().st_mtime).astimezone()
    except OSError:
        return None


def _relative(path: Path, cwd: Path) -> str:
    """``path`` relative to ``cwd`` when it lies below it, else absolute."""
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)


def read_run(run_dir: Path, cwd: Path | None = None) -> RunStatus:
    """The status of one run directory, from its listings and metadata files only."""
    cwd = cwd or Path.cwd()
    models = run_dir / "models"
    try:
        listing = Listing(frozenset(n for n in os.listdir(models) if not n.startswith(".")))
    except OSError:
        listing = Listing(frozenset())

    corrupt = tuple(listing.set_aside())
    latest, latest_episode = _newest(listing, lambda name: _read_json(models / name))

    best = _read_json(models / f"{BEST}.json") if listing.has(BEST, "pt") else None
    best = best or {}

    total = _episodes_from_hydra(run_dir)
    if total is None and latest is not None:
        total = _as_int(latest.get("episodes_total"))

    running = lock_held(run_dir)
    done = latest_episode
    metrics_csv = run_dir / "metrics.csv"
    if running:
        csv_episode = _last_csv_episode(metrics_csv)
        done = max(done, csv_episode or 0)

    times = [_local_mtime(metrics_csv)]
    if latest is not None:
        times.append(
            _parse_time(latest.get("written_at"))
            or _local_mtime(models / f"{episode_stem(latest_episode)}.json")
        )
    known = [t for t in times if t is not None]
    updated = max(known) if known else None

    if running:
        state = "running (damaged)" if corrupt else "running"
    elif failed_error(run_dir) is not None:
        state = "failed"  # its last run (a sweep job) failed: finsense-failed.json says why
    else:
        state = _stored_state(corrupt, latest is not None, total, latest_episode)

    name = best.get("metric_name")
    return RunStatus(
        run_dir=_relative(run_dir, cwd),
        episodes_done=done,
        episodes_total=total,
        latest_checkpoint=f"{episode_stem(latest_episode)}.pt" if latest is not None else None,
        best_metric_name=name if isinstance(name, str) else None,
        best_metric_value=_as_float(best.get("metric_value")),
        best_episode=_as_int(best.get("episode")),
        updated_at=updated,
        state=state,
        corrupt_files=corrupt,
    )


def _newest(
    listing: Listing, read: Callable[[str], dict[str, Any] | None]
) -> tuple[dict[str, Any] | None, int]:
    """The newest checkpoint of ``listing`` whose JSON ``read(name)`` gives and agrees with its
    name, and its episode: ``(None, 0)`` when there is none."""
    for episode in listing.saved():
        if not listing.has(episode_stem(episode), "pt"):
            continue  # the weights were set aside or never landed: not a checkpoint
        meta = read(f"{episode_stem(episode)}.json")
        if meta is not None and _as_int(meta.get("episode")) == episode:
            return meta, episode
    return None, 0


def _stored_state(
    corrupt: tuple[str, ...], has_latest: bool, total: int | None, latest: int
) -> str:
    """The state of a run no process is writing, from what its ``models/`` holds."""
    if corrupt:
        return "damaged"
    if not has_latest:
        return "empty"
    if total is not None and latest >= total:
        return "complete"
    return "interrupted"


def read_remote_run(remote: Any) -> RunStatus:
    """The status of one run mirrored to a remote (``checkpoints.remote``), from its listing
    and JSON files only: as :func:`read_run`, without a lock to tell ``running`` (a remote run
    is ``interrupted`` until its newest checkpoint reaches its target)."""
    from finsense.checkpoint.remote import read_remote_json

    listing = remote.listing()
    corrupt = tuple(listing.set_aside())
    latest, latest_episode = _newest(listing, lambda name: read_remote_json(remote, name))
    best = (read_remote_json(remote, f"{BEST}.json") if listing.has(BEST, "pt") else None) or {}
    total = _as_int(latest.get("episodes_total")) if latest is not None else None
    state = _stored_state(corrupt, latest is not None, total, latest_episode)
    name = best.get("metric_name")
    return RunStatus(
        run_dir=f"{remote.base_url}/{remote.run_name}",
        episodes_done=latest_episode,
        episodes_total=total,
        latest_checkpoint=f"{episode_stem(latest_episode)}.pt" if latest is not None else None,
        best_metric_name=name if isinstance(name, str) else None,
        best_metric_value=_as_float(best.get("metric_value")),
        best_episode=_as_int(best.get("episode")),
        updated_at=_parse_time(latest.get("written_at")) if latest is not None else None,
        state=state,
        corrupt_files=corrupt,
    )


def collect_remote(url: str) -> list[RunStatus]:
    """The status of every run mirrored under ``url`` (a ``checkpoints.remote`` URL), sorted.

    Raises:
        FinSenseError: the URL cannot be used or reached (one line).
    """
    from finsense.checkpoint.remote import RemoteModels, remote_runs

    fs, root, names = remote_runs(url)
    return [read_remote_run(RemoteModels(url, name, fs, root)) for name in names]


def collect(dirs: Sequence[Path]) -> list[RunStatus]:
    """The status of every run directory at or below each of ``dirs``, sorted by ``run_dir``.

    Raises:
        FinSenseError: a directory in ``dirs`` does not exist or is not a directory.
    """
    cwd = Path.cwd()
    for d in dirs:
        if not Path(d).is_dir():
            what = "is not a directory" if Path(d).exists() else "does not exist"
            raise FinSenseError(
                f"{d} {what}; pass a run directory or a folder of runs (e.g. outputs/ or multirun/)"
            )
    seen: set[Path] = set()
    runs: list[tuple[str, RunStatus]] = []
    invocations: dict[Path, dict[str, str | None]] = {}
    for d in dirs:
        for run_dir in find_run_dirs(Path(os.path.abspath(d))):
            key = run_dir.resolve()
            if key in seen:
                continue
            seen.add(key)
            sweep = run_dir.parent
            if sweep not in invocations:  # one read of each sweep's manifest
                invocations[sweep] = {
                    e["job_dir"]: e.get("invocation") for e in read_manifest(sweep)
                }
            run = read_run(run_dir, cwd)
            invocation = invocations[sweep].get(run_dir.name)
            if invocation is not None:
                run = replace(run, sweep_invocation=invocation)
            runs.append((str(sweep), run))
    # A sweep's jobs grouped by the invocation that last ran them, oldest first.
    runs.sort(key=lambda item: (item[0], item[1].sweep_invocation or "", item[1].run_dir))
    return [run for _, run in runs]


# -- output ---------------------------------------------------------------------------------------
COLUMNS: tuple[str, ...] = ("RUN", "EPISODES", "LATEST", "BEST", "UPDATED", "STATE")


def _row(run: RunStatus) -> tuple[str, ...]:
    """The table cells of one run."""
    total = "?" if run.episodes_total is None else str(run.episodes_total)
    if run.best_metric_name is None:
        best = "-"
    else:
        value = "-" if run.best_metric_value is None else f"{run.best_metric_value:.4g}"
        at = "" if run.best_episode is None else f" @ep{run.best_episode}"
        best = f"{run.best_metric_name}={value}{at}"
    updated = run.updated_at.strftime("%Y-%m-%d %H:%M") if run.updated_at else "-"
    return (
        run.run_dir,
        f"{run.episodes_done}/{total}",
        run.latest_checkpoint or "-",
        best,
        updated,
        run.state,
    )


def format_table(runs: Sequence[RunStatus]) -> str:
    """Runs as a plain-text table with aligned columns and a header line (and a SWEEP column,
    the invocation that last ran each job, when any run is a recorded sweep job)."""
    columns = COLUMNS
    rows = [_row(r) for r in runs]
    if any(r.sweep_invocation for r in runs):
        columns = (*COLUMNS, "SWEEP")
        rows = [(*row, r.sweep_invocation or "-") for row, r in zip(rows, runs, strict=True)]
    rows = [columns, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@quiet_on_closed_stdout
def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code (0, or 2 for a missing DIR)."""
    parser = argparse.ArgumentParser(
        prog="python -m finsense.status",
        description="Show every FinSense run below DIR: progress, checkpoints, best metric, state.",
    )
    parser.add_argument(
        "dirs",
        nargs="*",
        metavar="DIR",
        help="run directories or folders of runs (default: outputs/ and multirun/ if "
        "present), or a checkpoints.remote URL (s3://bucket/prefix, file:///path)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list for scripts")
    args = parser.parse_args(argv)

    urls = [d for d in args.dirs if "://" in d]
    dirs: list[Path] = [Path(d) for d in args.dirs if "://" not in d]
    if not args.dirs:
        dirs = [Path(d) for d in DEFAULT_DIRS if Path(d).is_dir()]
    try:
        runs = collect(dirs) if dirs or not urls else []
        for url in urls:
            runs.extend(collect_remote(url))
    except FinSenseError as exc:
        print(f"finsense.status: {exc}", file=sys.stderr)
        return exc.exit_code

    if args.json:
        print(json.dumps([r.to_json() for r in runs], indent=2))
    elif not runs:
        where = " or ".join(f"{d}/" for d in (args.dirs or DEFAULT_DIRS))
        print(f"No FinSense runs found under {where}. Start one with: python -m finsense.train")
    else:
        print(format_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
