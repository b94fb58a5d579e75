"""``python -m finsense.evaluate [RUN_DIR [ENV_OVERRIDE ...] | OVERRIDE ...] [checkpoint=...]
[seeds=N] [ma_short=N] [ma_long=N]``.

Runs the greedy policy of a run's checkpoint on the run's held-out test split and prints it side
by side with buy-and-hold, a momentum rule, a moving-average crossover (``ma_short``/``ma_long``
rows) and a random policy, all traded under the run's execution model and costs; writes
``RUN_DIR/eval/test_metrics.json`` and ``RUN_DIR/eval/equity.csv`` (see
:mod:`finsense.evaluation`).

RUN_DIR may be a sweep directory (``multirun/<sweep>``): every job is evaluated as above and the
configurations are compared over their seeds, the best one with its deflated Sharpe ratio; see
:mod:`finsense.sweep_eval`, which writes ``SWEEP_DIR/eval/sweep_metrics.json``.

The run is RUN_DIR, or the one the train command with the same overrides uses
(``python -m finsense.evaluate seed=1 env=googl``), or with neither the default run,
``outputs/default`` (see :mod:`finsense.runs`). The options are ``key=value`` or the guide's
``--checkpoint latest``, ``--seeds 3``.

A backtest: after a RUN_DIR, ``env=NAME`` and ``env.KEY=VALUE`` overrides run the same policy,
baselines and metrics on other data (``python -m finsense.evaluate RUN_DIR
env.data.path=new.csv``, ``... RUN_DIR env=googl``): every row of new data, observed as in
training (the checkpoint's feature scale and window), written to
``RUN_DIR/eval/backtest/<data name>/`` (see :mod:`finsense.backtest` for the keys it takes).

A user's mistake (a missing or damaged run directory, no checkpoint, an unknown argument, an
override a backtest refuses, a data file that cannot be read) is one line on stderr and exit
code 2.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finsense.cli import quiet_on_closed_stdout
from finsense.errors import FinSenseError
from finsense.evaluation import (
    DEFAULT_MA_WINDOWS,
    EQUITY_FILE,
    METRICS_FILE,
    RULES,
    TABLE_METRICS,
    EvalResult,
    check_ma_windows,
    is_trading_run,
    load_run_config,
    results_dir,
    run_episode_evaluation,
    run_evaluation,
)
from finsense.runs import Option, make_parser, parse_run_args

PROG = "finsense.evaluate"
#: The command's own options (``key=value`` or ``--key value``); every other ``key=value`` is an
#: override of the train command that names the run, or after a RUN_DIR an env override (a
#: backtest).
OPTIONS: dict[str, Option] = {
    "checkpoint": Option(
        "best", "best|latest|PATH", "which checkpoint: the best model, the newest, or a file"
    ),
    "seeds": Option("10", "N", "random-policy seeds"),
    "ma_short": Option(
        str(DEFAULT_MA_WINDOWS[0]), "N", "the crossover rule's short moving average, in rows"
    ),
    "ma_long": Option(
        str(DEFAULT_MA_WINDOWS[1]), "N", "the crossover rule's long moving average, in rows"
    ),
    "episodes": Option("20", "N", "greedy episodes, for a run on a non-trading env (CartPole)"),
}


def _format(metric: str, value: Any) -> str:
    """One cell: currency with thousands separators, fractions as percent, counts as counts."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    value = float(value)
    if metric == "total_profit":
        return f"{value:,.2f}"
    if metric in ("total_return", "max_drawdown", "win_rate"):
        return f"{100 * value:.2f}%"
    if metric == "total_trades":
        return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    return f"{value:.3f}"


def rule_heading(rule: str, ma_windows: tuple[int, int]) -> str:
    """A rule's column heading: ``momentum``, ``MA 10/50``."""
    if rule == "ma_crossover":
        return f"MA {ma_windows[0]}/{ma_windows[1]}"
    return rule


def _rule_cell(result: EvalResult, rule: str, metric: str) -> str:
    scored = result.rules.get(rule)
    return "skipped" if scored is None else _format(metric, scored[metric])


def format_table(result: EvalResult) -> str:
    """The side-by-side table: one row per metric, columns agent | buy & hold | the rules |
    random (a skipped rule shows ``skipped``)."""
    random_head = f"random (mean ± std, {result.random_seeds} seeds)"
    rule_heads = tuple(rule_heading(rule, result.ma_windows) for rule in RULES)
    header = ("metric", "agent", "buy & hold", *rule_heads, random_head)
    rows = [header]
    for metric in TABLE_METRICS:
        spread = result.random[metric]
        rule_cells = tuple(_rule_cell(result, rule, metric) for rule in RULES)
        rows.append(
            (
                metric,
                _format(metric, result.agent[metric]),
                _format(metric, result.buy_and_hold[metric]),
                *rule_cells,
                f"{_format(metric, spread['mean'])} ± {_format(metric, spread['std'])}",
            )
        )
    return align_columns(rows)


def align_columns(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells as aligned text: the first column left-aligned, the others right-aligned,
    two spaces between columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _describe(result: EvalResult, run_dir: Path) -> str:
    """The lines above the table: which checkpoint, which rows, for a backtest how the policy
    observes, and the execution model."""
    found = result.to_json(run_dir)
    period, where = found["period"], found["checkpoint"]
    episode = "" if result.episode is None else f" (episode {result.episode})"
    span = f"{period['start']} to {period['end']} ({period['steps']} steps)"
    if result.split == "all":
        rows = result.data.get("rows")
        rows_of = f"{rows:,} rows" if isinstance(rows, int) else "rows"
        lines = [
            f"All {rows_of} of {result.data.get('source')}: {span}, checkpoint {where}{episode}"
        ]
    else:
        lines = [f"Test split {span}, checkpoint {where}{episode}"]
    seen = result.observation
    if result.backtest is not None and seen:
        origin = (
            "saved with the policy"
            if seen.get("from") == "checkpoint"
            else "recomputed from the run's data"
        )
        lines.append(
            f"Observed as in training: {seen['window_size']} daily log returns / "
            f"{seen['feature_scale']:.6g} (the training rows' std, {origin})"
        )
    ex = result.execution
    if ex:
        lines.append(
            f"Every policy fills at {ex['model']}, fee {100 * ex['fee']:g}% + slippage "
            f"{ex['slippage_bps']:g} bps a trade, borrow {100 * ex['borrow_rate']:g}% a year "
            "on shorts"
        )
    return "\n".join(lines)


def format_statistics(result: EvalResult) -> str:
    """Lines under the table: the agent's PSR and, per baseline, the Sharpe difference with its
    bootstrap interval (empty when there are none)."""
    found = result.statistics
    if not found:
        return ""
    level = f"{100 * found['confidence']:g}%"
    lines = [
        f"Agent's probabilistic Sharpe ratio (P[true Sharpe > 0]): {found['agent_psr']:.2f}",
        f"Agent's Sharpe ratio minus each baseline's, {level} interval (block bootstrap of the "
        f"test days, blocks of {found['block_length']}):",
    ]
    names = {"buy_and_hold": "buy & hold", "random_mean": "random (mean equity)"}
    for name, diff in found["sharpe_difference"].items():
        label = names.get(name) or rule_heading(name, result.ma_windows)
        verdict = (
            "beats it"
            if diff["low"] > 0
            else "loses to it"
            if diff["high"] < 0
            else "cannot tell apart"
        )
        lines.append(
            f"  vs {label:<24} {diff['estimate']:+.2f}  [{diff['low']:+.2f}, {diff['high']:+.2f}]"
            f"  {verdict}"
        )
    return "\n".join(lines)


@quiet_on_closed_stdout
def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code (0, or 2 for a user's mistake)."""
    parser = make_parser(
        PROG,
        "Evaluate a run's checkpoint on its held-out test split, side by side with "
        "buy-and-hold, a momentum rule, a moving-average crossover and a random policy. "
        "After a RUN_DIR, env overrides backtest it on other data: RUN_DIR "
        "env.data.path=new.csv, RUN_DIR env=googl.",
        OPTIONS,
    )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        args = parse_run_args(
            parser, sys.argv[1:] if argv is None else argv, OPTIONS, env_overrides=True
        )
        options = args.options
        try:
            seeds = int(options["seeds"])
        except ValueError:
            seeds = 0
        if seeds < 1:
            raise FinSenseError(f"seeds={options['seeds']}: must be an integer >= 1")
        ma_windows = _ma_windows(options)
        run_dir = args.find()
        if _is_sweep(run_dir):
            return _evaluate_sweep(run_dir, options["checkpoint"], seeds, ma_windows)
        if not is_trading_run(load_run_config(run_dir)):
            if args.env_overrides:
                raise FinSenseError(
                    f"{' '.join(args.env_overrides)}: {run_dir} trains on a non-trading env; "
                    "a backtest on other prices needs a trading run"
                )
            return _evaluate_episodes(run_dir, options)
        result = run_evaluation(
            run_dir,
            options["checkpoint"],
            seeds_random=seeds,
            ma_windows=ma_windows,
            env_overrides=args.env_overrides,
        )
    except FinSenseError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    print(_describe(result, run_dir))
    print(format_table(result))
    statistics = format_statistics(result)
    if statistics:
        print(statistics)
    for note in result.notes:
        print(f"note: {note}")
    print(f"Wrote {results_dir(run_dir, result) / METRICS_FILE} and {EQUITY_FILE}")
    return 0


def _ma_windows(options: dict[str, str]) -> tuple[int, int]:
    """``(ma_short, ma_long)`` from the options, checked (FinSenseError naming both)."""
    try:
        windows = (int(options["ma_short"]), int(options["ma_long"]))
    except ValueError:
        raise FinSenseError(
            f"ma_short={options['ma_short']} ma_long={options['ma_long']}: must be integers "
            "with 1 <= ma_short < ma_long (e.g. ma_short=10 ma_long=50)"
        ) from None
    return check_ma_windows(windows)


def _is_sweep(path: Path) -> bool:
    """Whether ``path`` is a sweep directory (:func:`finsense.sweep_eval.sweep_job_dirs`)."""
    from finsense.sweep_eval import sweep_job_dirs  # imports this module: loaded on use

    return bool(sweep_job_dirs(path))


def _evaluate_sweep(
    sweep_dir: Path, checkpoint: str, seeds: int, ma_windows: tuple[int, int]
) -> int:
    """Every job of a sweep, compared per configuration (see :mod:`finsense.sweep_eval`)."""
    from finsense.sweep_eval import evaluate_sweep, print_sweep

    result = evaluate_sweep(
        sweep_dir, checkpoint, seeds_random=seeds, ma_windows=ma_windows, progress=True
    )
    print_sweep(sweep_dir, result)
    return 0


def _evaluate_episodes(run_dir: Path, options: dict[str, str]) -> int:
    """A run on an env with no test split: the greedy policy's return over N episodes."""
    try:
        episodes = int(options["episodes"])
    except ValueError:
        episodes = 0
    if episodes < 1:
        raise FinSenseError(f"episodes={options['episodes']}: must be an integer >= 1")
    result = run_episode_evaluation(run_dir, options["checkpoint"], episodes=episodes)
    where = result["checkpoint"]
    trained = "" if result["episode"] is None else f" (episode {result['episode']})"
    print(f"Greedy policy of {where}{trained} over {episodes} episodes:")
    print(
        f"  return {result['mean_return']:.1f} +/- {result['std_return']:.1f} (std; min "
        f"{result['min_return']:.1f}, max {result['max_return']:.1f}), mean length "
        f"{result['mean_length']:.1f}"
    )
    print(f"Wrote {run_dir / 'eval' / 'episodes.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
