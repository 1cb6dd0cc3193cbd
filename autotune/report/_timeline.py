"""The report's timeline figure: where each trial's wall time went (launch and setup,
training, evaluation)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from autotune._records import EVAL_SECONDS, REPEAT, STATUS, TRAIN_SECONDS, WALL_SECONDS
from autotune.report._common import FIGURE_HEIGHT, NUMBER, annotate_empty, frame_rows
from autotune.report._format import as_float, as_text


@dataclasses.dataclass(frozen=True)
class TimelineInfo:
    """Where each run trial's wall time went.

    Attributes:
        numbers: Trials that ran (those with a wall time), by number.
        setup_seconds: Per trial, launch and setup: wall - train - eval (all of the wall
            time when train or eval seconds are unknown).
        train_seconds: Per trial, seconds training (0 when unknown).
        eval_seconds: Per trial, seconds evaluating (0 when unknown).
        statuses: Per trial, its status.
    """

    numbers: tuple[int, ...]
    setup_seconds: tuple[float, ...]
    train_seconds: tuple[float, ...]
    eval_seconds: tuple[float, ...]
    statuses: tuple[str, ...]


def get_timeline_info(frame: pd.DataFrame, info: dict[str, Any]) -> TimelineInfo:
    """Splits each trial's wall time into launch/setup, training and eval."""
    numbers, setup, train, evals, statuses = [], [], [], [], []
    for row in frame_rows(frame):
        wall = as_float(row.get(WALL_SECONDS))
        if wall is None or row.get(STATUS) == REPEAT:
            continue
        train_s = as_float(row.get(TRAIN_SECONDS))
        eval_s = as_float(row.get(EVAL_SECONDS))
        if train_s is None or eval_s is None:
            train_s = eval_s = 0.0
        numbers.append(row[NUMBER])
        setup.append(max(0.0, wall - train_s - eval_s))
        train.append(train_s)
        evals.append(eval_s)
        statuses.append(as_text(row.get(STATUS)))
    return TimelineInfo(tuple(numbers), tuple(setup), tuple(train), tuple(evals), tuple(statuses))


def timeline_height(timeline: TimelineInfo) -> int:
    """The figure's height: a bar per trial, within bounds."""
    return int(min(2400, max(FIGURE_HEIGHT, 16 * len(timeline.numbers) + 140)))


def render_timeline(timeline: TimelineInfo) -> go.Figure:
    """One horizontal stacked bar per trial: launch/setup, training, eval."""
    figure = go.Figure()
    labels = [
        f"trial {number} ({status})"
        for number, status in zip(timeline.numbers, timeline.statuses, strict=True)
    ]
    parts = (
        ("launch/setup", timeline.setup_seconds, "#c7c7c7"),
        ("training", timeline.train_seconds, "#1f77b4"),
        ("eval", timeline.eval_seconds, "#9467bd"),
    )
    for name, seconds, colour in parts:
        figure.add_trace(
            go.Bar(
                x=list(seconds),
                y=labels,
                orientation="h",
                name=name,
                marker={"color": colour},
                hovertemplate=f"%{{y}}<br>{name}: %{{x:.1f}} s<extra></extra>",
            )
        )
    if not timeline.numbers:
        annotate_empty(figure, "No trial has run yet.")
    figure.update_layout(
        barmode="stack",
        xaxis_title="wall time (s)",
        yaxis={"autorange": "reversed", "type": "category"},
    )
    return figure
