"""The report's memory figure: peak memory of measured trials against micro-batch size, one
colour per ZeRO stage."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from autotune._records import PEAK_MEMORY_BYTES
from autotune.report._common import NUMBER, annotate_empty, frame_rows, integer_ticks, ok_rows
from autotune.report._format import as_float, format_value


@dataclasses.dataclass(frozen=True)
class MemoryPoint:
    """One measured trial in the memory plot.

    Attributes:
        number: The Optuna trial number.
        micro_batch_size: Samples per rank per step (x).
        peak_memory_gib: Peak memory in GiB (y).
        zero_stage: The ZeRO stage as text (the colour), "—" when unknown.
    """

    number: int
    micro_batch_size: float
    peak_memory_gib: float
    zero_stage: str


@dataclasses.dataclass(frozen=True)
class MemoryInfo:
    """Peak memory per measured trial against micro-batch size.

    Attributes:
        points: 'ok' trials with both a micro-batch size and a peak memory.
    """

    points: tuple[MemoryPoint, ...]


def get_memory_info(frame: pd.DataFrame, info: dict[str, Any]) -> MemoryInfo:
    """Gathers micro-batch size, peak memory and ZeRO stage of 'ok' trials."""
    points = []
    for row in ok_rows(frame_rows(frame)):
        micro = as_float(row.get("micro_batch_size"))
        memory = as_float(row.get(PEAK_MEMORY_BYTES))
        if micro is None or memory is None:
            continue
        stage = format_value(row.get("zero_stage"))
        points.append(MemoryPoint(row[NUMBER], micro, memory / 2**30, stage))
    return MemoryInfo(tuple(points))


def render_memory(memory: MemoryInfo) -> go.Figure:
    """Peak memory against micro-batch size, one colour per ZeRO stage."""
    figure = go.Figure()
    for stage in sorted({point.zero_stage for point in memory.points}):
        points = [point for point in memory.points if point.zero_stage == stage]
        figure.add_trace(
            go.Scatter(
                x=[point.micro_batch_size for point in points],
                y=[point.peak_memory_gib for point in points],
                mode="markers",
                name=f"ZeRO {stage}",
                marker={"size": 9, "opacity": 0.8},
                hovertext=[f"trial {point.number}" for point in points],
                hovertemplate=("%{hovertext}<br>micro batch %{x}<br>%{y:.3f} GiB<extra></extra>"),
            )
        )
    ticks = integer_ticks(point.micro_batch_size for point in memory.points)
    if ticks:
        figure.update_xaxes(tickvals=list(ticks), ticktext=[format_value(t) for t in ticks])
    if not memory.points:
        annotate_empty(figure, "No measured peak memory yet.")
    figure.update_layout(
        xaxis_title="micro batch size (samples per rank per step)",
        xaxis_type="log",
        yaxis_title="peak memory (GiB)",
        yaxis_rangemode="tozero",
        legend_title_text="ZeRO stage",
    )
    return figure
