"""The report's trade-off figure: throughput against accuracy loss, with the budget, the
reference's noise, the Pareto front and the reference and best trials marked."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from autotune._records import ACCURACY_LOSS, OK, STATUS, THROUGHPUT
from autotune.report._common import (
    COLOURS,
    NUMBER,
    add_noise_and_budget,
    annotate_empty,
    frame_rows,
    info_budget,
    is_feasible,
    is_measured,
    roles_of,
    trial_hover,
)
from autotune.report._format import as_float


@dataclasses.dataclass(frozen=True)
class TradeoffPoint:
    """One measured trial in the throughput-vs-accuracy-loss plot.

    Attributes:
        number: The Optuna trial number.
        accuracy_loss_percent: Accuracy loss in percent (x).
        throughput: Samples/s (y).
        feasible: True when within the accuracy budget.
        role: 'reference', 'best', 'reference, best' or '' for the other trials.
        hover: Escaped hover text with the results and the settings.
    """

    number: int
    accuracy_loss_percent: float
    throughput: float
    feasible: bool
    role: str
    hover: str


@dataclasses.dataclass(frozen=True)
class TradeoffInfo:
    """Throughput against accuracy loss for trials that ran.

    Attributes:
        points: Trials with status 'ok' (and the reference or best trial if it is a repeat),
            with both a throughput and an accuracy loss.
        budget_percent: The accuracy budget in percent (a vertical line).
        noise_percent: The reference's seed-to-seed noise in percent (a band), or None.
        pareto_numbers: The trials on the Pareto front (highest throughput for the lowest
            accuracy loss: no other point is as fast with no more loss), by accuracy loss.
    """

    points: tuple[TradeoffPoint, ...]
    budget_percent: float
    noise_percent: float | None
    pareto_numbers: tuple[int, ...] = ()


def pareto_front(points: list[TradeoffPoint]) -> tuple[int, ...]:
    """The points no other point dominates (at least as fast with no more loss, one strictly),
    by increasing accuracy loss; of identical points, the first by trial number."""
    front: list[int] = []
    best_throughput = -math.inf
    for point in sorted(points, key=lambda p: (p.accuracy_loss_percent, -p.throughput, p.number)):
        if point.throughput > best_throughput:
            front.append(point.number)
            best_throughput = point.throughput
    return tuple(front)


def get_tradeoff_info(frame: pd.DataFrame, info: dict[str, Any]) -> TradeoffInfo:
    """Gathers throughput and accuracy loss of the trials that ran."""
    rows = frame_rows(frame)
    budget = info_budget(info)
    trial_roles = roles_of(rows, info)
    points = []
    for row in rows:
        number = row[NUMBER]
        if row.get(STATUS) != OK and number not in trial_roles:
            continue
        throughput = as_float(row.get(THROUGHPUT))
        loss = as_float(row.get(ACCURACY_LOSS))
        if not is_measured(row) or throughput is None or loss is None:
            continue
        points.append(
            TradeoffPoint(
                number=number,
                accuracy_loss_percent=loss * 100,
                throughput=throughput,
                feasible=is_feasible(row, budget),
                role=trial_roles.get(number, ""),
                hover=trial_hover(row, trial_roles),
            )
        )
    noise = as_float(info.get("reference_noise"))
    return TradeoffInfo(
        tuple(points),
        budget * 100,
        None if noise is None else noise * 100,
        pareto_front(points),
    )


_HIGHLIGHTS = (
    ("reference", "diamond", "#000000"),
    ("best", "star", "#ffbf00"),
)
"""How the reference and the best trial are marked: role, marker symbol, colour."""


def render_tradeoff(tradeoff: TradeoffInfo) -> go.Figure:
    """The scatter, the budget line, the noise band, and the reference and best markers."""
    figure = go.Figure()
    add_noise_and_budget(figure, tradeoff.noise_percent, tradeoff.budget_percent, "x")
    _add_points(figure, tradeoff)
    if len(tradeoff.pareto_numbers) > 1:
        figure.add_trace(_pareto_line(tradeoff))
    _add_highlights(figure, tradeoff)
    if not tradeoff.points:
        annotate_empty(figure, "No measured trial yet.")
    figure.update_layout(
        xaxis_title="accuracy loss vs reference (%)",
        yaxis_title="throughput (samples/s)",
        yaxis_rangemode="tozero",
        hoverlabel={"align": "left"},
    )
    return figure


def _add_points(figure: go.Figure, tradeoff: TradeoffInfo) -> None:
    """One trace of feasible trials, one of trials over the budget."""
    for feasible, name in ((True, "feasible"), (False, "over budget")):
        points = [point for point in tradeoff.points if point.feasible == feasible]
        if points:
            figure.add_trace(_markers(points, name, {"color": COLOURS[name], "size": 9}))


def _pareto_line(tradeoff: TradeoffInfo) -> go.Scatter:
    """The Pareto front as a dotted staircase."""
    by_number = {point.number: point for point in tradeoff.points}
    front = [by_number[number] for number in tradeoff.pareto_numbers]
    return go.Scatter(
        x=[point.accuracy_loss_percent for point in front],
        y=[point.throughput for point in front],
        mode="lines",
        line={"shape": "hv", "color": "#555555", "width": 1.5, "dash": "dot"},
        name="Pareto front",
        hoverinfo="skip",
    )


def _add_highlights(figure: go.Figure, tradeoff: TradeoffInfo) -> None:
    """Large markers on the reference and the best trial."""
    for role, symbol, colour in _HIGHLIGHTS:
        points = [point for point in tradeoff.points if role in point.role.split(", ")]
        if points:
            marker = {
                "color": colour,
                "size": 16,
                "symbol": symbol,
                "line": {"color": "#333333", "width": 1},
            }
            figure.add_trace(_markers(points, role, marker))


def _markers(points: list[TradeoffPoint], name: str, marker: dict[str, Any]) -> go.Scatter:
    """The points as markers, each with its hover text."""
    return go.Scatter(
        x=[point.accuracy_loss_percent for point in points],
        y=[point.throughput for point in points],
        mode="markers",
        name=name,
        marker=marker,
        hovertext=[point.hover for point in points],
        hoverinfo="text",
    )
