"""The trading env: gymnasium contract, determinism, exact accounting, splits and errors."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env

import finsense  # noqa: F401  (registers finsense/Trading-v0)
from finsense import metrics
from finsense.config import EPISODE_METRIC_NAMES
from finsense.data import MarketData, sample_prices, synthetic_prices
from finsense.envs import TRADING_ENV_ID, TradingEnv, register_envs
from finsense.envs.trading import EXECUTIONS
from finsense.errors import ConfigError, DataError

FEE = 0.01
CASH = 10_000.0


def prices(*close: float, opens: list[float] | None = None) -> MarketData:
    """A tiny market on consecutive days (with opens when given)."""
    dates = (np.datetime64("2021-01-04") + np.arange(len(close))).astype("datetime64[ns]")
    return MarketData(
        dates=dates,
        close=np.asarray(close, dtype=np.float64),
        source="hand-made",
        open=None if opens is None else np.asarray(opens, dtype=np.float64),
    )


def hand_env(*close: float, opens: list[float] | None = None, **kwargs: Any) -> TradingEnv:
    """Window 1 over every row: row 0 is the window, the episode trades from row 1 to the end.

    Fills at the signal's own close with the fee as the only cost unless ``kwargs`` say
    otherwise: the accounting tests below are about cash and units, and the fills of the other
    execution models and the other costs have tests of their own.
    """
    options: dict[str, Any] = {
        "split": "all",
        "window_size": 1,
        "fee": FEE,
        "initial_cash": CASH,
        "execution": "close",
        "slippage_bps": 0.0,
        "borrow_rate": 0.0,
    }
    return TradingEnv(prices(*close, opens=opens), **(options | kwargs))


def run(env: gymnasium.Env, actions: list[int], seed: int | None = 0) -> list[tuple]:
    """Reset, then step through ``actions``; return every step's result."""
    env.reset(seed=seed)
    return [env.step(a) for a in actions]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"allow_short": True, "episode_length": 50, "reward": "profit"},
        {"data": {"source": "sample", "test_fraction": 0.2}, "split": "test", "window_size": 10},
    ],
)
def test_env_passes_the_gymnasium_checker_without_warnings(kwargs: dict[str, Any]) -> None:
    env = gymnasium.make(TRADING_ENV_ID, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)


def test_make_without_arguments_runs_on_the_synthetic_default() -> None:
    env = gymnasium.make(TRADING_ENV_ID)
    obs, info = env.reset(seed=0)
    assert obs.shape == (31,) and obs.dtype == np.float32
    assert env.action_space == gymnasium.spaces.Discrete(2)
    assert isinstance(env.unwrapped, TradingEnv)
    assert env.unwrapped.data.source.startswith("synthetic(seed=0")
    assert info == {"equity": 10_000.0, "position": 0}


def test_register_envs_is_idempotent() -> None:
    register_envs()
    register_envs()
    assert TRADING_ENV_ID in gymnasium.registry


def test_same_reset_seed_gives_the_same_episode() -> None:
    actions = np.random.default_rng(1).integers(0, 3, 100).tolist()
    env = TradingEnv(allow_short=True, episode_length=100)
    first = run(env, actions, seed=42)
    again = run(TradingEnv(allow_short=True, episode_length=100), actions, seed=42)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:] == b[1:]
    starts = set()
    for seed in range(10):
        env.reset(seed=seed)
        starts.add(env.history()["dates"][0])
    assert len(starts) > 1  # the seed moves the start


def test_random_start_false_starts_at_the_first_row_with_a_full_window() -> None:
    env = TradingEnv(
        synthetic_prices(n_steps=200), window_size=30, random_start=False, episode_length=10
    )
    for seed in (0, 1):
        env.reset(seed=seed)
        assert env.history()["dates"][0] == env.data.dates[30]


def test_observation_is_the_scaled_window_of_log_returns_and_the_position() -> None:
    data = synthetic_prices(n_steps=300)
    env = TradingEnv(data, window_size=5, random_start=False, allow_short=True)
    obs, _ = env.reset()
    log_returns = np.diff(np.log(data.close))
    np.testing.assert_allclose(obs[:5], log_returns[:5] / env.feature_scale, rtol=1e-6)
    assert obs[5] == 0.0
    obs, *_ = env.step(0)
    np.testing.assert_allclose(obs[:5], log_returns[1:6] / env.feature_scale, rtol=1e-6)
    assert obs[5] == -1.0


def observations_by_row(env: TradingEnv, action: int = 0) -> dict[int, np.ndarray]:
    """Every observation of one episode from the split's first row, by the data row it is at."""
    obs, _ = env.reset()
    seen = {env.row: obs}
    done = False
    while not done:
        obs, _, terminated, truncated, _ = env.step(action)
        seen[env.row] = obs
        done = terminated or truncated
    return seen


def test_the_policys_feature_scale_gives_the_same_observations_on_other_prices() -> None:
    # Two files that agree on their last 100 rows' returns; the second's first 200 rows swing
    # three times as much, so its own training rows would give another scale.
    first = synthetic_prices(n_steps=300, seed=1)
    returns = np.diff(np.log(first.close))
    returns[:199] *= 3.0
    close = first.close[0] * np.exp(np.concatenate(([0.0], np.cumsum(returns))))
    second = MarketData(dates=first.dates, close=close, source="second.csv")
    options: dict[str, Any] = {"split": "all", "window_size": 5, "random_start": False}
    trained = TradingEnv(first, **options)
    spec = trained.observation_spec
    imposed = TradingEnv(second, **{**options, **spec})
    own = TradingEnv(second, **options)
    assert imposed.feature_scale == trained.feature_scale != own.feature_scale

    shared = range(210, 299)  # windows of 5 returns within the shared rows
    a, b, c = (observations_by_row(env) for env in (trained, imposed, own))
    for row in shared:
        np.testing.assert_array_equal(a[row], b[row])
    assert not all(np.array_equal(a[row], c[row]) for row in shared)


def test_observation_spec_is_plain_values_that_rebuild_the_observation() -> None:
    env = TradingEnv(window_size=7, allow_short=True, execution="close", feature_scale=0.02)
    assert env.observation_spec == {
        "feature_scale": 0.02,
        "window_size": 7,
        "allow_short": True,
        "execution": "close",
    }
    assert [type(v) for v in env.observation_spec.values()] == [float, int, bool, str]
    default = TradingEnv()
    train_returns = np.diff(np.log(default.data.close))[: default.split_rows[1] - 1]
    assert default.observation_spec["feature_scale"] == float(train_returns.std())


def test_returned_observations_are_never_changed_by_later_steps() -> None:
    env = TradingEnv(allow_short=True, episode_length=20)
    obs, _ = env.reset(seed=0)
    kept = [obs, *(env.step(a)[0] for a in [2, 0, 1, 2, 2])]
    copies = [o.copy() for o in kept]
    for a in [0, 1, 2, 0]:
        env.step(a)
    kept[1][:] = 99.0  # a caller writing into an observation must not corrupt the env either
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, copies[0])
    for k in (0, 2, 3, 4, 5):
        np.testing.assert_array_equal(kept[k], copies[k])


def test_long_trip_accounting_matches_a_hand_computation() -> None:
    env = hand_env(100.0, 100.0, 110.0, 121.0, 110.0, 110.0)
    steps = run(env, [1, 1, 0, 0])
    units = CASH / (1 + FEE) / 100.0  # all equity bought at 100, fee paid from cash
    after_sale = units * 121.0 * (1 - FEE)
    expected = [CASH, units * 110.0, units * 121.0, after_sale, after_sale]
    history = env.history()
    np.testing.assert_allclose(history["equity"], expected, rtol=1e-12)
    np.testing.assert_array_equal(history["positions"], [0, 1, 1, 0, 0])
    np.testing.assert_array_equal(history["close"], [100.0, 110.0, 121.0, 110.0, 110.0])
    rewards = [s[1] for s in steps]
    np.testing.assert_allclose(rewards, np.diff(np.log(expected)), rtol=1e-12, atol=1e-15)
    assert [s[3] for s in steps] == [False, False, False, True]  # the end of data truncates
    assert not any(s[2] for s in steps)
    final = steps[-1][4]["episode_metrics"]
    assert final["total_trades"] == 2
    assert final["win_rate"] == 1.0
    assert final["final_equity"] == pytest.approx(after_sale, rel=1e-12)
    assert final["buy_and_hold_return"] == pytest.approx(units * 110.0 / CASH - 1, rel=1e-12)


def test_round_trip_at_a_constant_price_costs_exactly_two_fees() -> None:
    env = hand_env(50.0, 50.0, 50.0, 50.0)
    run(env, [1, 0])
    notional = CASH / (1 + FEE)
    assert env.history()["equity"][-1] == pytest.approx(CASH - 2 * FEE * notional, rel=1e-12)


def test_short_and_reversal_accounting_matches_a_hand_computation() -> None:
    env = hand_env(100.0, 100.0, 90.0, 99.0, 99.0, 99.0, allow_short=True)
    env.reset(seed=0)
    seen = []
    for action in [0, 2, 2, 1]:  # short, reverse to long, hold, close
        step = env.step(action)
        seen.append((env.position, env.equity))
    size = CASH / (1 + FEE)  # notional sold short at 100
    at_90 = CASH + size * (1 - FEE) - size * 0.9
    after_cover = at_90 - FEE * size * 0.9  # buying back the short pays a fee on its notional
    units = after_cover / (1 + FEE) / 90.0
    at_99 = units * 99.0
    closed = at_99 * (1 - FEE)
    np.testing.assert_allclose(
        env.history()["equity"], [CASH, at_90, at_99, at_99, closed], rtol=1e-12
    )
    np.testing.assert_array_equal(env.history()["positions"], [0, -1, 1, 1, 0])
    assert [position for position, _ in seen] == [-1, 1, 1, 0]
    np.testing.assert_allclose([e for _, e in seen], [at_90, at_99, at_99, closed], rtol=1e-12)
    assert step[4]["episode_metrics"]["total_trades"] == 3


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_always_long_equity_equals_the_buy_and_hold_benchmark(execution: str) -> None:
    # Buy-and-hold enters at the first fill the execution model gives: the first close, the
    # second close (next_close) or the second row's open (next_open), paying fee + slippage.
    env = TradingEnv({"source": "sample"}, episode_length=100, fee=0.002, execution=execution)
    steps = run(env, [1] * 100, seed=3)
    history = env.history()
    start = env.row - 100
    opens = sample_prices("GOOGL", with_open=True).open
    entry = {
        "close": env.data.close[start],
        "next_close": env.data.close[start + 1],
        "next_open": opens[start + 1],
    }[execution]
    cost = 0.002 + 2.0 / 10_000
    expected = metrics.buy_and_hold(
        history["close"], initial_cash=env.initial_cash, fee=cost, entry_price=entry
    )
    np.testing.assert_allclose(history["equity"], expected, rtol=1e-12)
    final = steps[-1][4]["episode_metrics"]
    assert final["buy_and_hold_return"] == pytest.approx(final["total_return"], rel=1e-12)
    assert final["total_trades"] == 1


def test_profit_reward_is_the_equity_change() -> None:
    env = hand_env(100.0, 100.0, 110.0, 121.0, 110.0, reward="profit")
    steps = run(env, [1, 1, 0])
    np.testing.assert_allclose([s[1] for s in steps], np.diff(env.history()["equity"]), rtol=1e-12)
    assert sum(s[1] for s in steps) == pytest.approx(
        steps[-1][4]["episode_metrics"]["total_profit"]
    )


def test_a_short_that_loses_all_equity_terminates_the_episode() -> None:
    env = hand_env(100.0, 100.0, 250.0, 260.0, allow_short=True, fee=0.0)
    _, reward, terminated, truncated, info = run(env, [0])[0]
    assert terminated and not truncated
    assert info["equity"] == pytest.approx(CASH * 2 - CASH * 2.5)
    assert reward == pytest.approx(math.log(1e-9))
    assert info["episode_metrics"]["max_drawdown"] == -1.0
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(1)


# -- execution models and costs (issue 13) -------------------------------------------------------
def test_next_close_fills_at_the_close_after_the_signal_by_hand() -> None:
    # Decisions at rows 1..4 (closes 100, 110, 121, 110): long, long, flat, flat. The long chosen
    # at row 1's close fills at row 2's close (110), so the rise 100 -> 110 is missed; the sale
    # chosen at row 3 (121) fills at row 4's close (110). The last decision is not filled.
    env = hand_env(100.0, 100.0, 110.0, 121.0, 110.0, 110.0, execution="next_close")
    steps = run(env, [1, 1, 0, 0])
    units = CASH / (1 + FEE) / 110.0
    sold = units * 110.0 * (1 - FEE)
    expected = [CASH, units * 110.0, units * 121.0, sold, sold]
    history = env.history()
    np.testing.assert_allclose(history["equity"], expected, rtol=1e-12)
    # positions[k] is held from row k - 1 to row k: the long from row 2's close to row 4's.
    np.testing.assert_array_equal(history["positions"], [0, 0, 1, 1, 0])
    rewards = [step[1] for step in steps]
    np.testing.assert_allclose(rewards, np.diff(np.log(expected)), rtol=1e-12, atol=1e-15)
    # The observation shows the position held once the order filled.
    assert [step[0][-1] for step in steps] == [1.0, 1.0, 0.0, 0.0]
    final = steps[-1][4]["episode_metrics"]
    assert final["total_trades"] == 2
    assert final["win_rate"] == 0.0  # bought at 110, sold at 110: two fees lost
    assert final["buy_and_hold_return"] == pytest.approx(1 / (1 + FEE) - 1, rel=1e-12)


def test_next_close_leaves_the_last_decision_unfilled() -> None:
    env = hand_env(100.0, 100.0, 110.0, 121.0, execution="next_close")
    steps = run(env, [0, 1])
    assert env.history()["equity"].tolist() == [CASH, CASH, CASH]
    assert env.position == 0 and steps[-1][4]["position"] == 0
    assert steps[-1][0][-1] == 0.0  # the final observation shows what is held: flat
    assert steps[-1][4]["episode_metrics"]["total_trades"] == 0


def test_next_open_fills_at_the_next_open_by_hand() -> None:
    # Same closes and decisions as above; the long fills at row 2's open (115) and earns
    # 115 -> 110 that day, the sale fills at row 4's open (112).
    opens = [100.0, 105.0, 115.0, 118.0, 112.0, 111.0]
    env = hand_env(100.0, 100.0, 110.0, 121.0, 110.0, 110.0, opens=opens, execution="next_open")
    steps = run(env, [1, 1, 0, 0])
    units = CASH / (1 + FEE) / 115.0
    sold = units * 112.0 * (1 - FEE)
    expected = [CASH, units * 110.0, units * 121.0, sold, sold]
    history = env.history()
    np.testing.assert_allclose(history["equity"], expected, rtol=1e-12)
    np.testing.assert_array_equal(history["positions"], [0, 1, 1, 0, 0])
    rewards = [step[1] for step in steps]
    np.testing.assert_allclose(rewards, np.diff(np.log(expected)), rtol=1e-12, atol=1e-15)
    final = steps[-1][4]["episode_metrics"]
    assert final["total_trades"] == 2
    assert final["win_rate"] == 0.0  # bought at the 115 open, sold at the 112 open
    hold = CASH / (1 + FEE) / 115.0 * 110.0 / CASH - 1
    assert final["buy_and_hold_return"] == pytest.approx(hold, rel=1e-12)


def test_slippage_is_paid_on_every_leg_on_top_of_the_fee() -> None:
    env = hand_env(50.0, 50.0, 50.0, 50.0, slippage_bps=25.0)
    run(env, [1, 0])
    cost = FEE + 0.0025
    notional = CASH / (1 + cost)
    assert env.history()["equity"][-1] == pytest.approx(CASH - 2 * cost * notional, rel=1e-12)


@pytest.mark.parametrize(
    ("execution", "days_short"),
    # Three decisions to be short at a constant price of 100: with close and next_open the short
    # is held through all three closes; next_close fills it one close later, and its last
    # decision is not filled.
    [("close", [1, 2, 3]), ("next_open", [1, 2, 3]), ("next_close", [0, 1, 2])],
)
def test_a_short_pays_a_day_of_its_yearly_borrow_rate_at_each_close_it_is_held(
    execution: str, days_short: list[int]
) -> None:
    flat = [100.0] * 5
    env = hand_env(
        *flat,
        opens=flat,
        allow_short=True,
        fee=0.0,
        borrow_rate=0.063,
        execution=execution,
    )
    run(env, [0, 0, 0])
    daily = 0.063 / 252 * CASH  # the short's notional stays CASH at a constant price
    expected = [CASH] + [CASH - daily * days for days in days_short]
    np.testing.assert_allclose(env.history()["equity"], expected, rtol=1e-12)


def test_a_long_pays_no_borrow() -> None:
    env = hand_env(100.0, 100.0, 100.0, 100.0, fee=0.0, borrow_rate=0.5, allow_short=True)
    run(env, [2, 2])
    assert env.history()["equity"].tolist() == [CASH, CASH, CASH]


@pytest.mark.parametrize("execution", ["close", "next_close"])
def test_a_short_that_loses_all_equity_under_either_close_fill_terminates(execution: str) -> None:
    # The short fills at 100 (row 1's close, or row 2's with next_close); row 3's 250 ruins it.
    env = hand_env(100.0, 100.0, 100.0, 250.0, allow_short=True, fee=0.0, execution=execution)
    env.reset(seed=0)
    steps = [env.step(0) for _ in range(2)]
    _, reward, terminated, truncated, info = steps[-1]
    assert terminated and not truncated
    assert info["equity"] == pytest.approx(CASH * 2 - CASH * 2.5)
    assert reward == pytest.approx(math.log(1e-9))


def random_market(n_rows: int, seed: int) -> MarketData:
    """A random walk with opens between the closes."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(0.01 * rng.standard_normal(n_rows)))
    opens = close * np.exp(0.005 * rng.standard_normal(n_rows))
    dates = (np.datetime64("2021-01-04") + np.arange(n_rows)).astype("datetime64[ns]")
    return MarketData(dates, close, "random walk", opens)


def changed_after(data: MarketData, row: int, seed: int) -> MarketData:
    """``data`` with every close and open after ``row`` replaced by other positive prices."""
    rng = np.random.default_rng(seed)
    close, opens = data.close.copy(), np.asarray(data.open).copy()
    close[row + 1 :] *= np.exp(rng.normal(0.0, 0.05, close.size - row - 1))
    opens[row + 1 :] *= np.exp(rng.normal(0.0, 0.05, opens.size - row - 1))
    return MarketData(data.dates, close, data.source, opens)


def steps_until_done(env: TradingEnv, actions: list[int]) -> list[tuple]:
    """Reset, then step through ``actions`` until the episode ends; every step's result."""
    env.reset(seed=0)
    out = []
    for action in actions:
        out.append(env.step(action))
        if out[-1][2] or out[-1][3]:
            break
    return out


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_no_observation_or_reward_depends_on_a_price_after_its_row(execution: str) -> None:
    """Changing every price after row t changes no observation up to row t and no reward of a
    decision made before t; the reward of the decision made at t depends on prices up to its
    fill and mark (row t + 1), none later.

    Over the test split: the observations' scale is fixed by the training rows (one constant per
    dataset), so there every price after t is one the env has not seen.
    """
    window, n_rows = 4, 200
    data = random_market(n_rows, seed=0)
    kwargs = {
        "split": "test",  # rows 160..199
        "window_size": window,
        "random_start": False,
        "allow_short": True,
        "execution": execution,
        "borrow_rate": 0.05,
    }
    first = 160
    actions = np.random.default_rng(1).integers(0, 3, n_rows - first - 1).tolist()
    base = steps_until_done(TradingEnv(data, **kwargs), actions)
    assert len(base) == len(actions)
    # Step i is decided at row first + i; it returns the observation of row first + i + 1 and
    # the reward marked at that row's close.
    for t in range(first, n_rows - 2, 3):
        decided_at_t = t - first
        for trial in range(3):
            after_t = steps_until_done(TradingEnv(changed_after(data, t, trial), **kwargs), actions)
            for i in range(decided_at_t):
                np.testing.assert_array_equal(after_t[i][0], base[i][0])
                assert after_t[i][1] == base[i][1], (t, i)
            later = steps_until_done(
                TradingEnv(changed_after(data, t + 1, trial), **kwargs), actions
            )
            for i in range(decided_at_t + 1):
                np.testing.assert_array_equal(later[i][0], base[i][0])
                assert later[i][1] == base[i][1], (t, i)


def test_next_open_trades_at_the_open_after_the_signal_and_no_other_open() -> None:
    """Moving only row t + 1's open changes the reward of the step decided at t (it trades there)
    and of no step before; the exact fill prices are checked by hand above."""
    window = 4
    data = random_market(30, seed=2)
    kwargs = {"split": "all", "window_size": window, "random_start": False}
    actions = [1, 0, 1, 0, 1, 0, 1, 0]  # every step trades
    base = run(TradingEnv(data, execution="next_open", **kwargs), actions)
    t = window + 3  # the decision of step 3
    opens = np.asarray(data.open).copy()
    opens[t + 1] *= 1.05
    other = MarketData(data.dates, data.close, data.source, opens)
    changed = run(TradingEnv(other, execution="next_open", **kwargs), actions)
    assert [c[1] for c in changed[:3]] == [b[1] for b in base[:3]]
    assert changed[3][1] != base[3][1]
    np.testing.assert_array_equal(changed[3][0], base[3][0])  # the observation has no opens


def test_final_step_info_holds_every_episode_metric_as_plain_numbers() -> None:
    env = TradingEnv(episode_length=30)
    steps = run(env, np.random.default_rng(0).integers(0, 2, 30).tolist())
    assert all(s[4] == {} for s in steps[:-1])
    assert steps[-1][4]["equity"] == env.history()["equity"][-1]
    final = steps[-1][4]["episode_metrics"]
    assert tuple(final) == EPISODE_METRIC_NAMES
    assert all(type(v) in (float, int) for v in final.values())
    assert len(env.history()["equity"]) == 31


def test_actions_may_be_numpy_integers_or_one_element_arrays() -> None:
    env = TradingEnv(episode_length=5, execution="close")
    env.reset(seed=0)
    env.step(np.int64(1))
    env.step(np.array(0))
    env.step(np.array([1]))
    np.testing.assert_array_equal(env.history()["positions"], [0, 1, 0, 1])


@pytest.mark.parametrize("action", [2, -1, 0.5, "1", np.array([0, 1])])
def test_invalid_action_is_rejected(action: Any) -> None:
    env = TradingEnv(episode_length=5)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="not in Discrete"):
        env.step(action)


def test_step_before_reset_asks_for_reset() -> None:
    with pytest.raises(RuntimeError, match="call reset"):
        TradingEnv().step(0)


def _shocked_after(data: MarketData, row: int) -> MarketData:
    """``data`` with every price from ``row`` on changed wildly."""
    shocked = data.close.copy()
    shocked[row:] *= np.linspace(2.0, 9.0, len(data) - row)
    return MarketData(data.dates, shocked, data.source)


def test_training_episodes_never_see_validation_or_test_rows() -> None:
    base = synthetic_prices(n_steps=400)
    # 400 rows: 280 training rows, then 40 validation rows (10%), then 80 test rows (20%).
    other = _shocked_after(base, 280)
    val_start = base.dates[280]
    for seed in range(20):
        a, b = TradingEnv(base, episode_length=None), TradingEnv(other, episode_length=None)
        assert a.feature_scale == b.feature_scale
        actions = np.random.default_rng(seed).integers(0, 2, a.episode_length).tolist()
        for x, y in zip(run(a, actions, seed), run(b, actions, seed), strict=True):
            np.testing.assert_array_equal(x[0], y[0])
            assert x[1:4] == y[1:4]
        assert a.history()["dates"][-1] < val_start
    short = TradingEnv(base, episode_length=20)
    for seed in range(50):
        short.reset(seed=seed)
        for _ in range(20):
            short.step(1)
        assert short.history()["dates"][-1] < val_start


def test_validation_episodes_trade_only_over_validation_rows_and_never_see_test_rows() -> None:
    base = synthetic_prices(n_steps=400)
    env = TradingEnv(base, split="val", episode_length=None, random_start=False)
    assert env.split_rows == (280, 320) and env.episode_length == 39
    actions = np.random.default_rng(0).integers(0, 2, env.episode_length).tolist()
    shocked = TradingEnv(_shocked_after(base, 320), split="val", episode_length=None)
    for x, y in zip(run(env, actions), run(shocked, actions), strict=True):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:4] == y[1:4]
    np.testing.assert_array_equal(env.history()["dates"], base.dates[280:320])
    # The training rows alone set the scale: validation and test prices do not move it.
    assert env.feature_scale == TradingEnv(_shocked_after(base, 280), split="val").feature_scale


def test_test_episodes_trade_only_over_test_rows() -> None:
    data = synthetic_prices(n_steps=400)
    env = TradingEnv({"n_steps": 400, "test_fraction": 0.25}, split="test", episode_length=None)
    assert env.episode_length == 99  # 100 test rows: 99 steps between them
    run(env, [1] * 99)
    history = env.history()
    np.testing.assert_array_equal(history["dates"], data.dates[300:])
    assert env.split_rows == (300, 400)


def test_held_out_splits_are_the_non_empty_ones() -> None:
    assert TradingEnv({"n_steps": 400}).held_out_splits == ("val", "test")
    assert TradingEnv({"n_steps": 400, "val_fraction": 0}).held_out_splits == ("test",)
    no_test = {"n_steps": 400, "val_fraction": 0, "test_fraction": 0}
    assert TradingEnv(no_test).held_out_splits == ()


@pytest.mark.parametrize(
    ("data", "split", "error", "match"),
    [
        (
            {"n_steps": 400, "val_fraction": 0},
            "val",
            ConfigError,
            r"env.data.val_fraction is 0.0: .* has no validation rows; raise env.data.val_fraction",
        ),
        (
            {"n_steps": 400, "val_fraction": 0.0025},  # one validation row: no step fits
            "val",
            DataError,
            r"too few rows for the val split .* or a larger env.data.val_fraction",
        ),
        (
            {"n_steps": 100, "val_fraction": 0.4, "test_fraction": 0.4},
            "train",
            DataError,
            r"too few rows for the train split with window_size=30: the split has 20 rows .* "
            r"smaller env.data.val_fraction / env.data.test_fraction",
        ),
        (
            {"n_steps": 100, "val_fraction": 0.5, "test_fraction": 0.5},
            "train",
            ConfigError,
            r"env.data.val_fraction \(0.5\) \+ env.data.test_fraction \(0.5\) must be < 1",
        ),
        (
            {"val_fraction": -0.1},
            "train",
            ConfigError,
            r"env.data.val_fraction must be in \[0, 1\)",
        ),
    ],
)
def test_fractions_that_leave_a_split_too_short_are_one_clear_line(
    data: dict, split: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        TradingEnv(data, split=split)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window_size": 0}, "env.window_size must be an integer >= 1, got 0"),
        ({"fee": -1}, "env.fee must be >= 0, got -1"),
        ({"fee": 1.5}, "env.fee must be < 1"),
        ({"episode_length": 0}, "env.episode_length"),
        ({"initial_cash": 0.0}, "env.initial_cash must be > 0"),
        ({"reward": "sharpe"}, "env.reward must be one of log_return, profit"),
        ({"split": "validation"}, "env.split must be one of train, val, test, all"),
        ({"data": {"source": "synthetic", "test_fraction": 0.0}, "split": "test"}, "no test rows"),
        ({"data": {"bogus": 1}}, r"env\.data\.bogus is not a key of env\.data"),
        ({"execution": "open"}, "env.execution must be one of next_close, next_open, close"),
        ({"slippage_bps": -1.0}, r"env.slippage_bps must be >= 0 \(basis points\), got -1.0"),
        ({"slippage_bps": math.inf}, "env.slippage_bps must be >= 0"),
        ({"borrow_rate": -0.01}, r"env.borrow_rate must be >= 0 \(a yearly fraction\)"),
        ({"feature_scale": 0.0}, "env.feature_scale must be a finite number > 0 or null"),
        ({"feature_scale": -0.01}, "env.feature_scale must be a finite number > 0"),
        ({"feature_scale": math.nan}, "env.feature_scale must be a finite number > 0"),
        ({"feature_scale": math.inf}, "env.feature_scale must be a finite number > 0"),
        ({"feature_scale": True}, "env.feature_scale must be a finite number > 0"),
        ({"feature_scale": "0.01"}, "env.feature_scale must be a finite number > 0"),
    ],
)
def test_bad_env_value_is_a_config_error_naming_the_key(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TradingEnv(**kwargs)


def test_episode_longer_than_the_split_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"env.episode_length=2000 does not fit the train split.*1369 steps"
    ):
        TradingEnv(episode_length=2000)


def test_window_longer_than_the_data_is_a_data_error_naming_the_source() -> None:
    with pytest.raises(
        DataError, match=r"hand-made: too few rows for the train split with window_size=5"
    ):
        TradingEnv(prices(1.0, 2.0, 3.0, 4.0, 5.0, 6.0), window_size=5)


# -- data= as a path or a DataFrame (issue 17) ---------------------------------------------------
SAMPLE_CSV = Path(finsense.__file__).parent / "data" / "samples" / "STOCKS_GOOGL.csv"


def frame(close: list[float], start: str = "2021-01-04") -> pd.DataFrame:
    """A small daily price table in the CSV's layout (Date, Close)."""
    return pd.DataFrame({"Date": pd.date_range(start, periods=len(close)), "Close": close})


@pytest.mark.parametrize("as_type", [str, Path])
def test_make_accepts_a_csv_path_and_reads_it_like_the_file_source(as_type: type) -> None:
    env = gymnasium.make(TRADING_ENV_ID, data=as_type(SAMPLE_CSV), window_size=10)
    same = TradingEnv({"source": "file", "path": str(SAMPLE_CSV)}, window_size=10)
    np.testing.assert_array_equal(env.unwrapped.data.close, same.data.close)
    np.testing.assert_array_equal(env.unwrapped.data.dates, same.data.dates)
    assert env.unwrapped.data.source == str(SAMPLE_CSV)
    assert env.unwrapped.test_fraction == 0.2
    env.reset(seed=0)


def test_make_accepts_a_parquet_path(tmp_path: Path) -> None:
    path = tmp_path / "prices.parquet"
    frame([float(p) for p in range(100, 160)]).to_parquet(path)
    env = gymnasium.make(TRADING_ENV_ID, data=str(path), window_size=5)
    assert len(env.unwrapped.data) == 60 and env.unwrapped.data.close[0] == 100.0


def test_make_accepts_a_dataframe_with_dates_in_a_column_or_the_index() -> None:
    close = [100.0 + i + (i % 3) for i in range(40)]
    env = gymnasium.make(TRADING_ENV_ID, data=frame(close), window_size=5, split="all")
    np.testing.assert_array_equal(env.unwrapped.data.close, close)
    assert env.unwrapped.data.dates[0] == np.datetime64("2021-01-04")
    indexed = TradingEnv(frame(close).set_index("Date"), window_size=5, split="all")
    np.testing.assert_array_equal(indexed.data.dates, env.unwrapped.data.dates)
    env.reset(seed=0)
    env.step(1)


def test_a_bad_dataframe_is_the_same_data_error_as_a_bad_file() -> None:
    bad = frame([100.0, 101.0, -5.0, 102.0])
    with pytest.raises(DataError, match=r"column 'Close' has a price that is not positive .*row 3"):
        TradingEnv(bad)
    with pytest.raises(DataError, match=r"no column 'Close' \(columns found: 'Date', 'Price'\)"):
        TradingEnv(bad.rename(columns={"Close": "Price"}))


def test_a_path_of_another_type_or_a_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        TradingEnv(str(tmp_path / "prices.txt"))
    with pytest.raises(DataError, match="file not found"):
        TradingEnv(tmp_path / "prices.csv")


def test_data_of_an_unknown_type_is_a_config_error_naming_the_accepted_forms() -> None:
    with pytest.raises(ConfigError, match=r"env.data must be .*path.*DataFrame.*got list"):
        TradingEnv([1.0, 2.0, 3.0])  # type: ignore[arg-type]


# -- next_open needs opens (issue 13) ------------------------------------------------------------
def test_next_open_on_synthetic_data_is_one_data_error_saying_what_to_use() -> None:
    with pytest.raises(DataError, match=r"synthetic prices have closes only.*next_close"):
        TradingEnv(execution="next_open")


def test_next_open_without_an_open_column_is_a_data_error_naming_the_column(
    tmp_path: Path,
) -> None:
    path = tmp_path / "prices.csv"
    frame([100.0 + i for i in range(60)]).to_csv(path, index=False)
    message = r"no column 'Open' \(columns found: 'Date', 'Close'\).*env.data.open_column"
    with pytest.raises(DataError, match=message):
        TradingEnv(str(path), execution="next_open")
    with pytest.raises(DataError, match=message):
        TradingEnv({"source": "file", "path": str(path)}, execution="next_open")
    with pytest.raises(DataError, match=message):
        TradingEnv(frame([100.0 + i for i in range(60)]), execution="next_open")
    with pytest.raises(DataError, match="hand-made: has no open prices"):
        TradingEnv(prices(*range(1, 60)), execution="next_open")
    TradingEnv(str(path), window_size=5)  # the other models need no opens


def test_next_open_reads_the_open_column_of_the_sample_and_of_a_file(tmp_path: Path) -> None:
    env = TradingEnv({"source": "sample"}, execution="next_open", split="test")
    sample = pd.read_csv(SAMPLE_CSV)
    np.testing.assert_array_equal(env.data.open, sample["Open"].to_numpy())
    path = tmp_path / "prices.csv"
    table = frame([100.0 + i for i in range(60)]).assign(Opening=[99.0 + i for i in range(60)])
    table.to_csv(path, index=False)
    named = TradingEnv(
        {"source": "file", "path": str(path), "open_column": "Opening"},
        execution="next_open",
        window_size=5,
    )
    assert named.data.open is not None and named.data.open[0] == 99.0
    bad = table.assign(Opening=[99.0] * 59 + [-1.0])
    bad.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"column 'Opening' has a price that is not positive"):
        TradingEnv(
            {"source": "file", "path": str(path), "open_column": "Opening"},
            execution="next_open",
        )
