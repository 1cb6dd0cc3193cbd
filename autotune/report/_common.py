"""What every section of the report shares: the trial rows it reads, how a trial is
categorised and coloured, its hover text, and small figure helpers.

The trial frame has one row per Optuna trial; its columns are named after the keys of a trial's
record (`autotune._records`), plus ``number``, ``feasible`` and the columns ``trials_frame``
derives (see :func:`autotune.report.render_report`).
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from autotune._records import (
    ACCURACY_LOSS,
    CANNOT_WIN,
    COMPILE_SECONDS,
    EVAL_LOSS,
    EVAL_SECONDS,
    INFEASIBLE,
    MEASURED_SECONDS,
    MEASURED_STATUSES,
    METRIC,
    OK,
    PADDING,
    PEAK_MEMORY_BYTES,
    PROBED,
    REASON,
    REFERENCE,
    ROLE,
    SAMPLES_TRAINED,
    STATUS,
    STEP_TIME_P50,
    STEP_TIME_P90,
    THROUGHPUT,
    TOKENS_PER_SECOND,
    TRAIN_SECONDS,
    VERDICT_CONFIDENCE,
    VERDICT_SEEDS,
    WALL_SECONDS,
)
from autotune._space import DERIVED_SETTINGS, PARAMETERS
from autotune.report._format import (
    MISSING,
    as_float,
    as_text,
    format_bytes,
    format_percent,
    format_throughput,
    format_value,
    is_missing,
)

SETTINGS: tuple[str, ...] = (*PARAMETERS, *DERIVED_SETTINGS)
"""The setting columns shown for each trial, in display order."""

NUMBER = "number"
"""The frame's column of Optuna trial numbers."""
FEASIBLE = "feasible"
"""The frame's column saying whether a trial ran and kept within the accuracy budget."""
RUNNING = "running"
"""The status of a trial that has not finished (its Optuna state, as ``trials_frame`` gives)."""

MEASUREMENTS: tuple[str, ...] = (
    THROUGHPUT,
    TOKENS_PER_SECOND,
    PADDING,
    ACCURACY_LOSS,
    METRIC,
    EVAL_LOSS,
    VERDICT_CONFIDENCE,
    VERDICT_SEEDS,
    SAMPLES_TRAINED,
    PEAK_MEMORY_BYTES,
    STEP_TIME_P50,
    STEP_TIME_P90,
    MEASURED_SECONDS,
    TRAIN_SECONDS,
    EVAL_SECONDS,
    COMPILE_SECONDS,
    WALL_SECONDS,
)
"""The measurements of a trial's record the frame carries as numbers (NaN when absent)."""

COLUMNS: tuple[str, ...] = (
    NUMBER,
    ROLE,
    STATUS,
    *SETTINGS,
    *MEASUREMENTS,
    FEASIBLE,
    REASON,
    "datetime_start",
    "datetime_complete",
    "log_tail",
)
"""The frame columns every row carries once read (missing ones as None)."""

CATEGORIES: tuple[str, ...] = (
    "feasible",
    "over budget",
    "stopped early",
    "probed",
    "infeasible",
    "failed",
    "running",
)
"""How a trial is coloured in the plots, in legend order."""

COLOURS: dict[str, str] = {
    "feasible": "#2ca02c",
    "over budget": "#ff7f0e",
    "stopped early": "#9467bd",
    "probed": "#17becf",
    "infeasible": "#7f7f7f",
    "failed": "#d62728",
    "running": "#1f77b4",
}

SYMBOLS: dict[str, str] = {
    "feasible": "circle",
    "over budget": "circle",
    "stopped early": "triangle-down",
    "probed": "diamond-open",
    "infeasible": "x",
    "failed": "x",
    "running": "hourglass",
}

FIGURE_HEIGHT = 440
"""A figure's height in pixels unless its section sizes it."""

_HOVER_REASON_CHARS = 300
_HOVER_WRAP = 80
_MAX_TICKS = 12


# --- the rows ----------------------------------------------------------------------------------


def frame_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The frame's rows as dicts, sorted by trial number, every known column present."""
    if frame.empty:
        return []
    rows = frame.sort_values(NUMBER, kind="stable").to_dict("records")
    out = []
    for row in rows:
        record = {column: row.get(column) for column in COLUMNS}
        record.update({str(key): value for key, value in row.items() if key not in record})
        record[NUMBER] = int(row[NUMBER])
        out.append(record)
    return out


def info_budget(info: dict[str, Any]) -> float:
    """The study's accuracy budget as a fraction (0 when unknown)."""
    value = as_float(info.get("max_accuracy_loss"))
    return 0.0 if value is None else value


def info_int(info: dict[str, Any], key: str) -> int | None:
    """``info[key]`` as an int, or None when missing."""
    value = as_float(info.get(key))
    return None if value is None else int(value)


def reference_number(rows: list[dict[str, Any]], info: dict[str, Any]) -> int | None:
    """``info['reference_number']``, else the first trial whose role is the reference."""
    number = info_int(info, "reference_number")
    if number is not None:
        return number
    for row in rows:
        if row.get(ROLE) == REFERENCE:
            return int(row[NUMBER])
    return None


def find_row(rows: list[dict[str, Any]], number: int | None) -> dict[str, Any] | None:
    """The row of trial ``number``, or None."""
    if number is None:
        return None
    for row in rows:
        if row[NUMBER] == number:
            return row
    return None


def is_measured(row: dict[str, Any]) -> bool:
    """True when the trial finished (or copies a finished one) and has a throughput."""
    return row.get(STATUS) in MEASURED_STATUSES and as_float(row.get(THROUGHPUT)) is not None


def stopped_early(row: dict[str, Any]) -> bool:
    """True when the run (or the one a repeat copies) stopped before its budget because it
    could not beat the best feasible run: it has a throughput but no accuracy."""
    value = row.get(CANNOT_WIN)
    return not is_missing(value) and bool(value)


def rate_only(row: dict[str, Any]) -> bool:
    """True when the trial has a throughput and no accuracy: a run stopped early, or a probe
    of the probe-first strategy."""
    return stopped_early(row) or row.get(STATUS) == PROBED


def is_feasible(row: dict[str, Any], budget: float) -> bool:
    """True when the trial was measured and kept within the accuracy budget.

    Reads the ``feasible`` column; when it is missing, compares ``accuracy_loss`` to the budget.
    """
    if not is_measured(row):
        return False
    flag = row.get(FEASIBLE)
    if not is_missing(flag):
        return bool(flag)
    loss = as_float(row.get(ACCURACY_LOSS))
    return loss is not None and loss <= budget


def category(row: dict[str, Any], budget: float) -> str:
    """One of :data:`CATEGORIES`."""
    status = row.get(STATUS)
    if stopped_early(row):
        return "stopped early"
    if status == PROBED:
        return "probed"
    if is_measured(row):
        return "feasible" if is_feasible(row, budget) else "over budget"
    if status == INFEASIBLE:
        return "infeasible"
    if status == RUNNING:
        return "running"
    return "failed"


def ok_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with status 'ok' and a throughput (repeats would count a trial twice)."""
    return [row for row in rows if row.get(STATUS) == OK and is_measured(row)]


def searched_settings(rows: list[dict[str, Any]]) -> list[str]:
    """The settings that take more than one value over ``rows``, in display order."""
    return [
        name
        for name in SETTINGS
        if len({format_value(row.get(name)) for row in rows} - {MISSING}) > 1
    ]


def is_numeric_setting(rows: list[dict[str, Any]], name: str) -> bool:
    """True when every present value of setting ``name`` is a number (not a bool)."""
    values = [row.get(name) for row in rows if not is_missing(row.get(name))]
    return all(as_float(v) is not None and not isinstance(v, (bool, np.bool_)) for v in values)


def integer_ticks(values: Iterable[Any]) -> tuple[float, ...]:
    """The distinct values as ticks when they are few integers (so an axis of ZeRO stages
    shows 0, 1, 2 and not 0.5), else ()."""
    distinct = sorted({v for v in (as_float(value) for value in values) if v is not None})
    if len(distinct) > _MAX_TICKS or not all(v.is_integer() for v in distinct):
        return ()
    return tuple(distinct)


def roles(reference: int | None, best: int | None) -> dict[int, str]:
    """Trial number -> 'reference', 'best' or 'reference, best'."""
    found: dict[int, str] = {}
    if reference is not None:
        found[reference] = "reference"
    if best is not None:
        found[best] = "best" if best not in found else "reference, best"
    return found


def roles_of(rows: list[dict[str, Any]], info: dict[str, Any]) -> dict[int, str]:
    """:func:`roles` of the study's reference and best trials."""
    return roles(reference_number(rows, info), info_int(info, "best_number"))


# --- hover text --------------------------------------------------------------------------------


def settings_hover(row: dict[str, Any]) -> str:
    """The trial's settings as escaped hover text, three per line."""
    items = [
        f"{name}={html.escape(format_value(row.get(name)))}"
        for name in SETTINGS
        if not is_missing(row.get(name))
    ]
    lines = [", ".join(items[i : i + 3]) for i in range(len(items)) if i % 3 == 0]
    return "<br>".join(lines)


def reason_hover(reason: str) -> str:
    """A reason shortened and wrapped for a hover box, escaped."""
    text = " ".join(reason.split())
    if len(text) > _HOVER_REASON_CHARS:
        text = text[: _HOVER_REASON_CHARS - 1] + "…"
    return "<br>".join(html.escape(line) for line in textwrap.wrap(text, _HOVER_WRAP))


def trial_hover(row: dict[str, Any], trial_roles: dict[int, str]) -> str:
    """Hover text for one trial: number, status, results, reason and settings."""
    number = row[NUMBER]
    title = f"<b>trial {number}</b>"
    if number in trial_roles:
        title += f" ({trial_roles[number]})"
    lines = [title, f"status: {html.escape(as_text(row.get(STATUS)))}"]
    throughput = as_float(row.get(THROUGHPUT))
    if throughput is not None:
        lines.append(f"throughput: {format_throughput(throughput)} samples/s")
    loss = as_float(row.get(ACCURACY_LOSS))
    if loss is not None:
        lines.append(f"accuracy loss: {format_percent(loss)}")
    memory = as_float(row.get(PEAK_MEMORY_BYTES))
    if memory is not None:
        lines.append(f"peak memory: {format_bytes(memory)}")
    reason = as_text(row.get(REASON)).strip()
    if reason:
        lines.append("reason: " + reason_hover(reason))
    settings = settings_hover(row)
    if settings:
        lines.append(settings)
    return "<br>".join(lines)


# --- figures -----------------------------------------------------------------------------------


def annotate_empty(figure: go.Figure, text: str) -> None:
    """Write ``text`` in the middle of an empty figure."""
    figure.add_annotation(
        text=text,
        xref="paper",
        yref="paper",
        x=0.5,
        y=0.5,
        showarrow=False,
        font={"size": 16},
    )


def add_noise_and_budget(
    figure: go.Figure, noise_percent: float | None, budget_percent: float, axis: str
) -> None:
    """The band of the reference's seed-to-seed noise (+-``noise_percent``) and the budget's
    line, across the accuracy-loss axis ``axis`` ("x" or "y")."""
    if noise_percent is not None and noise_percent > 0:
        add_band = figure.add_vrect if axis == "x" else figure.add_hrect
        add_band(
            **{f"{axis}0": -noise_percent, f"{axis}1": noise_percent},
            fillcolor="#999999",
            opacity=0.15,
            line_width=0,
            annotation_text="reference noise",
            annotation_position="bottom left",
        )
    add_line = figure.add_vline if axis == "x" else figure.add_hline
    add_line(
        **{axis: budget_percent},
        line={"color": "#d62728", "dash": "dash"},
        annotation_text=f"budget {budget_percent:.3g}%",
        annotation_position="top right",
    )
