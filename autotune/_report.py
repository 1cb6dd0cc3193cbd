"""The interactive HTML report of a study: one self-contained file that works offline.

Each part of the report is built in two steps: a ``_get_X_info(frame, info)`` function gathers
the plain data (a small frozen dataclass) and a ``_render_X`` function only draws it. Tests
check the gathered data without a browser.

The trial frame has one row per Optuna trial; see :func:`render_report` for the columns read.
"""

from __future__ import annotations

import dataclasses
import html
import math
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

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
    "wall_seconds",
    "reason",
    "datetime_start",
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
        reference_throughput: Samples/s of the reference, or None when not measured.
        best_throughput: Samples/s of the best trial, or None.
        speedup: best_throughput / reference_throughput, or None when either is missing.
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

    reference_throughput = _float(ref_row.get("throughput")) if _is_measured(ref_row) else None
    best_throughput = _float(best_row.get("throughput")) if _is_measured(best_row) else None
    speedup = None
    if reference_throughput and best_throughput is not None:
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
            "speed-up vs reference",
            "1.00×" if reference_throughput else _MISSING,
            _MISSING if speedup is None else f"{speedup:.2f}×",
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
    """

    points: tuple[HistoryPoint, ...]
    best_numbers: tuple[int, ...]
    best_throughputs: tuple[float, ...]


def _get_history_info(frame: pd.DataFrame, info: dict[str, Any]) -> HistoryInfo:
    """Gathers each trial's throughput and the running best over feasible trials."""
    rows = _records(frame)
    budget = _budget(info)
    roles = _roles(_reference_number(rows, info), _info_int(info, "best_number"))
    points = []
    best_numbers: list[int] = []
    best_throughputs: list[float] = []
    running_best: float | None = None
    for row in rows:
        measured = _float(row.get("throughput")) if _is_measured(row) else None
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
    return HistoryInfo(tuple(points), tuple(best_numbers), tuple(best_throughputs))


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
    """

    points: tuple[TradeoffPoint, ...]
    budget_percent: float
    noise_percent: float | None


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
    return TradeoffInfo(tuple(points), budget * 100, None if noise is None else noise * 100)


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


# --- 5. all trials -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrialTableInfo:
    """The table of all trials, as formatted text.

    Attributes:
        columns: Column keys: 'trial', 'role', 'status', the settings present in the frame,
            then the results and 'reason'.
        rows: One tuple of formatted cells per trial, by number; raw text, not yet escaped.
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
    """Gathers one line of formatted cells per trial."""
    rows = _records(frame)
    budget = _budget(info)
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
"""

_FIGURE_HEIGHT = 440


def _figure_html(figure: go.Figure, div_id: str, include_plotlyjs: bool) -> str:
    figure.update_layout(template="plotly_white", height=_FIGURE_HEIGHT, margin={"t": 30})
    html_text: str = pio.to_html(
        figure,
        include_plotlyjs=include_plotlyjs,
        full_html=False,
        div_id=div_id,
        default_height=f"{_FIGURE_HEIGHT}px",
        config={"displaylogo": False, "responsive": True},
    )
    return html_text


def render_report(frame: pd.DataFrame, info: dict[str, Any]) -> str:
    """Builds the report as one self-contained HTML page (plotly.js embedded once).

    Args:
        frame: One row per Optuna trial. Columns read: ``number``, ``role``, ``status``, the
            settings in :data:`SETTINGS` (those present are shown), ``throughput``,
            ``accuracy_loss``, ``feasible``, ``peak_memory_bytes``, ``step_time_p50``,
            ``step_time_p90``, ``wall_seconds`` and ``reason``. Missing columns are shown
            as dashes; an empty frame renders empty plots.
        info: Study facts: ``study``, ``model``, ``machine``, ``train_samples``,
            ``max_accuracy_loss``, ``reference_metric``, ``reference_noise``, ``metric_name``,
            ``eval_source``, ``best_number`` and ``reference_number``.

    Returns:
        The HTML text.
    """
    header = _get_header_info(frame, info)
    figures = (
        (
            "Throughput per trial",
            "autotune-history",
            _render_history(_get_history_info(frame, info)),
        ),
        (
            "Throughput vs accuracy loss",
            "autotune-tradeoff",
            _render_tradeoff(_get_tradeoff_info(frame, info)),
        ),
    )
    sections = [_render_header(header), _render_best(_get_best_info(frame, info))]
    for index, (title, div_id, figure) in enumerate(figures):
        sections.append(f"<h2>{title}</h2>")
        sections.append(_figure_html(figure, div_id, include_plotlyjs=index == 0))
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
