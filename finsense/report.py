"""``python -m finsense.report [RUN_DIR | OVERRIDE ...]``: the figures people want, as PNG files.

The run is RUN_DIR (a run or a sweep directory), or the one the train command with the same
overrides uses (``python -m finsense.report seed=1 env=googl``), or with neither the default run,
``outputs/default`` (see :mod:`finsense.runs`).

For a run directory, into ``RUN_DIR/report/``:

- ``training_curve.png``: the run's ``checkpoints.metric_name`` per episode from ``metrics.csv``
  with a rolling mean, the checkpoints on disk and the best one marked, the test-split value
  where ``eval_every`` recorded one, and epsilon on a second axis.
- ``equity.png``: the agent's test-split equity against buy-and-hold, buys and sells marked. It
  reads ``eval/equity.csv`` and runs the evaluation (best checkpoint) when that file is missing;
  run ``python -m finsense.evaluate`` to refresh it after more training.
- ``drawdown.png``: how far each equity curve is below its running peak, row by row.

For a sweep directory (one whose subfolders are run directories, e.g. ``multirun/<sweep>``):
``report/sweep_comparison.png`` with every job's rolling-mean curve, and a table of the jobs
ranked by their best checkpoint's metric printed to stdout.

Needs matplotlib (the ``report`` extra); it draws with the Agg backend, so no display is needed.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from finsense import metrics
from finsense.cli import quiet_on_closed_stdout
from finsense.errors import FinSenseError
from finsense.evaluation import (
    EQUITY_FILE,
    EVAL_DIR,
    METRICS_FILE,
    EquityCurve,
    read_equity,
    run_evaluation,
)
from finsense.runs import make_parser, parse_run_args
from finsense.status import find_run_dirs, read_run

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

PROG = "finsense.report"
REPORT_DIR = "report"
MISSING_MATPLOTLIB = "finsense.report needs matplotlib: pip install 'finsense[report]'"
#: The metric drawn when the run's config names none (or names one metrics.csv lacks).
DEFAULT_METRIC = "total_profit"
#: Resolution of every figure.
DPI = 120
_EPISODE_JSON = re.compile(r"^model_ep(\d+)\.json$")


def _number(value: float) -> str:
    """A metric value for a label: thousands separators for large ones, 4 digits otherwise."""
    return f"{value:,.2f}" if abs(value) >= 100 else f"{value:.4g}"


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- reading a run ---------------------------------------------------------------------------------
def read_metrics_csv(path: Path) -> pd.DataFrame:
    """``metrics.csv`` as numbers, one row per episode (a line cut by a crash is dropped).

    Raises:
        FinSenseError: the file is missing, empty or has no ``episode`` column.
    """
    import pandas as pd

    if not path.is_file():
        raise FinSenseError(
            f"{path} does not exist; train the run first (python -m finsense.train)"
        )
    try:
        frame = pd.read_csv(path, on_bad_lines="skip")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise FinSenseError(
            f"{path}: cannot be read ({exc}); the run directory is damaged"
        ) from None
    if "episode" not in frame.columns:
        raise FinSenseError(f"{path}: no episode column; the run directory is damaged")
    frame = frame.apply(pd.to_numeric, errors="coerce")
    frame = frame.dropna(subset=["episode"]).drop_duplicates("episode", keep="last")
    return frame.sort_values("episode").reset_index(drop=True)


def _run_settings(run_dir: Path) -> tuple[str, str]:
    """The run's ``checkpoints.metric_name`` and ``mode`` (defaults when unrecorded)."""
    import yaml

    try:
        with open(run_dir / ".hydra" / "config.yaml", encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
        checkpoints = cfg["checkpoints"]
        return str(checkpoints["metric_name"]), str(checkpoints["mode"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return DEFAULT_METRIC, "max"


def checkpoint_episodes(run_dir: Path) -> list[int]:
    """Episodes of the episodic checkpoints on disk (``models/model_ep{N}.json``), sorted."""
    models = run_dir / "models"
    if not models.is_dir():
        return []
    found = (_EPISODE_JSON.match(p.name) for p in models.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def rolling_mean(values: np.ndarray, window: int | None = None) -> np.ndarray:
    """Trailing mean over ``window`` episodes (default: a 20th of the run, 2 to 50), NaN-aware."""
    import pandas as pd

    n = len(values)
    if window is None:
        window = min(50, max(2, n // 20))
    return pd.Series(values).rolling(window, min_periods=1).mean().to_numpy()


# -- figures ---------------------------------------------------------------------------------------
def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def plot_training_curve(run_dir: Path, out: Path, metric: str | None = None) -> Path:
    """Draw ``training_curve.png`` (see the module docstring) into ``out``; return its path."""
    plt = _pyplot()
    frame = read_metrics_csv(run_dir / "metrics.csv")
    if frame.empty:
        raise FinSenseError(f"{run_dir / 'metrics.csv'} has no episodes yet")
    configured, mode = _run_settings(run_dir)
    metric = metric or configured
    test_metric = None
    if metric.startswith("test_"):
        test_metric, metric = metric, metric.removeprefix("test_")
    elif f"test_{metric}" in frame.columns:
        test_metric = f"test_{metric}"
    if metric not in frame.columns:
        metric = DEFAULT_METRIC
    episodes = frame["episode"].to_numpy()
    values = frame[metric].to_numpy(dtype=np.float64)

    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    ax.plot(episodes, values, color="tab:blue", alpha=0.3, lw=1, label=f"{metric} per episode")
    window = min(50, max(2, len(values) // 20))
    ax.plot(
        episodes,
        rolling_mean(values, window),
        color="tab:blue",
        lw=2,
        label=f"rolling mean ({window} episodes)",
    )
    if test_metric is not None and test_metric in frame.columns:
        tested = frame[["episode", test_metric]].dropna()
        if not tested.empty:
            ax.plot(
                tested["episode"],
                tested[test_metric],
                "o-",
                color="tab:green",
                ms=4,
                lw=1,
                label=f"{test_metric} (test split)",
            )

    by_episode = dict(zip(episodes.astype(int).tolist(), values.tolist(), strict=True))
    kept = [e for e in checkpoint_episodes(run_dir) if e in by_episode]
    if kept:
        ax.plot(
            kept,
            [by_episode[e] for e in kept],
            "o",
            mfc="none",
            mec="black",
            ms=7,
            label="checkpoints on disk",
        )
    status = read_run(run_dir)
    if status.best_episode is not None:
        best_name = status.best_metric_name or metric
        best_y = by_episode.get(status.best_episode, status.best_metric_value)
        shown = "n/a" if status.best_metric_value is None else _number(status.best_metric_value)
        if best_y is not None and math.isfinite(best_y):
            ax.plot(
                [status.best_episode],
                [best_y],
                "*",
                color="gold",
                mec="black",
                ms=16,
                label=f"best: episode {status.best_episode} ({best_name}={shown})",
            )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("episode")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()

    if "epsilon" in frame.columns:
        twin = ax.twinx()
        twin.plot(episodes, frame["epsilon"], color="tab:gray", ls="--", lw=1.2, label="epsilon")
        twin.set_ylabel("epsilon (exploration)")
        twin.set_ylim(0, 1.05)
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles += more_handles
        labels += more_labels
    ax.legend(handles, labels, loc="best", fontsize="small")
    better = "higher" if mode == "max" else "lower"
    ax.set_title(f"Training: {metric} per episode ({better} is better) - {run_dir.name}")
    return _save(fig, out)


def _trades(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows at whose close the agent bought (position up) and sold (position down)."""
    change = np.diff(positions.astype(np.int64))
    # positions[k] is held from row k - 1 to row k: the trade happened at row k - 1's close.
    return np.flatnonzero(change > 0), np.flatnonzero(change < 0)


def _test_metrics(run_dir: Path) -> dict[str, Any]:
    try:
        with open(run_dir / EVAL_DIR / METRICS_FILE, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def plot_equity(curve: EquityCurve, out: Path, *, title: str = "") -> Path:
    """Draw ``equity.png``: agent vs buy-and-hold equity on the test split, trades marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    dates = curve.dates
    agent_return = metrics.total_return(curve.agent_equity)
    hold_return = metrics.total_return(curve.buy_and_hold_equity)
    ax.plot(
        dates, curve.agent_equity, color="tab:blue", lw=1.8, label=f"agent ({agent_return:+.1%})"
    )
    ax.plot(
        dates,
        curve.buy_and_hold_equity,
        color="tab:orange",
        lw=1.5,
        label=f"buy & hold ({hold_return:+.1%})",
    )
    buys, sells = _trades(curve.positions)
    size = 7 if len(buys) + len(sells) <= 60 else 4
    ax.plot(
        dates[buys],
        curve.agent_equity[buys],
        "^",
        color="tab:green",
        ms=size,
        ls="none",
        label=f"buy ({len(buys)})",
    )
    ax.plot(
        dates[sells],
        curve.agent_equity[sells],
        "v",
        color="tab:red",
        ms=size,
        ls="none",
        label=f"sell ({len(sells)})",
    )
    ax.axhline(curve.agent_equity[0], color="black", lw=0.8, alpha=0.4)
    ax.set_ylabel("equity")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.set_title(title or "Test split: agent vs buy & hold")
    fig.autofmt_xdate()
    return _save(fig, out)


def drawdown_curve(equity: np.ndarray) -> np.ndarray:
    """``equity / running peak - 1`` per row (<= 0); its minimum is ``metrics.max_drawdown``."""
    equity = np.asarray(equity, dtype=np.float64)
    return equity / np.maximum.accumulate(equity) - 1.0


def plot_drawdown(curve: EquityCurve, out: Path, *, title: str = "") -> Path:
    """Draw ``drawdown.png``: the agent's and buy-and-hold's drawdown on the test split."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4), layout="constrained")
    for equity, name, color, filled in (
        (curve.buy_and_hold_equity, "buy & hold", "tab:orange", False),
        (curve.agent_equity, "agent", "tab:blue", True),
    ):
        worst = metrics.max_drawdown(metrics.simple_returns(equity))
        drawdown = drawdown_curve(equity)
        if filled:  # one filled area: two would blend into a third colour
            ax.fill_between(curve.dates, drawdown, 0.0, color=color, alpha=0.2, lw=0)
        ax.plot(curve.dates, drawdown, color=color, lw=1.2, label=f"{name} (max {worst:.1%})")
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("drawdown from peak")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], loc="lower left", fontsize="small")
    ax.set_title(title or "Test split: drawdown")
    fig.autofmt_xdate()
    return _save(fig, out)


def report_run(run_dir: Path) -> tuple[list[Path], list[str]]:
    """Write every figure of one run it can; return (figures written, reasons for skipped ones)."""
    out = run_dir / REPORT_DIR
    written: list[Path] = []
    skipped: list[str] = []
    try:
        written.append(plot_training_curve(run_dir, out / "training_curve.png"))
    except FinSenseError as exc:
        skipped.append(f"training_curve.png: {exc}")

    equity_csv = run_dir / EVAL_DIR / EQUITY_FILE
    try:
        if not equity_csv.is_file():
            log.info("No %s yet: evaluating the best checkpoint on the test split", equity_csv)
            run_evaluation(run_dir)
        curve = read_equity(equity_csv)
    except FinSenseError as exc:
        skipped += [f"equity.png: {exc}", f"drawdown.png: {exc}"]
        return written, skipped
    if len(curve.dates) < 2:
        skipped += [f"equity.png and drawdown.png: {equity_csv} has fewer than 2 rows"]
        return written, skipped
    info = _test_metrics(run_dir)
    episode = info.get("episode")
    which = f"checkpoint {info.get('checkpoint')}" if info.get("checkpoint") else "agent"
    if isinstance(episode, int):
        which += f" (episode {episode})"
    written.append(plot_equity(curve, out / "equity.png", title=f"Test split equity: {which}"))
    written.append(
        plot_drawdown(curve, out / "drawdown.png", title=f"Test split drawdown: {which}")
    )
    return written, skipped


# -- sweeps ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobSummary:
    """One sweep job, as ranked by ``finsense.report``.

    Attributes:
        job: the job's directory relative to the sweep directory.
        metric_name: the metric its best checkpoint was chosen by.
        best_value: that metric at the best checkpoint (None when there is none).
        best_episode: the best checkpoint's episode (None when there is none).
        episodes_done: episodes in its ``metrics.csv`` (0 when it has none).
    """

    job: str
    metric_name: str
    best_value: float | None
    best_episode: int | None
    episodes_done: int


def summarize_jobs(sweep_dir: Path, run_dirs: Sequence[Path]) -> list[JobSummary]:
    """Each job's best checkpoint, ranked best first by each job's ``checkpoints.mode``."""
    jobs: list[tuple[JobSummary, str]] = []
    for run_dir in run_dirs:
        status = read_run(run_dir)
        metric_name, mode = _run_settings(run_dir)
        try:
            done = len(read_metrics_csv(run_dir / "metrics.csv"))
        except FinSenseError:
            done = 0
        summary = JobSummary(
            job=str(run_dir.relative_to(sweep_dir)),
            metric_name=status.best_metric_name or metric_name,
            best_value=status.best_metric_value,
            best_episode=status.best_episode,
            episodes_done=done,
        )
        jobs.append((summary, mode))

    def key(item: tuple[JobSummary, str]) -> tuple[bool, float, str]:
        summary, mode = item
        if summary.best_value is None:
            return (True, 0.0, summary.job)
        sign = -1.0 if mode == "max" else 1.0
        return (False, sign * summary.best_value, summary.job)

    return [summary for summary, _ in sorted(jobs, key=key)]


def format_ranking(jobs: Sequence[JobSummary]) -> str:
    """The ranked jobs as a plain-text table."""
    header = ("RANK", "JOB", "BEST", "EPISODE", "EPISODES")
    rows = [header]
    for rank, job in enumerate(jobs, start=1):
        value = "-" if job.best_value is None else f"{job.metric_name}={_number(job.best_value)}"
        episode = "-" if job.best_episode is None else str(job.best_episode)
        rows.append((str(rank), job.job, value, episode, str(job.episodes_done)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def job_labels(jobs: Sequence[str]) -> list[str]:
    """Short names of sweep jobs: their ``key=value`` parts that differ between jobs.

    ``a=1,b=2,c=9`` and ``a=1,b=3,c=9`` become ``b=2`` and ``b=3``; a name left empty (or a single
    job) keeps its full name.
    """
    parts = [job.split(",") for job in jobs]
    common = set.intersection(*(set(p) for p in parts)) if len(parts) > 1 else set()
    return [
        ",".join(x for x in p if x not in common) or job for p, job in zip(parts, jobs, strict=True)
    ]


def plot_sweep(sweep_dir: Path, jobs: Sequence[JobSummary], out: Path) -> Path:
    """Draw ``sweep_comparison.png``: every job's rolling-mean metric curve on one axis."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(11, 6.5), layout="constrained")
    metric_names = set()
    labels = job_labels([job.job for job in jobs])
    for rank, (job, label) in enumerate(zip(jobs, labels, strict=True), start=1):
        try:
            frame = read_metrics_csv(sweep_dir / job.job / "metrics.csv")
        except FinSenseError:
            continue
        metric = job.metric_name.removeprefix("test_")
        if metric not in frame.columns:
            metric = DEFAULT_METRIC
        metric_names.add(metric)
        values = frame[metric].to_numpy(dtype=np.float64)
        best = "" if job.best_value is None else f" (best {_number(job.best_value)})"
        ax.plot(frame["episode"], rolling_mean(values), lw=1.6, label=f"#{rank} {label}{best}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("episode")
    ax.set_ylabel(", ".join(sorted(metric_names)) + " (rolling mean)")
    ax.grid(alpha=0.3)
    fig.legend(
        loc="outside lower center",
        ncols=1 if len(jobs) <= 6 else 2,
        fontsize="x-small" if len(jobs) > 8 else "small",
    )
    name = "/".join(sweep_dir.resolve().parts[-2:])  # multirun/<sweep>, as the user typed it
    ax.set_title(f"{name}: {len(jobs)} jobs, ranked by their best checkpoint")
    return _save(fig, out)


# -- command line ----------------------------------------------------------------------------------
def _is_run_dir(path: Path) -> bool:
    return (path / ".hydra" / "config.yaml").is_file() or (path / "metrics.csv").is_file()


@quiet_on_closed_stdout
def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code (0, or 2 when nothing could be drawn)."""
    parser = make_parser(
        PROG,
        "Draw a run's training curve, test equity and drawdown (PNG files in RUN_DIR/report/), "
        "or compare the jobs of a sweep directory.",
        {},
    )
    try:
        args = parse_run_args(parser, sys.argv[1:] if argv is None else argv, {})
    except FinSenseError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(MISSING_MATPLOTLIB, file=sys.stderr)
        return 2

    try:
        run_dir = args.find()
    except FinSenseError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    if not run_dir.is_dir():
        what = "is not a directory" if run_dir.exists() else "does not exist"
        print(f"{PROG}: {run_dir} {what}; pass a run or sweep directory", file=sys.stderr)
        return 2
    if _is_run_dir(run_dir):
        written, skipped = report_run(run_dir)
        for reason in skipped:
            print(f"{PROG}: skipped {reason}", file=sys.stderr)
        for path in written:
            print(f"Wrote {path}")
        return 0 if written else 2

    jobs_dirs = [d for d in find_run_dirs(run_dir) if d != run_dir]
    if not jobs_dirs:
        print(
            f"{PROG}: {run_dir} is not a FinSense run directory (no .hydra/config.yaml) "
            "and holds no runs",
            file=sys.stderr,
        )
        return 2
    jobs = summarize_jobs(run_dir, jobs_dirs)
    path = plot_sweep(run_dir, jobs, run_dir / REPORT_DIR / "sweep_comparison.png")
    print(format_ranking(jobs))
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
