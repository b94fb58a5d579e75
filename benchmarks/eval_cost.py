"""What scoring the validation split costs a training run: the default run with and without it.

Each row is a real ``python -m finsense.train`` process on the default config (DQN, synthetic
market: 1,400 training rows, 200 validation rows), ``--episodes`` episodes (default 100), in a
fresh run directory:

- ``none``: no held-out scoring at all (``eval_every=0 checkpoints.metric_name=total_profit``);
- ``default``: the defaults (``eval_every=5``; ``val_total_profit`` chooses the best model, so
  every checkpoint episode is scored too);
- ``every``: ``eval_every=1``, the validation split after every episode.

The rows alternate (none, default, every, none, ...) for ``--rounds`` rounds so that drift in
machine load hits all alike. Two times per run: ``wall``, the whole process (interpreter start,
imports and checkpoint writes included), and ``episodes``, the sum of ``metrics.csv``'s
``seconds`` column (the training episodes alone: acting, env steps, learning; the validation
scoring runs after an episode's clock stops). The cost of scoring is the row's median wall time
over ``none``'s.

Usage::

    python benchmarks/eval_cost.py [--episodes 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS: dict[str, list[str]] = {
    "none": ["eval_every=0", "checkpoints.metric_name=total_profit"],
    "default": [],
    "every": ["eval_every=1"],
}


def run_once(overrides: list[str], episodes: int) -> tuple[float, float, int]:
    """(wall seconds, episode seconds, scored episodes) of one training process."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        argv = [
            sys.executable,
            "-m",
            "finsense.train",
            f"episodes={episodes}",
            "progress=log",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ]
        started = time.perf_counter()
        done = subprocess.run(argv, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr}")
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        seconds = sum(float(row["seconds"]) for row in rows)
        scored = sum(1 for row in rows if row.get("val_total_profit") not in (None, "", "nan"))
        return wall, seconds, scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name, overrides in CONFIGS.items():
            results[name].append(run_once(overrides, args.episodes))
    base = statistics.median(wall for wall, _, _ in results["none"])
    print(f"{args.episodes} episodes of the default run, {args.rounds} rounds, medians")
    print(f"{'config':<8} {'scored':>6} {'wall s':>8} {'episodes s':>10} {'vs none':>8}")
    for name, runs in results.items():
        wall = statistics.median(w for w, _, _ in runs)
        seconds = statistics.median(s for _, s, _ in runs)
        scored = runs[0][2]
        print(f"{name:<8} {scored:>6} {wall:>8.1f} {seconds:>10.1f} {wall / base - 1:>+8.1%}")


if __name__ == "__main__":
    main()
