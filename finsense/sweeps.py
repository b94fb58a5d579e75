"""What a sweep knows about its jobs: which ones each invocation launched, which failed, and which
keys may not be swept. Torch-free (``finsense.status`` reads it).

Layout of a sweep directory (``multirun/<name or sweep>/``)::

    sweep_manifest.jsonl   one JSON line per event, appended by the jobs themselves (so a killed
                           sweep still leaves a record): ``{"invocation", "job_dir", "event",
                           "overrides", "error"}`` with event ``started``, ``complete``,
                           ``interrupted`` or ``failed``
    <job>/.finsense-failed.json   in a job whose last run failed (its one-line error); removed
                                  when a later run of the job succeeds

The invocation id is set by the sweep's own process (:func:`start_invocation`) in the
environment, which the jobs (local, joblib or SLURM) inherit.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finsense.checkpoint import write_bytes_atomic

#: The manifest of a sweep directory.
MANIFEST = "sweep_manifest.jsonl"
#: The marker of a job whose last run failed.
FAILED_MARKER = ".finsense-failed.json"
#: The environment variable holding the id of the sweep invocation a job belongs to.
INVOCATION_ENV = "FINSENSE_SWEEP_INVOCATION"


def start_invocation() -> str:
    """A new invocation id (UTC time and pid), exported for the jobs this process launches."""
    invocation = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    os.environ[INVOCATION_ENV] = invocation
    return invocation


def current_invocation() -> str | None:
    """The id of the sweep invocation this job belongs to, if any."""
    return os.environ.get(INVOCATION_ENV) or None


def record(
    sweep_dir: Path,
    job_dir: Path,
    event: str,
    *,
    overrides: Sequence[str] = (),
    error: str | None = None,
) -> None:
    """Append one event line to the sweep's manifest.

    One ``write`` of one line with ``O_APPEND``: jobs running in parallel never interleave their
    lines, and a crash leaves at most a cut last line (which :func:`read_manifest` skips).
    """
    try:
        job = job_dir.resolve().relative_to(sweep_dir.resolve()).as_posix()
    except ValueError:
        job = str(job_dir)
    line = {
        "invocation": current_invocation(),
        "job_dir": job,
        "event": event,
        "overrides": list(overrides),
        "error": error,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    data = (json.dumps(line) + "\n").encode("utf-8")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(sweep_dir / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(sweep_dir: Path) -> list[dict[str, Any]]:
    """The manifest's events, oldest first (a damaged line is skipped)."""
    try:
        text = (sweep_dir / MANIFEST).read_text(encoding="utf-8")
    except OSError:
        return []
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("job_dir"), str):
            events.append(event)
    return events


def last_events(events: Iterable[dict[str, Any]], invocation: str) -> dict[str, dict[str, Any]]:
    """The last event of each job of one invocation, by job directory."""
    out: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.get("invocation") == invocation:
            out[event["job_dir"]] = event
    return out


def mark_failed(job_dir: Path, error: str) -> None:
    """Leave the failure marker in a job directory (best effort: the manifest has it too)."""
    with contextlib.suppress(OSError):
        job_dir.mkdir(parents=True, exist_ok=True)
        record = {"error": error, "at": datetime.now(UTC).isoformat(timespec="seconds")}
        write_bytes_atomic(job_dir / FAILED_MARKER, (json.dumps(record) + "\n").encode("utf-8"))


def clear_failed(job_dir: Path) -> None:
    """Remove the failure marker after a successful run of the job."""
    with contextlib.suppress(OSError):
        os.unlink(job_dir / FAILED_MARKER)


def failed_error(run_dir: Path) -> str | None:
    """The one-line error of a run whose last run failed, or None."""
    try:
        data = json.loads((run_dir / FAILED_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) else "failed"


def unsweepable(sweep_keys: Iterable[str], excluded: Iterable[str]) -> str | None:
    """One line refusing a sweep over keys that are left out of run-directory names, or None.

    Jobs that differ only in such a key would share one run directory: the first would run, the
    next would find its history and resume it ("Training already complete!"). The rule is the
    same for every such key, because none of them defines a different experiment for the
    directory name: ``episodes`` extends a run, ``checkpoints.*`` choose what is kept,
    ``device``/``threads``/``progress``/``logger``/``eval_every`` how it runs, ``name`` names the
    sweep itself.
    """
    excluded_set = set(excluded)
    bad = sorted({key for key in sweep_keys if key in excluded_set})
    if not bad:
        return None
    keys = ", ".join(bad)
    return (
        f"cannot sweep {keys}: jobs that differ only there would share one run directory "
        "(the key is not part of run-directory names), so one would resume the other; run one "
        f"sweep per value instead, each with its own name=..., or set {bad[0]} to one value"
    )
