"""Trading metrics: pure functions on numpy arrays, used for every number FinSense reports.

Conventions shared by every function here:

- ``equity[k]`` is the account value (cash plus positions marked at the close, in currency) after
  step ``k``; ``equity[0]`` is the value before the first step (the initial cash).
- ``prices[k]`` is the close at the same row as ``equity[k]``.
- ``positions[k]`` is the position held from row ``k - 1`` to row ``k``: the one that produced
  ``equity[k]``. ``positions[0]`` is the position before the first step (flat in the env).
  Positive is long, negative is short, 0 is flat; the size does not matter to these metrics.
- Trade prices (``win_rate``): ``prices[k - 1]`` is the price the trade into ``positions[k]``
  was filled at, and ``prices[-1]`` values a position still open at the end. With fills at the
  close these are the closes themselves; the env passes its fill prices where they differ
  (``env.execution=next_open``).
- Returns are simple per-period returns ``equity[k] / equity[k - 1] - 1``.
- Degenerate inputs (empty, length 1, constant) give a defined value, documented per function;
  no function here raises on them. NaN in gives NaN out where it cannot be avoided.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: Trading days per year: the annualisation factor for daily data.
TRADING_DAYS_PER_YEAR = 252


def _as_float_array(values: ArrayLike) -> NDArray[np.float64]:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def simple_returns(equity: ArrayLike) -> NDArray[np.float64]:
    """Per-period simple returns ``equity[k] / equity[k - 1] - 1``; empty for fewer than 2 values.

    A zero equity followed by anything gives inf or nan at that step (no warning is raised).
    """
    values = _as_float_array(equity)
    if values.size < 2:
        return np.zeros(0, dtype=np.float64)
    previous = values[:-1]
    if previous.all():  # the common case skips errstate, which costs more than the division
        return values[1:] / previous - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return values[1:] / previous - 1.0


def total_profit(equity: ArrayLike) -> float:
    """Final equity minus initial equity, in currency (0.0 for an empty curve)."""
    values = _as_float_array(equity)
    if values.size == 0:
        return 0.0
    return float(values[-1] - values[0])


def total_return(equity: ArrayLike) -> float:
    """Final over initial equity minus 1, as a fraction (0.05 = +5%).

    0.0 for an empty curve; nan when the initial equity is 0.
    """
    values = _as_float_array(equity)
    if values.size == 0:
        return 0.0
    if values[0] == 0.0:
        return math.nan
    return float(values[-1] / values[0] - 1.0)


def sharpe_ratio(returns: ArrayLike, periods_per_year: int = TRADING_DAYS_PER_YEAR) -> float:
    """Annualised Sharpe ratio of simple per-period returns, risk-free rate 0.

    ``mean(returns) / std(returns, ddof=1) * sqrt(periods_per_year)``: the convention of
    empyrical and quantstats. Unitless. Defined as 0.0 for fewer than 2 returns and for constant
    returns (a spread within 1e-12 of the mean's size: rounding, not risk); nan when any return
    is nan or infinite.
    """
    values = _as_float_array(returns)
    if values.size < 2:
        return 0.0
    mean = float(values.mean())
    if not math.isfinite(mean):
        return math.nan
    deviations = values - mean
    std = math.sqrt(float(deviations @ deviations) / (values.size - 1))
    if std <= 1e-12 * abs(mean):
        return 0.0
    return mean / std * math.sqrt(periods_per_year)


def max_drawdown(returns: ArrayLike) -> float:
    """Largest peak-to-trough fall of the compounded returns, as a fraction in [-1, 0].

    -0.02 means the account fell 2% below its previous peak at worst. The wealth curve starts at 1
    before the first return, so a first-step loss counts. 0.0 for no returns or a curve that
    never falls; -1.0 when wealth reaches zero or below (a return <= -1); nan when a return is nan
    or infinite.
    """
    values = _as_float_array(returns)
    if values.size == 0:
        return 0.0
    if not math.isfinite(float(values.sum())):
        return math.nan
    wealth = np.cumprod(1.0 + values)
    peak = np.maximum.accumulate(wealth)
    np.maximum(peak, 1.0, out=peak)  # the curve starts at 1, so peaks are >= 1
    drawdown = float(np.min(wealth / peak)) - 1.0
    return min(0.0, max(-1.0, drawdown))


def total_trades(positions: ArrayLike) -> int:
    """Number of steps at which the position changes; a reversal (long to short) counts once.

    0 for fewer than 2 positions.
    """
    values = _as_float_array(positions)
    if values.size < 2:
        return 0
    return int(np.count_nonzero(values[1:] != values[:-1]))


def _round_trips(
    positions: NDArray[np.float64], prices: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Direction, entry price and exit price of every round trip (one still open at the end
    exits at the last price)."""
    # Position k is taken by the trade at row k - 1. A round trip is a run of one non-flat
    # position between two trades: it opens at the trade into it (entry price at row start - 1)
    # and closes at the trade out of it (exit price at row next_start - 1), or, still open at
    # the end, is valued at the last price. A run already open at row 0 has no entry and is
    # not counted.
    trades = np.flatnonzero(positions[1:] != positions[:-1]) + 1
    starts = trades
    exits = np.empty_like(trades)
    exits[:-1] = trades[1:] - 1
    exits[-1:] = positions.size - 1
    held = positions[starts] != 0
    starts, exits = starts[held], exits[held]
    return np.sign(positions[starts]), prices[starts - 1], prices[exits]


def win_rate(positions: ArrayLike, prices: ArrayLike, fee: float = 0.0) -> float:
    """Fraction of round trips whose profit after fees is positive; 0.0 when there are none.

    A round trip opens when the position changes to long or short and closes when it changes
    again (to flat or to the opposite side). With the env's accounting a long trip entered at
    price ``a`` and left at ``b`` wins when ``b * (1 - fee) > a * (1 + fee)``; a short trip wins
    when ``a * (1 - fee) > b * (1 + fee)``. A trip still open at the end counts as if closed at
    the last price, exit fee paid (so buy-and-hold's one trade counts: it wins when the price
    rose by more than the two fees). ``fee`` is the whole proportional cost of a leg (the env
    passes its fee plus slippage). ``prices`` are trade prices, aligned with ``positions`` (see
    the module docstring).
    """
    pos = _as_float_array(positions)
    px = _as_float_array(prices)
    if pos.size != px.size:
        raise ValueError(f"positions and prices differ in length: {pos.size} != {px.size}")
    direction, entry, exit_ = _round_trips(pos, px)
    if direction.size == 0:
        return 0.0
    long_wins = exit_ * (1.0 - fee) > entry * (1.0 + fee)
    short_wins = entry * (1.0 - fee) > exit_ * (1.0 + fee)
    wins = np.where(direction > 0, long_wins, short_wins)
    return float(np.count_nonzero(wins) / direction.size)


def buy_and_hold(
    prices: ArrayLike,
    initial_cash: float = 1.0,
    fee: float = 0.0,
    *,
    entry_price: float | None = None,
) -> NDArray[np.float64]:
    """Equity curve of buying with all the cash at the first step and holding to the end.

    The entry fee (``fee`` times the notional bought) is paid from the cash, exactly as the env
    does for a long position taken at the first step: ``curve[0] = initial_cash`` (before buying)
    and ``curve[k] = units * prices[k]`` with ``units = initial_cash / ((1 + fee) * entry)``.
    ``entry`` is ``entry_price`` where the first fill is not the first close (the env's
    ``next_close`` fills the first order at ``prices[1]``, ``next_open`` at the next open), else
    ``prices[0]``. Same length as ``prices`` (empty for empty prices; nan after the start when
    the entry price is 0).
    """
    px = _as_float_array(prices)
    if px.size == 0:
        return np.zeros(0, dtype=np.float64)
    entry = float(px[0]) if entry_price is None else float(entry_price)
    size = initial_cash / (1.0 + fee)
    curve = (size / entry) * px if entry != 0.0 else np.full(px.size, math.nan)
    curve[0] = initial_cash
    return curve


def episode_metrics(
    equity: ArrayLike,
    positions: ArrayLike,
    prices: ArrayLike,
    fee: float = 0.0,
    periods_per_year: int = TRADING_DAYS_PER_YEAR,
    *,
    trade_prices: ArrayLike | None = None,
    buy_and_hold_equity: ArrayLike | None = None,
) -> dict[str, Any]:
    """The metrics FinSense reports for one episode, as plain Python floats and ints.

    Keys (see the functions of the same name): ``total_profit`` (currency), ``total_return``,
    ``sharpe_ratio`` (annualised with ``periods_per_year``), ``max_drawdown`` (fraction <= 0),
    ``total_trades``, ``win_rate``, ``buy_and_hold_return`` (holding the asset over the same rows,
    entry fee included, as a fraction of ``equity[0]``) and ``final_equity`` (currency; nan for
    an empty curve). All three arrays are aligned as in the module docstring.

    ``fee`` is the whole proportional cost of a trade leg. ``trade_prices`` (default ``prices``)
    are the fill prices :func:`win_rate` reads; ``buy_and_hold_equity`` (default
    :func:`buy_and_hold` of ``prices``, bought at the first close) is the benchmark curve under
    the caller's own fills (the env's execution model).
    """
    eq = _as_float_array(equity)
    px = _as_float_array(prices)
    returns = simple_returns(eq)
    if buy_and_hold_equity is not None:
        hold_return = total_return(buy_and_hold_equity)
    elif eq.size and px.size:
        hold = buy_and_hold(px, initial_cash=float(eq[0]), fee=fee)
        hold_return = total_return(hold)
    else:
        hold_return = 0.0
    return {
        "total_profit": total_profit(eq),
        "total_return": total_return(eq),
        "sharpe_ratio": sharpe_ratio(returns, periods_per_year),
        "max_drawdown": max_drawdown(returns),
        "total_trades": total_trades(positions),
        "win_rate": win_rate(positions, px if trade_prices is None else trade_prices, fee),
        "buy_and_hold_return": hold_return,
        "final_equity": float(eq[-1]) if eq.size else math.nan,
    }
