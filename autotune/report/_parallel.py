"""The report's parallel-coordinates figure: the searched settings of measured trials,
coloured by throughput."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from autotune._records import THROUGHPUT
from autotune._space import setting_label
from autotune.report._common import (
    NUMBER,
    annotate_empty,
    frame_rows,
    integer_ticks,
    is_numeric_setting,
    ok_rows,
    searched_settings,
)
from autotune.report._format import as_float, format_value


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One axis of the parallel-coordinates plot.

    Attributes:
        name: The setting.
        values: Per trial, the value on the axis (categories are mapped to 0, 1, ...).
        tick_values: The axis ticks: the positions of a categorical setting's categories, or
            the values of an integer setting with few values; else () for plotly's ticks.
        tick_labels: The labels of ``tick_values``.
    """

    name: str
    values: tuple[float, ...]
    tick_values: tuple[float, ...] = ()
    tick_labels: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ParallelInfo:
    """The searched settings of measured trials, coloured by throughput.

    Attributes:
        numbers: The trials drawn ('ok' trials with a throughput).
        dimensions: One per searched setting (one with more than one value among the trials).
        throughputs: Per trial, samples/s (the colour).
    """

    numbers: tuple[int, ...]
    dimensions: tuple[Dimension, ...]
    throughputs: tuple[float, ...]


def get_parallel_info(frame: pd.DataFrame, info: dict[str, Any]) -> ParallelInfo:
    """Gathers the searched settings of 'ok' trials; categorical ones become 0, 1, ..."""
    rows = ok_rows(frame_rows(frame))
    return ParallelInfo(
        numbers=tuple(row[NUMBER] for row in rows),
        dimensions=tuple(_dimension(rows, name) for name in searched_settings(rows)),
        throughputs=tuple(float(row[THROUGHPUT]) for row in rows),
    )


def _dimension(rows: list[dict[str, Any]], name: str) -> Dimension:
    """The axis of one setting: its numbers, or its categories mapped to 0, 1, ..."""
    if is_numeric_setting(rows, name):
        values = tuple(
            math.nan if as_float(row.get(name)) is None else float(row[name]) for row in rows
        )
        ticks = integer_ticks(values)
        return Dimension(name, values, ticks, tuple(format_value(t) for t in ticks))
    labels = sorted({format_value(row.get(name)) for row in rows})
    index = {label: float(i) for i, label in enumerate(labels)}
    values = tuple(index[format_value(row.get(name))] for row in rows)
    return Dimension(name, values, tuple(index[label] for label in labels), tuple(labels))


def render_parallel(parallel: ParallelInfo) -> go.Figure:
    """Parallel coordinates, one line per trial, coloured by throughput."""
    figure = go.Figure()
    if not parallel.dimensions:
        annotate_empty(figure, "Fewer than two measured trials differ in a setting.")
        figure.update_xaxes(visible=False)
        figure.update_yaxes(visible=False)
        return figure
    dimensions = []
    for dimension in parallel.dimensions:
        entry: dict[str, Any] = {
            "label": setting_label(dimension.name),
            "values": list(dimension.values),
        }
        if dimension.tick_labels:
            entry["tickvals"] = list(dimension.tick_values)
            entry["ticktext"] = list(dimension.tick_labels)
        dimensions.append(entry)
    dimensions.append({"label": "throughput", "values": list(parallel.throughputs)})
    figure.add_trace(
        go.Parcoords(
            line={
                "color": list(parallel.throughputs),
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": {"text": "samples/s"}},
            },
            dimensions=dimensions,
        )
    )
    figure.update_layout(margin={"l": 60, "r": 60, "t": 60})
    return figure
