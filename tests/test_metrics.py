"""Metrics: conventions, degenerate inputs, and properties checked with hypothesis."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from finsense import metrics
from finsense.config import EPISODE_METRIC_NAMES

returns_arrays = arrays(
    np.float64,
    st.integers(min_value=0, max_value=60),
    elements=st.floats(min_value=-1.5, max_value=1.0, allow_nan=False),
)


@given(returns_arrays)
def test_max_drawdown_is_a_fraction_between_minus_one_and_zero(returns: np.ndarray) -> None:
    assert -1.0 <= metrics.max_drawdown(returns) <= 0.0


@given(arrays(np.float64, st.integers(0, 60), elements=st.floats(0.0, 1.0)))
def test_max_drawdown_is_zero_when_equity_never_falls(returns: np.ndarray) -> None:
    assert metrics.max_drawdown(returns) == 0.0


def test_max_drawdown_measures_the_worst_fall_from_a_peak() -> None:
    # Wealth 1 -> 1.1 -> 0.88 -> 0.968 -> 1.21: worst is 0.88 / 1.1 - 1 = -0.2.
    assert metrics.max_drawdown([0.1, -0.2, 0.1, 0.25]) == pytest.approx(-0.2)
    assert metrics.max_drawdown([-0.5]) == pytest.approx(-0.5)  # a first-step loss counts
    assert metrics.max_drawdown([0.2, -1.5]) == -1.0  # wealth below zero is a total loss


@given(
    arrays(np.float64, st.integers(2, 60), elements=st.floats(-0.5, 0.5)),
    st.floats(min_value=1e-3, max_value=1e3),
)
def test_sharpe_ratio_is_invariant_to_scaling_returns_by_a_positive_constant(
    returns: np.ndarray, scale: float
) -> None:
    assume(np.std(returns) > 1e-6)
    assert metrics.sharpe_ratio(returns * scale) == pytest.approx(
        metrics.sharpe_ratio(returns), rel=1e-6, abs=1e-9
    )


def test_sharpe_ratio_follows_the_empyrical_convention() -> None:
    returns = np.array([0.01, -0.02, 0.015, 0.003, -0.004])
    expected = returns.mean() / returns.std(ddof=1) * math.sqrt(252)
    assert metrics.sharpe_ratio(returns) == pytest.approx(expected)
    assert metrics.sharpe_ratio(returns, periods_per_year=12) == pytest.approx(
        expected * math.sqrt(12 / 252)
    )


@pytest.mark.parametrize("returns", [[], [0.01], [0.02, 0.02, 0.02], [0.0, 0.0]])
def test_sharpe_ratio_of_too_few_or_constant_returns_is_zero(returns: list[float]) -> None:
    assert metrics.sharpe_ratio(returns) == 0.0


def test_sharpe_ratio_and_drawdown_of_nan_returns_are_nan() -> None:
    assert math.isnan(metrics.sharpe_ratio([0.1, math.nan, 0.2]))
    assert math.isnan(metrics.max_drawdown([0.1, math.nan]))


def test_profit_and_return_compare_final_with_initial_equity() -> None:
    equity = [10_000.0, 10_500.0, 9_000.0, 11_000.0]
    assert metrics.total_profit(equity) == pytest.approx(1_000.0)
    assert metrics.total_return(equity) == pytest.approx(0.1)
    np.testing.assert_allclose(metrics.simple_returns(equity), [0.05, 9_000 / 10_500 - 1, 2 / 9])


@pytest.mark.parametrize("equity", [[], [5.0]])
def test_profit_and_return_of_empty_or_single_equity_are_zero(equity: list[float]) -> None:
    assert metrics.total_profit(equity) == 0.0
    assert metrics.total_return(equity) == 0.0
    assert metrics.simple_returns(equity).size == 0


def test_total_trades_counts_position_changes_and_a_reversal_once() -> None:
    assert metrics.total_trades([0, 1, 1, 0, 0, -1, 1]) == 4
    assert metrics.total_trades([0, 0, 0]) == 0
    assert metrics.total_trades([]) == 0


def test_win_rate_counts_closed_round_trips_after_fees() -> None:
    # positions[k] is held from row k - 1 to row k: long 100 -> 110 (win), flat,
    # short 110 -> 100 (win), then a long entered at 100 still open at the end, valued at the
    # last price 105 (win)
    prices = [100.0, 110.0, 110.0, 100.0, 100.0, 100.0, 105.0]
    positions = [0, 1, 0, -1, -1, 1, 1]
    assert metrics.win_rate(positions, prices) == 1.0
    # long 100 -> 100.5 loses once fees of 1% per leg are paid
    assert metrics.win_rate([0, 1, 0], [100.0, 100.5, 100.5], fee=0.01) == 0.0
    assert metrics.win_rate([0, 1, 0], [100.0, 100.5, 100.5], fee=0.0) == 1.0


def test_win_rate_counts_a_trip_still_open_at_the_end_as_closed_at_the_last_price() -> None:
    # Buy-and-hold's one trade (issue 13: it used to print 0.00%): entered at 1.0, worth 3.0.
    assert metrics.win_rate([0, 1, 1], [1.0, 2.0, 3.0]) == 1.0
    # It pays the exit fee it would pay: 100 -> 101 at 1% a leg loses (101 * 0.99 < 100 * 1.01).
    assert metrics.win_rate([0, 1, 1], [100.0, 90.0, 101.0], fee=0.01) == 0.0
    # A long win, then a short from 110 still open at 120: one of two.
    assert metrics.win_rate([0, 1, -1, -1], [100.0, 110.0, 115.0, 120.0]) == 0.5


@pytest.mark.parametrize(("positions", "prices"), [([], []), ([0], [1.0]), ([0, 0], [1.0, 2.0])])
def test_win_rate_without_round_trips_is_zero(positions: list[int], prices: list[float]) -> None:
    assert metrics.win_rate(positions, prices) == 0.0


def test_win_rate_does_not_count_a_position_already_open_on_the_first_row() -> None:
    # It has no entry price: the first row is where the curve starts.
    assert metrics.win_rate([1, 1, 0], [1.0, 2.0, 3.0]) == 0.0


def test_buy_and_hold_pays_the_entry_fee_and_tracks_the_price() -> None:
    curve = metrics.buy_and_hold([100.0, 110.0, 121.0], initial_cash=1_000.0, fee=0.01)
    np.testing.assert_allclose(curve, [1_000.0, 1_100 / 1.01, 1_210 / 1.01])
    assert metrics.buy_and_hold([]).size == 0


def test_buy_and_hold_may_enter_at_a_later_fill() -> None:
    # The env's next_close fills the first order at prices[1]: 1,000 / 1.01 buys 1,000 / 111.1.
    curve = metrics.buy_and_hold(
        [100.0, 110.0, 121.0], initial_cash=1_000.0, fee=0.01, entry_price=110.0
    )
    np.testing.assert_allclose(curve, [1_000.0, 1_000 / 1.01, 1_100 / 1.01])


def test_episode_metrics_holds_every_reported_metric_as_plain_python_numbers() -> None:
    result = metrics.episode_metrics(
        [100.0, 101.0, 99.0, 102.0], [0, 1, 1, 0], [10.0, 10.1, 9.9, 10.2], fee=0.001
    )
    assert tuple(result) == EPISODE_METRIC_NAMES
    assert all(type(v) in (float, int) for v in result.values())
    assert result["total_trades"] == 2
    assert result["final_equity"] == 102.0
    assert result["buy_and_hold_return"] == pytest.approx(10.2 / 10.0 / 1.001 - 1)


@pytest.mark.parametrize(
    ("equity", "positions", "prices"),
    [([], [], []), ([100.0], [0], [10.0]), ([100.0, 100.0, 100.0], [0, 0, 0], [5.0, 5.0, 5.0])],
)
def test_episode_metrics_of_degenerate_episodes_do_not_raise(
    equity: list[float], positions: list[int], prices: list[float]
) -> None:
    result = metrics.episode_metrics(equity, positions, prices)
    assert result["total_profit"] == 0.0
    assert result["sharpe_ratio"] == 0.0
    assert result["max_drawdown"] == 0.0
