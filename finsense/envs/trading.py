"""``finsense/Trading-v0``: one asset, target-position actions, fees, exact cash accounting."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np
from gymnasium import spaces

from finsense import metrics
from finsense.config import EPISODE_METRIC_NAMES
from finsense.data import (
    MarketData,
    load_market_data,
    load_prices,
    prices_from_frame,
    split_bounds,
    split_fractions,
)
from finsense.data.loader import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION
from finsense.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

#: ``split`` values: the rows an env trades over.
SPLITS = ("train", "val", "test", "all")
#: ``reward`` values.
REWARDS = ("log_return", "profit")
#: ``execution`` values: when an order chosen after observing ``close_t`` is filled.
EXECUTIONS = ("next_close", "next_open", "close")
#: Default ``slippage_bps``: half the quoted spread of a liquid large-cap stock or ETF (1 to 5
#: basis points) plus a little market impact for an order of a few thousand dollars.
DEFAULT_SLIPPAGE_BPS = 2.0
#: Default ``borrow_rate``: a yearly fee in the range brokers charge to borrow easy-to-borrow
#: large caps (0.25% to 0.5%); hard-to-borrow names cost far more. Only shorts pay it.
DEFAULT_BORROW_RATE = 0.005
#: Normalised returns are clipped to +/- this many training standard deviations.
FEATURE_CLIP = 10.0
_log = math.log  # bound once: step() is the hot path

#: Equity floor for the log-return reward of the step that bankrupts a short (fraction of cash).
_BANKRUPT_EQUITY = 1e-9


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"env.{key} {rule}, got {value!r}")


def _is_rate(value: Any) -> bool:
    """A finite number >= 0 (not a bool)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _market_data(data: Any, with_open: bool) -> tuple[MarketData, tuple[float, float]]:
    """The prices ``data`` names and the ``(val_fraction, test_fraction)`` that go with them
    (with the opens when ``with_open``: a DataError where there are none).

    ``gymnasium.make(..., data=...)`` users pass a file path or a DataFrame as often as the
    ``env.data`` mapping the trainer passes, so each is read through the loader's validation.
    Only the mapping can carry the fractions; the other forms use the defaults (0.1 and 0.2).
    """
    defaults = (DEFAULT_VAL_FRACTION, DEFAULT_TEST_FRACTION)
    open_column = "Open" if with_open else None
    if isinstance(data, MarketData):
        if with_open and data.open is None:
            raise DataError(
                f"{data.source}: has no open prices, and env.execution=next_open fills at the "
                "next open; pass MarketData(..., open=...) or use env.execution=next_close"
            )
        return data, defaults
    if isinstance(data, str | os.PathLike):
        return load_prices(Path(data), open_column=open_column), defaults
    if _is_dataframe(data):
        return prices_from_frame(data, open_column=open_column), defaults
    if data is None or isinstance(data, Mapping):
        fractions = split_fractions(data)
        return load_market_data(data, with_open=with_open), fractions
    raise ConfigError(
        "env.data must be an env.data mapping, a path to a .csv or .parquet file, a pandas "
        f"DataFrame or a MarketData, got {type(data).__name__}"
    )


def _is_dataframe(value: Any) -> bool:
    # Checked by name first so that an env built from a mapping never imports pandas for it.
    if type(value).__name__ != "DataFrame":
        return False
    import pandas as pd

    return isinstance(value, pd.DataFrame)


class TradingEnv(gymnasium.Env[np.ndarray, np.int64]):
    """Trade one asset on daily closes by choosing a target position each day.

    **Actions** (``Discrete``): the position to hold from the order's fill until the next fill.
    With ``allow_short=False``: 0 = flat (all cash), 1 = long. With ``allow_short=True``:
    0 = short, 1 = flat, 2 = long. Long means all equity in the asset at the fill price; short
    means selling the asset for the same notional. Holding a position does not rebalance it: the
    units stay fixed while the price moves.

    **Execution** (``execution``): the action is chosen at row ``t`` after observing ``close_t``;
    the order then fills, and the new position starts earning,

    - ``next_close`` (default): at ``close_{t+1}``. It earns from ``close_{t+1}``, so the step from
      ``t`` to ``t+1`` pays the trade's costs and earns the *previous* position's move
      ``close_t -> close_{t+1}``; the chosen position's first move is in the next step's reward.
      The action of an episode's last step is not filled (its fill would be the last close,
      after which nothing is held).
    - ``next_open``: at ``open_{t+1}`` (the data needs an ``Open`` column). The old position earns
      ``close_t -> open_{t+1}``, the new one ``open_{t+1} -> close_{t+1}`` within the same step.
    - ``close``: at ``close_t``, the very close the signal saw. It earns ``close_t ->
      close_{t+1}`` in the same step. Optimistic: a real order that depends on ``close_t`` cannot
      fill at it; use it only to compare with older results.

    Every step's equity is marked at ``close_{t+1}``, and its reward depends on no price after
    that close.

    **Trades and costs**: a trade happens only when the position changes; it first closes the old
    position, then opens the new one, each leg paying ``fee + slippage_bps / 10_000`` times its
    traded notional (at the fill price) from cash. A new position of equity ``E`` trades notional
    ``E / (1 + cost)``, so a long leaves zero cash and a round trip from flat and back costs
    exactly two legs' costs. A short held through a step's close pays ``borrow_rate / 252`` of
    its notional at that close (one trading day of a yearly rate); with ``next_close`` that is the
    short held from the previous fill to this close, otherwise the one held after this step's
    fill. Cash, units and equity (``cash + units * close``) are float64.

    **Observation** (``Box(-10, 10, (window_size + 1,), float32)``): the last ``window_size`` daily
    log returns of the close up to and including the current row, divided by the standard deviation
    of the training rows' log returns (one constant per dataset, so train and test are scaled
    alike) and clipped to +/-10, then the position held now, after the last fill (-1, 0 or 1).
    Every observation is a fresh array: later steps never change one already returned.
    ``feature_scale`` imposes another divisor (a trained policy's own, see
    :attr:`observation_spec`), so a policy run on other prices sees returns scaled as in training.

    **Reward**: ``log(equity_{t+1} / equity_t)`` (``reward="log_return"``, costs included) or the
    equity change in currency (``reward="profit"``).

    **Episode start**: flat with ``initial_cash``, at a row drawn with ``self.np_random`` (seeded by
    ``reset(seed=)``) such that ``episode_length`` steps fit in the split, or at the first possible
    row (``random_start=False``). The first possible row leaves ``window_size`` returns before it.
    Validation and test episodes start on a row of their split; a window reaching back before
    the split's first row shows the rows just before it as context (prices known by then; no
    trading on them).

    **Episode end**: after ``episode_length`` steps (``None``: every row of the split) the episode
    is *truncated*: it is a time limit, not a terminal state of the market, so value bootstrapping
    should continue. It is *terminated* only when a short position loses all equity
    (equity <= 0); that step's log reward uses an equity of ``1e-9 * initial_cash``.
    Positions still open at the end are valued at the last close, with no exit cost.

    **Info**: empty until the final step, whose info holds ``episode_metrics`` (see
    :func:`finsense.metrics.episode_metrics`; its ``buy_and_hold_return`` buys at the first fill
    this execution model gives, with the same costs), ``equity`` (float) and ``position`` (int).
    ``reset`` returns ``equity`` and ``position``. Step by step, read the :attr:`equity` and
    :attr:`position` properties (of ``env.unwrapped``), or the whole path from :meth:`history`;
    keeping info empty keeps a step cheap.

    **Splits** (by time, :func:`finsense.data.split_bounds`): ``split="test"`` trades over the
    last ``test_fraction`` of rows (``env.data.test_fraction``, default 0.2), ``"val"`` over the
    ``val_fraction`` of rows just before them (``env.data.val_fraction``, default 0.1; for choosing
    the best model), ``"train"`` over the rows before those and ``"all"`` over every row. Training
    episodes never see a validation or test row, validation episodes never a test row.

    Args:
        data: a MarketData, an ``env.data`` config mapping (see
            :func:`finsense.data.load_market_data`; its ``val_fraction`` and ``test_fraction``
            set the splits), a path
            to a ``.csv`` or ``.parquet`` file (:func:`finsense.data.load_prices`), a pandas
            DataFrame with ``Date`` and ``Close`` columns (or a ``Date`` index;
            :func:`finsense.data.prices_from_frame`), or None for the synthetic default. A path or
            DataFrame uses ``val_fraction`` 0.1 and ``test_fraction`` 0.2 (and its ``Open``
            column for ``next_open``).
        split: ``train``, ``val``, ``test`` or ``all``.
        window_size: past log returns in each observation, >= 1.
        episode_length: steps per episode, >= 1, or None for the whole split.
        random_start: start each episode at a seeded random row (else at the first possible row).
        fee: proportional cost per trade leg, as a fraction of the traded notional, in [0, 1).
        allow_short: add the short action.
        initial_cash: starting equity in currency, > 0.
        reward: ``log_return`` or ``profit``.
        execution: ``next_close``, ``next_open`` or ``close`` (above).
        slippage_bps: cost per trade leg in basis points of the traded notional, on top of
            ``fee``, >= 0 (default 2: half a liquid stock's spread plus a little impact).
        borrow_rate: yearly cost of a short as a fraction of its notional, >= 0, charged daily
            over 252 trading days (default 0.005).
        feature_scale: the divisor of the observed log returns, a finite number > 0, or None
            (default) for the standard deviation of the training rows' log returns (1.0 when
            they have none, or fewer than two).
        render_mode: must be None (the env does not render; see :meth:`history`).
    """

    metadata: dict[str, Any] = {"render_modes": []}
    #: What ``info["episode_metrics"]`` holds at an episode's end, the main one first
    #: (``checkpoints.metric_name: null`` ranks checkpoints by it).
    episode_metric_names: tuple[str, ...] = EPISODE_METRIC_NAMES
    #: Keys whose change a saved agent cannot follow: they change the observation or the actions.
    resume_keys: tuple[str, ...] = ("window_size", "allow_short")
    action_space: spaces.Discrete
    observation_space: spaces.Box

    def __init__(
        self,
        data: MarketData | Mapping[str, Any] | str | os.PathLike[str] | pd.DataFrame | None = None,
        split: str = "train",
        window_size: int = 30,
        episode_length: int | None = None,
        random_start: bool = True,
        fee: float = 0.001,
        allow_short: bool = False,
        initial_cash: float = 10_000.0,
        reward: str = "log_return",
        execution: str = "next_close",
        slippage_bps: float = DEFAULT_SLIPPAGE_BPS,
        borrow_rate: float = DEFAULT_BORROW_RATE,
        feature_scale: float | None = None,
        render_mode: str | None = None,
    ) -> None:
        _require(split in SPLITS, "split", f"must be one of {', '.join(SPLITS)}", split)
        _require(
            _is_int(window_size) and window_size >= 1,
            "window_size",
            "must be an integer >= 1",
            window_size,
        )
        _require(
            episode_length is None or (_is_int(episode_length) and episode_length >= 1),
            "episode_length",
            "must be an integer >= 1 or null",
            episode_length,
        )
        _require(_is_rate(fee), "fee", "must be >= 0", fee)
        _require(fee < 1, "fee", "must be < 1 (a fraction of the traded notional)", fee)
        _require(
            isinstance(initial_cash, int | float)
            and math.isfinite(initial_cash)
            and initial_cash > 0,
            "initial_cash",
            "must be > 0",
            initial_cash,
        )
        _require(reward in REWARDS, "reward", f"must be one of {', '.join(REWARDS)}", reward)
        _require(
            execution in EXECUTIONS,
            "execution",
            f"must be one of {', '.join(EXECUTIONS)}",
            execution,
        )
        _require(
            _is_rate(slippage_bps), "slippage_bps", "must be >= 0 (basis points)", slippage_bps
        )
        _require(
            slippage_bps < 10_000 * (1 - fee),
            "slippage_bps",
            "must leave fee + slippage below 100% of the notional",
            slippage_bps,
        )
        _require(
            _is_rate(borrow_rate), "borrow_rate", "must be >= 0 (a yearly fraction)", borrow_rate
        )
        _require(
            feature_scale is None
            or (
                isinstance(feature_scale, int | float)
                and not isinstance(feature_scale, bool)
                and math.isfinite(feature_scale)
                and feature_scale > 0
            ),
            "feature_scale",
            "must be a finite number > 0 or null (the training rows' standard deviation)",
            feature_scale,
        )
        _require(
            render_mode is None,
            "render_mode",
            "must be None (the env does not render)",
            render_mode,
        )

        market, (val_fraction, test_fraction) = _market_data(
            data, with_open=execution == "next_open"
        )

        self.data = market
        self.split = split
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.window_size = int(window_size)
        self.random_start = bool(random_start)
        self.fee = float(fee)
        self.allow_short = bool(allow_short)
        self.initial_cash = float(initial_cash)
        self.reward_name = reward
        self.execution = execution
        self.slippage_bps = float(slippage_bps)
        self.borrow_rate = float(borrow_rate)

        n_rows = len(market)
        n_train, n_fit = split_bounds(n_rows, val_fraction, test_fraction)
        low, high = {
            "train": (0, n_train),
            "val": (n_train, n_fit),
            "test": (n_fit, n_rows),
            "all": (0, n_rows),
        }[split]
        if split in ("val", "test") and high <= low:
            key = f"{split}_fraction"
            raise ConfigError(
                f"env.data.{key} is {val_fraction if split == 'val' else test_fraction}: "
                f"{market.source} has no {'validation' if split == 'val' else 'test'} rows; "
                f"raise env.data.{key} (e.g. {DEFAULT_VAL_FRACTION if split == 'val' else 0.2})"
            )
        # The first row an episode may start at: it has window_size returns behind it.
        first = max(low, self.window_size)
        max_steps = high - 1 - first
        if max_steps < 1:
            raise DataError(
                f"{market.source}: too few rows for the {split} split with window_size="
                f"{self.window_size}: the split has {high - low} rows ({n_rows} in all) and needs "
                f"at least {first + 2 - low}; use more data, a smaller env.window_size"
                + {
                    "train": " or smaller env.data.val_fraction / env.data.test_fraction",
                    "val": " or a larger env.data.val_fraction",
                    "test": " or a larger env.data.test_fraction",
                    "all": "",
                }[split]
            )
        if episode_length is not None and episode_length > max_steps:
            raise ConfigError(
                f"env.episode_length={episode_length} does not fit the {split} split of "
                f"{market.source}: {high - low} rows leave {max_steps} steps after the "
                f"window_size={self.window_size} history; lower env.episode_length, set it to "
                "null (the whole split) or use more data"
            )
        #: Steps per episode (the whole split when ``episode_length`` was None).
        self.episode_length = max_steps if episode_length is None else int(episode_length)
        #: (start, stop) data rows of the split (a Python range); trading starts no earlier than
        #: row window_size, so the first window holds real returns.
        self.split_rows = (low, high)
        # Data rows an episode may start at.
        self._start_rows = range(first, high - self.episode_length)

        log_returns = np.zeros(n_rows, dtype=np.float64)
        log_returns[1:] = np.diff(np.log(market.close))
        if feature_scale is None:
            train_returns = log_returns[1:n_train]
            scale = float(train_returns.std()) if train_returns.size >= 2 else 0.0
            feature_scale = scale if math.isfinite(scale) and scale > 0 else 1.0
        #: The divisor of the observed log returns (see the class docstring).
        self.feature_scale = float(feature_scale)
        features = np.clip(log_returns / self.feature_scale, -FEATURE_CLIP, FEATURE_CLIP)
        features = features.astype(np.float32)

        positions = (-1, 0, 1) if self.allow_short else (0, 1)
        self.action_space = spaces.Discrete(len(positions))
        self.observation_space = spaces.Box(
            low=-FEATURE_CLIP, high=FEATURE_CLIP, shape=(self.window_size + 1,), dtype=np.float32
        )
        # Steps work in split-local rows: local row k is data row first + k. One table of finished
        # observations per position (row k = the observation at local row k), so a step copies one
        # row instead of assembling it; each table is rows x (window_size + 1) x 4 bytes.
        windows = np.lib.stride_tricks.sliding_window_view(features, self.window_size)
        windows = windows[first - self.window_size + 1 : high - self.window_size + 1]
        # Keyed by int; numpy integers hash and compare equal to them, so both look up.
        self._actions: dict[Any, tuple[int, np.ndarray]] = {}
        for action, position in enumerate(positions):
            table = np.empty((len(windows), self.window_size + 1), dtype=np.float32)
            table[:, :-1] = windows
            table[:, -1] = position
            self._actions[action] = (position, table)
        # Python floats, so the step arithmetic stays scalar (and exact float64). _close[k] marks
        # local row k; _fill[k] is where the order chosen at local row k fills (the last entry,
        # never a fill, is the last close).
        close = market.close[first:high].tolist()
        if execution == "close":
            fill = close
        elif execution == "next_close":
            fill = close[1:] + close[-1:]
        else:
            assert market.open is not None  # _market_data read the opens
            fill = market.open[first + 1 : high].tolist() + close[-1:]
        self._close = close
        self._fill = fill
        # The step's constants in one tuple, unpacked at once: the cost of a trade leg as a
        # fraction of its notional, the daily borrow rate, whether the fill waits for the next
        # close, and whether the reward is the log return.
        self._rates = (
            self.fee + self.slippage_bps / 10_000.0,
            self.borrow_rate / metrics.TRADING_DAYS_PER_YEAR,
            execution == "next_close",
            reward == "log_return",
        )
        # The actions a step accepts now: none between episodes, so step() needs no extra check.
        self._by_action: dict[Any, tuple[int, np.ndarray]] = {}
        self._k = self._k_end = 0  # local rows: now and at the episode's end
        self._cash = self.initial_cash
        self._units = 0.0
        self._held = 0  # the position held now, after the last fill
        # One entry per step including the start; the last equity is the current one.
        self._equity_history: list[float] = []
        self._position_history: list[int] = []
        # Attributes are kept few (about 30 with gymnasium's): CPython 3.11 reads instance
        # attributes fastest while an object's attribute names fit its class's shared-key table.

    @property
    def held_out_splits(self) -> tuple[str, ...]:
        """The splits kept out of training that have rows: ``"val"`` and ``"test"``, in that
        order, less an empty one (a fraction of 0). The trainer scores the policy on them."""
        n_rows = len(self.data)
        first_val, first_test = split_bounds(n_rows, self.val_fraction, self.test_fraction)
        bounds = {"val": (first_val, first_test), "test": (first_test, n_rows)}
        return tuple(split for split, (low, high) in bounds.items() if high > low)

    @property
    def observation_spec(self) -> dict[str, Any]:
        """What a policy trained on this env needs to see the same observations on other prices:
        ``feature_scale`` (float), ``window_size`` (int), ``allow_short`` (bool) and
        ``execution`` (str: when fills happen, which the observed position follows).

        Plain values: the trainer stores them in each checkpoint's policy part, and an env built
        with them (``TradingEnv(other_data, **spec)``) observes any prices as this one does.
        """
        return {
            "feature_scale": self.feature_scale,
            "window_size": self.window_size,
            "allow_short": self.allow_short,
            "execution": self.execution,
        }

    @property
    def trade_cost(self) -> float:
        """The cost of one trade leg as a fraction of its notional: ``fee + slippage_bps / 1e4``."""
        return self._rates[0]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode flat with ``initial_cash``; return the first observation and info."""
        super().reset(seed=seed)
        starts = self._start_rows
        if self.random_start and len(starts) > 1:
            start = starts[int(self.np_random.integers(len(starts)))]
        else:
            start = starts[0]
        self._k = start - starts[0]
        self._k_end = self._k + self.episode_length
        self._cash = self.initial_cash
        self._units = 0.0
        self._held = 0
        self._by_action = self._actions
        self._equity_history = [self.initial_cash]
        self._position_history = [0]
        flat_action = 1 if self.allow_short else 0
        observation = self._actions[flat_action][1][self._k].copy()
        return observation, {"equity": self.initial_cash, "position": 0}

    def step(
        self, action: int | np.integer | np.ndarray
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Order the target position of ``action``, move to the next close and mark equity there.

        The order fills as ``execution`` says (see the class docstring). ``action`` is an int, a
        numpy integer or a one-element integer array.
        """
        try:
            target, table = self._by_action[action]
        except (KeyError, TypeError):
            target, table = self._look_up_unusual(action)
        cost, borrow, delayed, log_reward = self._rates
        k = self._k
        price = self._fill[k]
        k += 1
        self._k = k
        mark = self._close[k]
        cash = self._cash
        units = self._units
        held = self._held
        if delayed:
            # next_close: the position held since the last fill earns to this close (and pays
            # its borrow), then the order fills here; none fills at the episode's last close.
            self._position_history.append(held)
            if units < 0.0:
                cash += borrow * units * mark
            trade = target != held and k != self._k_end and cash + units * mark > 0.0
        else:
            trade = target != held
        if trade:
            if units != 0.0:
                notional = units * price
                cash += notional - cost * abs(notional)
                units = 0.0
            if target != 0:
                size = cash / (1.0 + cost)
                units = target * size / price
                cash -= target * size + cost * size
            self._units = units
            self._held = held = target
        if not delayed:
            self._position_history.append(target)
            if units < 0.0:
                cash += borrow * units * mark
        self._cash = cash
        equity = cash + units * mark
        equity_history = self._equity_history
        previous = equity_history[-1]
        equity_history.append(equity)

        terminated = equity <= 0.0
        if log_reward:
            if terminated:
                reward = _log(_BANKRUPT_EQUITY * self.initial_cash / previous)
            else:
                reward = _log(equity / previous)
        else:
            reward = equity - previous
        if terminated or k == self._k_end:
            self._by_action = {}
            if held != target:  # next_close's last order, not filled: the obs shows what is held
                table = self._actions[held + 1 if self.allow_short else held][1]
            info = {"equity": equity, "position": held, "episode_metrics": self.episode_metrics()}
            return table[k].copy(), reward, terminated, not terminated, info
        return table[k].copy(), reward, False, False, {}

    def _look_up_unusual(self, action: Any) -> tuple[int, np.ndarray]:
        """The slow path of step()'s action lookup: one-element arrays, or a clear error."""
        if not self._by_action:
            raise RuntimeError("no episode is running: call reset() before step()")
        if isinstance(action, np.ndarray) and action.size == 1 and action.dtype.kind in "iu":
            found = self._by_action.get(int(action.item()))
            if found is not None:
                return found
        raise ValueError(f"action {action!r} is not in {self.action_space}")

    @property
    def equity(self) -> float:
        """Cash plus the position marked at the current close (currency)."""
        return self._equity_history[-1] if self._equity_history else self.initial_cash

    @property
    def position(self) -> int:
        """The position held now, after the last fill: -1 short, 0 flat, 1 long."""
        return self._held

    @property
    def row(self) -> int:
        """The data row of the current close (the row the next action is chosen at)."""
        return self._start_rows[0] + self._k

    def history(self) -> dict[str, np.ndarray]:
        """The current episode so far: one entry per row from the start row to the current row.

        Keys: ``dates`` (datetime64[ns]), ``close``, ``equity`` (float64), ``positions`` (int64;
        ``positions[k]`` is the position held from row ``k - 1`` to row ``k``, 0 at the start:
        with ``next_close`` the one filled at row ``k - 1``'s close, with ``next_open`` the one
        filled at row ``k``'s open). Empty arrays before the first reset.
        """
        n_steps = len(self._equity_history)
        start = self._start_rows[0] + self._k - max(0, n_steps - 1)
        rows = slice(start, start + n_steps)
        return {
            "dates": self.data.dates[rows].copy(),
            "close": self.data.close[rows].copy(),
            "equity": np.fromiter(self._equity_history, dtype=np.float64, count=n_steps),
            "positions": np.fromiter(self._position_history, dtype=np.int64, count=n_steps),
        }

    def episode_metrics(self) -> dict[str, Any]:
        """Metrics of the current episode so far (what the final step puts in ``info``).

        Trades are costed at ``fee`` plus slippage and priced where they filled; buy-and-hold buys
        at the episode's first fill under the same execution model and costs.
        """
        history = self.history()
        close = history["close"]
        n_rows = len(close)
        first = self._k - max(0, n_rows - 1)  # the episode's first local row
        cost, _, delayed, _ = self._rates
        if self.execution == "next_open":
            # The trade into positions[k] filled at the open of row k (see metrics.win_rate).
            trade_prices = np.asarray(self._fill[first : first + n_rows], dtype=np.float64)
            trade_prices[-1:] = close[-1:]
        else:
            trade_prices = close
        if delayed and n_rows <= 2:
            hold = np.full(n_rows, self.initial_cash)  # a one-step episode fills no order
        else:
            entry = self._fill[first] if n_rows else None
            hold = metrics.buy_and_hold(close, self.initial_cash, cost, entry_price=entry)
        return metrics.episode_metrics(
            history["equity"],
            history["positions"],
            close,
            fee=cost,
            trade_prices=trade_prices,
            buy_and_hold_equity=hold,
        )
