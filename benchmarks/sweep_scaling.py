"""Sweep scaling: 2 jobs one after the other (Hydra's basic launcher) vs in parallel (joblib).

Both sweeps are real ``python -m finsense.train --multirun`` processes with the same two jobs
(seed=0,1) and the same step budget; each job pins torch to one thread (FinSense's default), so on
a 2-core machine two parallel jobs should come close to twice the throughput. Rounds alternate
sequential and parallel so that machine noise hits both alike.

    python benchmarks/sweep_scaling.py [--episodes 60] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from statistics import median

EPISODE_LENGTH = 252


def training_span(workdir: Path) -> float:
    """Seconds from the first job's first log line to the last job's last (no process start-up)."""
    starts, ends = [], []
    for log in workdir.glob("multirun/*/*/logs/finsense.log"):
        lines = log.read_text().splitlines()
        stamp = lambda line: datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")  # noqa: E731
        starts.append(stamp(lines[0]))
        ends.append(stamp(lines[-1]))
    return (max(ends) - min(starts)).total_seconds()


def run_sweep(workdir: Path, episodes: int, parallel: bool) -> tuple[float, float]:
    """Wall seconds of one 2-job sweep in a fresh directory, and its training span."""
    argv = [
        sys.executable,
        "-m",
        "finsense.train",
        "--multirun",
        "seed=0,1",
        f"episodes={episodes}",
        f"env.episode_length={EPISODE_LENGTH}",
        "progress=log",
    ]
    if parallel:
        argv += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed:\n{proc.stdout}\n{proc.stderr}")
    return seconds, training_span(workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=60, help="episodes per job")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    args = parser.parse_args()
    steps = 2 * args.episodes * EPISODE_LENGTH
    labels = {"sequential": False, "parallel (joblib, n_jobs=2)": True}
    walls: dict[str, list[float]] = {label: [] for label in labels}
    spans: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(args.rounds):
        for label, parallel in labels.items():
            with tempfile.TemporaryDirectory() as tmp:
                wall, span = run_sweep(Path(tmp), args.episodes, parallel)
            walls[label].append(wall)
            spans[label].append(span)
    print(
        f"sweep scaling: 2 jobs x {args.episodes} episodes x {EPISODE_LENGTH} steps "
        f"({steps:,} env steps per sweep), {os.cpu_count()} CPUs, median of {args.rounds}"
    )
    print("whole command = process start-up included; training = first to last log line")
    header = f"{'launcher':<30}{'whole s':>9}{'steps/s':>10}{'x':>6}"
    print(f"{header}{'training s':>12}{'steps/s':>10}{'x':>6}")
    base_wall, base_span = median(walls["sequential"]), median(spans["sequential"])
    for label in labels:
        wall, span = median(walls[label]), median(spans[label])
        print(
            f"{label:<30}{wall:>9.1f}{steps / wall:>10,.0f}{base_wall / wall:>6.2f}"
            f"{span:>12.1f}{steps / span:>10,.0f}{base_span / span:>6.2f}"
        )


if __name__ == "__main__":
    main()
