"""Market data: synthetic prices, the shipped sample, file validation (CSV and Parquet), splits."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from finsense.data import (
    MarketData,
    load_market_data,
    load_prices,
    sample_prices,
    split_bounds,
    split_by_time,
    split_fractions,
    synthetic_prices,
)
from finsense.errors import ConfigError, DataError

GOOD_ROWS = [
    ("2020-01-02", "100.0"),
    ("2020-01-03", "101.5"),
    ("2020-01-06", "99.25"),
    ("2020-01-07", "102.0"),
]


def write_prices(
    tmp_path: Path,
    suffix: str,
    rows: list[tuple[str, str]],
    columns: tuple[str, str] = ("Date", "Close"),
) -> Path:
    """Write (date, close) text rows as CSV, or as Parquet with float prices (empty -> missing)."""
    path = tmp_path / f"prices{suffix}"
    if suffix == ".csv":
        lines = [",".join(columns)] + [f"{d},{c}" for d, c in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        close = [float(c) if c.strip() else None for _, c in rows]
        pd.DataFrame({columns[0]: [d for d, _ in rows], columns[1]: close}).to_parquet(path)
    return path


def where(suffix: str, row: int) -> str:
    """How an error names data row ``row`` (0-based): the CSV line, or the 1-based Parquet row."""
    return f"line {row + 2}" if suffix == ".csv" else f"row {row + 1}"


formats = pytest.mark.parametrize("suffix", [".csv", ".parquet"])


# --- synthetic -----------------------------------------------------------------------------------


def test_synthetic_prices_with_the_same_seed_are_identical() -> None:
    a = synthetic_prices(n_steps=500, seed=7, ar_coef=0.2, regime_switch_prob=0.05)
    b = synthetic_prices(n_steps=500, seed=7, ar_coef=0.2, regime_switch_prob=0.05)
    np.testing.assert_array_equal(a.close, b.close)
    np.testing.assert_array_equal(a.dates, b.dates)
    assert a.source == b.source
    assert not np.array_equal(a.close, synthetic_prices(n_steps=500, seed=8).close)


def test_synthetic_default_prices_are_pinned() -> None:
    # Guards the generator against accidental changes: every machine must see these prices.
    data = synthetic_prices()
    assert len(data) == 2000
    assert data.close[0] == 100.0
    assert data.close[[1, 999, 1999]] == pytest.approx(
        [100.14583646, 75.71582064, 84.83991905], rel=1e-9
    )


def test_synthetic_prices_are_positive_on_business_days_from_2000_01_03() -> None:
    data = synthetic_prices(n_steps=300, volatility=0.05)
    assert data.dates.dtype == np.dtype("datetime64[ns]")
    assert data.dates[0] == np.datetime64("2000-01-03")
    assert np.all(np.diff(data.dates) > np.timedelta64(0))
    assert np.all(np.is_busday(data.dates.astype("datetime64[D]")))
    assert np.all(data.close > 0)


def test_synthetic_ar_coef_plants_momentum_in_returns() -> None:
    returns = np.diff(np.log(synthetic_prices(n_steps=20_000, ar_coef=0.5, drift=0.0).close))
    lag1 = np.corrcoef(returns[1:], returns[:-1])[0, 1]
    assert lag1 == pytest.approx(0.5, abs=0.03)
    plain = np.diff(np.log(synthetic_prices(n_steps=20_000, drift=0.0).close))
    assert abs(np.corrcoef(plain[1:], plain[:-1])[0, 1]) < 0.03


def test_synthetic_regimes_switch_the_drift_sign() -> None:
    data = synthetic_prices(
        n_steps=5_000, volatility=0.0, drift=0.0, regime_switch_prob=0.01, regime_drift=0.001
    )
    returns = np.diff(np.log(data.close))
    assert set(np.round(returns, 9)) == {0.001, -0.001}


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"n_steps": 1}, "n_steps"),
        ({"initial_price": 0.0}, "initial_price"),
        ({"volatility": -0.1}, "volatility"),
        ({"ar_coef": 1.0}, "ar_coef"),
        ({"regime_switch_prob": 1.5}, "regime_switch_prob"),
    ],
)
def test_synthetic_bad_parameter_is_a_config_error_naming_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"env.data.{key}"):
        synthetic_prices(**kwargs)


# --- shipped sample ------------------------------------------------------------------------------


def test_sample_googl_loads_2335_rows_from_the_package() -> None:
    data = sample_prices("GOOGL")
    assert len(data) == 2335
    assert data.source == "sample:GOOGL"
    assert data.dates[0] == np.datetime64("2009-05-22")
    assert data.dates[-1] == np.datetime64("2018-08-29")
    assert data.close[0] == pytest.approx(196.946945)


def test_unknown_sample_is_a_config_error_listing_the_samples() -> None:
    with pytest.raises(ConfigError, match="GOOGL"):
        sample_prices("NOPE")


# --- files: good ---------------------------------------------------------------------------------


@formats
def test_file_prices_load_with_configurable_column_names(tmp_path: Path, suffix: str) -> None:
    path = write_prices(tmp_path, suffix, GOOD_ROWS, columns=("day", "px"))
    data = load_prices(path, date_column="day", close_column="px")
    assert len(data) == 4
    assert data.source == str(path)
    assert data.dates.dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(data.close, [100.0, 101.5, 99.25, 102.0])


def test_parquet_dates_may_be_the_index(tmp_path: Path) -> None:
    path = tmp_path / "prices.parquet"
    frame = pd.DataFrame(
        {"Close": [1.0, 2.0, 3.0]},
        index=pd.DatetimeIndex(["2020-01-01", "2020-01-02", "2020-01-03"], name="Date"),
    )
    frame.to_parquet(path)
    assert len(load_prices(path)) == 3


def test_csv_error_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text("Date,Close\n2020-01-02,1\n\n2020-01-03,-5\n")
    with pytest.raises(DataError, match="line 4"):
        load_prices(path)


# --- files: every validation error ---------------------------------------------------------------


def test_missing_file_is_a_data_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        load_prices(tmp_path / "nope.csv")


def test_unsupported_suffix_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "prices.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"\.csv or \.parquet"):
        load_prices(path)


@formats
def test_unreadable_file_is_a_data_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"prices{suffix}"
    path.write_bytes(b"" if suffix == ".csv" else b"not parquet at all")
    with pytest.raises(DataError, match=str(path.name)):
        load_prices(path)


@formats
@pytest.mark.parametrize("column", ["date_column", "close_column"])
def test_missing_column_lists_the_columns_found(tmp_path: Path, suffix: str, column: str) -> None:
    path = write_prices(tmp_path, suffix, GOOD_ROWS, columns=("Day", "Price"))
    with pytest.raises(DataError) as caught:
        if column == "date_column":
            load_prices(path, date_column="Missing", close_column="Price")
        else:
            load_prices(path, date_column="Day", close_column="Missing")
    message = str(caught.value)
    assert path.name in message
    assert "columns found: 'Day', 'Price'" in message
    assert f"env.data.{column}" in message


@formats
def test_unparsable_date_names_the_first_bad_row(tmp_path: Path, suffix: str) -> None:
    rows = [*GOOD_ROWS[:2], ("not-a-date", "5"), ("also bad", "6")]
    path = write_prices(tmp_path, suffix, rows)
    with pytest.raises(
        DataError, match=rf"'Date' has an unparsable date 'not-a-date' at {where(suffix, 2)}"
    ):
        load_prices(path)


@formats
@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("", r"an empty price|a missing \(NaN\) price"),
        ("nan", r"a missing \(NaN\) price|not a number \('nan'\)"),
        ("0", "not positive"),
        ("-3.5", "not positive"),
    ],
)
def test_bad_price_names_the_column_row_and_date(
    tmp_path: Path, suffix: str, value: str, what: str
) -> None:
    rows = [GOOD_ROWS[0], GOOD_ROWS[1], (GOOD_ROWS[2][0], value), GOOD_ROWS[3]]
    path = write_prices(tmp_path, suffix, rows)
    with pytest.raises(DataError) as caught:
        load_prices(path)
    message = str(caught.value)
    assert path.name in message and "'Close'" in message and re.search(what, message)
    assert f"{where(suffix, 2)} (date 2020-01-06)" in message


def test_text_price_is_not_a_number(tmp_path: Path) -> None:
    path = write_prices(tmp_path, ".csv", [*GOOD_ROWS, ("2020-01-08", "abc")])
    with pytest.raises(DataError, match=r"not a number \('abc'\) at line 6"):
        load_prices(path)


@formats
def test_duplicate_date_names_both_rows(tmp_path: Path, suffix: str) -> None:
    rows = [*GOOD_ROWS, (GOOD_ROWS[3][0], "103")]
    path = write_prices(tmp_path, suffix, rows)
    with pytest.raises(
        DataError, match=rf"repeats the date at {where(suffix, 4)} .*also at {where(suffix, 3)}"
    ):
        load_prices(path)


@formats
def test_unsorted_dates_name_the_first_step_back(tmp_path: Path, suffix: str) -> None:
    rows = [GOOD_ROWS[0], GOOD_ROWS[2], GOOD_ROWS[1], GOOD_ROWS[3]]
    path = write_prices(tmp_path, suffix, rows)
    with pytest.raises(
        DataError, match=rf"not sorted: {where(suffix, 2)} \(date 2020-01-03\).*sort"
    ):
        load_prices(path)


@formats
def test_too_few_rows_is_a_data_error(tmp_path: Path, suffix: str) -> None:
    path = write_prices(tmp_path, suffix, GOOD_ROWS[:1])
    with pytest.raises(DataError, match="1 price rows, needs at least 2"):
        load_prices(path)
    with pytest.raises(DataError, match="needs at least 10"):
        load_prices(write_prices(tmp_path, suffix, GOOD_ROWS), min_rows=10)


# --- config mapping ------------------------------------------------------------------------------


def test_no_data_config_gives_the_synthetic_default() -> None:
    np.testing.assert_array_equal(load_market_data(None).close, synthetic_prices().close)


def test_a_full_data_config_loads_each_source(tmp_path: Path) -> None:
    full = {
        "source": "synthetic", "path": None, "sample": "GOOGL", "date_column": "Date",
        "close_column": "Close", "test_fraction": 0.2, "n_steps": 300, "seed": 3,
        "initial_price": 50.0, "drift": 0.0, "volatility": 0.02, "ar_coef": 0.1,
        "regime_switch_prob": 0.0, "regime_drift": 0.001,
    }  # fmt: skip
    assert len(load_market_data(full)) == 300
    assert load_market_data({**full, "source": "sample"}).source == "sample:GOOGL"
    path = write_prices(tmp_path, ".csv", GOOD_ROWS)
    assert load_market_data({**full, "source": "file", "path": str(path)}).source == str(path)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"source": "synthetic", "windw": 3}, r"env\.data\.windw is not a key of env\.data"),
        ({"source": "yahoo"}, "env.data.source"),
        ({"source": "file"}, "env.data.path is required"),
        ({"test_fraction": 1.0}, "env.data.test_fraction"),
        ({"n_steps": "many"}, "env.data.n_steps"),
    ],
)
def test_bad_data_config_is_a_config_error_naming_the_key(spec: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_market_data(spec)


# --- splits --------------------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=500), st.floats(min_value=0.0, max_value=0.99))
def test_time_split_never_overlaps_and_covers_every_row(n_rows: int, test_fraction: float) -> None:
    data = MarketData(
        dates=np.arange(n_rows).astype("datetime64[D]").astype("datetime64[ns]"),
        close=np.ones(n_rows),
        source="test",
    )
    train, test = split_by_time(data, test_fraction)
    assert len(train) + len(test) == n_rows
    assert len(train) >= 1
    assert len(test) == int(n_rows * test_fraction)
    if len(test):
        assert train.dates[-1] < test.dates[0]
    np.testing.assert_array_equal(np.concatenate([train.dates, test.dates]), data.dates)


@given(
    st.integers(min_value=1, max_value=500),
    st.floats(min_value=0.0, max_value=0.49),
    st.floats(min_value=0.0, max_value=0.49),
)
def test_split_bounds_give_three_ordered_splits_covering_every_row(
    n_rows: int, val_fraction: float, test_fraction: float
) -> None:
    first_val, first_test = split_bounds(n_rows, val_fraction, test_fraction)
    assert 0 <= first_val <= first_test <= n_rows
    assert n_rows - first_test == int(n_rows * test_fraction)
    assert first_test - first_val == int(n_rows * val_fraction)
    assert first_test == len(
        split_by_time(
            MarketData(
                dates=np.arange(n_rows).astype("datetime64[D]").astype("datetime64[ns]"),
                close=np.ones(n_rows),
                source="test",
            ),
            test_fraction,
        )[0]
    )


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"val_fraction": 1.0}, r"env.data.val_fraction must be in \[0, 1\)"),
        ({"val_fraction": "a"}, r"env.data.val_fraction must be float"),
        ({"val_fraction": 0.3, "test_fraction": 0.7}, r"must be < 1 to leave rows for training"),
    ],
)
def test_bad_split_fractions_are_a_config_error_naming_the_key(spec: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        split_fractions(spec)
    with pytest.raises(ConfigError, match=match):
        load_market_data(spec)


def test_split_fractions_default_to_a_tenth_and_a_fifth() -> None:
    assert split_fractions(None) == (0.1, 0.2)
    assert split_fractions({"val_fraction": None, "test_fraction": 0.3}) == (0.1, 0.3)


@pytest.mark.parametrize("test_fraction", [-0.1, 1.0, 2.0])
def test_time_split_fraction_outside_zero_one_is_a_config_error(test_fraction: float) -> None:
    with pytest.raises(ConfigError, match="env.data.test_fraction must be in"):
        split_by_time(synthetic_prices(n_steps=10), test_fraction)
