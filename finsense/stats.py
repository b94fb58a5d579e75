"""Statistics of an honest backtest: is agent A really better than B, and is a Sharpe ratio real?

- :func:`block_bootstrap_ci`: a confidence interval for the difference between two strategies'
  Sharpe ratios (or mean returns) over the same days, from a block bootstrap that keeps both the
  serial dependence of each series and the correlation between the two.
- :func:`probabilistic_sharpe_ratio`: the probability that the true Sharpe ratio exceeds a
  benchmark, given the track record's length, skewness and kurtosis (Bailey & López de Prado 2012).
- :func:`deflated_sharpe_ratio`: the same against the Sharpe ratio that the best of N trials
  without skill would be expected to show (Bailey & López de Prado 2014);
  :func:`expected_max_sharpe` is that benchmark.

Conventions shared by every function here:

- Returns are simple per-period returns (:func:`finsense.metrics.simple_returns`), risk-free
  rate 0, and two series compared with each other are aligned: element ``k`` of both is the same
  day.
- The *per-period* Sharpe ratio is ``mean / std(ddof=1)``, not annualised: the unit of PSR and
  DSR, of their benchmarks and of the trials' Sharpe ratios. The *annualised* Sharpe ratio is the
  per-period one times ``sqrt(periods_per_year)``, as :func:`finsense.metrics.sharpe_ratio`.
- Skewness and kurtosis are the plug-in (population-formula) moments of the sample,
  ``m3 / m2**1.5`` and ``m4 / m2**2`` with ``mk = mean((r - mean(r))**k)``, i.e. the defaults of
  ``scipy.stats.skew`` and ``scipy.stats.kurtosis(fisher=False)``; kurtosis is the non-excess
  (Pearson) one, 3 for normal returns. The PSR's variance of the Sharpe ratio is asymptotic
  (Mertens 2002), so plug-in and bias-corrected moment estimators give the same PSR to order
  1/n; the plug-in ones are those of the common reference implementations. The Sharpe ratio
  keeps ``ddof=1`` so that it is the one :func:`finsense.metrics.sharpe_ratio` reports (it
  differs from the ``ddof=0`` one by a factor ``sqrt(n / (n - 1))``).
- Unlike :mod:`finsense.metrics`, which gives every degenerate input a value, these functions
  raise ``ValueError`` on inputs a caller can get wrong (lengths differ, fewer than 2 returns, nan
  or inf, arguments out of range): a significance test on bad data has no sensible default. A
  constant series is not an error; each function documents what it gives for one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from statistics import NormalDist
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from finsense.metrics import TRADING_DAYS_PER_YEAR

#: The Euler-Mascheroni constant, gamma in the expected maximum of N Sharpe ratios.
EULER_MASCHERONI = 0.5772156649015329

Statistic = Literal["sharpe", "mean"]
BootstrapMethod = Literal["stationary", "circular"]

_STANDARD_NORMAL = NormalDist()
#: Resampled days held in memory at once, in elements (2 MB of int64 per array).
_CHUNK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class BootstrapInterval:
    """A bootstrap confidence interval for the difference ``a - b`` of one statistic.

    :param statistic: ``"sharpe"`` (annualised Sharpe ratio) or ``"mean"`` (mean per-period
        return, not annualised).
    :param estimate: the statistic of ``a`` minus that of ``b`` on the series as given.
    :param low: the lower end: the ``(1 - confidence) / 2`` quantile of the resampled
        differences (a percentile interval).
    :param high: the upper end: the ``(1 + confidence) / 2`` quantile.
    :param confidence: the interval's nominal coverage, e.g. 0.95.
    :param block_length: the (mean, for the stationary bootstrap) block length in periods.
    :param n_resamples: the number of bootstrap resamples.
    :param method: ``"stationary"`` or ``"circular"``.
    """

    statistic: str
    estimate: float
    low: float
    high: float
    confidence: float
    block_length: int
    n_resamples: int
    method: str


def default_block_length(n_observations: int) -> int:
    """The block length used when none is given: ``round(n ** (1/3))``, at least 1.

    Block lengths growing like ``n ** (1/3)`` are the optimal rate for bootstrap estimates of
    variance and distribution (Hall, Horowitz & Jing 1995, Biometrika 82(3)); the constant 1 is a
    plain rule of thumb, not a data-driven choice such as Politis & White (2004). For a year of
    daily returns (252) it gives 6, for four years (1008) 10. Returns that stay dependent for
    longer than that deserve an explicit, longer ``block_length``.
    """
    n = _integer(n_observations, "n_observations", minimum=1)
    return max(1, round(n ** (1.0 / 3.0)))


def block_bootstrap_ci(
    returns_a: ArrayLike,
    returns_b: ArrayLike,
    statistic: Statistic = "sharpe",
    *,
    method: BootstrapMethod = "stationary",
    block_length: int | None = None,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    periods_per_year: int = TRADING_DAYS_PER_YEAR,
    seed: int | np.random.Generator | None = None,
) -> BootstrapInterval:
    """Confidence interval for the difference (a minus b) of two aligned return series' statistic.

    The days are resampled in blocks, and the *same* resampled days are used for both series, so
    that the interval reflects the serial dependence of each series (within a block) and the
    correlation between them (two agents trading the same market are rarely independent).
    ``method="stationary"`` is the stationary bootstrap of Politis & Romano (1994), "The
    Stationary Bootstrap", Journal of the American Statistical Association 89(428): blocks of
    geometric length with mean ``block_length``, each starting at a uniformly drawn day, wrapping
    around the end. ``method="circular"`` is the circular block bootstrap of Politis & Romano
    (1992), "A Circular Block-Resampling Procedure for Stationary Data", in Exploring the Limits
    of Bootstrap (LePage & Billard, eds.), Wiley: blocks of exactly ``block_length`` days,
    wrapping around the end, the last one cut to fit. With ``block_length=1`` both are the
    ordinary iid bootstrap of days.

    The interval is the percentile interval of the resampled differences. ``"sharpe"`` compares
    annualised Sharpe ratios (``mean / std(ddof=1) * sqrt(periods_per_year)``, as
    :func:`finsense.metrics.sharpe_ratio`), ``"mean"`` compares mean per-period returns (not
    annualised). The Sharpe ratio of a constant (resampled) series is defined as 0.0, as in
    :func:`finsense.metrics.sharpe_ratio`: an agent that stays flat earns exactly 0 every day,
    and blocks of such days are common. So two constant series give the interval [0, 0].

    :param returns_a: per-period returns of strategy a, at least 2, finite.
    :param returns_b: per-period returns of strategy b on the same dates (same length).
    :param statistic: ``"sharpe"`` or ``"mean"``.
    :param method: ``"stationary"`` (default) or ``"circular"``.
    :param block_length: (mean) block length in periods, from 1 to the series' length; default
        :func:`default_block_length` of the length.
    :param n_resamples: number of bootstrap resamples, at least 1.
    :param confidence: nominal coverage of the interval, strictly between 0 and 1.
    :param periods_per_year: annualisation factor of the Sharpe ratio (252 for daily returns).
    :param seed: seed or ``numpy.random.Generator``; the same seed gives the same interval.
    :return: the estimate and the interval, with the settings that produced them.
    """
    a = _returns_array(returns_a, "returns_a")
    b = _returns_array(returns_b, "returns_b")
    if a.size != b.size:
        raise ValueError(
            f"returns_a and returns_b differ in length: {a.size} != {b.size}; "
            "pass the two strategies' returns over the same dates"
        )
    if statistic not in ("sharpe", "mean"):
        raise ValueError(f"statistic must be 'sharpe' or 'mean', got {statistic!r}")
    if method not in ("stationary", "circular"):
        raise ValueError(f"method must be 'stationary' or 'circular', got {method!r}")
    n = a.size
    if block_length is None:
        block_length = default_block_length(n)
    block_length = _integer(block_length, "block_length", minimum=1)
    if block_length > n:
        raise ValueError(
            f"block_length must be at most the number of returns ({n}), got {block_length}"
        )
    n_resamples = _integer(n_resamples, "n_resamples", minimum=1)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    if not periods_per_year > 0:
        raise ValueError(f"periods_per_year must be positive, got {periods_per_year}")
    rng = np.random.default_rng(seed)

    if statistic == "sharpe":
        scale = math.sqrt(periods_per_year)

        def statistic_of(days: NDArray[np.int64]) -> NDArray[np.float64]:
            return (_sharpe_ratios(a[days]) - _sharpe_ratios(b[days])) * scale

    else:
        # The mean of the differences is the difference of the means, in one pass.
        differences_ab = a - b

        def statistic_of(days: NDArray[np.int64]) -> NDArray[np.float64]:
            return differences_ab[days].mean(axis=1)

    estimate = float(statistic_of(np.arange(n)[None, :])[0])
    differences = np.empty(n_resamples, dtype=np.float64)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // n)
    for first in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - first)
        days = _resampled_days(n, block_length, method, rows, rng)
        differences[first : first + rows] = statistic_of(days)
    alpha = 1.0 - confidence
    low, high = np.quantile(differences, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapInterval(
        statistic=statistic,
        estimate=estimate,
        low=float(low),
        high=float(high),
        confidence=float(confidence),
        block_length=block_length,
        n_resamples=n_resamples,
        method=method,
    )


def probabilistic_sharpe_ratio(returns: ArrayLike, benchmark_sharpe: float = 0.0) -> float:
    """Probability that the true Sharpe ratio of ``returns`` exceeds ``benchmark_sharpe``.

    The Probabilistic Sharpe Ratio of Bailey & López de Prado (2012), "The Sharpe Ratio
    Efficient Frontier", Journal of Risk 15(2):
    ``PSR = Phi((SR - SR*) * sqrt(n - 1) / sqrt(1 - skew * SR + (kurt - 1) / 4 * SR**2))``,
    with ``SR`` the per-period Sharpe ratio of the ``n`` returns (``mean / std(ddof=1)``), ``skew``
    and ``kurt`` their plug-in skewness and non-excess kurtosis (see the module docstring) and
    ``Phi`` the standard normal CDF. Negative skewness and fat tails widen the Sharpe ratio's
    sampling distribution and so lower the PSR of a positive Sharpe ratio. The returns are
    assumed iid (the paper's assumption): serial correlation makes the PSR overconfident.

    :param returns: per-period returns, at least 2, finite.
    :param benchmark_sharpe: ``SR*``, a *per-period* (not annualised) Sharpe ratio: divide an
        annualised one by ``sqrt(periods_per_year)``.
    :return: a probability in [0, 1]; nan for constant returns (their Sharpe ratio, skewness and
        kurtosis are undefined).
    """
    values = _returns_array(returns, "returns")
    moments = _sharpe_moments(values)
    if moments is None:
        return math.nan
    sharpe, skewness, kurtosis = moments
    return _psr(
        sharpe, values.size, skewness, kurtosis, _finite(benchmark_sharpe, "benchmark_sharpe")
    )


def probabilistic_sharpe_ratio_from_moments(
    sharpe: float,
    n_observations: int,
    skewness: float = 0.0,
    kurtosis: float = 3.0,
    benchmark_sharpe: float = 0.0,
) -> float:
    """:func:`probabilistic_sharpe_ratio` from summary statistics instead of the returns.

    For a track record known only by its moments (a fund's fact sheet, a paper's table).

    :param sharpe: the per-period (not annualised) Sharpe ratio.
    :param n_observations: the number of returns it was measured on, at least 2.
    :param skewness: the returns' skewness (0 for normal returns).
    :param kurtosis: the returns' non-excess (Pearson) kurtosis, 3 for normal returns; at least
        ``1 + skewness**2``, a bound every distribution satisfies.
    :param benchmark_sharpe: ``SR*``, per-period.
    :return: a probability in [0, 1].
    """
    sharpe = _finite(sharpe, "sharpe")
    n = _integer(n_observations, "n_observations", minimum=2)
    skewness = _finite(skewness, "skewness")
    kurtosis = _finite(kurtosis, "kurtosis")
    if kurtosis < (1.0 + skewness**2) * (1.0 - 1e-12):
        raise ValueError(
            f"kurtosis must be at least 1 + skewness**2 = {1.0 + skewness**2:g}, got {kurtosis:g}; "
            "pass the non-excess (Pearson) kurtosis, 3 for normal returns, not the excess kurtosis"
        )
    return _psr(sharpe, n, skewness, kurtosis, _finite(benchmark_sharpe, "benchmark_sharpe"))


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """Expected maximum Sharpe ratio of ``n_trials`` trials without skill: the DSR's benchmark.

    ``SR0 = sqrt(variance) * ((1 - gamma) * Phi^-1(1 - 1/N) + gamma * Phi^-1(1 - 1/(N e)))``,
    with ``gamma`` the Euler-Mascheroni constant and ``Phi^-1`` the standard normal quantile:
    the approximation of the expected maximum of ``N`` normal Sharpe ratio estimates of mean 0
    in Bailey & López de Prado (2014), "The Deflated Sharpe Ratio: Correcting for Selection Bias,
    Backtest Overfitting and Non-Normality", Journal of Portfolio Management 40(5) (from Bailey,
    Borwein, López de Prado & Zhu 2014, "Pseudo-Mathematics and Financial Charlatanism", Notices
    of the AMS 61(5)). The approximation is a little high for few trials (about 2% for 10,
    1% for 100) and improves as ``N`` grows.

    :param n_trials: ``N``, the number of independent trials, at least 1. One trial involves no
        selection: its expected Sharpe ratio is 0 and so is the result.
    :param variance: the variance of the trials' Sharpe ratios, at least 0; the result is in the
        same unit as their square root (per-period Sharpe ratios for the DSR).
    """
    n = _integer(n_trials, "n_trials", minimum=1)
    variance = _finite(variance, "variance")
    if variance < 0.0:
        raise ValueError(f"variance must be at least 0, got {variance}")
    if n == 1:
        return 0.0
    quantile = _STANDARD_NORMAL.inv_cdf
    z_one_in_n = quantile(1.0 - 1.0 / n)
    z_one_in_n_e = quantile(1.0 - 1.0 / (n * math.e))
    expected_max_z = (1.0 - EULER_MASCHERONI) * z_one_in_n + EULER_MASCHERONI * z_one_in_n_e
    return math.sqrt(variance) * expected_max_z


def deflated_sharpe_ratio(
    returns: ArrayLike,
    trial_sharpe_ratios: ArrayLike,
    n_trials: int | None = None,
) -> float:
    """Probability that the best of many trials has a true Sharpe ratio above what luck would give.

    The Deflated Sharpe Ratio of Bailey & López de Prado (2014), "The Deflated Sharpe Ratio:
    Correcting for Selection Bias, Backtest Overfitting and Non-Normality", Journal of Portfolio
    Management 40(5): the :func:`probabilistic_sharpe_ratio` of the selected strategy's returns
    against the benchmark ``SR0 = expected_max_sharpe(N, V)``, where ``V`` is the variance of the
    Sharpe ratios of all the trials (sample variance, ``ddof=1``) and ``N`` the number of
    independent trials. Trying more configurations raises ``SR0``, so the same backtest Sharpe
    ratio is worth less the more was tried to find it.

    :param returns: per-period returns of the selected (best) trial, at least 2, finite.
    :param trial_sharpe_ratios: the *per-period* (not annualised) Sharpe ratios of every trial
        run, the selected one included; at least 2, finite.
    :param n_trials: ``N``; default the number of trial Sharpe ratios. Pass fewer when the
        trials are correlated (the effective number of independent trials, e.g. from
        clustering them), more when some trials' Sharpe ratios were not kept.
    :return: a probability in [0, 1]; nan when ``returns`` is constant.
    """
    trials = np.asarray(trial_sharpe_ratios, dtype=np.float64)
    if trials.ndim != 1:
        raise ValueError(f"trial_sharpe_ratios must be one-dimensional, got shape {trials.shape}")
    if trials.size < 2:
        raise ValueError(
            f"trial_sharpe_ratios needs at least 2 Sharpe ratios for their variance, got "
            f"{trials.size}; with a single trial use probabilistic_sharpe_ratio"
        )
    _check_finite(trials, "trial_sharpe_ratios")
    n = trials.size if n_trials is None else _integer(n_trials, "n_trials", minimum=1)
    benchmark = expected_max_sharpe(n, float(trials.var(ddof=1)))
    return probabilistic_sharpe_ratio(returns, benchmark)


def _psr(sharpe: float, n: int, skewness: float, kurtosis: float, benchmark: float) -> float:
    variance_factor = 1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if variance_factor <= 0.0:
        # Only a two-point distribution with skewness * sharpe == 2 reaches 0 (the factor is at
        # least (1 - skewness * sharpe / 2) ** 2 since kurtosis >= 1 + skewness ** 2).
        return math.nan
    z = (sharpe - benchmark) * math.sqrt(n - 1) / math.sqrt(variance_factor)
    return _STANDARD_NORMAL.cdf(z)


def _sharpe_moments(values: NDArray[np.float64]) -> tuple[float, float, float] | None:
    """Per-period Sharpe ratio, skewness and kurtosis (module conventions); None if constant."""
    n = values.size
    mean = float(values.mean())
    deviations = values - mean
    squared = deviations * deviations
    m2 = float(squared.mean())
    std = math.sqrt(m2 * n / (n - 1))
    if std <= 1e-12 * abs(mean):  # the constant rule of finsense.metrics.sharpe_ratio
        return None
    skewness = float((squared * deviations).mean()) / m2**1.5
    kurtosis = float((squared * squared).mean()) / m2**2
    return mean / std, skewness, kurtosis


def _sharpe_ratios(rows: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per-period Sharpe ratio of each row, ``mean / std(ddof=1)``; 0.0 for a constant row."""
    mean = rows.mean(axis=1)
    deviations = rows - mean[:, None]
    std = np.sqrt(np.einsum("ij,ij->i", deviations, deviations) / (rows.shape[1] - 1))
    constant = std <= 1e-12 * np.abs(mean)
    return np.where(constant, 0.0, mean / np.where(constant, 1.0, std))


def _resampled_days(
    n: int, block_length: int, method: str, rows: int, rng: np.random.Generator
) -> NDArray[np.int64]:
    """``rows`` bootstrap resamples of the day indices ``0..n-1``, shape ``(rows, n)``."""
    if method == "circular":
        n_blocks = -(-n // block_length)
        starts = rng.integers(0, n, size=(rows, n_blocks))
        days = (starts[:, :, None] + np.arange(block_length)).reshape(rows, -1)[:, :n]
        return days % n
    # Stationary: each day starts a new block with probability 1 / block_length (always the
    # first); a block starts at a uniform day and runs on day by day, wrapping at the end.
    starts = rng.integers(0, n, size=(rows, n))
    new_block = rng.random((rows, n)) < 1.0 / block_length
    new_block[:, 0] = True
    position = np.arange(n)
    block_began = np.maximum.accumulate(np.where(new_block, position, 0), axis=1)
    block_start = np.take_along_axis(starts, block_began, axis=1)
    return (block_start + (position - block_began)) % n


def _returns_array(values: ArrayLike, name: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size < 2:
        raise ValueError(f"{name} needs at least 2 returns, got {array.size}")
    _check_finite(array, name)
    return array


def _check_finite(array: NDArray[np.float64], name: str) -> None:
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(
            f"{name} has {bad.size} nan or infinite value(s), the first at index {bad[0]} "
            f"({array[bad[0]]}); drop or fill them first"
        )


def _integer(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)
