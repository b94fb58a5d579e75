"""Out-of-sample evaluation: the greedy policy against buy-and-hold, chance and two simple rules.

Every number comes from :func:`finsense.metrics.episode_metrics` on one episode over the whole
test split (``split="test"``, ``episode_length=None``, ``random_start=False``), and every policy,
baselines included, trades through the same env: the run's execution model (``env.execution``),
fee, slippage and borrow cost. The policies:

- ``agent``: greedy (argmax of its Q-values, or its most probable action).
- ``buy_and_hold``: long from the first decision on (filled where the execution model fills it).
- ``random``: uniform random actions, seeds ``0 .. seeds_random - 1``.
- ``momentum``: long after an up close, short after a down close when shorting is allowed (else
  flat), flat after an unchanged close (:func:`momentum_signal`).
- ``ma_crossover``: long while the mean of the last ``ma_short`` closes is above the mean of the
  last ``ma_long``, short (when allowed; else flat) while it is below (:func:`ma_crossover_signal`).
  Its averages may reach back into the training rows before the first test row (prices known by
  then, as the observation's window does); it is skipped, with a note, when the test split is
  shorter than ``ma_long`` rows or too few rows precede it. On every row of new data (a
  backtest's) nothing precedes the rows: it stays flat until its long average exists, with a
  note.

A backtest (``env_overrides``, :mod:`finsense.backtest`) runs the same policies and metrics on
other data: every row of new data (``split="all"``), or the run's own test split when only the
trading rules change.

Files written by :func:`run_evaluation` into ``RUN_DIR/eval/`` (a backtest's into
``RUN_DIR/eval/backtest/<data name>/``, :func:`results_dir`):

- ``test_metrics.json``: ``agent``, ``buy_and_hold``, ``momentum`` and ``ma_crossover`` (metrics
  dicts, keys of :func:`finsense.metrics.episode_metrics`; a skipped rule is ``null``),
  ``random`` (``{metric: {"mean": m, "std": s}}``, ``std`` over seeds with ``ddof=1``, 0.0 for
  one seed), ``random_seeds``, ``ma_windows`` (``short``, ``long``), ``execution`` (``model``,
  ``fee``, ``slippage_bps``, ``borrow_rate``), ``notes`` (why a baseline was skipped), ``episode``
  (the checkpoint's training episode), ``checkpoint`` (its path, relative to the run directory
  when it lies inside it) and ``period`` (``start``/``end`` dates and ``steps`` of the test
  episode), ``statistics`` (:func:`compare_to_baselines`: the agent's probabilistic Sharpe ratio,
  and for each baseline a 95% block-bootstrap interval of the agent's annualised Sharpe ratio
  minus the baseline's), ``split`` (``"test"``, or ``"all"`` for a backtest on new data),
  ``data`` (``source``: the prices' origin; ``rows``: how many in all), ``observation`` (the
  policy's ``feature_scale``, ``window_size``, ``allow_short`` and ``execution``, and ``from``:
  ``"checkpoint"`` or, for an older checkpoint, ``"run data"``) and ``backtest`` (null, or
  ``overrides``, ``new_data`` and ``name``). Non-finite numbers are written as ``null`` so the
  file is strict JSON.
- ``equity.csv``: one row per test row: ``date`` (ISO), ``agent_equity``,
  ``buy_and_hold_equity`` (currency), ``position`` (the agent's position held from the
  previous row to this one, -1/0/1 as in :mod:`finsense.metrics`; 0 on the first row), then
  ``momentum_equity`` and ``ma_crossover_equity`` (empty for a skipped rule), and
  ``random_equity_mean`` and ``random_equity_std`` (over the random policies' seeds).
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finsense import metrics, stats
from finsense.agents import DQNAgent, greedy_action
from finsense.checkpoint import (
    CheckpointInfo,
    CheckpointManager,
    write_bytes_atomic,
    write_json_atomic,
)
from finsense.envs.trading import TradingEnv
from finsense.errors import CheckpointError, FinSenseError
from finsense.runs import relative_to_run

log = logging.getLogger(__name__)

#: Metrics shown side by side by ``finsense.evaluate`` (in this order).
TABLE_METRICS: tuple[str, ...] = (
    "total_profit",
    "total_return",
    "sharpe_ratio",
    "max_drawdown",
    "total_trades",
    "win_rate",
)
#: Where a run's evaluation files go, relative to the run directory.
EVAL_DIR = "eval"
METRICS_FILE = "test_metrics.json"
EQUITY_FILE = "equity.csv"
#: The rule baselines, in the order they are shown.
RULES: tuple[str, ...] = ("momentum", "ma_crossover")
#: The moving-average crossover's default windows (short, long), in rows (trading days).
DEFAULT_MA_WINDOWS: tuple[int, int] = (10, 50)
#: The columns every ``equity.csv`` has; files written before the rules lack the rules' columns.
EQUITY_COLUMNS: tuple[str, ...] = ("date", "agent_equity", "buy_and_hold_equity", "position")
RULE_COLUMNS: tuple[str, ...] = tuple(f"{rule}_equity" for rule in RULES)
RANDOM_COLUMNS: tuple[str, ...] = ("random_equity_mean", "random_equity_std")
#: Env keys an evaluation always overrides: the whole test split, from its first row.
TEST_OVERRIDES: dict[str, Any] = {"split": "test", "episode_length": None, "random_start": False}
#: ``checkpoint=`` values that are not paths.
CHECKPOINT_CHOICES = ("best", "latest")


@dataclass(frozen=True, eq=False)
class EquityCurve:
    """The test episode row by row (arrays of equal length, aligned as in :mod:`finsense.metrics`).

    Attributes:
        dates: ``datetime64[ns]`` of each test row.
        close: the close price of each row.
        agent_equity: the greedy agent's equity after each row (currency).
        buy_and_hold_equity: buy-and-hold's equity after each row (currency).
        positions: the agent's position held from the previous row to this one (-1, 0, 1).
        rules: each rule baseline's equity after each row, by name (:data:`RULES`); a skipped
            rule is absent.
        random_mean: the random policies' mean equity after each row (None when not stored).
        random_std: their standard deviation (``ddof=1``; 0.0 for one seed) after each row.
    """

    dates: np.ndarray
    close: np.ndarray
    agent_equity: np.ndarray
    buy_and_hold_equity: np.ndarray
    positions: np.ndarray
    rules: Mapping[str, np.ndarray] = field(default_factory=dict)
    random_mean: np.ndarray | None = None
    random_std: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class EvalResult:
    """One evaluation on the test split.

    Attributes:
        agent: the greedy policy's metrics (keys of :func:`finsense.metrics.episode_metrics`).
        buy_and_hold: the same metrics for going long at the first decision and holding.
        random: ``{metric: {"mean": m, "std": s}}`` over ``random_seeds`` uniform random policies
            (``std`` with ``ddof=1``; 0.0 for a single seed).
        random_seeds: how many random-policy seeds were run.
        curve: the agent's and the baselines' equity row by row.
        episode: the training episode of the evaluated checkpoint (None when not from one).
        checkpoint: the checkpoint file evaluated (None when not from one).
        rules: each rule baseline's metrics by name (:data:`RULES`), None where it was skipped.
        ma_windows: the moving-average crossover's (short, long) windows.
        execution: the env's ``execution``, ``fee``, ``slippage_bps`` and ``borrow_rate`` every
            policy traded under (``model`` for the execution).
        notes: one line per baseline skipped, saying why.
        statistics: :func:`compare_to_baselines` of ``curve``.
        split: the rows scored: ``"test"`` (the test split) or ``"all"`` (every row of new data,
            a backtest's).
        data: ``source`` (the prices' origin, as :class:`finsense.data.MarketData` names it)
            and ``rows`` (how many rows the data has in all).
        observation: what the policy observed (:attr:`TradingEnv.observation_spec`) and
            ``from``: ``"checkpoint"`` (saved with the policy) or ``"run data"`` (an older
            checkpoint: computed from the run's own data, as in training).
        backtest: for a backtest, ``overrides`` (as given) and ``new_data`` (bool); else None.
    """

    agent: dict[str, Any]
    buy_and_hold: dict[str, Any]
    random: dict[str, dict[str, float]]
    random_seeds: int
    curve: EquityCurve
    episode: int | None = None
    checkpoint: Path | None = None
    rules: Mapping[str, dict[str, Any] | None] = field(default_factory=dict)
    ma_windows: tuple[int, int] = DEFAULT_MA_WINDOWS
    execution: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    statistics: Mapping[str, Any] = field(default_factory=dict)
    split: str = "test"
    data: Mapping[str, Any] = field(default_factory=dict)
    observation: Mapping[str, Any] = field(default_factory=dict)
    backtest: Mapping[str, Any] | None = None

    def to_json(self, run_dir: Path | None = None) -> dict[str, Any]:
        """The content of ``test_metrics.json`` (paths relative to ``run_dir`` when inside it)."""
        checkpoint: str | None = None
        if self.checkpoint is not None:
            checkpoint = (
                relative_to_run(self.checkpoint, run_dir) if run_dir else str(self.checkpoint)
            )
        dates = self.curve.dates
        rules = {
            rule: None if self.rules.get(rule) is None else dict(self.rules[rule] or {})
            for rule in RULES
        }
        return {
            "agent": dict(self.agent),
            "buy_and_hold": dict(self.buy_and_hold),
            **rules,
            "random": {k: dict(v) for k, v in self.random.items()},
            "random_seeds": self.random_seeds,
            "ma_windows": {"short": self.ma_windows[0], "long": self.ma_windows[1]},
            "execution": dict(self.execution),
            "notes": list(self.notes),
            "statistics": dict(self.statistics),
            "split": self.split,
            "data": dict(self.data),
            "observation": dict(self.observation),
            "backtest": None if self.backtest is None else dict(self.backtest),
            "episode": self.episode,
            "checkpoint": checkpoint,
            "period": {
                "start": _iso_date(dates[0]) if len(dates) else None,
                "end": _iso_date(dates[-1]) if len(dates) else None,
                "steps": max(len(dates) - 1, 0),
            },
        }


# -- running policies -----------------------------------------------------------------------------
def eval_env_kwargs(env_config: Mapping[str, Any], split: str = "test") -> dict[str, Any]:
    """TradingEnv keyword arguments for the whole ``split`` (default the test split), from a run
    config's ``env`` section.

    ``split``, ``episode_length`` and ``random_start`` are replaced by :data:`TEST_OVERRIDES`
    (with this ``split``); every other key (``data``, ``window_size``, ``fee``, ``execution``,
    ...) is kept, so the test episode sees the same market, features, fills and costs as
    training.
    """
    kwargs = {k: v for k, v in dict(env_config).items() if not str(k).startswith("_")}
    return {**kwargs, **TEST_OVERRIDES, "split": split}


def run_episode(env: TradingEnv, act: Callable[[np.ndarray], int]) -> dict[str, np.ndarray]:
    """Reset ``env`` and step it with ``act(observation) -> action`` to its end; return its history.

    The history is :meth:`TradingEnv.history`: ``dates``, ``close``, ``equity``, ``positions``.
    """
    obs, _ = env.reset()
    done = False
    while not done:
        obs, _, terminated, truncated, _ = env.step(act(obs))
        done = terminated or truncated
    return env.history()


#: A policy to evaluate: a Q-network (greedy in its values) or ``act(observation) -> action``.
Policy = torch.nn.Module | Callable[[np.ndarray], int]


def greedy_actor(q_network: torch.nn.Module) -> Callable[[np.ndarray], int]:
    """``act(observation) -> argmax of q_network's Q-values`` (:func:`greedy_action`)."""
    return functools.partial(greedy_action, q_network)


def random_actor(n_actions: int, seed: int) -> Callable[[np.ndarray], int]:
    """``act(observation) -> uniform random action``, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return lambda obs: int(rng.integers(n_actions))


def momentum_signal(close: np.ndarray, allow_short: bool) -> np.ndarray:
    """The momentum rule's target position at each row's close: 1 after an up close (``close[t] >
    close[t - 1]``), -1 after a down close (0 unless ``allow_short``), 0 after an unchanged one
    and on row 0. Row ``t`` reads no close after ``close[t]``."""
    px = np.asarray(close, dtype=np.float64)
    signal = np.zeros(px.size, dtype=np.int64)
    signal[1:] = np.sign(px[1:] - px[:-1]).astype(np.int64)
    return signal if allow_short else np.maximum(signal, 0)


def ma_crossover_signal(close: np.ndarray, short: int, long: int, allow_short: bool) -> np.ndarray:
    """The moving-average crossover's target position at each row's close.

    ``ma_w[t]`` is the mean of ``close[t - w + 1 .. t]``. The target is 1 while ``ma_short >
    ma_long``, -1 while it is below (0 unless ``allow_short``), 0 on equality and on the first
    ``long - 1`` rows (no long average yet). Row ``t`` reads no close after ``close[t]``.
    """
    px = np.asarray(close, dtype=np.float64)
    signal = np.zeros(px.size, dtype=np.int64)
    if px.size < long:
        return signal
    sums = np.concatenate(([0.0], np.cumsum(px)))
    ma_short = (sums[long:] - sums[long - short : px.size + 1 - short]) / short
    ma_long = (sums[long:] - sums[: px.size + 1 - long]) / long
    signal[long - 1 :] = np.sign(ma_short - ma_long).astype(np.int64)
    return signal if allow_short else np.maximum(signal, 0)


def signal_actor(env: TradingEnv, signal: np.ndarray) -> Callable[[np.ndarray], int]:
    """``act(observation) -> the action of ``signal[env.row]``: a rule's target position per data
    row (-1, 0, 1), read at the row the env is deciding at."""
    positions = (-1, 0, 1) if env.allow_short else (0, 1)
    action_of = {position: action for action, position in enumerate(positions)}
    actions = [action_of[int(position)] for position in signal]
    return lambda obs: actions[env.row]


def check_ma_windows(ma_windows: tuple[int, int]) -> tuple[int, int]:
    """``(short, long)`` as ints; FinSenseError unless ``1 <= short < long``."""
    short, long = ma_windows
    if not (isinstance(short, int) and isinstance(long, int) and 1 <= short < long):
        raise FinSenseError(
            f"ma_short={short} ma_long={long}: the moving averages need integers with "
            "1 <= ma_short < ma_long (e.g. ma_short=10 ma_long=50)"
        )
    return short, long


def _ma_skip_note(env: TradingEnv, short: int, long: int) -> str | None:
    """Why the crossover cannot be scored on ``env``'s split, or None when it can."""
    low, high = env.split_rows
    first_decision = max(low, env.window_size)
    if high - low < long:
        rows = "the test split" if env.split == "test" else "the data"
        return (
            f"ma_crossover skipped: {rows} has {high - low} rows, fewer than the long "
            f"window ma_long={long}; lower ma_long (and ma_short={short}) or raise "
            "env.data.test_fraction"
        )
    if first_decision + 1 < long and env.split != "all":
        return (
            f"ma_crossover skipped: only {first_decision + 1} rows up to the first test decision, "
            f"fewer than the long window ma_long={long}; lower ma_long"
        )
    return None


def _mean_std(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for key in runs[0]:
        values = np.asarray([float(r[key]) for r in runs], dtype=np.float64)
        std = float(values.std(ddof=1)) if values.size >= 2 else 0.0
        summary[key] = {"mean": float(values.mean()), "std": std}
    return summary


def _greedy_history(
    policy: Policy, env: TradingEnv
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if not isinstance(policy, torch.nn.Module):
        return run_episode(env, policy), env.episode_metrics()
    was_training = policy.training
    policy.eval()
    try:
        history = run_episode(env, greedy_actor(policy))
    finally:
        policy.train(was_training)
    return history, env.episode_metrics()


def evaluate_policy(
    policy: Policy,
    env_kwargs: Mapping[str, Any],
    *,
    seeds_random: int = 10,
    ma_windows: tuple[int, int] = DEFAULT_MA_WINDOWS,
    split: str = "test",
) -> EvalResult:
    """Evaluate the greedy policy of ``policy`` on the whole test split, beside the baselines.

    Args:
        policy: a Q-network mapping observations ``float32 (batch, obs_dim)`` to Q-values
            ``(batch, n_actions)`` (the greedy action is the argmax; left in its train/eval
            mode), or ``act(observation) -> action`` (an agent's ``act(obs, explore=False)``).
        env_kwargs: TradingEnv keyword arguments, e.g. the run config's ``env`` section;
            ``split``, ``episode_length`` and ``random_start`` are overridden (see
            :func:`eval_env_kwargs`).
        seeds_random: how many random-policy episodes (seeds ``0 .. seeds_random - 1``), >= 1.
        ma_windows: the moving-average crossover's (short, long) windows, ``1 <= short < long``.
        split: the rows: ``"test"`` (the test split), or ``"all"`` (every row: data the policy
            never trained on).

    Returns:
        The agent's, buy-and-hold's, the random policy's and the rules' metrics over the same
        rows, each run through the same env (execution model and costs).

    Raises:
        FinSenseError: ``ma_windows`` out of range.
    """
    if seeds_random < 1:
        raise ValueError(f"seeds_random must be >= 1, got {seeds_random}")
    short, long = check_ma_windows(ma_windows)
    env = TradingEnv(**eval_env_kwargs(env_kwargs, split))
    history, agent = _greedy_history(policy, env)
    long_action = int(env.action_space.n) - 1
    hold_history = run_episode(env, lambda obs: long_action)
    hold = env.episode_metrics()
    n_actions = int(env.action_space.n)
    random_runs, random_curves = [], []
    for seed in range(seeds_random):
        random_curves.append(run_episode(env, random_actor(n_actions, seed))["equity"])
        random_runs.append(env.episode_metrics())
    random_equity = np.stack(random_curves)
    ddof = 1 if seeds_random >= 2 else 0  # one seed: a spread of 0.0, as in the metrics

    signals = {"momentum": momentum_signal(env.data.close, env.allow_short)}
    notes = []
    skip = _ma_skip_note(env, short, long)
    if skip is None:
        signals["ma_crossover"] = ma_crossover_signal(env.data.close, short, long, env.allow_short)
        if max(env.split_rows[0], env.window_size) + 1 < long:
            # Every row of the data: no earlier prices to average, so the rule waits.
            notes.append(
                f"ma_crossover stays flat until row {long - 1}, the first with ma_long={long} "
                "closes to average"
            )
    else:
        notes.append(skip)
    rules: dict[str, dict[str, Any] | None] = dict.fromkeys(RULES)
    rule_equity: dict[str, np.ndarray] = {}
    for rule, signal in signals.items():
        rule_equity[rule] = run_episode(env, signal_actor(env, signal))["equity"]
        rules[rule] = env.episode_metrics()

    curve = EquityCurve(
        dates=history["dates"],
        close=history["close"],
        agent_equity=history["equity"],
        buy_and_hold_equity=hold_history["equity"],
        positions=history["positions"],
        rules=rule_equity,
        random_mean=random_equity.mean(axis=0),
        random_std=random_equity.std(axis=0, ddof=ddof),
    )
    execution = {
        "model": env.execution,
        "fee": env.fee,
        "slippage_bps": env.slippage_bps,
        "borrow_rate": env.borrow_rate,
    }
    return EvalResult(
        agent,
        hold,
        _mean_std(random_runs),
        seeds_random,
        curve,
        rules=rules,
        ma_windows=(short, long),
        execution=execution,
        notes=tuple(notes),
        statistics=compare_to_baselines(curve),
        split=env.split,
        data={"source": env.data.source, "rows": len(env.data)},
        observation=env.observation_spec,
    )


#: Baselines the agent's daily returns are compared with, by ``EvalResult.statistics`` key.
COMPARED: tuple[str, ...] = ("buy_and_hold", *RULES, "random_mean")
#: Bootstrap settings of :func:`compare_to_baselines` (seeded: the same run gives the same file).
BOOTSTRAP_RESAMPLES = 5_000
BOOTSTRAP_SEED = 0


def compare_to_baselines(curve: EquityCurve, confidence: float = 0.95) -> dict[str, Any]:
    """How sure the test split lets one be that the agent beats each baseline.

    For the agent: the probabilistic Sharpe ratio (Bailey & Lopez de Prado 2012,
    :func:`finsense.stats.probabilistic_sharpe_ratio`), the probability that its true Sharpe
    ratio is above 0 given the test days' length, skewness and kurtosis. For each baseline
    (buy-and-hold, the rules, the random policies' mean equity): the agent's annualised Sharpe
    ratio minus the baseline's, with a ``confidence`` interval from a stationary block
    bootstrap of the paired test days (:func:`finsense.stats.block_bootstrap_ci`; blocks keep
    the days' serial dependence, pairing keeps the two series' correlation). An interval that
    contains 0 says the test split cannot tell the two apart.

    Returns:
        ``{"agent_psr": p, "sharpe_difference": {baseline: {"estimate", "low", "high"}},
        "confidence", "block_length", "resamples"}``; empty when the split has fewer than 3 rows.
    """
    agent = metrics.simple_returns(curve.agent_equity)
    if agent.size < 2 or not np.isfinite(agent).all():  # a bankrupt short has no Sharpe ratio
        return {}
    equities = {"buy_and_hold": curve.buy_and_hold_equity, **curve.rules}
    if curve.random_mean is not None:
        equities["random_mean"] = curve.random_mean
    differences: dict[str, dict[str, float]] = {}
    block = stats.default_block_length(agent.size)
    for name in COMPARED:
        baseline = metrics.simple_returns(equities[name]) if name in equities else None
        if baseline is None or not np.isfinite(baseline).all():
            continue
        interval = stats.block_bootstrap_ci(
            agent,
            baseline,
            "sharpe",
            n_resamples=BOOTSTRAP_RESAMPLES,
            confidence=confidence,
            seed=BOOTSTRAP_SEED,
        )
        differences[name] = {
            "estimate": interval.estimate,
            "low": interval.low,
            "high": interval.high,
        }
    return {
        "agent_psr": stats.probabilistic_sharpe_ratio(agent),
        "sharpe_difference": differences,
        "confidence": confidence,
        "block_length": block,
        "resamples": BOOTSTRAP_RESAMPLES,
    }


def split_metrics(policy: Policy, env: TradingEnv) -> dict[str, float]:
    """The greedy policy's metrics over one episode of ``env`` (built with
    :func:`eval_env_kwargs`: the whole split), prefixed with the split's name
    (``val_total_profit``, ``test_sharpe_ratio``, ...). No baselines: for the trainer's
    ``eval_every`` scores. ``env`` is reset first, so one env serves every call."""
    _, agent = _greedy_history(policy, env)
    return {f"{env.split}_{key}": float(value) for key, value in agent.items()}


def test_metrics(policy: Policy, env_kwargs: Mapping[str, Any]) -> dict[str, float]:
    """The greedy policy's test-split metrics with a ``test_`` prefix (``test_sharpe_ratio``, ...):
    :func:`split_metrics` of the test split of ``env_kwargs`` (as in :func:`evaluate_policy`)."""
    return split_metrics(policy, TradingEnv(**eval_env_kwargs(env_kwargs)))


# Named by its contract, not a test: keep pytest from collecting it where it is imported.
test_metrics.__test__ = False  # type: ignore[attr-defined]


# -- run directories ------------------------------------------------------------------------------
def load_run_config(run_dir: Path) -> dict[str, Any]:
    """The run config recorded in ``run_dir/.hydra/config.yaml``, as plain Python values.

    Raises:
        FinSenseError: ``run_dir`` does not exist, is not a run directory, or its config is
            unreadable or has no ``env`` section.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is not a directory" if run_dir.exists() else "does not exist"
        raise FinSenseError(f"{run_dir} {what}; pass a run directory such as outputs/<run>")
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise FinSenseError(f"{run_dir} is not a FinSense run directory (no .hydra/config.yaml)")
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # yaml and OmegaConf errors have no common base
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FinSenseError(
            f"{path}: cannot be read ({first}); the run directory is damaged"
        ) from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("env"), dict):
        raise FinSenseError(f"{path}: has no env section; the run directory is damaged")
    return {str(k): v for k, v in cfg.items()}


def _launch_dir(run_dir: Path) -> Path | None:
    """The directory training was started from (Hydra's ``runtime.cwd``), if recorded."""
    import yaml

    try:
        with open(run_dir / ".hydra" / "hydra.yaml", encoding="utf-8") as f:
            record = yaml.safe_load(f)
        cwd = record["hydra"]["runtime"]["cwd"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return Path(cwd) if isinstance(cwd, str) else None


def run_env_kwargs(run_dir: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """The run's ``env`` section for the test split, with a relative data file made findable.

    A relative ``env.data.path`` is relative to where training was started; when it does not
    exist from the current directory it is resolved against Hydra's recorded ``runtime.cwd``.
    """
    env = eval_env_kwargs(config["env"])
    data = dict(env.get("data") or {})
    path = data.get("path")
    if data.get("source") == "file" and path and not Path(path).is_absolute():
        launch = _launch_dir(Path(run_dir))
        if not Path(path).exists() and launch is not None and (launch / path).exists():
            data["path"] = str(launch / path)
    env["data"] = data
    return env


def select_checkpoint(
    run_dir: Path, config: Mapping[str, Any], checkpoint: str | Path, *, doing: str = "evaluating"
) -> tuple[CheckpointManager, CheckpointInfo | Path]:
    """The CheckpointInfo or path ``checkpoint`` (best | latest | PATH) designates, with the
    manager to load it with (``doing`` names the command in the warning when ``best`` falls back
    to the latest checkpoint).

    Loading a CheckpointInfo with the manager that chose it takes the files that choice verified,
    so a trainer still running cannot rotate or replace them between the two (see
    :meth:`CheckpointManager.load`).
    """
    models = run_dir / "models"
    if str(checkpoint) not in CHECKPOINT_CHOICES:
        path = Path(checkpoint).expanduser()
        for candidate in (path, run_dir / path, models / path):
            if candidate.is_file():
                return CheckpointManager(candidate.parent), candidate
        raise CheckpointError(
            f"checkpoint={checkpoint}: no such file (looked in ., {run_dir} and {models}); "
            "use checkpoint=best, checkpoint=latest or a models/model_epN.pt path"
        )
    if not models.is_dir():
        raise CheckpointError(
            f"{run_dir} has no checkpoints (no models/ directory); train it first or pass "
            "checkpoint=PATH"
        )
    cks = dict(config.get("checkpoints") or {})
    manager = CheckpointManager(
        models,
        metric_name=str(cks.get("metric_name") or "total_profit"),
        mode=str(cks.get("mode", "max")),
    )
    info = manager.best() if checkpoint == "best" else None
    if checkpoint == "best" and info is None:
        info = manager.latest()
        if info is not None:
            log.warning("%s has no best_model checkpoint; %s the latest one", run_dir, doing)
    if checkpoint == "latest":
        info = manager.latest()
    if info is None:
        raise CheckpointError(
            f"{run_dir} has no valid checkpoint in models/; train it first "
            "(python -m finsense.train ...) or pass checkpoint=PATH"
        )
    return manager, info


def run_evaluation(
    run_dir: str | Path,
    checkpoint: str | Path = "best",
    *,
    seeds_random: int = 10,
    ma_windows: tuple[int, int] = DEFAULT_MA_WINDOWS,
    env_overrides: Sequence[str] = (),
) -> EvalResult:
    """Evaluate a run's checkpoint on its test split, or with ``env_overrides`` backtest it on
    other data (:mod:`finsense.backtest`); write ``test_metrics.json`` and ``equity.csv`` (see the
    module docstring) into :func:`results_dir` and return the result.

    The policy observes as it was trained to: the feature scale, window, shorting and execution
    saved with it (its ``observation``) are imposed on the env, execution unless an override
    sets it. A checkpoint written before policies held them is evaluated as before: the scale
    comes from the run's own data (computed from the training rows, as in training).

    Args:
        run_dir: a run directory (with ``.hydra/config.yaml`` and ``models/``).
        checkpoint: ``best`` (falls back to the latest when the run keeps no best model),
            ``latest``, or a path to a ``.pt`` file (absolute, relative to the current directory,
            to ``run_dir`` or to ``run_dir/models``).
        seeds_random: random-policy seeds.
        ma_windows: the moving-average crossover's (short, long) windows.
        env_overrides: ``env=NAME`` / ``env.KEY=VALUE`` overrides of a backtest; empty: the
            run's own test split.

    Raises:
        FinSenseError: the run directory, its config, its data or its checkpoint is missing or
            damaged (CheckpointError for checkpoints), or an override is refused (ConfigError);
            the message says which and what to do.
    """
    from finsense import backtest

    run_dir = Path(run_dir)
    check_ma_windows(ma_windows)
    overrides = backtest.parse_env_overrides(env_overrides) if env_overrides else None
    config = load_run_config(run_dir)
    env_kwargs = run_env_kwargs(run_dir, config)
    plan = None if overrides is None else backtest.backtest_env(env_kwargs, overrides)
    manager, selected = select_checkpoint(run_dir, config, checkpoint)
    policy = load_policy_network(manager, selected)

    observation, origin = policy.observation, "checkpoint"
    if observation is None:
        # An older checkpoint: what the policy saw in training is the run's own data's scale.
        origin = "run data"
        if plan is not None and plan.new_data:
            observation = _run_observation(run_dir, env_kwargs, policy.path)
    split = "test"
    if plan is not None:
        env_kwargs, split = plan.env_kwargs, plan.env_kwargs["split"]
    if observation is not None:
        rules = {} if overrides is None else overrides.rules
        env_kwargs = {**env_kwargs, **{k: v for k, v in observation.items() if k not in rules}}

    result = evaluate_policy(
        policy.network, env_kwargs, seeds_random=seeds_random, ma_windows=ma_windows, split=split
    )
    episode = policy.metadata.get("episode")
    result = replace(
        result,
        episode=episode if isinstance(episode, int) else None,
        checkpoint=policy.path,
        observation={**result.observation, "from": origin},
        backtest=None
        if plan is None
        else {"overrides": list(plan.overrides.args), "new_data": plan.new_data, "name": plan.name},
    )
    write_results(result, run_dir)
    return result


def _run_observation(run_dir: Path, env_kwargs: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The observation spec of the run's own env (for a checkpoint that holds none).

    Raises:
        CheckpointError: the run's data cannot be read, so the scale cannot be recovered.
    """
    try:
        return TradingEnv(**{**env_kwargs, "split": "all"}).observation_spec
    except FinSenseError as exc:
        raise CheckpointError(
            f"{path}: written before checkpoints held the policy's feature scale, which is "
            f"then read from the run's own data, and that cannot be read ({exc}); restore the "
            "run's data, or backtest a checkpoint of a newer training"
        ) from None


def results_dir(run_dir: str | Path, result: EvalResult) -> Path:
    """Where ``result``'s files go: ``RUN_DIR/eval``, or for a backtest
    ``RUN_DIR/eval/backtest/<data name>`` (:func:`finsense.backtest.data_name` of the data it
    ran on), so a backtest never replaces the run's own evaluation."""
    if result.backtest is None:
        return Path(run_dir) / EVAL_DIR
    from finsense.backtest import results_dir as backtest_dir

    return backtest_dir(Path(run_dir), str(result.backtest.get("name") or "data"))


def is_trading_run(config: Mapping[str, Any]) -> bool:
    """Whether a run's recorded config trains on a trading env (one with a test split)."""
    env = config.get("env") or {}
    target = str(env.get("_target_", "finsense.envs.TradingEnv"))  # older configs: trading
    return target.rsplit(".", 1)[-1] == "TradingEnv"


#: Where :func:`run_episode_evaluation` writes, under the run's ``eval/``.
EPISODES_FILE = "episodes.json"
#: Reset seeds of evaluation episodes start here: far from the training episodes' seeds.
EVAL_SEED_BASE = 1_000_000


def run_episode_evaluation(
    run_dir: str | Path, checkpoint: str | Path = "best", *, episodes: int = 20
) -> dict[str, Any]:
    """The greedy policy of a run's checkpoint over ``episodes`` episodes of the run's env (any
    env: CartPole, ...): mean and standard deviation of the return and the length; written to
    ``RUN_DIR/eval/episodes.json`` and returned.

    Episode ``i`` is reset with seed ``EVAL_SEED_BASE + i``, so two evaluations of one
    checkpoint agree and no evaluation episode replays a training episode's start.
    """
    from omegaconf import OmegaConf

    from finsense.components import build_env

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    manager, selected = select_checkpoint(run_dir, config, checkpoint)
    policy = load_policy_network(manager, selected)
    network, metadata, path = policy.network, policy.metadata, policy.path
    env = build_env(OmegaConf.create({"env": config["env"]}))
    act = greedy_actor(network)
    returns, lengths = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=EVAL_SEED_BASE + i)
        total, steps, done = 0.0, 0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            steps += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(steps)
    env.close()
    episode = metadata.get("episode")
    result = {
        "checkpoint": relative_to_run(path, run_dir),
        "episode": episode if isinstance(episode, int) else None,
        "episodes": episodes,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns, ddof=1)) if episodes > 1 else 0.0,
        "min_return": float(np.min(returns)),
        "max_return": float(np.max(returns)),
        "mean_length": float(np.mean(lengths)),
        "returns": returns,
        "lengths": lengths,
        "reset_seeds": [EVAL_SEED_BASE, EVAL_SEED_BASE + episodes - 1],
    }
    out = run_dir / EVAL_DIR
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / EPISODES_FILE, result)
    except OSError as exc:
        raise FinSenseError(
            f"{exc.filename or out}: cannot write the evaluation results "
            f"({exc.strerror or exc}); make the run directory writable and evaluate again"
        ) from None
    return result


@dataclass(frozen=True, eq=False)
class LoadedPolicy:
    """A checkpoint's policy, loaded for acting (:func:`load_policy_network`).

    Attributes:
        network: the policy network (eval mode, CPU).
        metadata: the checkpoint's metadata (its JSON; empty when there is none).
        path: the checkpoint file.
        observation: what the policy observes (:attr:`TradingEnv.observation_spec`, saved by the
            trainer for a trading env), or None (another env, or an older checkpoint).
    """

    network: torch.nn.Module
    metadata: dict[str, Any]
    path: Path
    observation: dict[str, Any] | None = None


def load_policy_network(
    manager: CheckpointManager, selected: CheckpointInfo | Path
) -> LoadedPolicy:
    """The policy of ``selected`` (network in eval mode on the CPU, metadata, file, observation
    spec), loaded with the manager that selected it (see :func:`select_checkpoint`).

    Raises:
        CheckpointError: the checkpoint holds no policy or not a FinSense one.
    """
    from finsense.components import policy_network

    path = _path_of(selected)
    state, _, metadata = manager.load(selected, with_training_state=False)
    if not isinstance(state, dict) or "policy" not in state:
        raise CheckpointError(f"{path}: holds no policy; pass another checkpoint")
    config = metadata.get("config") if isinstance(metadata, dict) else None
    try:
        # Rebuilt from the config that trained it (a checkpoint is data, never code).
        network = policy_network(config or {}, state["policy"]["arch"])
        network = DQNAgent.load_policy(state["policy"], device="cpu", network=network)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: not a FinSense policy ({type(exc).__name__}: {exc}); pass another checkpoint"
        ) from None
    observation = state["policy"].get("observation")
    return LoadedPolicy(
        network,
        metadata if isinstance(metadata, dict) else {},
        path,
        dict(observation) if isinstance(observation, Mapping) else None,
    )


def _path_of(selected: CheckpointInfo | Path) -> Path:
    return selected.path if isinstance(selected, CheckpointInfo) else Path(selected)


# -- files ----------------------------------------------------------------------------------------
def write_results(result: EvalResult, run_dir: Path) -> tuple[Path, Path]:
    """Write ``test_metrics.json`` and ``equity.csv`` into :func:`results_dir` (``eval/`` under
    ``run_dir``, or a backtest's own directory there); return both.

    Each file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    out = results_dir(run_dir, result)
    metrics_path = out / METRICS_FILE
    equity_path = out / EQUITY_FILE
    curve = result.curve
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(EQUITY_COLUMNS + RULE_COLUMNS + RANDOM_COLUMNS)
    optional = [curve.rules.get(rule) for rule in RULES] + [curve.random_mean, curve.random_std]
    empty = [""] * len(curve.dates)
    extra_columns = [empty if v is None else [repr(float(x)) for x in v] for v in optional]
    for date, agent, hold, position, *extra in zip(
        curve.dates,
        curve.agent_equity,
        curve.buy_and_hold_equity,
        curve.positions,
        *extra_columns,
        strict=True,
    ):
        writer.writerow(
            [_iso_date(date), repr(float(agent)), repr(float(hold)), int(position), *extra]
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(metrics_path, result.to_json(run_dir))
        write_bytes_atomic(equity_path, text.getvalue().encode("utf-8"))
    except OSError as exc:
        raise FinSenseError(
            f"{exc.filename or out}: cannot write the evaluation results "
            f"({exc.strerror or exc}); make the run directory writable (or copy the run "
            "elsewhere) and evaluate again"
        ) from None
    return metrics_path, equity_path


def read_equity(path: Path) -> EquityCurve:
    """Read an ``equity.csv`` written by :func:`write_results` (``close`` is not stored: NaN).

    A rule whose column is missing (a file written before the rules) or empty (skipped) is left
    out of ``rules``; missing random columns leave ``random_mean`` and ``random_std`` None.
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in EQUITY_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise FinSenseError(
                f"{path}: missing column(s) {', '.join(missing)}; delete it and run "
                "python -m finsense.evaluate again"
            )
        rows = list(reader)
    try:
        optional = {
            column: np.asarray([float(r[column]) for r in rows])
            for column in RULE_COLUMNS + RANDOM_COLUMNS
            if rows and all(r.get(column) for r in rows)
        }
        rules = {
            rule: optional[column]
            for rule, column in zip(RULES, RULE_COLUMNS, strict=True)
            if column in optional
        }
        return EquityCurve(
            dates=np.asarray([r["date"] for r in rows], dtype="datetime64[ns]"),
            close=np.full(len(rows), math.nan),
            agent_equity=np.asarray([float(r["agent_equity"]) for r in rows]),
            buy_and_hold_equity=np.asarray([float(r["buy_and_hold_equity"]) for r in rows]),
            positions=np.asarray([int(r["position"]) for r in rows], dtype=np.int64),
            rules=rules,
            random_mean=optional.get(RANDOM_COLUMNS[0]),
            random_std=optional.get(RANDOM_COLUMNS[1]),
        )
    except (TypeError, ValueError) as exc:
        raise FinSenseError(
            f"{path}: damaged ({exc}); delete it and run python -m finsense.evaluate again"
        ) from None


def _iso_date(value: Any) -> str:
    return str(np.datetime64(value, "D"))
