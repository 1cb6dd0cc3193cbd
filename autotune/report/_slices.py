"""The report's slice figures: throughput of measured trials against each searched setting,
as small multiples sharing the throughput axis."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from autotune._records import THROUGHPUT
from autotune._space import setting_label
from autotune.report._common import (
    COLOURS,
    NUMBER,
    annotate_empty,
    frame_rows,
    info_budget,
    integer_ticks,
    is_feasible,
    is_numeric_setting,
    ok_rows,
    searched_settings,
)
from autotune.report._format import as_float, format_value


@dataclasses.dataclass(frozen=True)
class Slice:
    """Throughput against one setting.

    Attributes:
        name: The setting.
        values: Per trial, the setting's value (numbers, or text for categorical settings).
        numeric: True when the values are numbers.
        ticks: The x ticks for an integer setting with few values, else ().
    """

    name: str
    values: tuple[Any, ...]
    numeric: bool
    ticks: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class SliceInfo:
    """Throughput of measured trials against each searched setting (small multiples).

    Attributes:
        numbers: The trials drawn ('ok' trials with a throughput).
        throughputs: Per trial, samples/s.
        feasible: Per trial, True when within the accuracy budget.
        slices: One per searched setting.
    """

    numbers: tuple[int, ...]
    throughputs: tuple[float, ...]
    feasible: tuple[bool, ...]
    slices: tuple[Slice, ...]


_SLICE_COLUMNS = 3
_LOG_SETTINGS = ("micro_batch_size", "global_batch_size")


def get_slice_info(frame: pd.DataFrame, info: dict[str, Any]) -> SliceInfo:
    """Gathers each searched setting's values and the throughput of 'ok' trials."""
    rows = ok_rows(frame_rows(frame))
    budget = info_budget(info)
    slices = []
    for name in searched_settings(rows):
        numeric = is_numeric_setting(rows, name)
        values = tuple(
            (as_float(row.get(name)) if numeric else format_value(row.get(name))) for row in rows
        )
        slices.append(Slice(name, values, numeric, integer_ticks(values) if numeric else ()))
    return SliceInfo(
        numbers=tuple(row[NUMBER] for row in rows),
        throughputs=tuple(float(row[THROUGHPUT]) for row in rows),
        feasible=tuple(is_feasible(row, budget) for row in rows),
        slices=tuple(slices),
    )


def slice_rows(slices: SliceInfo) -> int:
    """How many rows of small multiples the slices take."""
    return max(1, math.ceil(len(slices.slices) / _SLICE_COLUMNS))


def render_slices(slices: SliceInfo) -> go.Figure:
    """One small scatter per setting, sharing the throughput axis."""
    if not slices.slices:
        figure = go.Figure()
        annotate_empty(figure, "Fewer than two measured trials differ in a setting.")
        return figure
    rows = slice_rows(slices)
    figure = make_subplots(
        rows=rows,
        cols=_SLICE_COLUMNS,
        shared_yaxes=True,
        subplot_titles=[setting_label(s.name) for s in slices.slices],
        vertical_spacing=0.5 / rows if rows > 1 else 0.1,
        horizontal_spacing=0.04,
    )
    colours = [COLOURS["feasible" if ok else "over budget"] for ok in slices.feasible]
    hover = [f"trial {number}" for number in slices.numbers]
    for index, item in enumerate(slices.slices):
        row, col = divmod(index, _SLICE_COLUMNS)
        figure.add_trace(
            go.Scatter(
                x=list(item.values),
                y=list(slices.throughputs),
                mode="markers",
                marker={"color": colours, "size": 7, "opacity": 0.8},
                hovertext=hover,
                hovertemplate="%{hovertext}<br>%{x}: %{y:.1f} samples/s<extra></extra>",
                showlegend=False,
            ),
            row=row + 1,
            col=col + 1,
        )
        figure.update_xaxes(row=row + 1, col=col + 1, **_x_axis(item))
    for row in range(rows):
        figure.update_yaxes(title_text="samples/s", row=row + 1, col=1, rangemode="tozero")
    return figure


def _x_axis(item: Slice) -> dict[str, Any]:
    """A slice's x axis: categories, a log scale for batch sizes, integer ticks."""
    axis: dict[str, Any] = {"type": "category"} if not item.numeric else {}
    if item.numeric and item.name in _LOG_SETTINGS:
        axis["type"] = "log"
    if item.ticks:
        axis.update(tickvals=list(item.ticks), ticktext=[format_value(t) for t in item.ticks])
    return axis
