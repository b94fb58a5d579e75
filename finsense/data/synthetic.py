"""Seeded synthetic prices: the default market, needing no download, with an edge you can plant."""

from __future__ import annotations

import math

import numpy as np

from finsense.data.market import MarketData
from finsense.errors import ConfigError

#: The first synthetic date; rows follow on business days (Monday to Friday).
FIRST_DATE = np.datetime64("2000-01-03")


def _check(ok: bool, key: str, rule: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"env.data.{key} {rule}, got {value!r}")


def synthetic_prices(
    n_steps: int = 2000,
    seed: int = 0,
    initial_price: float = 100.0,
    drift: float = 0.0002,
    volatility: float = 0.01,
    ar_coef: float = 0.0,
    regime_switch_prob: float = 0.0,
    regime_drift: float = 0.001,
) -> MarketData:
    """Daily prices from geometric Brownian motion, optionally with momentum and drift regimes.

    The daily log return is ``r_t = mu_t + x_t`` with ``x_t = ar_coef * x_{t-1} + volatility * e_t``
    and ``e_t`` standard normal: an AR(1) on the returns' deviations from their drift, so a
    positive ``ar_coef`` plants momentum an agent can learn (``ar_coef=0`` is plain GBM in log
    space). ``mu_t`` is ``drift``; when ``regime_switch_prob > 0`` it is
    ``drift + s_t * regime_drift`` with a regime ``s_t`` in {+1, -1} that flips with probability
    ``regime_switch_prob`` each day (the first regime is drawn at random).

    Args:
        n_steps: number of prices (rows), >= 2.
        seed: seed of the generator's own ``numpy.random.default_rng``; the same arguments give the
            same prices on every machine, independent of any other random state.
        initial_price: the first close, > 0.
        drift: mean daily log return.
        volatility: standard deviation of the daily innovation ``e_t`` (log-return units), >= 0.
        ar_coef: AR(1) coefficient, in (-1, 1).
        regime_switch_prob: daily probability of a regime flip, in [0, 1]; 0 disables regimes.
        regime_drift: the regimes' drift offset (added with sign +1 or -1).

    Returns:
        MarketData on business days from 2000-01-03.
    """
    is_integer = isinstance(n_steps, int | np.integer) and not isinstance(n_steps, bool)
    _check(is_integer and n_steps >= 2, "n_steps", "must be an integer >= 2", n_steps)
    _check(
        math.isfinite(initial_price) and initial_price > 0,
        "initial_price",
        "must be > 0",
        initial_price,
    )
    _check(math.isfinite(drift), "drift", "must be finite", drift)
    _check(math.isfinite(volatility) and volatility >= 0, "volatility", "must be >= 0", volatility)
    _check(-1.0 < ar_coef < 1.0, "ar_coef", "must be in (-1, 1)", ar_coef)
    _check(
        0.0 <= regime_switch_prob <= 1.0,
        "regime_switch_prob",
        "must be in [0, 1]",
        regime_switch_prob,
    )
    _check(math.isfinite(regime_drift), "regime_drift", "must be finite", regime_drift)

    rng = np.random.default_rng(seed)
    n_returns = n_steps - 1
    innovations = volatility * rng.standard_normal(n_returns)
    if ar_coef != 0.0:
        # A plain loop: the recursion is sequential, and a Python float loop is exact and portable.
        deviations = innovations.tolist()
        for t in range(1, n_returns):
            deviations[t] += ar_coef * deviations[t - 1]
        innovations = np.asarray(deviations, dtype=np.float64)
    mean = np.full(n_returns, float(drift))
    if regime_switch_prob > 0.0:
        first_regime = 1.0 if rng.random() < 0.5 else -1.0
        flips = np.cumsum(rng.random(n_returns) < regime_switch_prob)
        regime = np.where(flips % 2 == 0, first_regime, -first_regime)
        mean += regime * regime_drift
    log_price = np.empty(n_steps, dtype=np.float64)
    log_price[0] = 0.0
    np.cumsum(mean + innovations, out=log_price[1:])
    close = float(initial_price) * np.exp(log_price)
    if not np.all(np.isfinite(close)) or not np.all(close > 0):
        raise ConfigError(
            "env.data.drift/volatility/regime_drift produce prices that overflow or underflow "
            f"over {n_steps} steps; use smaller values or fewer env.data.n_steps"
        )

    dates = np.busday_offset(FIRST_DATE, np.arange(n_steps), roll="forward").astype(
        "datetime64[ns]"
    )
    source = (
        f"synthetic(seed={seed}, n_steps={n_steps}, initial_price={initial_price}, drift={drift}, "
        f"volatility={volatility}, ar_coef={ar_coef}, regime_switch_prob={regime_switch_prob}, "
        f"regime_drift={regime_drift})"
    )
    return MarketData(dates=dates, close=close, source=source)
