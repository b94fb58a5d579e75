"""Backtest statistics: the papers' worked examples, hand computations, and bootstrap behaviour.

Reference numbers are computed step by step with the ``math`` module here, independently of
``finsense.stats``; where they come from a paper, the test's docstring says which and how sure
we are of the printed figure.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from statistics import NormalDist

import numpy as np
import pytest

from finsense import metrics, stats

#: The Euler-Mascheroni constant to 17 digits, typed in here rather than taken from stats.
GAMMA = 0.57721566490153286


def normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def hand_psr(sharpe: float, n: int, skew: float, kurt: float, benchmark: float) -> float:
    """PSR by the 2012 paper's formula, written out."""
    spread = math.sqrt(1.0 - skew * sharpe + (kurt - 1.0) / 4.0 * sharpe**2)
    return normal_cdf((sharpe - benchmark) * math.sqrt(n - 1) / spread)


# Probabilistic Sharpe ratio ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("skewness", "kurtosis", "printed_psr"),
    [(0.0, 3.0, 0.982), (-2.448, 10.164, 0.913)],
)
def test_psr_reproduces_the_2012_papers_example(
    skewness: float, kurtosis: float, printed_psr: float
) -> None:
    """Bailey & López de Prado (2012), "The Sharpe Ratio Efficient Frontier", J. of Risk 15(2).

    The example: 24 monthly returns with a monthly Sharpe ratio of 0.458; PSR(0) is 0.982 for
    normal returns and 0.913 with skewness -2.448 and kurtosis 10.164. We could not read the
    paper's text here: the inputs and printed values are as recorded, labelled "paper examples",
    in the tests of github.com/rubenbriones/Probabilistic-Sharpe-Ratio. The hand computation
    below reproduces both printed values to their 3 decimals.
    """
    expected = hand_psr(0.458, 24, skewness, kurtosis, 0.0)
    assert round(expected, 3) == printed_psr
    psr = stats.probabilistic_sharpe_ratio_from_moments(0.458, 24, skewness, kurtosis)
    assert psr == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("sharpe", "skewness", "kurtosis", "printed_std", "printed_min_trl_years"),
    [(0.7079, -0.2250, 2.9570, 0.1028, 0.7152), (0.8183, -1.4455, 7.0497, 0.1550, 1.1593)],
)
def test_psr_matches_the_2012_papers_sharpe_std_and_minimum_track_record(
    sharpe: float,
    skewness: float,
    kurtosis: float,
    printed_std: float,
    printed_min_trl_years: float,
) -> None:
    """The 2012 paper's two monthly track records of 134 returns (same source as above).

    Their printed standard deviations of the Sharpe ratio are 0.1028 and 0.1550, and their
    minimum track record lengths at 95% against SR* = 0 are 0.7152 and 1.1593 years. PSR one
    printed standard deviation below the Sharpe ratio is Phi(1); and PSR(0) crosses 0.95 between
    the whole months around the minimum track record length (8.58 and 13.91 months).
    """
    std = math.sqrt((1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2) / 133)
    assert round(std, 4) == printed_std
    one_std_below = stats.probabilistic_sharpe_ratio_from_moments(
        sharpe, 134, skewness, kurtosis, benchmark_sharpe=sharpe - std
    )
    assert one_std_below == pytest.approx(normal_cdf(1.0), rel=1e-12)

    months = printed_min_trl_years * 12
    below, above = math.floor(months), math.ceil(months)
    psr = stats.probabilistic_sharpe_ratio_from_moments
    assert psr(sharpe, below, skewness, kurtosis) < 0.95 < psr(sharpe, above, skewness, kurtosis)


def test_psr_of_returns_uses_the_sample_std_and_the_plug_in_skewness_and_kurtosis() -> None:
    returns = [0.012, -0.004, 0.007, 0.001, -0.009, 0.015, 0.003, -0.002, 0.006, 0.0, -0.011]
    n = len(returns)
    mean = sum(returns) / n
    m2 = sum((r - mean) ** 2 for r in returns) / n
    m3 = sum((r - mean) ** 3 for r in returns) / n
    m4 = sum((r - mean) ** 4 for r in returns) / n
    sharpe = mean / math.sqrt(m2 * n / (n - 1))  # std with ddof=1, as metrics.sharpe_ratio
    skew, kurt = m3 / m2**1.5, m4 / m2**2  # population formulas on the sample
    for benchmark in (0.0, 0.05, -0.1):
        expected = hand_psr(sharpe, n, skew, kurt, benchmark)
        assert stats.probabilistic_sharpe_ratio(returns, benchmark) == pytest.approx(expected)
        from_moments = stats.probabilistic_sharpe_ratio_from_moments(
            sharpe, n, skew, kurt, benchmark
        )
        assert from_moments == pytest.approx(expected)


def test_psr_is_one_half_at_its_own_sharpe_and_falls_as_the_benchmark_rises() -> None:
    returns = np.random.default_rng(3).normal(0.001, 0.01, 300)
    sharpe = metrics.sharpe_ratio(returns, periods_per_year=1)
    assert stats.probabilistic_sharpe_ratio(returns, sharpe) == pytest.approx(0.5)
    values = [stats.probabilistic_sharpe_ratio(returns, sr) for sr in (-0.1, 0.0, 0.05, 0.2)]
    assert values == sorted(values, reverse=True)


def test_psr_penalises_negative_skewness_and_fat_tails() -> None:
    normal = stats.probabilistic_sharpe_ratio_from_moments(0.1, 250, 0.0, 3.0)
    skewed_fat = stats.probabilistic_sharpe_ratio_from_moments(0.1, 250, -1.0, 8.0)
    assert skewed_fat < normal


def test_psr_of_constant_returns_is_nan() -> None:
    assert math.isnan(stats.probabilistic_sharpe_ratio([0.0] * 10))
    assert math.isnan(stats.probabilistic_sharpe_ratio([0.001] * 10))


# Expected maximum Sharpe ratio and deflated Sharpe ratio ----------------------------------------


def test_dsr_reproduces_the_2014_papers_numerical_example() -> None:
    """Bailey & López de Prado (2014), "The Deflated Sharpe Ratio", JPM 40(5), numerical example.

    N = 100 trials whose Sharpe ratios have an annualised variance of 1/2; the best has an
    annualised Sharpe ratio of 2.5 over T = 1250 daily returns (5 years of 250 days) with
    skewness -3 and kurtosis 10. The figures SR0 = 0.1132 (per day) and DSR = 0.9004 were given
    to us from memory of the paper; we could not retrieve its text to confirm them. The hand
    computation below gives both to 4 decimals with the paper's 250 days a year (with 252 it
    would give 0.1127 and 0.8997), which corroborates the inputs and the convention.
    """
    days_per_year = 250
    variance = 0.5 / days_per_year
    quantile = NormalDist().inv_cdf
    sr0 = math.sqrt(variance) * (
        (1.0 - GAMMA) * quantile(1.0 - 1.0 / 100) + GAMMA * quantile(1.0 - 1.0 / (100 * math.e))
    )
    sharpe = 2.5 / math.sqrt(days_per_year)
    dsr = hand_psr(sharpe, 1250, -3.0, 10.0, sr0)
    assert (round(sr0, 4), round(dsr, 4)) == (0.1132, 0.9004)

    assert stats.expected_max_sharpe(100, variance) == pytest.approx(sr0, rel=1e-12)
    from_moments = stats.probabilistic_sharpe_ratio_from_moments(sharpe, 1250, -3.0, 10.0, sr0)
    assert from_moments == pytest.approx(dsr, rel=1e-12)


@pytest.mark.parametrize(("n_trials", "tolerance"), [(10, 0.04), (100, 0.02)])
def test_expected_max_sharpe_approximates_the_mean_maximum_of_normal_draws(
    n_trials: int, tolerance: float
) -> None:
    # The closed form is an approximation: about 2.3% above the exact mean maximum of 10 normals
    # (1.5388 standard deviations) and 0.9% above that of 100 (2.5076); the Monte Carlo error of
    # 20,000 maxima is about 0.3%.
    sigma = 0.3
    draws = np.random.default_rng(12345).normal(0.0, sigma, size=(20_000, n_trials))
    simulated = float(draws.max(axis=1).mean())
    assert stats.expected_max_sharpe(n_trials, sigma**2) == pytest.approx(simulated, rel=tolerance)


def test_expected_max_sharpe_of_one_trial_or_no_spread_is_zero() -> None:
    assert stats.expected_max_sharpe(1, 0.5) == 0.0
    assert stats.expected_max_sharpe(50, 0.0) == 0.0


def test_dsr_is_the_psr_against_the_expected_maximum_of_the_trials() -> None:
    returns = np.random.default_rng(11).normal(0.0012, 0.01, 500)
    trials = [0.02, 0.05, -0.01, 0.08, 0.03, 0.11]
    mean = sum(trials) / len(trials)
    variance = sum((sr - mean) ** 2 for sr in trials) / (len(trials) - 1)  # ddof=1
    benchmark = stats.expected_max_sharpe(len(trials), variance)
    expected = stats.probabilistic_sharpe_ratio(returns, benchmark)
    assert stats.deflated_sharpe_ratio(returns, trials) == pytest.approx(expected, rel=1e-12)
    assert 0.0 < expected < stats.probabilistic_sharpe_ratio(returns, 0.0)


def test_dsr_falls_as_more_trials_are_counted_and_is_the_psr_for_one() -> None:
    returns = np.random.default_rng(5).normal(0.001, 0.01, 750)
    trials = np.random.default_rng(6).normal(0.0, 0.03, 20)
    values = [stats.deflated_sharpe_ratio(returns, trials, n) for n in (1, 10, 100, 1000)]
    assert values == sorted(values, reverse=True) and values[0] > values[-1]
    assert values[0] == stats.probabilistic_sharpe_ratio(returns, 0.0)


# Block bootstrap --------------------------------------------------------------------------------


def correlated_pair(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two agents' daily returns on the same market: correlated, b with a lower mean."""
    rng = np.random.default_rng(seed)
    market = rng.normal(0.0005, 0.01, n)
    return market + rng.normal(0.0003, 0.004, n), 0.8 * market + rng.normal(0.0, 0.004, n)


@pytest.mark.parametrize("method", ["stationary", "circular"])
@pytest.mark.parametrize("statistic", ["sharpe", "mean"])
def test_bootstrap_of_identical_series_is_exactly_zero(
    method: stats.BootstrapMethod, statistic: stats.Statistic
) -> None:
    a, _ = correlated_pair(300, seed=1)
    interval = stats.block_bootstrap_ci(
        a, a.copy(), statistic, method=method, n_resamples=500, seed=0
    )
    assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)


def test_bootstrap_sharpe_estimate_is_the_difference_of_annualised_sharpe_ratios() -> None:
    a, b = correlated_pair(400, seed=2)
    interval = stats.block_bootstrap_ci(a, b, periods_per_year=12, n_resamples=200, seed=0)
    expected = metrics.sharpe_ratio(a, 12) - metrics.sharpe_ratio(b, 12)
    assert interval.estimate == pytest.approx(expected, rel=1e-12)
    assert interval.low < interval.estimate < interval.high
    assert (interval.statistic, interval.method) == ("sharpe", "stationary")
    assert (interval.block_length, interval.n_resamples, interval.confidence) == (7, 200, 0.95)


def test_bootstrap_sharpe_of_a_flat_agent_is_zero_not_nan() -> None:
    # An agent that never trades earns exactly 0 each day: its Sharpe ratio is defined as 0.0 (as
    # in metrics.sharpe_ratio), so are the resamples of it, and the interval is that of -Sharpe(b).
    _, b = correlated_pair(250, seed=3)
    flat = np.zeros_like(b)
    interval = stats.block_bootstrap_ci(flat, b, n_resamples=1000, seed=0)
    assert interval.estimate == pytest.approx(-metrics.sharpe_ratio(b))
    mirrored = stats.block_bootstrap_ci(b, flat, n_resamples=1000, seed=0)
    assert (interval.low, interval.high) == pytest.approx((-mirrored.high, -mirrored.low))
    both_flat = stats.block_bootstrap_ci(flat, flat + 0.001, n_resamples=100, seed=0)
    assert (both_flat.estimate, both_flat.low, both_flat.high) == (0.0, 0.0, 0.0)


def test_bootstrap_of_a_constant_shift_in_mean_is_that_shift() -> None:
    a, _ = correlated_pair(500, seed=4)
    interval = stats.block_bootstrap_ci(a, a - 0.0007, "mean", n_resamples=500, seed=0)
    for value in (interval.estimate, interval.low, interval.high):
        assert value == pytest.approx(0.0007, rel=1e-9)


def test_paired_bootstrap_finds_a_shift_that_independent_resampling_would_miss() -> None:
    # b is a minus 0.0005 a day plus small noise of its own. Resampling the same days for both
    # keeps their correlation: the interval is about 2 * 1.96 * 0.002 / sqrt(500) = 0.00035 wide
    # and excludes 0, where resampling the two independently would spread it over about
    # 2 * 1.96 * 0.01 * sqrt(2 / 500) = 0.0025 and include 0.
    rng = np.random.default_rng(5)
    a = rng.normal(0.0005, 0.01, 500)
    b = a - 0.0005 + rng.normal(0.0, 0.002, 500)
    interval = stats.block_bootstrap_ci(a, b, "mean", n_resamples=5000, seed=0)
    assert 0.0 < interval.low < 0.0005 < interval.high
    assert interval.high - interval.low == pytest.approx(2 * 1.96 * 0.002 / math.sqrt(500), rel=0.2)


def test_bootstrap_intervals_cover_the_true_sharpe_difference_of_iid_normal_returns() -> None:
    # 60 independent data sets (fixed seeds) of 250 days from known normal distributions: the 95%
    # intervals should contain the true annualised Sharpe difference about 57 times, and be
    # about as wide as the normal theory says (var of a Sharpe ratio ~ (1 + SR**2 / 2) / n).
    n, mu_a, sd_a, mu_b, sd_b = 250, 0.0008, 0.01, 0.0002, 0.012
    true_difference = (mu_a / sd_a - mu_b / sd_b) * math.sqrt(252)
    theory_sd = math.sqrt(
        252 * ((1 + (mu_a / sd_a) ** 2 / 2) / n + (1 + (mu_b / sd_b) ** 2 / 2) / n)
    )
    covered, widths = 0, []
    for seed in range(60):
        rng = np.random.default_rng(1000 + seed)
        a, b = rng.normal(mu_a, sd_a, n), rng.normal(mu_b, sd_b, n)
        interval = stats.block_bootstrap_ci(a, b, block_length=1, n_resamples=1000, seed=seed)
        covered += interval.low <= true_difference <= interval.high
        widths.append(interval.high - interval.low)
    assert covered >= 53  # 57 expected; under 95% coverage, 52 or fewer has probability 1%
    assert np.mean(widths) == pytest.approx(2 * 1.96 * theory_sd, rel=0.1)


def ar1(n: int, phi: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shocks = rng.normal(0.0, 1.0, n)
    values = np.empty(n)
    values[0] = shocks[0] / math.sqrt(1.0 - phi**2)
    for k in range(1, n):
        values[k] = phi * values[k - 1] + shocks[k]
    return values


@pytest.mark.parametrize("method", ["stationary", "circular"])
def test_block_length_one_is_the_iid_bootstrap_and_longer_blocks_see_autocorrelation(
    method: stats.BootstrapMethod,
) -> None:
    # The mean of an AR(1) series with phi = 0.8 and unit shocks: the iid bootstrap estimates its
    # standard error as sd / sqrt(n), blind to the dependence; blocks much longer than the
    # dependence (1 / (1 - phi) = 5 days) recover the long-run one, 1 / (1 - phi) / sqrt(n),
    # three times larger.
    n, phi = 2000, 0.8
    x = ar1(n, phi, seed=7)
    zero = np.zeros(n)

    def standard_error(block_length: int) -> float:
        interval = stats.block_bootstrap_ci(
            x, zero, "mean", method=method, block_length=block_length, n_resamples=2000, seed=1
        )
        return (interval.high - interval.low) / (2 * NormalDist().inv_cdf(0.975))

    iid = float(x.std()) / math.sqrt(n)
    assert standard_error(1) == pytest.approx(iid, rel=0.05)
    assert standard_error(50) == pytest.approx(1.0 / (1.0 - phi) / math.sqrt(n), rel=0.25)
    assert standard_error(50) > 2.0 * standard_error(1)


def test_bootstrap_is_reproducible_from_its_seed() -> None:
    a, b = correlated_pair(300, seed=8)
    first = stats.block_bootstrap_ci(a, b, n_resamples=2000, seed=42)
    assert stats.block_bootstrap_ci(a, b, n_resamples=2000, seed=42) == first
    other = stats.block_bootstrap_ci(a, b, n_resamples=2000, seed=43)
    assert other != first and other.estimate == first.estimate
    generator = stats.block_bootstrap_ci(a, b, n_resamples=2000, seed=np.random.default_rng(42))
    assert generator == first


def test_bootstrap_resamples_in_chunks_without_changing_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = correlated_pair(300, seed=9)
    whole = stats.block_bootstrap_ci(a, b, method="circular", n_resamples=1000, seed=0)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 300 * 7)  # 7 resamples a chunk, 143 chunks
    chunked = stats.block_bootstrap_ci(a, b, method="circular", n_resamples=1000, seed=0)
    assert chunked.low == pytest.approx(whole.low, abs=0.15)
    assert chunked.high == pytest.approx(whole.high, abs=0.15)
    assert chunked.estimate == whole.estimate


def test_default_block_length_is_the_rounded_cube_root() -> None:
    assert [stats.default_block_length(n) for n in (1, 2, 7, 252, 1008, 5000)] == [
        1,
        1,
        2,
        6,
        10,
        17,
    ]


def test_bootstrap_interval_is_frozen() -> None:
    a, b = correlated_pair(50, seed=10)
    interval = stats.block_bootstrap_ci(a, b, n_resamples=10, seed=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        interval.low = 0.0  # type: ignore[misc]


# Input errors -----------------------------------------------------------------------------------

GOOD = [0.01, -0.02, 0.015, 0.003, -0.004]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"returns_b": GOOD[:4]}, "differ in length: 5 != 4"),
        ({"returns_a": [0.01], "returns_b": [0.02]}, "returns_a needs at least 2 returns, got 1"),
        ({"returns_a": [0.01, math.nan, 0.0, 0.0, 0.0]}, "returns_a has 1 nan or infinite"),
        ({"returns_b": [0.01, 0.0, 0.0, 0.0, math.inf]}, "the first at index 4"),
        ({"returns_a": [GOOD, GOOD]}, "returns_a must be one-dimensional, got shape (2, 5)"),
        ({"statistic": "sortino"}, "statistic must be 'sharpe' or 'mean', got 'sortino'"),
        ({"method": "moving"}, "method must be 'stationary' or 'circular'"),
        ({"block_length": 0}, "block_length must be at least 1, got 0"),
        ({"block_length": 6}, "block_length must be at most the number of returns (5), got 6"),
        ({"block_length": 2.5}, "block_length must be an integer, got 2.5"),
        ({"n_resamples": 0}, "n_resamples must be at least 1, got 0"),
        ({"confidence": 95}, "confidence must be strictly between 0 and 1, got 95"),
        ({"confidence": math.nan}, "confidence must be strictly between 0 and 1"),
        ({"periods_per_year": 0}, "periods_per_year must be positive, got 0"),
    ],
)
def test_bootstrap_rejects_bad_input_with_a_message_naming_it(
    kwargs: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"returns_a": GOOD, "returns_b": GOOD[::-1], **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        stats.block_bootstrap_ci(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: stats.probabilistic_sharpe_ratio([]), "returns needs at least 2 returns, got 0"),
        (lambda: stats.probabilistic_sharpe_ratio([0.01, math.nan]), "returns has 1 nan"),
        (
            lambda: stats.probabilistic_sharpe_ratio(GOOD, math.nan),
            "benchmark_sharpe must be a finite number",
        ),
        (
            lambda: stats.probabilistic_sharpe_ratio_from_moments(0.1, 1),
            "n_observations must be at least 2, got 1",
        ),
        (
            lambda: stats.probabilistic_sharpe_ratio_from_moments(0.1, 100, 0.0, kurtosis=0.0),
            "not the excess kurtosis",
        ),
        (lambda: stats.expected_max_sharpe(0, 0.1), "n_trials must be at least 1, got 0"),
        (
            lambda: stats.expected_max_sharpe(10.0, 0.1),  # type: ignore[arg-type]
            "n_trials must be an integer, got 10.0",
        ),
        (lambda: stats.expected_max_sharpe(10, -0.1), "variance must be at least 0, got -0.1"),
        (
            lambda: stats.deflated_sharpe_ratio(GOOD, [0.1]),
            "trial_sharpe_ratios needs at least 2 Sharpe ratios",
        ),
        (
            lambda: stats.deflated_sharpe_ratio(GOOD, [0.1, math.nan, 0.2]),
            "trial_sharpe_ratios has 1 nan or infinite value.s., the first at index 1",
        ),
        (
            lambda: stats.deflated_sharpe_ratio(GOOD, [0.1, 0.2], n_trials=0),
            "n_trials must be at least 1, got 0",
        ),
    ],
)
def test_psr_and_dsr_reject_bad_input_with_a_message_naming_it(
    call: Callable[[], float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        call()
