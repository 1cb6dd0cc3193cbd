"""The report's pipeline-stage figure: how balanced each pipeline trial's stages were.

A pipeline runs at the pace of its slowest stage, so the figure shows, per pipeline trial and
stage, the seconds each optimizer step spent computing (forward, backward, optimizer step) and
communicating (activations and gradients), as the harness measured them inside DeepSpeed's
pipeline schedule. The hover adds the stage's layers and the profile's prediction.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from autotune._records import (
    OK,
    PARTITION,
    STAGE_COMM_SECONDS,
    STAGE_COMPUTE_SECONDS,
    STAGE_PREDICTED_SECONDS,
    STATUS,
    THROUGHPUT,
)
from autotune.report._common import NUMBER

STAGE_COLUMNS = (PARTITION, STAGE_COMPUTE_SECONDS, STAGE_COMM_SECONDS)
"""The trial-frame columns read (plus ``number``, ``status``, ``partition_method``, ``throughput``
and, when present, ``stage_predicted_seconds``)."""


@dataclasses.dataclass(frozen=True)
class StageBar:
    """One stage of one pipeline trial.

    Attributes:
        label: The row's label, e.g. ``trial 7 (profile) · stage 0``.
        number: The trial.
        stage: The stage index.
        layers: The stage's layers as ``start-stop`` (stop excluded).
        compute_seconds: Measured compute per optimizer step.
        comm_seconds: Measured communication per optimizer step.
        predicted_seconds: The profile's per-micro-batch prediction, or None.
    """

    label: str
    number: int
    stage: int
    layers: str
    compute_seconds: float
    comm_seconds: float
    predicted_seconds: float | None


@dataclasses.dataclass(frozen=True)
class StagesInfo:
    """Every measured pipeline trial's stages, trials by throughput (fastest first).

    Attributes:
        bars: One per (trial, stage).
        imbalance: Per trial: slowest stage's compute over the mean stage compute (1 = even).
    """

    bars: tuple[StageBar, ...]
    imbalance: dict[int, float]


def _float_list(value: Any) -> list[float] | None:
    if not isinstance(value, list | tuple) or not value:
        return None
    out = []
    for item in value:
        try:
            number = float(item)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(number):
            return None
        out.append(number)
    return out


def get_stages_info(frame: pd.DataFrame) -> StagesInfo:
    """Gathers the measured stages of pipeline trials that ran ('ok'; repeats are copies)."""
    if frame.empty or STAGE_COMPUTE_SECONDS not in frame.columns:
        return StagesInfo((), {})
    rows = [
        row
        for row in frame.to_dict("records")
        if row.get(STATUS) == OK and _float_list(row.get(STAGE_COMPUTE_SECONDS))
    ]
    rows.sort(key=lambda row: -(row.get(THROUGHPUT) or 0.0))
    bars: list[StageBar] = []
    imbalance: dict[int, float] = {}
    for row in rows:
        number = int(row[NUMBER])
        compute = _float_list(row.get(STAGE_COMPUTE_SECONDS)) or []
        comm = _float_list(row.get(STAGE_COMM_SECONDS)) or [0.0] * len(compute)
        predicted = _float_list(row.get(STAGE_PREDICTED_SECONDS))
        bounds = _float_list(row.get(PARTITION))
        mean = sum(compute) / len(compute)
        imbalance[number] = max(compute) / mean if mean > 0 else 1.0
        method = row.get("partition_method") or "?"
        for stage, seconds in enumerate(compute):
            layers = (
                f"{int(bounds[stage])}-{int(bounds[stage + 1])}"
                if bounds is not None and len(bounds) == len(compute) + 1
                else "?"
            )
            bars.append(
                StageBar(
                    label=f"trial {number} ({method}) · stage {stage}",
                    number=number,
                    stage=stage,
                    layers=layers,
                    compute_seconds=seconds,
                    comm_seconds=comm[stage] if stage < len(comm) else 0.0,
                    predicted_seconds=(
                        predicted[stage]
                        if predicted is not None and len(predicted) == len(compute)
                        else None
                    ),
                )
            )
    return StagesInfo(tuple(bars), imbalance)


def _hover(bar: StageBar, imbalance: float) -> str:
    predicted = (
        f"<br>profile predicts {bar.predicted_seconds * 1000:.2f} ms per micro-batch"
        if bar.predicted_seconds is not None
        else ""
    )
    return (
        f"trial {bar.number}, stage {bar.stage}: layers {bar.layers}<br>"
        f"compute {bar.compute_seconds * 1000:.1f} ms, communication "
        f"{bar.comm_seconds * 1000:.1f} ms per step{predicted}<br>"
        f"slowest stage / mean: {imbalance:.2f}"
    )


def render_stages(info: StagesInfo) -> go.Figure:
    """Horizontal bars per (trial, stage): compute, then communication, per optimizer step."""
    figure = go.Figure()
    labels = [bar.label for bar in info.bars]
    hovers = [_hover(bar, info.imbalance[bar.number]) for bar in info.bars]
    for name, values, colour in (
        ("compute", [bar.compute_seconds * 1000 for bar in info.bars], "#1f77b4"),
        ("communication", [bar.comm_seconds * 1000 for bar in info.bars], "#aec7e8"),
    ):
        figure.add_trace(
            go.Bar(
                y=labels,
                x=values,
                orientation="h",
                name=name,
                marker_color=colour,
                hovertext=hovers,
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )
    if not info.bars:
        figure.add_annotation(
            text="No pipeline trial has run (pipeline_stages > 1).",
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            showarrow=False,
        )
        figure.update_xaxes(visible=False)
        figure.update_yaxes(visible=False)
    figure.update_layout(
        barmode="stack",
        xaxis_title="milliseconds per optimizer step, per rank of the stage",
        yaxis={"autorange": "reversed", "type": "category"},
        legend_title_text="measured",
        margin={"l": 220},
    )
    return figure


def stages_height(info: StagesInfo, minimum: int = 260) -> int:
    return max(minimum, 80 + 26 * len(info.bars))
