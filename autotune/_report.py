"""The interactive HTML report of a study: one self-contained file that works offline.

Each part of the report is built in two steps: a ``_get_X_info(frame, info)`` function gathers
the plain data (a small frozen dataclass) and a ``_render_X`` function only draws it. Tests
check the gathered data without a browser.

The trial frame has one row per Optuna trial; see :func:`render_report` for the columns read.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from autotune._report_stages import get_stages_info, render_stages, stages_height
from autotune._space import PARAMETERS

SETTINGS: tuple[str, ...] = (*PARAMETERS, "global_batch_size", "learning_rate")
"""The setting columns shown for each trial, in display order."""

_SETTING_LABELS: dict[str, str] = {
    "micro_batch_size": "micro batch",
    "gradient_accumulation_steps": "grad accum",
    "precision": "precision",
    "zero_stage": "ZeRO",
    "processes": "processes",
    "pipeline_stages": "pipeline stages",
    "partition_method": "partition",
    "num_workers": "workers",
    "pin_memory": "pin memory",
    "prefetch_factor": "prefetch",
    "global_batch_size": "global batch",
    "learning_rate": "learning rate",
}

_SETTING_HELP: dict[str, str] = {
    **{name: parameter.help for name, parameter in PARAMETERS.items()},
    "global_batch_size": "samples per optimizer step over all ranks",
    "learning_rate": "learning rate used by the trial",
}

_COLUMNS: tuple[str, ...] = (
    "number",
    "role",
    "status",
    *SETTINGS,
    "throughput",
    "accuracy_loss",
    "metric",
    "feasible",
    "peak_memory_bytes",
    "step_time_p50",
    "step_time_p90",
    "measured_seconds",
    "train_seconds",
    "eval_seconds",
    "wall_seconds",
    "reason",
    "datetime_start",
    "datetime_complete",
    "log_tail",
)

MEASURED_STATUSES = ("ok", "repeat")
"""Statuses whose row carries a throughput and an accuracy loss."""

CATEGORIES: tuple[str, ...] = (
    "feasible",
    "over budget",
    "infeasible",
    "failed",
    "running",
)
"""How a trial is coloured in the plots, in legend order."""

_COLOURS: dict[str, str] = {
    "feasible": "#2ca02c",
    "over budget": "#ff7f0e",
    "infeasible": "#7f7f7f",
    "failed": "#d62728",
    "running": "#1f77b4",
}

_SYMBOLS: dict[str, str] = {
    "feasible": "circle",
    "over budget": "circle",
    "infeasible": "x",
    "failed": "x",
    "running": "hourglass",
}

_MISSING = "—"
_HOVER_REASON_CHARS = 300
_HOVER_WRAP = 80


# --- small helpers -------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    """True for None, NaN, NaT and pandas' NA."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _float(value: Any) -> float | None:
    """The value as a finite float, or None."""
    if _is_missing(value) or isinstance(value, str):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str:
    """The value as a string, empty when missing."""
    return "" if _is_missing(value) else str(value)


def _format_value(value: Any) -> str:
    """A setting value for display: integral floats lose their ``.0``, missing is a dash."""
    if _is_missing(value):
        return _MISSING
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.number)):
        number = _float(value)
        if number is None:
            return str(value)
        if number.is_integer() and abs(number) < 1e15:
            return str(int(number))
        return f"{number:.4g}"
    return str(value)


def _format_percent(fraction: float | None) -> str:
    """A fraction as a percentage: 0.003 -> '0.30%'."""
    if fraction is None:
        return _MISSING
    percent = fraction * 100
    if percent == 0 or abs(percent) >= 0.01:
        return f"{percent:.2f}%"
    return f"{percent:.2g}%"


def _format_throughput(value: float | None) -> str:
    return _MISSING if value is None else f"{value:,.1f}"


def _format_bytes(value: float | None) -> str:
    if value is None:
        return _MISSING
    gib = value / 2**30
    if gib >= 1:
        return f"{gib:.2f} GiB"
    return f"{value / 2**20:.1f} MiB"


def _format_seconds(value: float | None) -> str:
    if value is None:
        return _MISSING
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.1f} s"


def _format_metric(value: float | None) -> str:
    return _MISSING if value is None else f"{value:.6g}"


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The frame's rows as dicts, sorted by trial number, every known column present."""
    if frame.empty:
        return []
    rows = frame.sort_values("number", kind="stable").to_dict("records")
    out = []
    for row in rows:
        record = {column: row.get(column) for column in _COLUMNS}
        record.update({str(key): value for key, value in row.items() if key not in record})
        record["number"] = int(row["number"])
        out.append(record)
    return out


def _budget(info: dict[str, Any]) -> float:
    value = _float(info.get("max_accuracy_loss"))
    return 0.0 if value is None else value


def _info_int(info: dict[str, Any], key: str) -> int | None:
    value = _float(info.get(key))
    return None if value is None else int(value)


def _reference_number(rows: list[dict[str, Any]], info: dict[str, Any]) -> int | None:
    """``info['reference_number']``, else the first trial whose role is 'reference'."""
    number = _info_int(info, "reference_number")
    if number is not None:
        return number
    for row in rows:
        if row.get("role") == "reference":
            return int(row["number"])
    return None


def _find(rows: list[dict[str, Any]], number: int | None) -> dict[str, Any] | None:
    if number is None:
        return None
    for row in rows:
        if row["number"] == number:
            return row
    return None


def _is_measured(row: dict[str, Any]) -> bool:
    """True when the trial finished (or copies a finished one) and has a throughput."""
    return row.get("status") in MEASURED_STATUSES and _float(row.get("throughput")) is not None


def _is_feasible(row: dict[str, Any], budget: float) -> bool:
    """True when the trial was measured and kept within the accuracy budget.

    Reads the ``feasible`` column; when it is missing, compares ``accuracy_loss`` to the budget.
    """
    if not _is_measured(row):
        return False
    flag = row.get("feasible")
    if not _is_missing(flag):
        return bool(flag)
    loss = _float(row.get("accuracy_loss"))
    return loss is not None and loss <= budget


def _category(row: dict[str, Any], budget: float) -> str:
    """One of :data:`CATEGORIES`."""
    status = row.get("status")
    if _is_measured(row):
        return "feasible" if _is_feasible(row, budget) else "over budget"
    if status == "infeasible":
        return "infeasible"
    if status == "running":
        return "running"
    return "failed"


def _settings_hover(row: dict[str, Any]) -> str:
    """The trial's settings as escaped hover text, three per line."""
    items = [
        f"{name}={html.escape(_format_value(row.get(name)))}"
        for name in SETTINGS
        if not _is_missing(row.get(name))
    ]
    lines = [", ".join(items[i : i + 3]) for i in range(len(items)) if i % 3 == 0]
    return "<br>".join(lines)


def _reason_hover(reason: str) -> str:
    """A reason shortened and wrapped for a hover box, escaped."""
    text = " ".join(reason.split())
    if len(text) > _HOVER_REASON_CHARS:
        text = text[: _HOVER_REASON_CHARS - 1] + "…"
    return "<br>".join(html.escape(line) for line in textwrap.wrap(text, _HOVER_WRAP))


def _trial_hover(row: dict[str, Any], roles: dict[int, str]) -> str:
    """Hover text for one trial: number, status, results, reason and settings."""
    number = row["number"]
    title = f"<b>trial {number}</b>"
    if number in roles:
        title += f" ({roles[number]})"
    lines = [title, f"status: {html.escape(_text(row.get('status')))}"]
    throughput = _float(row.get("throughput"))
    if throughput is not None:
        lines.append(f"throughput: {_format_throughput(throughput)} samples/s")
    loss = _float(row.get("accuracy_loss"))
    if loss is not None:
        lines.append(f"accuracy loss: {_format_percent(loss)}")
    memory = _float(row.get("peak_memory_bytes"))
    if memory is not None:
        lines.append(f"peak memory: {_format_bytes(memory)}")
    reason = _text(row.get("reason")).strip()
    if reason:
        lines.append("reason: " + _reason_hover(reason))
    settings = _settings_hover(row)
    if settings:
        lines.append(settings)
    return "<br>".join(lines)


def _roles(reference_number: int | None, best_number: int | None) -> dict[int, str]:
    """Trial number -> 'reference', 'best' or 'reference, best'."""
    roles: dict[int, str] = {}
    if reference_number is not None:
        roles[reference_number] = "reference"
    if best_number is not None:
        roles[best_number] = "best" if best_number not in roles else "reference, best"
    return roles


# --- 1. header -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HeaderInfo:
    """What the report's header says about the study.

    Attributes:
        study: The study name.
        model: The model file.
        machine: A short description of the machine, e.g. "cpu, 2 cores".
        train_samples: Training samples per trial, or None when unknown.
        metric_name: The name of the accuracy metric.
        reference_metric: The reference configuration's metric, or None.
        budget: The accuracy budget as a fraction.
        noise: The reference's relative seed-to-seed metric difference, or None when unknown.
        budget_below_noise: True when the budget is below the noise, so the verdicts on the
            budget are within noise.
        eval_source: What the metric is measured on.
        status_counts: (status, trial count) pairs, most common first.
    """

    study: str
    model: str
    machine: str
    train_samples: int | None
    metric_name: str
    reference_metric: float | None
    budget: float
    noise: float | None
    budget_below_noise: bool
    eval_source: str
    status_counts: tuple[tuple[str, int], ...]


def _get_header_info(frame: pd.DataFrame, info: dict[str, Any]) -> HeaderInfo:
    """Gathers the header's facts from ``info`` and the status counts from ``frame``."""
    budget = _budget(info)
    noise = _float(info.get("reference_noise"))
    counts = Counter(_text(row.get("status")) or "unknown" for row in _records(frame))
    return HeaderInfo(
        study=_text(info.get("study")),
        model=_text(info.get("model")),
        machine=_text(info.get("machine")),
        train_samples=_info_int(info, "train_samples"),
        metric_name=_text(info.get("metric_name")) or "metric",
        reference_metric=_float(info.get("reference_metric")),
        budget=budget,
        noise=noise,
        budget_below_noise=noise is not None and budget < noise,
        eval_source=_text(info.get("eval_source")),
        status_counts=tuple(counts.most_common()),
    )


def _render_header(header: HeaderInfo) -> str:
    """The title, the facts list and the noise warning as HTML."""
    esc = html.escape
    noise = (
        f" (reference seed-to-seed noise: {_format_percent(header.noise)})"
        if header.noise is not None
        else " (reference seed-to-seed noise: not measured)"
    )
    samples = _MISSING if header.train_samples is None else f"{header.train_samples:,}"
    counts = ", ".join(f"{count} {esc(status)}" for status, count in header.status_counts)
    facts = [
        ("model", f"<code>{esc(header.model)}</code>"),
        ("machine", esc(header.machine)),
        ("train samples", samples),
        (
            f"reference {esc(header.metric_name)}",
            _format_metric(header.reference_metric),
        ),
        ("accuracy budget", f"{_format_percent(header.budget)}{noise}"),
        (
            "trials",
            f"{sum(c for _, c in header.status_counts)}" + (f": {counts}" if counts else ""),
        ),
    ]
    items = "\n".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts)
    parts = [
        f"<h1>autotune report: {esc(header.study)}</h1>",
        f'<dl class="facts">\n{items}\n</dl>',
    ]
    if header.eval_source:
        parts.append(
            f"<p>Accuracy loss is the change in {esc(header.metric_name)} relative to the "
            f"reference configuration, measured on {esc(header.eval_source)}.</p>"
        )
    if header.budget_below_noise:
        parts.append(
            '<p class="warning"><b>Warning:</b> the accuracy budget '
            f"({_format_percent(header.budget)}) is below the reference configuration's "
            f"seed-to-seed noise ({_format_percent(header.noise)}), so whether a trial is "
            "within the budget is decided by noise. Consider a budget above the noise.</p>"
        )
    return "\n".join(parts)


# --- 2. best vs reference ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ComparisonRow:
    """One line of the best-vs-reference table.

    Attributes:
        label: What the line shows.
        reference: The reference's value, formatted.
        best: The best trial's value, formatted.
        differs: True for a setting whose value differs between the two.
    """

    label: str
    reference: str
    best: str
    differs: bool = False


@dataclasses.dataclass(frozen=True)
class BestInfo:
    """The best feasible trial beside the reference.

    Attributes:
        reference_number: The reference trial, or None when there is none in the frame.
        best_number: The best feasible trial, or None when there is none in the frame.
        reference_throughput: Samples/s of the reference (the median of its timed windows,
            confirmation runs included), or None when not measured.
        best_throughput: Samples/s of the best trial, the same way, or None.
        speedup: The best's speed-up: the frame's ``speedup`` (its windows over the
            reference's in the same confirmation rounds), else best_throughput /
            reference_throughput; None when missing.
        rows: The table's lines: trial, settings, then results.
        message: A sentence shown instead of the best column when there is no feasible trial.
    """

    reference_number: int | None
    best_number: int | None
    reference_throughput: float | None
    best_throughput: float | None
    speedup: float | None
    rows: tuple[ComparisonRow, ...]
    message: str | None


def _get_best_info(frame: pd.DataFrame, info: dict[str, Any]) -> BestInfo:
    """Gathers the best and reference trials' settings and results side by side."""
    rows = _records(frame)
    budget = _budget(info)
    reference = _find(rows, _reference_number(rows, info))
    best = _find(rows, _info_int(info, "best_number"))
    empty: dict[str, Any] = {}
    ref_row = reference if reference is not None else empty
    best_row = best if best is not None else empty

    reference_throughput = _judged_throughput(ref_row) if _is_measured(ref_row) else None
    best_throughput = _judged_throughput(best_row) if _is_measured(best_row) else None
    # Measured side by side in confirmation rounds where the frame has it (see _confirm).
    speedup = _float(best_row.get("speedup")) if best is not None else None
    if speedup is None and reference_throughput and best_throughput is not None:
        speedup = best_throughput / reference_throughput

    table: list[ComparisonRow] = [
        ComparisonRow(
            "trial",
            _MISSING if reference is None else str(ref_row["number"]),
            _MISSING if best is None else str(best_row["number"]),
        ),
        ComparisonRow(
            "status",
            _text(ref_row.get("status")) or _MISSING,
            _text(best_row.get("status")) or _MISSING,
        ),
    ]
    for name in SETTINGS:
        ref_value = _format_value(ref_row.get(name))
        best_value = _format_value(best_row.get(name))
        if ref_value == _MISSING and best_value == _MISSING:
            continue
        differs = reference is not None and best is not None and ref_value != best_value
        table.append(ComparisonRow(name, ref_value, best_value, differs))
    table += [
        ComparisonRow(
            "throughput (samples/s)",
            _format_throughput(reference_throughput),
            _format_throughput(best_throughput),
        ),
        ComparisonRow(
            "timed windows (samples/s)",
            _windows(ref_row),
            _windows(best_row),
        ),
        ComparisonRow(
            "speed-up vs reference",
            "1.00×" if reference_throughput else _MISSING,
            _MISSING if speedup is None else f"{speedup:.2f}×{_side_by_side(best_row)}",
        ),
        ComparisonRow(
            "accuracy loss",
            _format_percent(_float(ref_row.get("accuracy_loss"))),
            _format_percent(_float(best_row.get("accuracy_loss"))),
        ),
        ComparisonRow(
            "peak memory",
            _format_bytes(_float(ref_row.get("peak_memory_bytes"))),
            _format_bytes(_float(best_row.get("peak_memory_bytes"))),
        ),
        ComparisonRow(
            "step time p50 / p90",
            _step_times(ref_row),
            _step_times(best_row),
        ),
    ]

    message = None
    best_number = _info_int(info, "best_number")
    if best is None and best_number is not None:
        message = f"The best trial ({best_number}) is not in the trial table."
    elif best is None and not rows:
        message = "No feasible trial yet: no trial has run."
    elif best is None:
        over = sum(1 for row in rows if _is_measured(row))
        message = (
            f"No feasible trial yet: none of the {len(rows)} trials finished within the "
            f"accuracy budget of {_format_percent(budget)}"
            + (f" ({over} finished over the budget)." if over else ".")
        )
        if reference is not None and reference_throughput is None:
            reason = _text(ref_row.get("reason")).strip()
            message += " The reference configuration has no measured throughput" + (
                f": {reason}" if reason else "."
            )
    return BestInfo(
        reference_number=None if reference is None else ref_row["number"],
        best_number=None if best is None else best_row["number"],
        reference_throughput=reference_throughput,
        best_throughput=best_throughput,
        speedup=speedup,
        rows=tuple(table),
        message=message,
    )


def _side_by_side(row: dict[str, Any]) -> str:
    """' (median of 2 rounds side by side)' when the speed-up was measured that way."""
    pairs = row.get("speedup_runs")
    if not isinstance(pairs, list | tuple) or not pairs:
        return ""
    return f" (median of {len(pairs)} rounds side by side)"


def _judged_throughput(row: dict[str, Any]) -> float | None:
    """The median of the windows a trial's configuration was timed over (its own and its
    confirmation runs), or its own figure in a frame without that column."""
    return _float(row.get("estimated_throughput")) or _float(row.get("throughput"))


def _windows(row: dict[str, Any]) -> str:
    runs = row.get("throughput_runs")
    if not isinstance(runs, list | tuple) or not runs:
        return _MISSING
    return ", ".join(_format_throughput(float(value)) for value in runs)


def _step_times(row: dict[str, Any]) -> str:
    p50 = _float(row.get("step_time_p50"))
    p90 = _float(row.get("step_time_p90"))
    if p50 is None and p90 is None:
        return _MISSING
    return f"{_format_seconds(p50)} / {_format_seconds(p90)}"


def _render_best(best: BestInfo) -> str:
    """The best-vs-reference table as HTML, with the sentence when there is no best trial."""
    esc = html.escape
    parts = ["<h2>Best vs reference</h2>"]
    if best.message:
        parts.append(f'<p class="notice">{esc(best.message)}</p>')
    show_reference = best.reference_number is not None
    show_best = best.best_number is not None
    if not (show_reference or show_best):
        return "\n".join(parts)
    head = "<th></th>"
    if show_reference:
        head += "<th>reference</th>"
    if show_best:
        head += "<th>best</th>"
    lines = []
    for row in best.rows:
        label = esc(_SETTING_LABELS.get(row.label, row.label))
        title = _SETTING_HELP.get(row.label)
        label_cell = f'<th title="{esc(row.label)}: {esc(title)}">' if title else "<th>"
        cells = label_cell + label + "</th>"
        if show_reference:
            cells += f"<td>{esc(row.reference)}</td>"
        if show_best:
            cells += f"<td>{esc(row.best)}</td>"
        css = ' class="differs"' if row.differs else ""
        lines.append(f"<tr{css}>{cells}</tr>")
    body = "\n".join(lines)
    parts.append(
        f'<table class="comparison">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
        "</tbody>\n</table>"
    )
    if show_reference and show_best:
        parts.append('<p class="hint">Highlighted settings differ from the reference.</p>')
    return "\n".join(parts)


# --- 3. history ----------------------------------------------------------------------------


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
        confirmation_throughputs: That run's samples/s.
    """

    points: tuple[HistoryPoint, ...]
    best_numbers: tuple[int, ...]
    best_throughputs: tuple[float, ...]
    confirmation_numbers: tuple[int, ...] = ()
    confirmation_throughputs: tuple[float, ...] = ()


def _get_history_info(frame: pd.DataFrame, info: dict[str, Any]) -> HistoryInfo:
    """Gathers each trial's throughput and the running best over feasible trials."""
    rows = _records(frame)
    budget = _budget(info)
    roles = _roles(_reference_number(rows, info), _info_int(info, "best_number"))
    points = []
    best_numbers: list[int] = []
    best_throughputs: list[float] = []
    running_best: float | None = None
    confirmation_numbers: list[int] = []
    confirmation_throughputs: list[float] = []
    for row in rows:
        measured = _float(row.get("throughput")) if _is_measured(row) else None
        runs = row.get("throughput_runs")
        if row.get("status") == "ok" and isinstance(runs, list | tuple):
            # The first window is the trial's own; the rest are its confirmation runs.
            for value in runs[1:]:
                confirmation_numbers.append(row["number"])
                confirmation_throughputs.append(float(value))
        points.append(
            HistoryPoint(
                number=row["number"],
                status=_text(row.get("status")),
                category=_category(row, budget),
                throughput=0.0 if measured is None else measured,
                hover=_trial_hover(row, roles),
            )
        )
        if measured is not None and _is_feasible(row, budget):
            running_best = measured if running_best is None else max(running_best, measured)
        if running_best is not None:
            best_numbers.append(row["number"])
            best_throughputs.append(running_best)
    return HistoryInfo(
        tuple(points),
        tuple(best_numbers),
        tuple(best_throughputs),
        tuple(confirmation_numbers),
        tuple(confirmation_throughputs),
    )


def _render_history(history: HistoryInfo) -> go.Figure:
    """Throughput per trial number, coloured by category, with the running-best line."""
    figure = go.Figure()
    for category in CATEGORIES:
        points = [point for point in history.points if point.category == category]
        if not points:
            continue
        symbols = [
            "circle-open" if point.status == "repeat" else _SYMBOLS[category] for point in points
        ]
        figure.add_trace(
            go.Scatter(
                x=[point.number for point in points],
                y=[point.throughput for point in points],
                mode="markers",
                name=category,
                marker={"color": _COLOURS[category], "size": 9, "symbol": symbols},
                hovertext=[point.hover for point in points],
                hoverinfo="text",
                cliponaxis=False,
            )
        )
    if history.confirmation_numbers:
        figure.add_trace(
            go.Scatter(
                x=list(history.confirmation_numbers),
                y=list(history.confirmation_throughputs),
                mode="markers",
                name="confirmation runs",
                marker={"color": "#888888", "size": 6, "symbol": "line-ew-open"},
                hovertext=[
                    f"trial {number}: confirmation run, {value:,.1f} samples/s"
                    for number, value in zip(
                        history.confirmation_numbers, history.confirmation_throughputs, strict=True
                    )
                ],
                hoverinfo="text",
            )
        )
    if history.best_numbers:
        figure.add_trace(
            go.Scatter(
                x=list(history.best_numbers),
                y=list(history.best_throughputs),
                mode="lines",
                line={"shape": "hv", "color": _COLOURS["feasible"], "width": 2},
                name="best feasible so far",
                hoverinfo="skip",
            )
        )
    if not history.points:
        _annotate_empty(figure, "No trials yet.")
    figure.update_layout(
        xaxis_title="trial number",
        yaxis_title="throughput (samples/s)",
        yaxis_rangemode="tozero",
        legend_title_text="trial",
        hoverlabel={"align": "left"},
    )
    return figure


# --- 4. throughput vs accuracy loss ---------------------------------------------------------


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


def _pareto_front(points: list[TradeoffPoint]) -> tuple[int, ...]:
    """The points no other point dominates (at least as fast with no more loss, one strictly),
    by increasing accuracy loss; of identical points, the first by trial number."""
    front: list[int] = []
    best_throughput = -math.inf
    for point in sorted(points, key=lambda p: (p.accuracy_loss_percent, -p.throughput, p.number)):
        if point.throughput > best_throughput:
            front.append(point.number)
            best_throughput = point.throughput
    return tuple(front)


def _get_tradeoff_info(frame: pd.DataFrame, info: dict[str, Any]) -> TradeoffInfo:
    """Gathers throughput and accuracy loss of the trials that ran."""
    rows = _records(frame)
    budget = _budget(info)
    roles = _roles(_reference_number(rows, info), _info_int(info, "best_number"))
    points = []
    for row in rows:
        number = row["number"]
        if row.get("status") != "ok" and number not in roles:
            continue
        throughput = _float(row.get("throughput"))
        loss = _float(row.get("accuracy_loss"))
        if not _is_measured(row) or throughput is None or loss is None:
            continue
        points.append(
            TradeoffPoint(
                number=number,
                accuracy_loss_percent=loss * 100,
                throughput=throughput,
                feasible=_is_feasible(row, budget),
                role=roles.get(number, ""),
                hover=_trial_hover(row, roles),
            )
        )
    noise = _float(info.get("reference_noise"))
    return TradeoffInfo(
        tuple(points),
        budget * 100,
        None if noise is None else noise * 100,
        _pareto_front(points),
    )


def _render_tradeoff(tradeoff: TradeoffInfo) -> go.Figure:
    """The scatter, the budget line, the noise band, and the reference and best markers."""
    figure = go.Figure()
    if tradeoff.noise_percent is not None and tradeoff.noise_percent > 0:
        figure.add_vrect(
            x0=-tradeoff.noise_percent,
            x1=tradeoff.noise_percent,
            fillcolor="#999999",
            opacity=0.15,
            line_width=0,
            annotation_text="reference noise",
            annotation_position="bottom left",
        )
    figure.add_vline(
        x=tradeoff.budget_percent,
        line={"color": "#d62728", "dash": "dash"},
        annotation_text=f"budget {tradeoff.budget_percent:.3g}%",
        annotation_position="top right",
    )
    for feasible, name in ((True, "feasible"), (False, "over budget")):
        points = [point for point in tradeoff.points if point.feasible == feasible]
        if not points:
            continue
        figure.add_trace(
            go.Scatter(
                x=[point.accuracy_loss_percent for point in points],
                y=[point.throughput for point in points],
                mode="markers",
                name=name,
                marker={"color": _COLOURS[name], "size": 9},
                hovertext=[point.hover for point in points],
                hoverinfo="text",
            )
        )
    if len(tradeoff.pareto_numbers) > 1:
        by_number = {point.number: point for point in tradeoff.points}
        front = [by_number[number] for number in tradeoff.pareto_numbers]
        figure.add_trace(
            go.Scatter(
                x=[point.accuracy_loss_percent for point in front],
                y=[point.throughput for point in front],
                mode="lines",
                line={"shape": "hv", "color": "#555555", "width": 1.5, "dash": "dot"},
                name="Pareto front",
                hoverinfo="skip",
            )
        )
    highlights = (
        ("reference", "diamond", "#000000"),
        ("best", "star", "#ffbf00"),
    )
    for role, symbol, colour in highlights:
        points = [point for point in tradeoff.points if role in point.role.split(", ")]
        if not points:
            continue
        figure.add_trace(
            go.Scatter(
                x=[point.accuracy_loss_percent for point in points],
                y=[point.throughput for point in points],
                mode="markers",
                name=role,
                marker={
                    "color": colour,
                    "size": 16,
                    "symbol": symbol,
                    "line": {"color": "#333333", "width": 1},
                },
                hovertext=[point.hover for point in points],
                hoverinfo="text",
            )
        )
    if not tradeoff.points:
        _annotate_empty(figure, "No measured trial yet.")
    figure.update_layout(
        xaxis_title="accuracy loss vs reference (%)",
        yaxis_title="throughput (samples/s)",
        yaxis_rangemode="tozero",
        hoverlabel={"align": "left"},
    )
    return figure


def _annotate_empty(figure: go.Figure, text: str) -> None:
    figure.add_annotation(
        text=text,
        xref="paper",
        yref="paper",
        x=0.5,
        y=0.5,
        showarrow=False,
        font={"size": 16},
    )


# --- 5. summary: versions, dates, failures, the best configuration -------------------------

LIBRARIES: tuple[str, ...] = ("autotune", "torch", "deepspeed", "optuna")
"""The libraries whose versions the report lists (read by ``report_info``)."""

FAILURE_CLASSES: tuple[str, ...] = ("oom", "timeout", "diverged", "error")
"""The usual failure classes: a failed trial's reason starts with one of them and a colon."""


def failure_class(reason: str) -> str:
    """A failed trial's class: the reason's first word before ':', else 'error'.

    Args:
        reason: The trial's reason, e.g. "oom: CUDA out of memory".

    Returns:
        The class in lower case, e.g. "oom"; "error" when the reason has no class.
    """
    head, colon, _ = reason.partition(":")
    words = head.split()
    if not colon or len(words) != 1:
        return "error"
    return words[0].lower()


@dataclasses.dataclass(frozen=True)
class SummaryInfo:
    """Facts about the run beside the header's: versions, dates, failures, best config.

    Attributes:
        versions: (library, version) pairs; the version is "not installed" when missing.
        first_trial: When the first trial started, formatted, or None.
        last_trial: When the last trial finished (or started), formatted, or None.
        failure_counts: (failure class, count) pairs over failed trials, most common first.
        best_number: The best trial, or None.
        best_ds_config: The best trial's DeepSpeed config as indented JSON, or None.
        best_launch_command: The best trial's launch command, or None.
        best_launch: The best trial's launch recipe as indented JSON, or None.
    """

    versions: tuple[tuple[str, str], ...]
    first_trial: str | None
    last_trial: str | None
    failure_counts: tuple[tuple[str, int], ...]
    best_number: int | None
    best_ds_config: str | None
    best_launch_command: str | None
    best_launch: str | None


def _timestamp(value: Any) -> pd.Timestamp | None:
    if _is_missing(value):
        return None
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        return None
    return None if _is_missing(stamp) else stamp


def _format_time(stamp: pd.Timestamp | None) -> str | None:
    return None if stamp is None else stamp.strftime("%Y-%m-%d %H:%M:%S")


def _get_summary_info(frame: pd.DataFrame, info: dict[str, Any]) -> SummaryInfo:
    """Gathers versions and the best configuration from ``info``, dates and failures from
    ``frame``."""
    rows = _records(frame)
    versions = info.get("versions") or {}
    starts = [s for s in (_timestamp(row.get("datetime_start")) for row in rows) if s]
    ends = [
        s
        for s in (
            _timestamp(row.get("datetime_complete")) or _timestamp(row.get("datetime_start"))
            for row in rows
        )
        if s
    ]
    failures = Counter(
        failure_class(_text(row.get("reason"))) for row in rows if row.get("status") == "failed"
    )
    ds_config = info.get("best_ds_config")
    launch = info.get("best_launch")
    command = launch.get("command") if isinstance(launch, dict) else None
    return SummaryInfo(
        versions=tuple(
            (name, _text(version) or "not installed") for name, version in versions.items()
        ),
        first_trial=_format_time(min(starts)) if starts else None,
        last_trial=_format_time(max(ends)) if ends else None,
        failure_counts=tuple(failures.most_common()),
        best_number=_info_int(info, "best_number"),
        best_ds_config=None if not ds_config else json.dumps(ds_config, indent=2),
        best_launch_command=None if command is None else str(command),
        best_launch=None if not launch else json.dumps(launch, indent=2, default=str),
    )


def _render_summary(summary: SummaryInfo) -> str:
    """The run facts as a list, then the best configuration in <pre> blocks."""
    esc = html.escape
    facts = []
    if summary.first_trial or summary.last_trial:
        facts.append(
            (
                "trial dates",
                f"{esc(summary.first_trial or _MISSING)} to {esc(summary.last_trial or _MISSING)}",
            )
        )
    failures = ", ".join(f"{count} {esc(name)}" for name, count in summary.failure_counts)
    facts.append(("failures", failures or "none"))
    if summary.versions:
        facts.append(
            ("versions", ", ".join(f"{esc(name)} {esc(v)}" for name, v in summary.versions))
        )
    items = "\n".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts)
    parts = [f'<dl class="facts">\n{items}\n</dl>']
    parts.append("<h2>Best configuration</h2>")
    if summary.best_ds_config is None:
        parts.append('<p class="notice">No feasible trial to export yet.</p>')
        return "\n".join(parts)
    parts.append(
        f"<p>Trial {summary.best_number}: <code>ds_config.json</code> as "
        "<code>autotune export</code> writes it, and how to launch it.</p>"
    )
    parts.append(f'<pre class="config">{esc(summary.best_ds_config)}</pre>')
    if summary.best_launch_command:
        parts.append(f'<pre class="command">{esc(summary.best_launch_command)}</pre>')
    if summary.best_launch:
        parts.append(
            "<details><summary>launch.json (processes, pipeline layout, data loading)"
            f'</summary><pre class="config">{esc(summary.best_launch)}</pre></details>'
        )
    return "\n".join(parts)


# --- 6. parallel coordinates ---------------------------------------------------------------


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


def _ok_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with status 'ok' and a throughput (repeats would count a trial twice)."""
    return [row for row in rows if row.get("status") == "ok" and _is_measured(row)]


def _searched(rows: list[dict[str, Any]]) -> list[str]:
    """The settings that take more than one value over ``rows``, in display order."""
    return [
        name
        for name in SETTINGS
        if len({_format_value(row.get(name)) for row in rows} - {_MISSING}) > 1
    ]


_MAX_TICKS = 12


def _integer_ticks(values: Any) -> tuple[float, ...]:
    """The distinct values as ticks when they are few integers (so an axis of ZeRO stages
    shows 0, 1, 2 and not 0.5), else ()."""
    distinct = sorted({v for v in (_float(value) for value in values) if v is not None})
    if len(distinct) > _MAX_TICKS or not all(v.is_integer() for v in distinct):
        return ()
    return tuple(distinct)


def _is_numeric_setting(rows: list[dict[str, Any]], name: str) -> bool:
    values = [row.get(name) for row in rows if not _is_missing(row.get(name))]
    return all(_float(v) is not None and not isinstance(v, (bool, np.bool_)) for v in values)


def _get_parallel_info(frame: pd.DataFrame, info: dict[str, Any]) -> ParallelInfo:
    """Gathers the searched settings of 'ok' trials; categorical ones become 0, 1, ..."""
    rows = _ok_rows(_records(frame))
    dimensions = []
    for name in _searched(rows):
        if _is_numeric_setting(rows, name):
            values = tuple(
                math.nan if _float(row.get(name)) is None else float(row[name]) for row in rows
            )
            ticks = _integer_ticks(values)
            dimensions.append(
                Dimension(name, values, ticks, tuple(_format_value(t) for t in ticks))
            )
            continue
        labels = sorted({_format_value(row.get(name)) for row in rows})
        index = {label: float(i) for i, label in enumerate(labels)}
        values = tuple(index[_format_value(row.get(name))] for row in rows)
        dimensions.append(
            Dimension(name, values, tuple(index[label] for label in labels), tuple(labels))
        )
    return ParallelInfo(
        numbers=tuple(row["number"] for row in rows),
        dimensions=tuple(dimensions),
        throughputs=tuple(float(row["throughput"]) for row in rows),
    )


def _render_parallel(parallel: ParallelInfo) -> go.Figure:
    """Parallel coordinates, one line per trial, coloured by throughput."""
    figure = go.Figure()
    if not parallel.dimensions:
        _annotate_empty(figure, "Fewer than two measured trials differ in a setting.")
        figure.update_xaxes(visible=False)
        figure.update_yaxes(visible=False)
        return figure
    dimensions = []
    for dimension in parallel.dimensions:
        entry: dict[str, Any] = {
            "label": _SETTING_LABELS.get(dimension.name, dimension.name),
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


# --- 7. parameter importances --------------------------------------------------------------

MIN_TRIALS_FOR_IMPORTANCE = 5
"""Parameter importances need at least this many 'ok' trials."""


@dataclasses.dataclass(frozen=True)
class ImportanceInfo:
    """How much each setting explains throughput (Optuna's fANOVA).

    Attributes:
        names: The settings, most important first.
        importances: Per setting, its share of the explained variance (they sum to 1).
        note: A sentence shown instead of the plot when there are no importances, else None.
    """

    names: tuple[str, ...]
    importances: tuple[float, ...]
    note: str | None


def _get_importance_info(frame: pd.DataFrame, info: dict[str, Any]) -> ImportanceInfo:
    """Reads ``info['importances']`` (computed from the study by ``report_info``)."""
    importances = info.get("importances") or {}
    pairs = sorted(
        ((str(name), value) for name, value in importances.items() if _float(value) is not None),
        key=lambda pair: -float(pair[1]),
    )
    if pairs:
        return ImportanceInfo(
            tuple(name for name, _ in pairs), tuple(float(v) for _, v in pairs), None
        )
    ok = len(_ok_rows(_records(frame)))
    if ok < MIN_TRIALS_FOR_IMPORTANCE:
        note = (
            f"Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} measured trials "
            f"({ok} so far)."
        )
    else:
        note = "Parameter importances are not available for this study."
    return ImportanceInfo((), (), note)


def _render_importance(importance: ImportanceInfo) -> go.Figure:
    """A horizontal bar per setting, the most important on top."""
    figure = go.Figure(
        go.Bar(
            x=list(importance.importances)[::-1],
            y=[_SETTING_LABELS.get(name, name) for name in importance.names][::-1],
            orientation="h",
            marker={"color": "#1f77b4"},
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    figure.update_layout(xaxis_title="importance for throughput (fANOVA)", xaxis_range=[0, 1])
    return figure


# --- 8. slices -----------------------------------------------------------------------------


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


def _get_slice_info(frame: pd.DataFrame, info: dict[str, Any]) -> SliceInfo:
    """Gathers each searched setting's values and the throughput of 'ok' trials."""
    rows = _ok_rows(_records(frame))
    budget = _budget(info)
    slices = []
    for name in _searched(rows):
        numeric = _is_numeric_setting(rows, name)
        values = tuple(
            (_float(row.get(name)) if numeric else _format_value(row.get(name))) for row in rows
        )
        slices.append(Slice(name, values, numeric, _integer_ticks(values) if numeric else ()))
    return SliceInfo(
        numbers=tuple(row["number"] for row in rows),
        throughputs=tuple(float(row["throughput"]) for row in rows),
        feasible=tuple(_is_feasible(row, budget) for row in rows),
        slices=tuple(slices),
    )


def _slice_rows(slices: SliceInfo) -> int:
    return max(1, math.ceil(len(slices.slices) / _SLICE_COLUMNS))


def _render_slices(slices: SliceInfo) -> go.Figure:
    """One small scatter per setting, sharing the throughput axis."""
    if not slices.slices:
        figure = go.Figure()
        _annotate_empty(figure, "Fewer than two measured trials differ in a setting.")
        return figure
    rows = _slice_rows(slices)
    figure = make_subplots(
        rows=rows,
        cols=_SLICE_COLUMNS,
        shared_yaxes=True,
        subplot_titles=[_SETTING_LABELS.get(s.name, s.name) for s in slices.slices],
        vertical_spacing=0.5 / rows if rows > 1 else 0.1,
        horizontal_spacing=0.04,
    )
    colours = [_COLOURS["feasible" if ok else "over budget"] for ok in slices.feasible]
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
        axis: dict[str, Any] = {"type": "category"} if not item.numeric else {}
        if item.numeric and item.name in _LOG_SETTINGS:
            axis["type"] = "log"
        if item.ticks:
            axis.update(tickvals=list(item.ticks), ticktext=[_format_value(t) for t in item.ticks])
        figure.update_xaxes(row=row + 1, col=col + 1, **axis)
    for row in range(rows):
        figure.update_yaxes(title_text="samples/s", row=row + 1, col=1, rangemode="tozero")
    return figure


# --- 9. peak memory ------------------------------------------------------------------------


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


def _get_memory_info(frame: pd.DataFrame, info: dict[str, Any]) -> MemoryInfo:
    """Gathers micro-batch size, peak memory and ZeRO stage of 'ok' trials."""
    points = []
    for row in _ok_rows(_records(frame)):
        micro = _float(row.get("micro_batch_size"))
        memory = _float(row.get("peak_memory_bytes"))
        if micro is None or memory is None:
            continue
        stage = _format_value(row.get("zero_stage"))
        points.append(MemoryPoint(row["number"], micro, memory / 2**30, stage))
    return MemoryInfo(tuple(points))


def _render_memory(memory: MemoryInfo) -> go.Figure:
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
    ticks = _integer_ticks(point.micro_batch_size for point in memory.points)
    if ticks:
        figure.update_xaxes(tickvals=list(ticks), ticktext=[_format_value(t) for t in ticks])
    if not memory.points:
        _annotate_empty(figure, "No measured peak memory yet.")
    figure.update_layout(
        xaxis_title="micro batch size (samples per rank per step)",
        xaxis_type="log",
        yaxis_title="peak memory (GiB)",
        yaxis_rangemode="tozero",
        legend_title_text="ZeRO stage",
    )
    return figure


# --- 10. timeline --------------------------------------------------------------------------


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


def _get_timeline_info(frame: pd.DataFrame, info: dict[str, Any]) -> TimelineInfo:
    """Splits each trial's wall time into launch/setup, training and eval."""
    numbers, setup, train, evals, statuses = [], [], [], [], []
    for row in _records(frame):
        wall = _float(row.get("wall_seconds"))
        if wall is None or row.get("status") == "repeat":
            continue
        train_s = _float(row.get("train_seconds"))
        eval_s = _float(row.get("eval_seconds"))
        if train_s is None or eval_s is None:
            train_s = eval_s = 0.0
        numbers.append(row["number"])
        setup.append(max(0.0, wall - train_s - eval_s))
        train.append(train_s)
        evals.append(eval_s)
        statuses.append(_text(row.get("status")))
    return TimelineInfo(tuple(numbers), tuple(setup), tuple(train), tuple(evals), tuple(statuses))


def _timeline_height(timeline: TimelineInfo) -> int:
    return int(min(2400, max(_FIGURE_HEIGHT, 16 * len(timeline.numbers) + 140)))


def _render_timeline(timeline: TimelineInfo) -> go.Figure:
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
        _annotate_empty(figure, "No trial has run yet.")
    figure.update_layout(
        barmode="stack",
        xaxis_title="wall time (s)",
        yaxis={"autorange": "reversed", "type": "category"},
    )
    return figure


# --- 11. failed and infeasible trials ------------------------------------------------------

LOG_TAIL_LINES = 5
"""How many of a failed trial's last log lines the report shows."""


def log_tail(path: str | Path, lines: int = LOG_TAIL_LINES, max_bytes: int = 65536) -> str:
    """The last ``lines`` non-empty lines of a text file, or "" when it cannot be read.

    Args:
        path: The log file.
        lines: How many lines to keep.
        max_bytes: Read at most this many bytes from the end of the file.

    Returns:
        The lines joined by newlines, decoded as UTF-8 with replacement characters.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


@dataclasses.dataclass(frozen=True)
class FailureRow:
    """One trial that did not give a measurement.

    Attributes:
        number: The Optuna trial number.
        status: 'failed' or 'infeasible'.
        failure_class: For failed trials, :func:`failure_class` of the reason; else the status.
        reason: The reason, raw text.
        log_tail: For failed trials, the last lines of the log; raw text, "" when unknown.
    """

    number: int
    status: str
    failure_class: str
    reason: str
    log_tail: str


@dataclasses.dataclass(frozen=True)
class FailureInfo:
    """The failed and infeasible trials.

    Attributes:
        rows: Failed trials first, then infeasible ones, each by number.
    """

    rows: tuple[FailureRow, ...]


def _get_failure_info(frame: pd.DataFrame, info: dict[str, Any]) -> FailureInfo:
    """Gathers the reason (and log tail) of every failed or infeasible trial."""
    failed, infeasible = [], []
    for row in _records(frame):
        status = _text(row.get("status"))
        reason = _text(row.get("reason")).strip()
        if status == "failed":
            failed.append(
                FailureRow(
                    row["number"],
                    status,
                    failure_class(reason),
                    reason,
                    _text(row.get("log_tail")).rstrip(),
                )
            )
        elif status == "infeasible":
            infeasible.append(FailureRow(row["number"], status, status, reason, ""))
    return FailureInfo(tuple(failed + infeasible))


def _render_failures(failures: FailureInfo) -> str:
    """The failed and infeasible trials as an HTML table, log tails in <pre>."""
    esc = html.escape
    parts = ["<h2>Failed and infeasible trials</h2>"]
    if not failures.rows:
        parts.append("<p>None.</p>")
        return "\n".join(parts)
    lines = []
    for row in failures.rows:
        log = f'<pre class="log">{esc(row.log_tail)}</pre>' if row.log_tail else ""
        lines.append(
            f'<tr class="cat-{esc(row.status)}"><td>{row.number}</td><td>{esc(row.status)}</td>'
            f"<td>{esc(row.failure_class)}</td>"
            f'<td class="reason">{esc(row.reason)}</td><td>{log}</td></tr>'
        )
    body = "\n".join(lines)
    parts.append(
        '<div class="scroll"><table class="failures">\n<thead><tr><th>trial</th><th>status</th>'
        "<th>class</th><th>reason</th><th>last log lines</th></tr></thead>\n"
        f"<tbody>\n{body}\n</tbody>\n</table></div>"
    )
    return "\n".join(parts)


# --- 12. all trials -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrialTableInfo:
    """The table of all trials, as formatted text.

    Attributes:
        columns: Column keys: 'trial', 'role', 'status', the settings present in the frame,
            then the results and 'reason'.
        rows: One tuple of formatted cells per trial, best first: feasible trials by
            throughput (highest first), then trials over the budget by throughput, then the
            rest by number; raw text, not yet escaped.
        highlights: Per row, 'reference', 'best', 'reference, best' or ''.
        categories: Per row, one of :data:`CATEGORIES`.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    highlights: tuple[str, ...]
    categories: tuple[str, ...]


_RESULT_COLUMNS = (
    "throughput (samples/s)",
    "accuracy loss",
    "peak memory",
    "wall time",
)


def _get_table_info(frame: pd.DataFrame, info: dict[str, Any]) -> TrialTableInfo:
    """Gathers one line of formatted cells per trial, best first."""
    budget = _budget(info)
    rows = sorted(_records(frame), key=lambda row: _best_first_key(row, budget))
    roles = _roles(_reference_number(rows, info), _info_int(info, "best_number"))
    settings = tuple(name for name in SETTINGS if name in frame.columns)
    columns = ("trial", "role", "status", *settings, *_RESULT_COLUMNS, "reason")
    cells = []
    for row in rows:
        measured = _is_measured(row)
        throughput = _float(row.get("throughput")) if measured else None
        loss = _float(row.get("accuracy_loss")) if measured else None
        cells.append(
            (
                str(row["number"]),
                _text(row.get("role")),
                _text(row.get("status")),
                *(_format_value(row.get(name)) for name in settings),
                _format_throughput(throughput),
                _format_percent(loss),
                _format_bytes(_float(row.get("peak_memory_bytes"))),
                _format_seconds(_float(row.get("wall_seconds"))),
                _text(row.get("reason")).strip(),
            )
        )
    return TrialTableInfo(
        columns=columns,
        rows=tuple(cells),
        highlights=tuple(roles.get(row["number"], "") for row in rows),
        categories=tuple(_category(row, budget) for row in rows),
    )


def _best_first_key(row: dict[str, Any], budget: float) -> tuple[int, float, int]:
    """Sort key: feasible trials by throughput, then over budget by throughput, then the rest."""
    category = _category(row, budget)
    throughput = _float(row.get("throughput")) or 0.0
    rank = {"feasible": 0, "over budget": 1}.get(category, 2)
    return (rank, -throughput if rank < 2 else 0.0, row["number"])


def _render_table(table: TrialTableInfo) -> str:
    """The table of all trials as HTML."""
    esc = html.escape
    heads = []
    for column in table.columns:
        label = esc(_SETTING_LABELS.get(column, column))
        title = _SETTING_HELP.get(column)
        attr = f' title="{esc(column)}: {esc(title)}"' if title else ""
        heads.append(f"<th{attr}>{label}</th>")
    reason_index = table.columns.index("reason")
    lines = []
    for cells, highlight, category in zip(
        table.rows, table.highlights, table.categories, strict=True
    ):
        tds = []
        for index, cell in enumerate(cells):
            css = ' class="reason"' if index == reason_index else ""
            tds.append(f"<td{css}>{esc(cell)}</td>")
        classes = ["cat-" + category.replace(" ", "-")]
        classes += [f"role-{role}" for role in highlight.split(", ") if role]
        lines.append(f'<tr class="{" ".join(classes)}">{"".join(tds)}</tr>')
    if not lines:
        lines.append(f'<tr><td colspan="{len(table.columns)}">No trials yet.</td></tr>')
    body = "\n".join(lines)
    return (
        "<h2>All trials</h2>\n"
        '<p class="hint">Best first: feasible trials by throughput, then trials over the '
        "accuracy budget, then the rest.</p>\n"
        f'<div class="scroll"><table class="trials">\n<thead><tr>{"".join(heads)}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody>\n</table></div>"
    )


# --- the page ------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.3em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; }
p.warning { background: #fff3cd; border: 1px solid #e0b000; padding: 0.6em 0.8em; }
p.notice { background: #eef3fb; border: 1px solid #9bb5de; padding: 0.6em 0.8em; }
p.hint { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.88em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
thead th { background: #f4f4f4; }
table.comparison tr.differs td { background: #fff8dc; font-weight: 600; }
div.scroll { overflow-x: auto; }
table.trials td.reason { min-width: 18em; max-width: 36em; white-space: pre-wrap; word-break: break-word; }
tr.cat-feasible td:nth-child(3) { color: #2ca02c; }
tr.cat-over-budget td:nth-child(3) { color: #c05800; }
tr.cat-infeasible td:nth-child(3) { color: #666; }
tr.cat-failed td:nth-child(3) { color: #d62728; }
tr.role-best td { background: #fff8dc; }
tr.role-reference td:first-child { font-weight: 700; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 0.5em 0.8em; overflow-x: auto; }
pre.config { max-height: 28em; }
pre.log { margin: 0; padding: 0.2em 0.4em; font-size: 0.85em; max-width: 60em; white-space: pre-wrap; }
p.note { color: #555; font-style: italic; }
"""

_FIGURE_HEIGHT = 440


def _figure_html(
    figure: go.Figure, div_id: str, include_plotlyjs: bool, height: int = _FIGURE_HEIGHT
) -> str:
    figure.update_layout(template="plotly_white", height=height)
    if figure.layout.margin.t is None:
        figure.update_layout(margin={"t": 30})
    html_text: str = pio.to_html(
        figure,
        include_plotlyjs=include_plotlyjs,
        full_html=False,
        div_id=div_id,
        default_height=f"{height}px",
        config={"displaylogo": False, "responsive": True},
    )
    return html_text


def render_report(frame: pd.DataFrame, info: dict[str, Any]) -> str:
    """Builds the report as one self-contained HTML page (plotly.js embedded once).

    Args:
        frame: One row per Optuna trial. Columns read: ``number``, ``role``, ``status``, the
            settings in :data:`SETTINGS` (those present are shown), ``throughput``,
            ``accuracy_loss``, ``feasible``, ``peak_memory_bytes``, ``step_time_p50``,
            ``step_time_p90``, ``wall_seconds``, ``train_seconds``, ``eval_seconds``,
            ``reason``, ``datetime_start``, ``datetime_complete`` and ``log_tail`` (the last
            lines of a failed trial's log), and for pipeline trials ``partition``,
            ``stage_compute_seconds``, ``stage_comm_seconds`` and ``stage_predicted_seconds``
            (see :mod:`autotune._report_stages`). Missing columns are shown as dashes; an empty
            frame renders empty plots.
        info: Study facts: ``study``, ``model``, ``machine``, ``train_samples``,
            ``max_accuracy_loss``, ``reference_metric``, ``reference_noise``, ``metric_name``,
            ``eval_source``, ``best_number``, ``reference_number``, ``versions`` (library ->
            version), ``best_ds_config`` and ``best_launch`` (the best trial's exported
            config and launch recipe) and ``importances`` (setting -> importance, or None).

    Returns:
        The HTML text.
    """
    header = _get_header_info(frame, info)
    importance = _get_importance_info(frame, info)
    slices = _get_slice_info(frame, info)
    timeline = _get_timeline_info(frame, info)
    stages = get_stages_info(frame)
    importance_part: go.Figure | str = (
        _render_importance(importance)
        if importance.note is None
        else f'<p class="note">{html.escape(importance.note)}</p>'
    )
    figures: tuple[tuple[str, str, go.Figure | str, int], ...] = (
        (
            "Throughput per trial",
            "autotune-history",
            _render_history(_get_history_info(frame, info)),
            _FIGURE_HEIGHT,
        ),
        (
            "Throughput vs accuracy loss",
            "autotune-tradeoff",
            _render_tradeoff(_get_tradeoff_info(frame, info)),
            _FIGURE_HEIGHT,
        ),
        (
            "Searched settings (parallel coordinates, coloured by throughput)",
            "autotune-parallel",
            _render_parallel(_get_parallel_info(frame, info)),
            _FIGURE_HEIGHT,
        ),
        ("Parameter importances", "autotune-importance", importance_part, 320),
        (
            "Throughput against each setting",
            "autotune-slices",
            _render_slices(slices),
            max(_FIGURE_HEIGHT, 300 * _slice_rows(slices)),
        ),
        (
            "Peak memory vs micro-batch size",
            "autotune-memory",
            _render_memory(_get_memory_info(frame, info)),
            _FIGURE_HEIGHT,
        ),
        (
            "Pipeline stages (balance at a glance)",
            "autotune-stages",
            render_stages(stages),
            stages_height(stages),
        ),
        (
            "Where the time went",
            "autotune-timeline",
            _render_timeline(timeline),
            _timeline_height(timeline),
        ),
    )
    sections = [
        _render_header(header),
        _render_summary(_get_summary_info(frame, info)),
        _render_best(_get_best_info(frame, info)),
    ]
    plotlyjs_included = False
    for title, div_id, part, height in figures:
        sections.append(f"<h2>{title}</h2>")
        if isinstance(part, str):
            sections.append(part)
            continue
        sections.append(_figure_html(part, div_id, not plotlyjs_included, height))
        plotlyjs_included = True
    sections.append(_render_failures(_get_failure_info(frame, info)))
    sections.append(_render_table(_get_table_info(frame, info)))
    body = "\n".join(sections)
    title = html.escape(f"autotune report: {header.study}")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def write_report(frame: pd.DataFrame, info: dict[str, Any], path: str | Path) -> Path:
    """Renders the report and writes it to ``path``, creating parent folders.

    Args:
        frame: One row per trial, as for :func:`render_report`.
        info: Study facts, as for :func:`render_report`.
        path: Where to write the HTML file.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(frame, info), encoding="utf-8")
    return path
