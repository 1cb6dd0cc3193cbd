"""How the report writes a value: missing values as a dash, percentages, bytes, seconds."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

MISSING = "—"
"""What the report shows for a missing value."""


def is_missing(value: Any) -> bool:
    """True for None, NaN, NaT and pandas' NA."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def as_float(value: Any) -> float | None:
    """The value as a finite float, or None."""
    if is_missing(value) or isinstance(value, str):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def as_text(value: Any) -> str:
    """The value as a string, empty when missing."""
    return "" if is_missing(value) else str(value)


def format_value(value: Any) -> str:
    """A setting value for display: integral floats lose their ``.0``, missing is a dash."""
    if is_missing(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.number)):
        number = as_float(value)
        if number is None:
            return str(value)
        if number.is_integer() and abs(number) < 1e15:
            return str(int(number))
        return f"{number:.4g}"
    return str(value)


def format_percent(fraction: float | None) -> str:
    """A fraction as a percentage: 0.003 -> '0.30%'."""
    if fraction is None:
        return MISSING
    percent = fraction * 100
    if percent == 0 or abs(percent) >= 0.01:
        return f"{percent:.2f}%"
    return f"{percent:.2g}%"


def format_throughput(value: float | None) -> str:
    """Samples/s with thousands separators and one decimal."""
    return MISSING if value is None else f"{value:,.1f}"


def format_bytes(value: float | None) -> str:
    """Bytes in GiB from 1 GiB up, else in MiB."""
    if value is None:
        return MISSING
    gib = value / 2**30
    if gib >= 1:
        return f"{gib:.2f} GiB"
    return f"{value / 2**20:.1f} MiB"


def format_seconds(value: float | None) -> str:
    """Seconds, in milliseconds below one second."""
    if value is None:
        return MISSING
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.1f} s"


def format_metric(value: float | None) -> str:
    """A metric to six significant digits."""
    return MISSING if value is None else f"{value:.6g}"
