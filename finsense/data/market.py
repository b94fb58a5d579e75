"""The market data value every loader returns, and the train/validation/test split by time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from finsense.errors import ConfigError


@dataclass(frozen=True, eq=False)
class MarketData:
    """One daily price series, sorted by date (strictly increasing, no duplicates).

    Attributes:
        dates: the date of each row, ``datetime64[ns]``.
        close: the close price of each row, float64, every value > 0.
        source: where the prices came from, for messages and run metadata:
            ``"synthetic(seed=0, ...)"``, ``"sample:GOOGL"`` or the file path.
        open: the open price of each row (float64, every value > 0), or None when the source
            has none or it was not asked for (only ``env.execution=next_open`` needs it).
    """

    dates: np.ndarray
    close: np.ndarray
    source: str
    open: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.dates.ndim != 1 or self.close.ndim != 1 or len(self.dates) != len(self.close):
            raise ValueError(
                f"dates and close must be 1-D arrays of equal length, "
                f"got shapes {self.dates.shape} and {self.close.shape}"
            )
        if self.open is not None and self.open.shape != self.close.shape:
            raise ValueError(
                f"open must be a 1-D array as long as close, got shape {self.open.shape}"
            )

    def __len__(self) -> int:
        """The number of rows (prices)."""
        return len(self.close)

    def slice(self, start: int, stop: int) -> MarketData:
        """Rows ``start`` to ``stop - 1`` (Python slice rules), same source."""
        opens = None if self.open is None else self.open[start:stop]
        return MarketData(self.dates[start:stop], self.close[start:stop], self.source, opens)


def n_test_rows(n_rows: int, test_fraction: float) -> int:
    """How many of ``n_rows`` rows the test split holds: ``floor(n_rows * test_fraction)``."""
    _check_fraction("test_fraction", test_fraction, "holds out the last 20% of rows", 0.2)
    return int(n_rows * test_fraction)


def split_bounds(n_rows: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Where the validation and the test split start: ``(first_val_row, first_test_row)``.

    Rows are split by time: training rows first, then ``floor(n_rows * val_fraction)``
    validation rows, then the last ``floor(n_rows * test_fraction)`` rows for testing. Each split
    may be empty; the three never overlap and together are every row.

    Raises:
        ConfigError: a fraction outside [0, 1), or fractions that leave no training row.
    """
    _check_fraction("val_fraction", val_fraction, "validates on the 10% before the test rows", 0.1)
    n_test = n_test_rows(n_rows, test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"env.data.val_fraction ({val_fraction}) + env.data.test_fraction ({test_fraction}) "
            "must be < 1 to leave rows for training; e.g. env.data.val_fraction=0.1 "
            "env.data.test_fraction=0.2"
        )
    first_test = n_rows - n_test
    return first_test - int(n_rows * val_fraction), first_test


def _check_fraction(key: str, value: float, example: str, default: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(
            f"env.data.{key} must be in [0, 1), got {value!r}; "
            f"e.g. env.data.{key}={default} {example}"
        )


def split_by_time(data: MarketData, test_fraction: float = 0.2) -> tuple[MarketData, MarketData]:
    """Split into (train, test): train is the first rows, test the last ``test_fraction`` of them.

    The test split holds ``floor(len(data) * test_fraction)`` rows (possibly none); the two never
    overlap and together are ``data``. ``test_fraction`` outside [0, 1) is a ConfigError.
    """
    n_train = len(data) - n_test_rows(len(data), test_fraction)
    return data.slice(0, n_train), data.slice(n_train, len(data))
