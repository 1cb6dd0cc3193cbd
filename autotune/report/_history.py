"""The report's history figure: throughput per trial and the running best feasible throughput."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from autotune._records import OK, REPEAT, STATUS, THROUGHPUT, TOKENS_PER_SECOND
from autotune.report._common import (
    CATEGORIES,
    COLOURS,
    NUMBER,
    SYMBOLS,
    annotate_empty,
    category,
    frame_rows,
    info_budget,
    is_feasible,
    is_measured,
    rate_only,
    roles_of,
    trial_hover,
)
from autotune.report._format import as_float, as_text


@dataclasses.dataclass(frozen=True)
class HistoryPoint:
    """One trial in the history plot.

    Attributes:
        number: The Optuna trial number.
        status: The trial's status.
        category: One of :data:`CATEGORIES`, which sets the colour.
        throughput: Samples/s; 0 for a trial without a measurement (infeasible, failed,
            running), which is drawn as a cross on the axis.
        hover: Escaped hover text with the results, the reason and the settings.
    """

    number: int
    status: str
    category: str
    throughput: float
    hover: str


@dataclasses.dataclass(frozen=True)
class HistoryInfo:
    """Throughput per trial and the running best feasible throughput.

    Attributes:
        points: Every trial, by number.
        best_numbers: Trial numbers of the running-best line, from the first feasible trial.
        best_throughputs: The highest feasible throughput up to each of ``best_numbers``.
        confirmation_numbers: For each confirmation run (a trial's configuration timed again
            after the search), its trial's number.
        confirmation_throughputs: That run's rate.
        unit: What the study maximises and this plot shows: "samples/s" or "tokens/s".
    """

    points: tuple[HistoryPoint, ...]
    best_numbers: tuple[int, ...]
    best_throughputs: tuple[float, ...]
    confirmation_numbers: tuple[int, ...] = ()
    confirmation_throughputs: tuple[float, ...] = ()
    unit: str = "samples/s"


def get_history_info(frame: pd.DataFrame, info: dict[str, Any]) -> HistoryInfo:
    """Gathers each trial's throughput and the running best over feasible trials."""
    rows = frame_rows(frame)
    budget = info_budget(info)
    trial_roles = roles_of(rows, info)
    points = []
    best_numbers: list[int] = []
    best_throughputs: list[float] = []
    running_best: float | None = None
    confirmation_numbers: list[int] = []
    confirmation_throughputs: list[float] = []
    unit = str(info.get("rate_unit") or "samples/s")
    own = TOKENS_PER_SECOND if unit == "tokens/s" else THROUGHPUT
    for row in rows:
        timed = is_measured(row) or rate_only(row)  # stopped early, or a probe: no accuracy
        measured = as_float(row.get(own)) if timed else None
        runs = row.get("throughput_runs")
        if row.get(STATUS) == OK and isinstance(runs, list | tuple):
            # The first window is the trial's own; the rest are its confirmation runs.
            for value in runs[1:]:
                confirmation_numbers.append(row[NUMBER])
                confirmation_throughputs.append(float(value))
        points.append(
            HistoryPoint(
                number=row[NUMBER],
                status=as_text(row.get(STATUS)),
                category=category(row, budget),
                throughput=0.0 if measured is None else measured,
                hover=trial_hover(row, trial_roles),
            )
        )
        if measured is not None and is_feasible(row, budget):
            running_best = measured if running_best is None else max(running_best, measured)
        if running_best is not None:
            best_numbers.append(row[NUMBER])
            best_throughputs.append(running_best)
    return HistoryInfo(
        tuple(points),
        tuple(best_numbers),
        tuple(best_throughputs),
        tuple(confirmation_numbers),
        tuple(confirmation_throughputs),
        unit,
    )


def render_history(history: HistoryInfo) -> go.Figure:
    """Throughput per trial number, coloured by category, with the running-best line."""
    figure = go.Figure()
    for name in CATEGORIES:
        points = [point for point in history.points if point.category == name]
        if not points:
            continue
        symbols = ["circle-open" if point.status == REPEAT else SYMBOLS[name] for point in points]
        figure.add_trace(
            go.Scatter(
                x=[point.number for point in points],
                y=[point.throughput for point in points],
                mode="markers",
                name=name,
                marker={"color": COLOURS[name], "size": 9, "symbol": symbols},
                hovertext=[point.hover for point in points],
                hoverinfo="text",
                cliponaxis=False,
            )
        )
    if history.confirmation_numbers:
        figure.add_trace(_confirmation_runs(history))
    if history.best_numbers:
        figure.add_trace(
            go.Scatter(
                x=list(history.best_numbers),
                y=list(history.best_throughputs),
                mode="lines",
                line={"shape": "hv", "color": COLOURS["feasible"], "width": 2},
                name="best feasible so far",
                hoverinfo="skip",
            )
        )
    if not history.points:
        annotate_empty(figure, "No trials yet.")
    figure.update_layout(
        xaxis_title="trial number",
        yaxis_title=f"throughput ({history.unit})",
        yaxis_rangemode="tozero",
        legend_title_text="trial",
        hoverlabel={"align": "left"},
    )
    return figure


def _confirmation_runs(history: HistoryInfo) -> go.Scatter:
    """A small mark per confirmation run beside its trial."""
    return go.Scatter(
        x=list(history.confirmation_numbers),
        y=list(history.confirmation_throughputs),
        mode="markers",
        name="confirmation runs",
        marker={"color": "#888888", "size": 6, "symbol": "line-ew-open"},
        hovertext=[
            f"trial {number}: confirmation run, {value:,.1f} {history.unit}"
            for number, value in zip(
                history.confirmation_numbers, history.confirmation_throughputs, strict=True
            )
        ],
        hoverinfo="text",
    )
