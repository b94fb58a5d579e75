"""Market data: seeded synthetic prices, the shipped real sample, users' CSV/Parquet files, splits.

Every source gives a :class:`MarketData` (dates and close prices, sorted by date);
:func:`load_market_data` builds one from the ``env.data`` config mapping, and
:func:`split_by_time` holds out the last rows for testing, :func:`split_bounds` gives the
train / validation / test boundaries the env uses.
"""

from __future__ import annotations

from finsense.data.loader import (
    DATA_KEYS,
    available_samples,
    load_market_data,
    load_prices,
    prices_from_frame,
    sample_prices,
    split_fractions,
)
from finsense.data.market import MarketData, split_bounds, split_by_time
from finsense.data.synthetic import synthetic_prices

__all__ = [
    "DATA_KEYS",
    "MarketData",
    "available_samples",
    "load_market_data",
    "load_prices",
    "prices_from_frame",
    "sample_prices",
    "split_bounds",
    "split_by_time",
    "split_fractions",
    "synthetic_prices",
]
