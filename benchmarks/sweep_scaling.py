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
from pathlib import Path
from statistics import median

EPISODE_LENGTH = 252


def run_sweep(workdir: Path, episodes: int, parallel: bool) -> float:
    """Wall seconds of one 2-job sweep in a fresh directory."""
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
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=60, help="episodes per job")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    args = parser.parse_args()
    steps = 2 * args.episodes * EPISODE_LENGTH
    times: dict[str, list[float]] = {"sequential": [], "parallel (joblib, n_jobs=2)": []}
    for _ in range(args.rounds):
        for label, parallel in (("sequential", False), ("parallel (joblib, n_jobs=2)", True)):
            with tempfile.TemporaryDirectory() as tmp:
                times[label].append(run_sweep(Path(tmp), args.episodes, parallel))
    print(
        f"sweep scaling: 2 jobs x {args.episodes} episodes x {EPISODE_LENGTH} steps "
        f"({steps:,} env steps per sweep), {os.cpu_count()} CPUs, median of {args.rounds}"
    )
    print(f"{'launcher':<30}{'wall s':>10}{'steps/s':>12}{'speed-up':>10}")
    base = median(times["sequential"])
    for label, values in times.items():
        wall = median(values)
        print(f"{label:<30}{wall:>10.1f}{steps / wall:>12,.0f}{base / wall:>10.2f}")


if __name__ == "__main__":
    main()
