"""``python -m finsense.report [RUN_DIR | OVERRIDE ...]``: the figures people want, as PNG files.

The run is RUN_DIR (a run or a sweep directory), or the one the train command with the same
overrides uses (``python -m finsense.report seed=1 env=googl``), or with neither the default run,
``outputs/default`` (see :mod:`finsense.runs`).

For a run directory, into ``RUN_DIR/report/``:

- ``training_curve.png``: the training episodes' metric per episode from ``metrics.csv`` with a
  rolling mean (for a ``val_*``/``test_*`` ``checkpoints.metric_name``, its training twin), the
  validation- or test-split value at the episodes where it was scored, the checkpoints on disk
  and the best one marked on the curve of the metric that ranks them, and epsilon on a second
  axis.
- ``equity.png``: the agent's test-split equity against the baselines (buy-and-hold, the
  momentum and moving-average rules, the random policies' mean with a band of one standard
  deviation), the agent's buys and sells marked. It reads ``eval/equity.csv`` and runs the
  evaluation (best checkpoint) when that file is missing; run ``python -m finsense.evaluate`` to
  refresh it after more training.
- ``drawdown.png``: how far each equity curve is below its running peak, row by row.

For a sweep directory (one whose subfolders are run directories, e.g. ``multirun/<sweep>``):
``report/sweep_comparison.png`` with every job's rolling-mean curve, and a table of the jobs
ranked by their best checkpoint's metric printed to stdout. Jobs whose configs differ only in
``seed`` are one configuration: when any configuration has more than one seed, the table ranks
configurations by the mean of their best metric (mean and standard deviation of the final and the
best metric, each job and seed listed beneath) and ``report/seed_aggregate.png`` draws those means
with standard-deviation error bars.

Needs matplotlib (the ``report`` extra); it draws with the Agg backend, so no display is needed.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from finsense import metrics
from finsense.checkpoint import write_bytes_atomic
from finsense.checkpoint.layout import Listing
from finsense.cli import quiet_on_closed_stdout
from finsense.config import non_experiment_keys
from finsense.errors import FinSenseError
from finsense.evaluation import (
    EQUITY_FILE,
    EVAL_DIR,
    METRICS_FILE,
    EquityCurve,
    is_trading_run,
    load_run_config,
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
    return sorted(Listing(frozenset(os.listdir(models))).saved())


def rolling_mean(values: np.ndarray, window: int | None = None) -> np.ndarray:
    """Trailing mean over ``window`` episodes (default: a 20th of the run, 2 to 50), NaN-aware."""
    import pandas as pd

    n = len(values)
    if window is None:
        window = min(50, max(2, n // 20))
    return pd.Series(values).rolling(window, min_periods=1).mean().to_numpy()


# -- figures ---------------------------------------------------------------------------------------
def _save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` (its format from the suffix) atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = io.BytesIO()
    fig.savefig(image, dpi=DPI, format=path.suffix.lstrip(".") or None)
    _pyplot().close(fig)
    write_bytes_atomic(path, image.getvalue())
    return path


#: Prefixes of the metrics scored on a split kept out of training.
HELD_OUT_PREFIXES: tuple[str, ...] = ("val_", "test_")


def _training_twin(metric: str) -> str:
    """``val_total_profit`` -> ``total_profit``: the training episodes' metric of the same name."""
    for prefix in HELD_OUT_PREFIXES:
        if metric.startswith(prefix):
            return metric.removeprefix(prefix)
    return metric


def plot_training_curve(run_dir: Path, out: Path, metric: str | None = None) -> Path:
    """Draw ``training_curve.png`` (see the module docstring) into ``out``; return its path."""
    plt = _pyplot()
    frame = read_metrics_csv(run_dir / "metrics.csv")
    if frame.empty:
        raise FinSenseError(f"{run_dir / 'metrics.csv'} has no episodes yet")
    configured, mode = _run_settings(run_dir)
    metric = metric or configured
    # A held-out metric (val_*, test_*) is drawn as points where it was measured, over the
    # training curve of the metric it is a twin of; the best star sits on the one that ranks.
    held_metric = None
    if metric.startswith(HELD_OUT_PREFIXES):
        held_metric, metric = metric, _training_twin(metric)
    else:
        held_metric = next(
            (f"{p}{metric}" for p in HELD_OUT_PREFIXES if f"{p}{metric}" in frame.columns), None
        )
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
    by_episode = dict(zip(episodes.astype(int).tolist(), values.tolist(), strict=True))
    if held_metric is not None and held_metric in frame.columns:
        tested = frame[["episode", held_metric]].dropna()
        if not tested.empty:
            split = "validation" if held_metric.startswith("val_") else "test"
            ax.plot(
                tested["episode"],
                tested[held_metric],
                "o-",
                color="tab:green",
                ms=4,
                lw=1,
                label=f"{held_metric} ({split} split)",
            )
            if held_metric == configured:
                by_episode = dict(
                    zip(
                        tested["episode"].astype(int).tolist(),
                        tested[held_metric].astype(float).tolist(),
                        strict=True,
                    )
                )
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
    # positions[k] is held from row k - 1 to row k: the trade filled at row k - 1's close (with
    # env.execution=next_open, at row k's open: marked at the close before it).
    return np.flatnonzero(change > 0), np.flatnonzero(change < 0)


#: How each rule baseline is drawn: its label and colour.
_RULE_STYLE: dict[str, tuple[str, str]] = {
    "momentum": ("momentum", "tab:purple"),
    "ma_crossover": ("MA crossover", "tab:brown"),
}


def _test_metrics(run_dir: Path) -> dict[str, Any]:
    try:
        with open(run_dir / EVAL_DIR / METRICS_FILE, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def plot_equity(
    curve: EquityCurve,
    out: Path,
    *,
    title: str = "",
    rule_labels: dict[str, str] | None = None,
) -> Path:
    """Draw ``equity.png``: the agent's equity on the test split against every baseline in
    ``curve`` (``rule_labels`` may rename the rules: ``MA 10/50``), the agent's trades marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    dates = curve.dates
    agent_return = metrics.total_return(curve.agent_equity)
    hold_return = metrics.total_return(curve.buy_and_hold_equity)
    if curve.random_mean is not None:
        mean = curve.random_mean
        spread = curve.random_std if curve.random_std is not None else np.zeros_like(mean)
        ax.fill_between(dates, mean - spread, mean + spread, color="tab:gray", alpha=0.2, lw=0)
        ax.plot(
            dates,
            mean,
            color="tab:gray",
            lw=1.0,
            label=f"random, mean ± std ({metrics.total_return(mean):+.1%})",
        )
    for rule, equity in curve.rules.items():
        label, color = _RULE_STYLE.get(rule, (rule, None))
        label = (rule_labels or {}).get(rule, label)
        ax.plot(
            dates,
            equity,
            color=color,
            lw=1.1,
            label=f"{label} ({metrics.total_return(equity):+.1%})",
        )
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
    ax.set_title(title or "Test split: agent vs baselines")
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
        if not is_trading_run(load_run_config(run_dir)):
            reason = "the run's env is not a trading env (no test split, no equity)"
            return written, [f"equity.png: {reason}", f"drawdown.png: {reason}"]
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
    windows = info.get("ma_windows")
    rule_labels = {}
    if isinstance(windows, dict) and {"short", "long"} <= set(windows):
        rule_labels["ma_crossover"] = f"MA {windows['short']}/{windows['long']}"
    written.append(
        plot_equity(
            curve,
            out / "equity.png",
            title=f"Test split equity: {which}",
            rule_labels=rule_labels,
        )
    )
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
        final_value: the metric at its last episode in ``metrics.csv`` (None when it has none).
        seed: its config's ``seed`` (None when unrecorded).
        config_key: its config without ``seed`` (and the keys that never change an experiment):
            jobs with the same key are one configuration run with different seeds.
    """

    job: str
    metric_name: str
    best_value: float | None
    best_episode: int | None
    episodes_done: int
    final_value: float | None = None
    seed: int | None = None
    config_key: str = ""


_SEED_PART = re.compile(r"^seed=(-?\d+)$")


def seed_and_config_key(run_dir: Path, job: str) -> tuple[int | None, str]:
    """The job's seed and its grouping key: its recorded config without ``seed``, or where no
    seed is recorded there, its directory name without the ``seed=N`` part."""
    import yaml

    try:
        with open(run_dir / ".hydra" / "config.yaml", encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        cfg = None
    if isinstance(cfg, dict) and isinstance(cfg.get("seed"), int):
        # Keys that never change what an experiment is are left out, with seed itself.
        ignored = {"seed", *non_experiment_keys()}
        rest = {k: v for k, v in cfg.items() if k not in ignored}
        return cfg["seed"], json.dumps(rest, sort_keys=True, default=str)
    # No seed recorded: the directory name is all there is (a job without seed=N in it is alone).
    parts = job.split(",")
    seeds = [int(m.group(1)) for m in map(_SEED_PART.match, parts) if m]
    return (seeds[0] if seeds else None), ",".join(p for p in parts if not _SEED_PART.match(p))


def _final_value(frame: pd.DataFrame, metric_name: str) -> float | None:
    """The metric's last recorded value (a ``val_``/``test_`` metric is recorded only some
    episodes)."""
    for column in (metric_name, _training_twin(metric_name), DEFAULT_METRIC):
        if column in frame.columns:
            values = frame[column].dropna()
            return float(values.iloc[-1]) if len(values) else None
    return None


def summarize_jobs(sweep_dir: Path, run_dirs: Sequence[Path]) -> list[JobSummary]:
    """Each job's best checkpoint, ranked best first by each job's ``checkpoints.mode``."""
    jobs: list[tuple[JobSummary, str]] = []
    for run_dir in run_dirs:
        status = read_run(run_dir)
        metric_name, mode = _run_settings(run_dir)
        name = status.best_metric_name or metric_name
        try:
            frame = read_metrics_csv(run_dir / "metrics.csv")
            done, final = len(frame), _final_value(frame, name)
        except FinSenseError:
            done, final = 0, None
        job = str(run_dir.relative_to(sweep_dir))
        seed, config_key = seed_and_config_key(run_dir, job)
        summary = JobSummary(
            job=job,
            metric_name=name,
            best_value=status.best_metric_value,
            best_episode=status.best_episode,
            episodes_done=done,
            final_value=final,
            seed=seed,
            config_key=config_key,
        )
        jobs.append((summary, mode))

    def key(item: tuple[JobSummary, str]) -> tuple[bool, float, str]:
        summary, mode = item
        if summary.best_value is None:
            return (True, 0.0, summary.job)
        sign = -1.0 if mode == "max" else 1.0
        return (False, sign * summary.best_value, summary.job)

    return [summary for summary, _ in sorted(jobs, key=key)]


@dataclass(frozen=True)
class ConfigSummary:
    """The jobs of a sweep that differ only in ``seed``, aggregated.

    Attributes:
        label: what sets this configuration apart from the sweep's others (``agent.gamma=0.9``).
        jobs: its jobs, by seed.
        metric_name: the metric their best checkpoints were chosen by.
        mode: ``max`` or ``min``: which way that metric is better.
        best_mean, best_std: mean and sample standard deviation (ddof 1) of the jobs' best values
            (std None with fewer than two values; both None with none).
        final_mean, final_std: the same for each job's last episode's value.
    """

    label: str
    jobs: tuple[JobSummary, ...]
    metric_name: str
    mode: str
    best_mean: float | None
    best_std: float | None
    final_mean: float | None
    final_std: float | None


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    known = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if not len(known):
        return None, None
    std = float(known.std(ddof=1)) if len(known) > 1 else None
    return float(known.mean()), std


def seedless_name(job: str) -> str:
    """A job's directory name without its ``seed=N`` part (the whole name when nothing is left)."""
    return ",".join(p for p in job.split(",") if not _SEED_PART.match(p)) or job


class _Job(Protocol):
    @property
    def job(self) -> str: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def config_key(self) -> str | None: ...


_J = TypeVar("_J", bound=_Job)


def group_seeds(jobs: Sequence[_J]) -> list[list[_J]]:
    """``jobs`` grouped by configuration (those that differ only in ``seed``: the same
    ``config_key``, or without one the same directory name less its seed), each group sorted by
    seed (jobs without one last, then by name), the groups in order of their first job."""
    groups: dict[str, list[_J]] = {}
    for job in jobs:
        groups.setdefault(job.config_key or seedless_name(job.job), []).append(job)
    return [
        sorted(g, key=lambda j: (j.seed is None, j.seed if j.seed is not None else 0, j.job))
        for g in groups.values()
    ]


def aggregate_seeds(sweep_dir: Path, jobs: Sequence[JobSummary]) -> list[ConfigSummary]:
    """Group ``jobs`` that differ only in ``seed``; rank the groups by their mean best value,
    best first (by the first job's ``checkpoints.mode``); groups without one come last."""
    members = group_seeds(jobs)
    labels = job_labels([seedless_name(g[0].job) for g in members])
    summaries = []
    for group, label in zip(members, labels, strict=True):
        best_mean, best_std = _mean_std([j.best_value for j in group])
        final_mean, final_std = _mean_std([j.final_value for j in group])
        summaries.append(
            ConfigSummary(
                label=label,
                jobs=tuple(group),
                metric_name=group[0].metric_name,
                mode=_run_settings(sweep_dir / group[0].job)[1],
                best_mean=best_mean,
                best_std=best_std,
                final_mean=final_mean,
                final_std=final_std,
            )
        )

    def key(summary: ConfigSummary) -> tuple[bool, float, str]:
        if summary.best_mean is None:
            return (True, 0.0, summary.label)
        sign = -1.0 if summary.mode == "max" else 1.0
        return (False, sign * summary.best_mean, summary.label)

    return sorted(summaries, key=key)


def _mean_pm_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return _number(mean) + ("" if std is None else f" ± {_number(std)}")


def format_seed_ranking(configs: Sequence[ConfigSummary]) -> str:
    """The configurations ranked by mean best value, each one's jobs and seeds listed beneath."""
    header = ("RANK", "CONFIGURATION", "SEEDS", "BEST MEAN ± STD", "FINAL MEAN ± STD")
    rows: list[tuple[str, ...]] = [header]
    for rank, config in enumerate(configs, start=1):
        best = _mean_pm_std(config.best_mean, config.best_std)
        if config.best_mean is not None:
            best = f"{config.metric_name}={best}"
        final = _mean_pm_std(config.final_mean, config.final_std)
        rows.append((str(rank), config.label, str(len(config.jobs)), best, final))
        for job in config.jobs:
            seed = "seed=?" if job.seed is None else f"seed={job.seed}"
            job_best = "-" if job.best_value is None else _number(job.best_value)
            if job.best_episode is not None:
                job_best += f" (episode {job.best_episode})"
            job_final = "-" if job.final_value is None else _number(job.final_value)
            rows.append(("", f"  {seed}  {job.job}", "", job_best, job_final))
    # The per-job lines are laid out on their own (long directory names): only the
    # configuration lines set the columns.
    widths = [max(len(row[i]) for row in rows if row[0]) for i in range(len(header))]
    lines = []
    for row in rows:
        if row[0]:
            cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=True)]
            lines.append("  ".join(cells).rstrip())
        else:
            lines.append(f"{'':{widths[0]}}  {row[1]}  best {row[3]}  final {row[4]}")
    return "\n".join(lines)


def plot_seed_aggregate(configs: Sequence[ConfigSummary], out: Path) -> Path:
    """Draw ``seed_aggregate.png``: each configuration's mean best and mean final value, with
    standard-deviation error bars, in ranking order."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(configs) + 3), 5.5), layout="constrained")
    x = np.arange(len(configs), dtype=np.float64)
    width = 0.38
    for offset, what, color in ((-width / 2, "best", "tab:blue"), (width / 2, "final", "tab:gray")):
        means = [getattr(c, f"{what}_mean") for c in configs]
        stds = [getattr(c, f"{what}_std") for c in configs]
        ax.bar(
            x + offset,
            [np.nan if m is None else m for m in means],
            width,
            yerr=[0.0 if s is None else s for s in stds],
            capsize=4,
            color=color,
            alpha=0.85,
            label=f"{what} (mean ± std over seeds)",
        )
    ax.set_xticks(x, [f"#{i} {c.label}\n({len(c.jobs)} seeds)" for i, c in enumerate(configs, 1)])
    ax.tick_params(axis="x", labelsize="small", labelrotation=20 if len(configs) > 4 else 0)
    ax.set_ylabel(", ".join(sorted({c.metric_name for c in configs})))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="best", fontsize="small")
    ax.set_title(f"{len(configs)} configurations over seeds, ranked by mean best")
    return _save(fig, out)


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
        metric = _training_twin(job.metric_name)
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
def jobs_by_invocation(
    sweep_dir: Path, jobs: Sequence[JobSummary]
) -> list[tuple[str | None, list[JobSummary]]]:
    """The jobs grouped by the sweep invocation that last ran them (``sweep_manifest.jsonl``),
    oldest invocation first, each group in ``jobs``' order; jobs the manifest has no record of
    form a last group keyed None."""
    from finsense.sweeps import read_manifest

    last: dict[str, str | None] = {}
    order: list[str] = []
    for event in read_manifest(sweep_dir):
        invocation = event.get("invocation")
        last[event["job_dir"]] = invocation
        if invocation and invocation not in order:
            order.append(invocation)
    groups: dict[str | None, list[JobSummary]] = {}
    for job in jobs:
        groups.setdefault(last.get(job.job), []).append(job)
    keys: list[str | None] = [i for i in order if i in groups]
    if None in groups:
        keys.append(None)
    return [(key, groups[key]) for key in keys]


def mixed_sweep_notes(sweep_dir: Path, jobs: Sequence[JobSummary]) -> list[str]:
    """Lines saying what makes a sweep's ranking compare unlike things, if anything does: jobs of
    different lengths (a longer job had more chances at a best episode), or jobs launched by
    different invocations of the sweep (``sweep_manifest.jsonl``; two unnamed sweeps share
    ``multirun/sweep/``)."""
    notes = []
    lengths = sorted({job.episodes_done for job in jobs})
    if len(lengths) > 1:
        notes.append(
            f"the jobs ran different numbers of episodes ({lengths[0]} to {lengths[-1]}): "
            "their best values are not like for like"
        )
    invocations = [key for key, _ in jobs_by_invocation(sweep_dir, jobs)]
    if len(invocations) > 1:
        known = [i for i in invocations if i]
        unknown = " (and jobs it has no record of)" if None in invocations else ""
        notes.append(
            f"the jobs come from {len(known)} sweep invocations{unknown}: "
            f"{', '.join(known)}; ranked per invocation below (see "
            f"{sweep_dir / 'sweep_manifest.jsonl'}), or give each sweep its own name=..."
        )
    return notes


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
    for note in mixed_sweep_notes(run_dir, jobs):
        print(f"{PROG}: note: {note}", file=sys.stderr)
    path = plot_sweep(run_dir, jobs, run_dir / REPORT_DIR / "sweep_comparison.png")
    groups = jobs_by_invocation(run_dir, jobs)
    configs = aggregate_seeds(run_dir, jobs)
    if len(groups) > 1:  # jobs of different sweeps are ranked apart
        for invocation, members in groups:
            print(f"Sweep invocation {invocation or '(no record)'}: {len(members)} jobs")
            print(format_ranking(members))
            print()
        print(f"Wrote {path}")
    elif any(len(config.jobs) > 1 for config in configs):
        print(format_seed_ranking(configs))
        seeds = plot_seed_aggregate(configs, run_dir / REPORT_DIR / "seed_aggregate.png")
        print(f"Wrote {path}")
        print(f"Wrote {seeds}")
    else:  # one seed per configuration: nothing to aggregate
        print(format_ranking(jobs))
        print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
