"""``python -m finsense.evaluate multirun/<sweep>``: every job of a sweep on its test split, the
configurations compared over their seeds, and the best one deflated for having been selected.

Each job (a run directory below the sweep directory, found as :mod:`finsense.status` finds runs)
is evaluated by :func:`finsense.evaluation.run_evaluation`, which writes the job's own
``eval/test_metrics.json`` and ``eval/equity.csv``. A job whose last run failed (its
``.finsense-failed.json``), whose env has no test split (CartPole) or that cannot be evaluated
(no checkpoint, damaged) is skipped with its reason; only a sweep where no job can be evaluated
is an error.

A *configuration* is a job's config without ``seed`` (and without the keys that never change an
experiment; :func:`finsense.report.seed_and_config_key`): the jobs of one configuration differ
only in their seed. Per configuration: the number of seeds ``n``, and the mean and sample
standard deviation (``ddof=1``; None for one seed) over the seeds of the agent's and
buy-and-hold's test metrics (:data:`finsense.evaluation.TABLE_METRICS`) and of the agent's
per-period (daily) Sharpe ratio.

The best configuration and its Deflated Sharpe Ratio (Bailey & López de Prado 2014, "The
Deflated Sharpe Ratio: Correcting for Selection Bias, Backtest Overfitting and Non-Normality",
Journal of Portfolio Management 40(5); :func:`finsense.stats.deflated_sharpe_ratio`):

- The trials are the configurations, ``N`` of them; each trial's Sharpe ratio is the mean over
  its seeds of the agent's per-period test Sharpe ratio (``mean / std(ddof=1)`` of the daily
  simple returns, not annualised: the unit of :mod:`finsense.stats`). The best configuration is
  the one with the highest; a configuration whose every seed's Sharpe ratio is nan (a short
  that went bankrupt) is no trial.
- The track record tested is the daily test returns of the best configuration's *median seed*:
  the seed whose per-period Sharpe ratio is the median of the configuration's (the lower of the
  two middle ones for an even count, so never the luckier). Not the seeds' returns pooled: the
  seeds trade the same market on the same days, so pooling ``k`` of them would present ``k``
  times as many days as independent and shrink the PSR's error bar by ``sqrt(k)`` with no new
  information. The median seed is also what rerunning the configuration with a new seed can be
  expected to give.
- ``DSR = PSR(returns, SR0)`` with ``SR0 = expected_max_sharpe(N, V)`` and ``V`` the sample
  variance of the ``N`` trials' Sharpe ratios: the probability that the selected configuration's
  true Sharpe ratio is above what the best of ``N`` skill-less trials would show, i.e. that it
  is positive once the selection is accounted for. With one configuration there is no
  selection: ``SR0 = 0`` and the DSR is the PSR (Bailey & López de Prado 2012). With a few
  configurations ``V`` rests on a few numbers and the DSR is rough.

Written to ``SWEEP_DIR/eval/sweep_metrics.json`` (strict JSON, atomically; see
:meth:`SweepEvaluation.to_json`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finsense import metrics, stats
from finsense.checkpoint import write_json_atomic
from finsense.errors import FinSenseError

# The single run's cell format, so that both tables read alike (finsense.evaluate imports this
# module only when it is given a sweep, so there is no import cycle).
from finsense.evaluate import _format, align_columns
from finsense.evaluation import (
    DEFAULT_MA_WINDOWS,
    EVAL_DIR,
    TABLE_METRICS,
    is_trading_run,
    load_run_config,
    run_evaluation,
)
from finsense.report import group_seeds, seed_and_config_key, seedless_name
from finsense.status import find_run_dirs
from finsense.sweeps import failed_error

#: Where the sweep's own results go, under ``SWEEP_DIR/eval/``.
SWEEP_METRICS_FILE = "sweep_metrics.json"
#: The columns of the printed table, each the mean ± std over seeds: (policy, metric, heading).
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("agent", "total_return", "RETURN"),
    ("agent", "sharpe_ratio", "SHARPE"),
    ("agent", "max_drawdown", "MAX DRAWDOWN"),
    ("buy_and_hold", "total_return", "B&H RETURN"),
    ("buy_and_hold", "sharpe_ratio", "B&H SHARPE"),
)


@dataclass(frozen=True, eq=False)
class JobResult:
    """One evaluated job.

    Attributes:
        job: its directory relative to the sweep directory.
        seed: its config's ``seed`` (None when unrecorded).
        config_key: its configuration (:func:`finsense.report.seed_and_config_key`).
        agent: the greedy agent's test metrics (keys of :func:`finsense.metrics.episode_metrics`).
        buy_and_hold: buy-and-hold's test metrics.
        returns: the agent's daily simple test returns.
        overrides: its command line's overrides without ``seed``, sorted
            (:func:`job_overrides`): what its configuration is called.
    """

    job: str
    seed: int | None
    config_key: str
    agent: Mapping[str, Any]
    buy_and_hold: Mapping[str, Any]
    returns: np.ndarray
    overrides: tuple[str, ...] = ()

    @property
    def sharpe_per_period(self) -> float:
        """The per-period Sharpe ratio of :attr:`returns` (0.0 when constant, nan when not
        finite; :func:`finsense.metrics.sharpe_ratio` with one period a year)."""
        return metrics.sharpe_ratio(self.returns, periods_per_year=1)


@dataclass(frozen=True)
class SkippedJob:
    """A job that was not evaluated, and why (one line)."""

    job: str
    reason: str


@dataclass(frozen=True, eq=False)
class ConfigResult:
    """The jobs of one configuration, aggregated over their seeds.

    Attributes:
        label: what sets it apart from the sweep's other configurations (``agent.gamma=0.9``).
        jobs: its jobs, by seed.
        agent, buy_and_hold: ``{metric: {"mean": m, "std": s}}`` over the jobs for each of
            :data:`finsense.evaluation.TABLE_METRICS` (:func:`mean_std`).
        sharpe_per_period: mean and std of the agent's per-period Sharpe ratios.
    """

    label: str
    jobs: tuple[JobResult, ...]
    agent: Mapping[str, Mapping[str, float | None]]
    buy_and_hold: Mapping[str, Mapping[str, float | None]]
    sharpe_per_period: Mapping[str, float | None]


@dataclass(frozen=True)
class Deflation:
    """The Deflated Sharpe Ratio of the best configuration (see the module docstring).

    Attributes:
        best: the best configuration's label.
        job: the job whose returns were tested (the median seed's).
        seed: that job's seed (None when unrecorded).
        n_trials: ``N``, the configurations with a Sharpe ratio.
        trial_variance: ``V``, the sample variance of their per-period Sharpe ratios (None for
            one trial).
        sharpe: the tested job's per-period Sharpe ratio.
        benchmark: ``SR0``, the expected per-period Sharpe ratio of the best of ``N`` trials
            without skill (0.0 for one trial).
        n_returns: the number of daily returns tested.
        dsr: the deflated Sharpe ratio, a probability (nan when the tested returns are constant).
    """

    best: str
    job: str
    seed: int | None
    n_trials: int
    trial_variance: float | None
    sharpe: float
    benchmark: float
    n_returns: int
    dsr: float


@dataclass(frozen=True, eq=False)
class SweepEvaluation:
    """A sweep's evaluation: its configurations best first, the skipped jobs, the deflation."""

    configs: tuple[ConfigResult, ...]
    skipped: tuple[SkippedJob, ...]
    deflation: Deflation | None

    def to_json(self) -> dict[str, Any]:
        """The content of ``sweep_metrics.json``: ``configurations`` (best first: ``label``,
        ``n``, ``jobs`` (``job``, ``seed``, ``agent``, ``buy_and_hold``,
        ``sharpe_per_period``), ``agent`` and ``buy_and_hold`` (``{metric: {"mean", "std"}}``),
        ``sharpe_per_period`` (``{"mean", "std"}``)), ``skipped`` (``job``, ``reason``) and
        ``deflated_sharpe`` (null, or :class:`Deflation`'s ``best``, ``job``, ``seed``,
        ``n_trials``, ``trial_variance``, ``sharpe`` as ``sharpe_per_period``, ``benchmark`` as
        ``benchmark_per_period``, ``n_returns`` and ``dsr``). Non-finite numbers are null."""
        deflation = None
        if self.deflation is not None:
            d = self.deflation
            deflation = {
                "best": d.best,
                "job": d.job,
                "seed": d.seed,
                "n_trials": d.n_trials,
                "trial_variance": d.trial_variance,
                "sharpe_per_period": d.sharpe,
                "benchmark_per_period": d.benchmark,
                "n_returns": d.n_returns,
                "dsr": d.dsr,
            }
        return {
            "configurations": [
                {
                    "label": config.label,
                    "n": len(config.jobs),
                    "jobs": [
                        {
                            "job": job.job,
                            "seed": job.seed,
                            "agent": dict(job.agent),
                            "buy_and_hold": dict(job.buy_and_hold),
                            "sharpe_per_period": job.sharpe_per_period,
                        }
                        for job in config.jobs
                    ],
                    "agent": {k: dict(v) for k, v in config.agent.items()},
                    "buy_and_hold": {k: dict(v) for k, v in config.buy_and_hold.items()},
                    "sharpe_per_period": dict(config.sharpe_per_period),
                }
                for config in self.configs
            ],
            "skipped": [{"job": s.job, "reason": s.reason} for s in self.skipped],
            "deflated_sharpe": deflation,
        }


# -- the jobs -------------------------------------------------------------------------------------
def sweep_job_dirs(path: Path) -> list[Path]:
    """The job directories of ``path`` when it is a sweep directory (a directory that is no run
    itself, with run directories below it, found by :func:`finsense.status.find_run_dirs`);
    empty otherwise."""
    if not path.is_dir() or (path / ".hydra" / "config.yaml").is_file():
        return []
    return [run_dir for run_dir in find_run_dirs(path) if run_dir != path]


def evaluate_job(
    sweep_dir: Path,
    job_dir: Path,
    checkpoint: str = "best",
    *,
    seeds_random: int = 10,
    ma_windows: tuple[int, int] = DEFAULT_MA_WINDOWS,
) -> JobResult | SkippedJob:
    """Evaluate one job with :func:`finsense.evaluation.run_evaluation` (which writes its
    ``eval/`` files), or say why it is skipped."""
    job = job_dir.relative_to(sweep_dir).as_posix()
    error = failed_error(job_dir)
    if error is not None:
        return SkippedJob(job, f"its last run failed: {error}")
    try:
        if not is_trading_run(load_run_config(job_dir)):
            return SkippedJob(
                job,
                "not a trading env (no test split); sweep evaluation needs one: evaluate the job "
                f"alone with python -m finsense.evaluate {job_dir}",
            )
        result = run_evaluation(
            job_dir, checkpoint, seeds_random=seeds_random, ma_windows=ma_windows
        )
    except FinSenseError as exc:
        return SkippedJob(job, str(exc))
    seed, config_key = seed_and_config_key(job_dir, job)
    return JobResult(
        job=job,
        seed=seed,
        config_key=config_key,
        agent=result.agent,
        buy_and_hold=result.buy_and_hold,
        returns=metrics.simple_returns(result.curve.agent_equity),
        overrides=job_overrides(job_dir, job),
    )


def job_overrides(job_dir: Path, job: str) -> tuple[str, ...]:
    """The job's overrides that define its experiment, sorted: from ``.hydra/overrides.yaml``
    less ``seed=...`` and the keys that never change an experiment (``episodes``, ``name``, ...,
    :func:`finsense.config.non_experiment_keys`), or where that file is unreadable, the
    ``key=value`` parts of its directory name (which a long name shortens with a hash and
    percent-encodes, so it is only the fallback)."""
    import yaml

    from finsense.config import non_experiment_keys

    try:
        with open(job_dir / ".hydra" / "overrides.yaml", encoding="utf-8") as f:
            recorded = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        recorded = None
    if isinstance(recorded, list) and all(isinstance(o, str) for o in recorded):
        parts = recorded
    else:
        parts = seedless_name(job).split(",")
    dropped = {"seed", *non_experiment_keys()}
    return tuple(sorted(o for o in parts if o.partition("=")[0].lstrip("+~") not in dropped))


def configuration_labels(overrides: Sequence[Sequence[str]]) -> list[str]:
    """Short names of configurations from their overrides: the overrides that are not the same
    in all of them, comma-joined (``agent.gamma=0.9``); one left empty (or a single
    configuration) keeps all its overrides, and one without any is ``default``. The rule of
    :func:`finsense.report.job_labels`, on the recorded overrides rather than on directory
    names (which a long name shortens with a hash)."""
    common = set.intersection(*(set(o) for o in overrides)) if len(overrides) > 1 else set()
    return [
        ",".join(o for o in parts if o not in common) or ",".join(parts) or "default"
        for parts in overrides
    ]


# -- the statistics -------------------------------------------------------------------------------
def mean_std(values: Sequence[Any]) -> dict[str, float | None]:
    """``{"mean", "std"}`` of the finite numbers among ``values``: the mean and the sample
    standard deviation (``ddof=1``); std None with fewer than two, both None with none."""
    known = np.array(
        [float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64
    )
    if not known.size:
        return {"mean": None, "std": None}
    std = float(known.std(ddof=1)) if known.size > 1 else None
    return {"mean": float(known.mean()), "std": std}


def aggregate(jobs: Sequence[JobResult]) -> list[ConfigResult]:
    """Group ``jobs`` by configuration (jobs differing only in ``seed``), each group sorted by
    seed, and rank the groups by their mean per-period Sharpe ratio, best first (groups without
    one last, then by label)."""
    members = group_seeds(jobs)
    labels = configuration_labels([g[0].overrides for g in members])
    configs = [
        ConfigResult(
            label=label,
            jobs=tuple(group),
            agent={m: mean_std([j.agent.get(m) for j in group]) for m in TABLE_METRICS},
            buy_and_hold={
                m: mean_std([j.buy_and_hold.get(m) for j in group]) for m in TABLE_METRICS
            },
            sharpe_per_period=mean_std([j.sharpe_per_period for j in group]),
        )
        for group, label in zip(members, labels, strict=True)
    ]

    def rank(config: ConfigResult) -> tuple[bool, float, str]:
        sharpe = config.sharpe_per_period["mean"]
        return (sharpe is None, -(sharpe or 0.0), config.label)

    return sorted(configs, key=rank)


def median_seed(config: ConfigResult) -> JobResult:
    """The job whose per-period Sharpe ratio is the median of the configuration's finite ones
    (the lower middle one for an even count); the first job when none is finite."""
    ranked = sorted(
        (j for j in config.jobs if math.isfinite(j.sharpe_per_period)),
        key=lambda j: j.sharpe_per_period,
    )
    return ranked[(len(ranked) - 1) // 2] if ranked else config.jobs[0]


def deflate(configs: Sequence[ConfigResult]) -> Deflation | None:
    """The Deflated Sharpe Ratio of the best of ``configs`` given how many were tried (see the
    module docstring); None when no configuration has a Sharpe ratio or the best one's median
    seed has fewer than 2 finite test returns."""
    trials = [c for c in configs if c.sharpe_per_period["mean"] is not None]
    if not trials:
        return None
    sharpes = [float(c.sharpe_per_period["mean"] or 0.0) for c in trials]
    best = trials[int(np.argmax(sharpes))]
    job = median_seed(best)
    returns = job.returns
    if returns.size < 2 or not np.isfinite(returns).all():
        return None
    if len(trials) == 1:
        variance, benchmark = None, 0.0
        dsr = stats.probabilistic_sharpe_ratio(returns)
    else:
        variance = float(np.var(sharpes, ddof=1))
        benchmark = stats.expected_max_sharpe(len(trials), variance)
        dsr = stats.deflated_sharpe_ratio(returns, sharpes)
    return Deflation(
        best=best.label,
        job=job.job,
        seed=job.seed,
        n_trials=len(trials),
        trial_variance=variance,
        sharpe=job.sharpe_per_period,
        benchmark=benchmark,
        n_returns=int(returns.size),
        dsr=dsr,
    )


def evaluate_sweep(
    sweep_dir: Path,
    checkpoint: str = "best",
    *,
    seeds_random: int = 10,
    ma_windows: tuple[int, int] = DEFAULT_MA_WINDOWS,
    progress: bool = False,
) -> SweepEvaluation:
    """Evaluate every job of ``sweep_dir``, aggregate the configurations, deflate the best one
    and write ``SWEEP_DIR/eval/sweep_metrics.json``; ``progress`` prints a line per job on
    stderr.

    Raises:
        FinSenseError: ``sweep_dir`` holds no jobs, no job could be evaluated (the message gives
            the first one's reason), or the results cannot be written.
    """
    job_dirs = sweep_job_dirs(sweep_dir)
    if not job_dirs:
        raise FinSenseError(f"{sweep_dir} holds no sweep jobs; pass multirun/<sweep>")
    evaluated: list[JobResult] = []
    skipped: list[SkippedJob] = []
    for i, job_dir in enumerate(job_dirs, start=1):
        if progress:
            print(f"[{i}/{len(job_dirs)}] {job_dir.relative_to(sweep_dir)}", file=sys.stderr)
        outcome = evaluate_job(
            sweep_dir, job_dir, checkpoint, seeds_random=seeds_random, ma_windows=ma_windows
        )
        if isinstance(outcome, JobResult):
            evaluated.append(outcome)
        else:
            skipped.append(outcome)
    if not evaluated:
        first = skipped[0]
        raise FinSenseError(
            f"{sweep_dir}: none of its {len(job_dirs)} jobs could be evaluated ({first.job}: "
            f"{first.reason})"
        )
    configs = aggregate(evaluated)
    result = SweepEvaluation(tuple(configs), tuple(skipped), deflate(configs))
    out = sweep_dir / EVAL_DIR
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / SWEEP_METRICS_FILE, result.to_json())
    except OSError as exc:
        raise FinSenseError(
            f"{exc.filename or out}: cannot write the sweep's results ({exc.strerror or exc}); "
            "make the sweep directory writable and evaluate again"
        ) from None
    return result


# -- output ---------------------------------------------------------------------------------------
def _cell(metric: str, spread: Mapping[str, float | None]) -> str:
    """``mean ± std`` formatted as the single run's table formats the metric."""
    mean, std = spread["mean"], spread["std"]
    if mean is None:
        return "n/a"
    return _format(metric, mean) + ("" if std is None else f" ± {_format(metric, std)}")


def format_sweep_table(configs: Sequence[ConfigResult]) -> str:
    """One row per configuration, best first: its label, ``n`` seeds, and the mean ± std over
    seeds of the :data:`TABLE_COLUMNS` (no ± for one seed)."""
    header = ("CONFIGURATION", "N", *(heading for _, _, heading in TABLE_COLUMNS))
    rows = [header]
    for config in configs:
        cells = []
        for policy, metric, _ in TABLE_COLUMNS:
            spread = (config.agent if policy == "agent" else config.buy_and_hold)[metric]
            cells.append(_cell(metric, spread))
        rows.append((config.label, str(len(config.jobs)), *cells))
    return align_columns(rows)


def format_deflation(deflation: Deflation | None, n_configs: int) -> list[str]:
    """The lines under the table: the best configuration and its deflated Sharpe ratio, and
    what that number can and cannot say."""
    if deflation is None:
        return ["Best configuration: none has a finite test Sharpe ratio; no deflated Sharpe ratio"]
    d = deflation
    annual = math.sqrt(metrics.TRADING_DAYS_PER_YEAR)
    value = "n/a (its test returns are constant)" if not math.isfinite(d.dsr) else f"{d.dsr:.2f}"
    seed = f"job {d.job}" if d.seed is None else f"seed={d.seed}"
    tried = f"{d.n_trials} configuration{'s' if d.n_trials != 1 else ''}"
    lines = [
        f"Best configuration: {d.best}; deflated Sharpe ratio {value} given {tried} tried "
        "(P[true Sharpe > 0] after selection)",
        f"  tested: its median seed ({seed}), {d.n_returns} daily test returns, Sharpe ratio "
        f"{d.sharpe * annual:.2f} annualised against {d.benchmark * annual:.2f} expected from "
        f"the best of {d.n_trials} without skill",
    ]
    if d.n_trials == 1:
        lines.append(
            "  note: with a single configuration there is no selection: the deflated Sharpe "
            "ratio is the probabilistic one (N=1)"
        )
    elif d.n_trials < 10:
        lines.append(
            f"  note: with only {d.n_trials} configurations the variance of their Sharpe ratios, "
            "and so the deflated Sharpe ratio, is rough"
        )
    if n_configs > d.n_trials:
        lines.append(
            f"  note: {n_configs - d.n_trials} configuration(s) without a finite Sharpe ratio "
            "are not counted as trials"
        )
    return lines


def print_sweep(sweep_dir: Path, result: SweepEvaluation) -> None:
    """The command's output for a sweep: the table, the deflation lines, the skipped jobs."""
    seeds = sum(len(c.jobs) for c in result.configs)
    print(
        f"{sweep_dir}: {seeds} jobs evaluated on their test split, {len(result.configs)} "
        f"configuration{'s' if len(result.configs) != 1 else ''} (mean ± std over seeds)"
    )
    print(format_sweep_table(result.configs))
    for line in format_deflation(result.deflation, len(result.configs)):
        print(line)
    for skipped in result.skipped:
        print(f"skipped {skipped.job}: {skipped.reason}")
    print(f"Wrote {sweep_dir / EVAL_DIR / SWEEP_METRICS_FILE} and each job's eval/")
