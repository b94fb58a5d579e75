"""How long ``python -m finsense.status`` takes over a sweep of 100 runs.

Builds a fake ``multirun/`` sweep in a temporary directory, laid out as FinSense writes it: per
run ``.hydra/`` (config, hydra, overrides), ``metrics.csv`` (300 rows), ``logs/``, ``models/``
with the ``max_keep`` newest episodes (``.pt``, ``.train.pt`` and a JSON holding the full config),
``best_model.*`` and an ``archive/`` of an older history. A mix of complete, interrupted, empty and
damaged runs. The ``.pt`` files hold a few bytes: status never opens them.

Reported beside two floors measured in the same session: a bare interpreter start, and
``import finsense`` (which registers the env and so imports gymnasium and numpy, never torch). The
target is "well under a second" for the whole command. Median of ``--repeats`` runs.
Usage: ``python benchmarks/status_speed.py [--runs N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

TARGET_S = 1.0
MAX_KEEP = 5

CONFIG: dict[str, Any] = {
    "episodes": 300,
    "seed": 0,
    "resume": "auto",
    "device": "cpu",
    "threads": None,
    "name": None,
    "progress": "auto",
    "logger": "csv",
    "eval_every": 0,
    "agent": {
        "name": "dqn",
        "learning_rate": 0.001,
        "gamma": 0.99,
        "hidden_sizes": [128, 128],
        "dueling": False,
        "double": True,
        "buffer_size": 50000,
        "batch_size": 64,
        "learning_starts": 1000,
        "target_update_interval": 500,
        "exploration_steps": 20000,
        "epsilon_start": 1.0,
        "epsilon_end": 0.05,
    },
    "env": {
        "window_size": 30,
        "episode_length": 252,
        "commission": 0.001,
        "allow_short": False,
        "data": {"source": "synthetic", "n_steps": 2520, "seed": 0},
    },
    "checkpoints": {
        "save_frequency": 10,
        "max_keep": MAX_KEEP,
        "save_best": True,
        "metric_name": "sharpe_ratio",
        "mode": "max",
    },
}


def _yaml(d: dict[str, Any], indent: int = 0) -> str:
    """A minimal YAML dump of a nested dict of scalars and lists (enough for a Hydra record)."""
    lines = []
    for key, value in d.items():
        pad = "  " * indent
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:\n{_yaml(value, indent + 1)}")
        else:
            lines.append(f"{pad}{key}: {json.dumps(value)}")
    return "\n".join(lines)


def _meta(episode: int, config: dict[str, Any], when: datetime, best: bool) -> dict[str, Any]:
    sharpe = round(0.5 + episode / 300, 4)
    return {
        "episode": episode,
        "metrics": {
            "total_profit": 1000.0 * sharpe,
            "sharpe_ratio": sharpe,
            "max_drawdown": -0.12,
            "total_trades": 40,
        },
        "is_best": best,
        "metric_name": "sharpe_ratio",
        "metric_value": sharpe,
        "epsilon": 0.05,
        "steps": episode * 252,
        "episodes_total": config["episodes"],
        "seed": config["seed"],
        "format_version": 1,
        "sha256": {"pt": "ab" * 32, "train.pt": "cd" * 32},
        "written_at": when.isoformat(),
        "config": config,
    }


def build_sweep(root: Path, runs: int) -> Path:
    """Write ``runs`` fake run directories under ``root/multirun/sweep``; return ``multirun``."""
    sweep = root / "multirun" / "sweep"
    start = datetime(2026, 11, 28, tzinfo=UTC)
    for i in range(runs):
        lr, seed = (1e-3, 3e-4)[i % 2], i // 2
        run_dir = sweep / f"agent.learning_rate={lr},seed={seed}"
        config = {**CONFIG, "seed": seed, "agent": {**CONFIG["agent"], "learning_rate": lr}}
        hydra = run_dir / ".hydra"
        hydra.mkdir(parents=True)
        (hydra / "config.yaml").write_text(_yaml(config) + "\n")
        (hydra / "overrides.yaml").write_text(f"- agent.learning_rate={lr}\n- seed={seed}\n")
        (hydra / "hydra.yaml").write_text("hydra:\n" + "  key: value\n" * 150)
        (run_dir / "logs").mkdir()
        (run_dir / "logs" / "finsense.log").write_text("Episode 1/300 ...\n" * 300)
        models = run_dir / "models"
        models.mkdir()
        kind = i % 10
        done = 0 if kind == 9 else 300 if kind < 5 else 10 * (i % 29 + 1)
        last = [ep for ep in range(done - 10 * (MAX_KEEP - 1), done + 1, 10) if ep > 0]
        for ep in last:
            when = start + timedelta(minutes=ep)
            (models / f"model_ep{ep}.pt").write_bytes(b"pt")
            (models / f"model_ep{ep}.train.pt").write_bytes(b"train")
            (models / f"model_ep{ep}.json").write_text(json.dumps(_meta(ep, config, when, False)))
        if last:
            best = last[len(last) // 2]
            when = start + timedelta(minutes=best)
            (models / "best_model.pt").write_bytes(b"pt")
            (models / "best_model.train.pt").write_bytes(b"train")
            (models / "best_model.json").write_text(json.dumps(_meta(best, config, when, True)))
            rows = "".join(f"{ep},100.0,0.5,-0.1,40,0.05\n" for ep in range(1, done + 1))
            (run_dir / "metrics.csv").write_text(
                "episode,total_profit,sharpe_ratio,max_drawdown,total_trades,epsilon\n" + rows
            )
        if kind == 8:
            (models / "model_ep50.pt.corrupt").write_bytes(b"bad")
        archived = models / "archive" / "20261127-120000"
        archived.mkdir(parents=True)
        for ep in (10, 20):
            (archived / f"model_ep{ep}.pt").write_bytes(b"pt")
            (archived / f"model_ep{ep}.json").write_text(
                json.dumps(_meta(ep, config, start, False))
            )
        (run_dir / ".finsense.lock").write_text("")
    (sweep / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    return root / "multirun"


def time_command(args: list[str], cwd: Path, repeats: int) -> tuple[float, str]:
    """Median wall time of a subprocess, and its last stdout."""
    times, out = [], ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - t0)
        out = done.stdout
    return statistics.median(times), out


def main() -> None:
    """Build the sweep, time the command and its floors, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    py = sys.executable

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_sweep(root, args.runs)
        files = sum(len(f) for _, _, f in os.walk(root))

        bare, _ = time_command([py, "-c", "pass"], root, args.repeats)
        floor, _ = time_command([py, "-c", "import finsense"], root, args.repeats)
        table, out = time_command([py, "-m", "finsense.status"], root, args.repeats)
        as_json, out_json = time_command(
            [py, "-m", "finsense.status", "--json"], root, args.repeats
        )
        rows = json.loads(out_json)
        assert len(rows) == args.runs, f"found {len(rows)} runs, built {args.runs}"

        os.chdir(root)
        from finsense.status import collect

        scan = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            collect([Path("multirun")])
            scan.append(time.perf_counter() - t0)
        scan_s = statistics.median(scan)
        os.chdir("/")

    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    print(f"finsense.status over {args.runs} runs ({files} files), median of {args.repeats}")
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"states: {', '.join(f'{k}={v}' for k, v in sorted(states.items()))}")
    print()
    lines = [
        ("python -m finsense.status (table)", table),
        ("python -m finsense.status --json", as_json),
        ("  of which collect() in-process", scan_s),
        ("reference: python -c 'import finsense'", floor),
        ("reference: python -c pass", bare),
        ("target (issue 6): well under", TARGET_S),
    ]
    width = max(len(name) for name, _ in lines)
    print(f"{'what':<{width}}  {'seconds':>8}  {'ms/run':>7}")
    for name, seconds in lines:
        per_run = (
            "" if name.startswith(("reference", "target")) else f"{1e3 * seconds / args.runs:.2f}"
        )
        print(f"{name:<{width}}  {seconds:8.3f}  {per_run:>7}")
    print()
    print("first lines of the table:")
    print("\n".join(out.splitlines()[:4]))


if __name__ == "__main__":
    main()
