"""A study's trials for scripts: every column of `trials_frame`, one record per trial, as
JSON-native values, JSON text or CSV text (what `autotune trials --format json|csv` prints)."""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from autotune.report._common import COLUMNS, frame_rows


def trial_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The frame's rows sorted by trial number, every column of
    :data:`~autotune.report._common.COLUMNS` first, then the frame's others, with values JSON
    can hold: NaN, infinities and missing dates as None, dates as ISO 8601 text, NumPy
    numbers as Python ones."""
    return [{key: _native(value) for key, value in row.items()} for row in frame_rows(frame)]


def trials_json(frame: pd.DataFrame) -> str:
    """:func:`trial_records` as a JSON list, one object per trial (NaN as null)."""
    return json.dumps(trial_records(frame), indent=2, allow_nan=False)


def trials_csv(frame: pd.DataFrame) -> str:
    """:func:`trial_records` as CSV with a header row: missing values as empty cells, lists and
    mappings (a trial's timed windows, its seeds' metrics) as JSON text in one cell."""
    records = trial_records(frame)
    columns = list(records[0]) if records else list(COLUMNS)
    cells = [{key: _cell(value) for key, value in record.items()} for record in records]
    # dtype object keeps whole numbers whole where a column also holds None.
    return pd.DataFrame(cells, columns=columns, dtype=object).to_csv(index=False)


def _native(value: Any) -> Any:
    """``value`` as JSON can hold it (see :func:`trial_records`)."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return value
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): _native(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_native(item) for item in value]
    return str(value)


def _cell(value: Any) -> Any:
    """A JSON-native value as one CSV cell."""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value
