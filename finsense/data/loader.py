"""Prices from files (CSV, Parquet), the shipped sample, or an ``env.data`` config mapping.

Every problem with a user's file is a :class:`DataError` whose message names the file, the column
and the first bad row (the line number as an editor shows it for CSV, the 1-based row for
Parquet, plus the date where it is known) and says how to fix it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from finsense.data.market import MarketData, split_bounds
from finsense.data.synthetic import synthetic_prices
from finsense.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

#: File suffixes load_prices reads (case-insensitive).
SUFFIXES = (".csv", ".parquet")

#: Keys of the ``env.data`` mapping that configure the synthetic generator.
SYNTHETIC_KEYS: dict[str, type] = {
    "n_steps": int,
    "seed": int,
    "initial_price": float,
    "drift": float,
    "volatility": float,
    "ar_coef": float,
    "regime_switch_prob": float,
    "regime_drift": float,
}

#: Every key the ``env.data`` mapping may hold (keys of other sources are ignored, not errors).
DATA_KEYS: tuple[str, ...] = (
    "source",
    "path",
    "sample",
    "date_column",
    "close_column",
    "open_column",
    "val_fraction",
    "test_fraction",
    *SYNTHETIC_KEYS,
)

SOURCES = ("synthetic", "sample", "file")


def _read_frame(path: Path, date_column: str) -> tuple[pd.DataFrame, Callable[[int], str]]:
    """The file's table and a function naming a row (by its index) the way the user finds it."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            # Strings in, so an empty cell and the text "NaN" can be told apart in messages; blank
            # lines are kept (then dropped below) so that the index maps to the file's line number.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
            blank = (frame == "").all(axis=1)
            frame = frame.loc[~blank]
            return frame, lambda i: f"line {i + 2}"
        frame = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path}: the file is empty; it needs a header row and price rows"
        ) from None
    except (ValueError, OSError) as exc:
        kind = "CSV" if suffix == ".csv" else "Parquet"
        raise DataError(
            f"{path}: cannot be read as {kind} ({exc}); check the file's format"
        ) from None
    # A Parquet file written from a date-indexed frame keeps its dates in the index.
    from_index = date_column not in frame.columns and date_column in frame.index.names
    frame = frame.reset_index(drop=not from_index)
    return frame, lambda i: f"row {i + 1}"


def _is_blank(raw: Any) -> bool:
    if raw is None:
        return True
    if isinstance(raw, float) and math.isnan(raw):
        return True
    if isinstance(raw, str) and raw.strip() == "":
        return True
    try:
        import pandas as pd

        return bool(pd.isna(raw))
    except (TypeError, ValueError):
        return False


def _parse_dates(raw: pd.Series) -> pd.Series:
    import pandas as pd

    with warnings.catch_warnings():
        # Without one format pandas parses element by element (and says so); that is what we want.
        warnings.simplefilter("ignore", UserWarning)
        parsed = pd.to_datetime(raw, errors="coerce", utc=True)
    return parsed.dt.tz_localize(None)


def load_prices(
    path: str | Path,
    date_column: str = "Date",
    close_column: str = "Close",
    *,
    min_rows: int = 2,
    open_column: str | None = None,
) -> MarketData:
    """Daily close prices from a CSV or Parquet file (chosen by the suffix), validated.

    Args:
        path: a ``.csv`` or ``.parquet`` file with one row per date.
        date_column: the column holding dates (any format pandas parses, one format per file;
            time zones are converted to UTC and dropped). In Parquet it may also be the index.
        close_column: the column holding close prices.
        min_rows: the fewest rows accepted.
        open_column: also read this column's open prices, checked as the closes are (for
            ``env.execution=next_open``); None reads no opens.

    Raises:
        DataError: the file is missing, unreadable or of another type; a column is missing (the
            message lists the columns found); a date is empty or unparsable; a price is empty,
            NaN, infinite or not positive; dates repeat or go backwards; fewer than ``min_rows``.
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; "
            "give a .csv or .parquet file"
        )
    if not path.is_file():
        raise DataError(f"{path}: file not found; check env.data.path (relative to {Path.cwd()})")
    frame, where = _read_frame(path, date_column)
    return _validated(frame, where, str(path), date_column, close_column, min_rows, open_column)


def prices_from_frame(
    frame: pd.DataFrame,
    date_column: str = "Date",
    close_column: str = "Close",
    *,
    min_rows: int = 2,
    open_column: str | None = None,
) -> MarketData:
    """Daily close prices from a pandas DataFrame, validated exactly as :func:`load_prices`.

    Args:
        frame: one row per date; the dates in ``date_column`` or in an index of that name (a
            date-indexed frame, as ``df.set_index("Date")`` gives).
        date_column: the column (or index) holding dates.
        close_column: the column holding close prices.
        min_rows: the fewest rows accepted.
        open_column: also read this column's open prices (None: no opens).

    Raises:
        DataError: as :func:`load_prices`; messages name the source ``DataFrame`` and the 1-based
            row position.
    """
    from_index = date_column not in frame.columns and date_column in frame.index.names
    # Positions, not the frame's own labels, name rows in messages: a label may be anything.
    table = frame.reset_index(drop=not from_index)
    return _validated(
        table,
        lambda i: f"row {i + 1}",
        "DataFrame",
        date_column,
        close_column,
        min_rows,
        open_column,
    )


def _validated(
    frame: pd.DataFrame,
    where: Callable[[int], str],
    source: str,
    date_column: str,
    close_column: str,
    min_rows: int,
    open_column: str | None = None,
) -> MarketData:
    """The prices of ``frame`` after every check of :func:`load_prices`; ``source`` names it
    in messages and ``where`` names a row by its index label."""
    found = ", ".join(repr(str(c)) for c in frame.columns) or "none"
    for column, key in ((date_column, "date_column"), (close_column, "close_column")):
        if column not in frame.columns:
            raise DataError(
                f"{source}: no column {column!r} (columns found: {found}); "
                f"set env.data.{key} to the name of the {key.split('_')[0]} column"
            )
    if open_column is not None and open_column not in frame.columns:
        raise DataError(
            f"{source}: no column {open_column!r} (columns found: {found}), and "
            "env.execution=next_open fills at the next open; set env.data.open_column to the "
            "name of the open column, or use env.execution=next_close"
        )

    raw_dates = frame[date_column]
    dates = _parse_dates(raw_dates)
    bad = dates.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raw = raw_dates.iloc[i]
        what = "an empty date" if _is_blank(raw) else f"an unparsable date {raw!r}"
        raise DataError(
            f"{source}: column {date_column!r} has {what} at {where(frame.index[i])}; "
            "write every date in one format, e.g. 2009-05-22"
        )

    def at(i: int) -> str:
        return f"{where(frame.index[i])} (date {str(dates.iloc[i].date())})"

    close = _positive_prices(frame[close_column], source, close_column, at)
    opens = None
    if open_column is not None:
        opens = _positive_prices(frame[open_column], source, open_column, at)

    stamps = dates.to_numpy(dtype="datetime64[ns]")
    if stamps.size >= 2:
        step_back = stamps[1:] <= stamps[:-1]
        if step_back.any():
            i = int(np.argmax(step_back)) + 1
            if stamps[i] == stamps[i - 1]:
                raise DataError(
                    f"{source}: column {date_column!r} repeats the date at {at(i)} "
                    f"(also at {where(frame.index[i - 1])}); keep one row per date"
                )
            raise DataError(
                f"{source}: column {date_column!r} is not sorted: {at(i)} comes after "
                f"{at(i - 1)}; sort the rows by date, oldest first"
            )

    if len(close) < min_rows:
        raise DataError(
            f"{source}: has {len(close)} price rows, needs at least {min_rows}; use a longer file"
        )
    return MarketData(dates=stamps, close=close, source=source, open=opens)


def _positive_prices(
    raw_prices: pd.Series, source: str, column: str, at: Callable[[int], str]
) -> np.ndarray:
    """The column as float64 prices; the first that is not a positive number is a DataError."""
    import pandas as pd

    prices = pd.to_numeric(raw_prices, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~(np.isfinite(prices) & (prices > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raw = raw_prices.iloc[i]
        if isinstance(raw, float) and math.isnan(raw):
            what = "a missing (NaN) price"
        elif _is_blank(raw):
            what = "an empty price"
        elif math.isnan(prices[i]):
            what = f"a price that is not a number ({raw!r})"
        elif math.isinf(prices[i]):
            what = f"an infinite price ({raw!r})"
        else:
            what = f"a price that is not positive ({raw!r})"
        raise DataError(
            f"{source}: column {column!r} has {what} at {at(i)}; "
            "every price must be a positive number: fix or remove that row"
        )
    return prices


def available_samples() -> tuple[str, ...]:
    """Names of the real price samples shipped with FinSense (e.g. ``GOOGL``)."""
    folder = resources.files("finsense.data").joinpath("samples")
    names = (entry.name for entry in folder.iterdir())
    return tuple(
        sorted(
            n[len("STOCKS_") : -len(".csv")]
            for n in names
            if n.startswith("STOCKS_") and n.endswith(".csv")
        )
    )


def sample_prices(name: str = "GOOGL", *, with_open: bool = False) -> MarketData:
    """A real daily price sample shipped inside the package (no network needed).

    ``GOOGL``: Alphabet daily opens and closes 2009-05-22 to 2018-08-29, 2,335 rows, MIT licence;
    see ``finsense/data/samples/README.md`` for provenance. ``with_open`` reads the opens too.
    """
    names = available_samples()
    if name not in names:
        raise ConfigError(f"env.data.sample: no sample {name!r}; choose one of {', '.join(names)}")
    resource = resources.files("finsense.data").joinpath("samples", f"STOCKS_{name}.csv")
    with resources.as_file(resource) as path:
        data = load_prices(path, open_column="Open" if with_open else None)
    return MarketData(data.dates, data.close, f"sample:{name}", data.open)


def _typed(spec: Mapping[str, Any], key: str, kind: type) -> Any:
    value = spec[key]
    try:
        if kind is int:
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            return int(value)
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"env.data.{key} must be {kind.__name__}, got {value!r}") from None


#: The split of an ``env.data`` mapping that leaves ``val_fraction``/``test_fraction`` unset.
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.2


def split_fractions(spec: Mapping[str, Any] | None) -> tuple[float, float]:
    """``(val_fraction, test_fraction)`` of an ``env.data`` mapping (defaults 0.1 and 0.2; a
    missing or null key takes its default), checked with :func:`finsense.data.split_bounds`.

    Raises:
        ConfigError: a fraction that is not a number in [0, 1), or two that leave no training row.
    """
    spec = spec or {}
    val = spec.get("val_fraction")
    test = spec.get("test_fraction")
    val_fraction = DEFAULT_VAL_FRACTION if val is None else _typed(spec, "val_fraction", float)
    test_fraction = DEFAULT_TEST_FRACTION if test is None else _typed(spec, "test_fraction", float)
    split_bounds(0, val_fraction, test_fraction)
    return val_fraction, test_fraction


def load_market_data(spec: Mapping[str, Any] | None, *, with_open: bool = False) -> MarketData:
    """The prices an ``env.data`` config mapping describes; None gives the synthetic defaults.

    Keys: ``source`` (``synthetic``, ``sample`` or ``file``; default synthetic), ``path``,
    ``date_column``, ``close_column`` and ``open_column`` (file), ``sample`` (sample), the keyword
    arguments of :func:`synthetic_prices` (synthetic), ``val_fraction`` and ``test_fraction``
    (read by the env, checked here). Keys that belong to another source are ignored, so one
    schema serves all three.
    ``with_open`` also reads the open prices (``env.execution=next_open``).

    Raises:
        ConfigError: an unknown key, an unknown source, a missing path or a value out of range.
        DataError: the file's problems, see :func:`load_prices`; opens asked of synthetic data.
    """
    spec = dict(spec or {})
    unknown = sorted(str(k) for k in spec if k not in DATA_KEYS)
    if unknown:
        from finsense.config import unknown_key

        raise unknown_key(unknown[0], "env.data", list(DATA_KEYS))
    split_fractions(spec)
    source = spec.get("source") or "synthetic"
    if source == "synthetic":
        kwargs = {
            k: _typed(spec, k, kind)
            for k, kind in SYNTHETIC_KEYS.items()
            if spec.get(k) is not None
        }
        if with_open:
            raise DataError(
                "synthetic prices have closes only, and env.execution=next_open fills at the "
                "next open; use env.execution=next_close, or data with an Open column "
                "(env=googl, or env=csv with env.data.open_column)"
            )
        return synthetic_prices(**kwargs)
    if source == "sample":
        return sample_prices(str(spec.get("sample") or "GOOGL"), with_open=with_open)
    if source == "file":
        path = spec.get("path")
        if not path:
            raise ConfigError(
                "env.data.path is required for file data: pass env.data.path=prices.csv"
            )
        return load_prices(
            str(path),
            date_column=str(spec.get("date_column") or "Date"),
            close_column=str(spec.get("close_column") or "Close"),
            open_column=str(spec.get("open_column") or "Open") if with_open else None,
        )
    raise ConfigError(f"env.data.source must be one of {', '.join(SOURCES)}, got {source!r}")
