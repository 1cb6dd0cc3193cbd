"""The report's per-batch figure (issue 18): for each global batch the search ran in full, the
accuracy loss its short budget measured, beside the budget and the reference's noise band, and
the samples the large-batch model predicts it needs to reach the reference's loss (from the
reference's gradient noise scale, `autotune._noise_scale`)."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from autotune._noise_scale import efficiency, samples_ratio
from autotune._records import ACCURACY_LOSS, GLOBAL_BATCH_SIZE, OK, STATUS
from autotune.report._common import (
    NUMBER,
    add_noise_and_budget,
    annotate_empty,
    frame_rows,
    info_budget,
)
from autotune.report._format import as_float


@dataclasses.dataclass(frozen=True)
class BatchRow:
    """One global batch.

    Attributes:
        batch: The global batch size (x).
        losses_percent: The accuracy loss of each run of that batch scored on its metric.
        numbers: Those runs' trial numbers, in the same order.
        predicted_samples: The samples it needs to reach the reference's loss, as a multiple
            of the reference's, by the large-batch model; None without a noise scale.
    """

    batch: int
    losses_percent: tuple[float, ...]
    numbers: tuple[int, ...]
    predicted_samples: float | None

    @property
    def median_percent(self) -> float:
        return float(statistics.median(self.losses_percent))


@dataclasses.dataclass(frozen=True)
class BatchInfo:
    """What the figure shows.

    Attributes:
        rows: One per global batch with a scored run, by batch.
        budget_percent: The accuracy budget in percent.
        noise_percent: The reference's seed-to-seed noise in percent, or None.
        noise_scale: The reference's gradient noise scale (examples), or None.
        reference_batch: The reference's global batch, or None.
    """

    rows: tuple[BatchRow, ...]
    budget_percent: float
    noise_percent: float | None
    noise_scale: float | None
    reference_batch: int | None


def get_batch_info(frame: pd.DataFrame, info: dict[str, Any]) -> BatchInfo:
    """Gathers the scored runs' accuracy loss by global batch, and the prediction."""
    losses: dict[int, list[tuple[float, int]]] = {}
    for row in frame_rows(frame):
        batch = as_float(row.get(GLOBAL_BATCH_SIZE))
        loss = as_float(row.get(ACCURACY_LOSS))
        if row.get(STATUS) != OK or batch is None or loss is None:
            continue
        losses.setdefault(int(batch), []).append((loss * 100, int(row[NUMBER])))
    scale = as_float(info.get("noise_scale"))
    reference = info.get("reference_batch")
    rows = tuple(
        BatchRow(
            batch=batch,
            losses_percent=tuple(loss for loss, _ in found),
            numbers=tuple(number for _, number in found),
            predicted_samples=(
                samples_ratio(batch, int(reference), scale) if scale and reference else None
            ),
        )
        for batch, found in sorted(losses.items())
    )
    noise = as_float(info.get("reference_noise"))
    return BatchInfo(
        rows,
        info_budget(info) * 100,
        None if noise is None else noise * 100,
        scale,
        None if reference is None else int(reference),
    )


def render_batches(batches: BatchInfo) -> go.Figure:
    """Measured loss per run (markers), its median per batch (a line), the budget and the
    noise band; the predicted samples on a second axis."""
    figure = go.Figure()
    add_noise_and_budget(figure, batches.noise_percent, batches.budget_percent, "y")
    runs = [
        (row.batch, loss, number)
        for row in batches.rows
        for loss, number in zip(row.losses_percent, row.numbers, strict=True)
    ]
    figure.add_trace(
        go.Scatter(
            x=[batch for batch, _, _ in runs],
            y=[loss for _, loss, _ in runs],
            mode="markers",
            name="a run's accuracy loss (its short budget)",
            text=[f"trial {number}" for _, _, number in runs],
            marker={"color": "#1f77b4", "size": 8},
        )
    )
    figure.add_trace(
        go.Scatter(
            x=[row.batch for row in batches.rows],
            y=[row.median_percent for row in batches.rows],
            mode="lines",
            name="median per batch",
            line={"color": "#1f77b4"},
        )
    )
    predicted = [row for row in batches.rows if row.predicted_samples is not None]
    if predicted:
        figure.add_trace(
            go.Scatter(
                x=[row.batch for row in predicted],
                y=[row.predicted_samples for row in predicted],
                mode="lines+markers",
                name=(
                    "predicted samples to the reference's loss (x the reference's; "
                    f"noise scale {batches.noise_scale:,.0f})"
                ),
                line={"color": "#9467bd", "dash": "dot"},
                text=[_efficiency_text(row.batch, batches) for row in predicted],
                yaxis="y2",
            )
        )
    if not batches.rows:
        annotate_empty(figure, "No run scored on its metric yet.")
    figure.update_layout(
        xaxis={"title": "global batch", "type": "log"},
        yaxis={"title": "accuracy loss vs reference (%)"},
        yaxis2={
            "title": "predicted samples (x the reference's)",
            "overlaying": "y",
            "side": "right",
            "rangemode": "tozero",
        },
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


def _efficiency_text(batch: int, batches: BatchInfo) -> str:
    """A batch's predicted statistical efficiency (what its throughput is multiplied by under
    goodput scoring), for the hover."""
    assert batches.noise_scale is not None and batches.reference_batch is not None
    return f"efficiency {efficiency(batch, batches.reference_batch, batches.noise_scale):.2f}"
