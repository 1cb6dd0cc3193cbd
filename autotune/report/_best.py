"""The report's best-vs-reference table: the best feasible trial's settings and results beside
the reference configuration's."""

from __future__ import annotations

import dataclasses
import html
from typing import Any

import pandas as pd

from autotune._records import (
    ACCURACY_LOSS,
    EVAL_LOSS,
    PEAK_MEMORY_BYTES,
    REASON,
    SAMPLES_TRAINED,
    STATUS,
    STEP_TIME_P50,
    STEP_TIME_P90,
    THROUGHPUT,
    TOKENS_PER_SECOND,
    VERDICT_BY,
    VERDICT_CONFIDENCE,
    VERDICT_SEEDS,
)
from autotune._space import setting_help, setting_label
from autotune._verdict import EVAL_LOSS as EVAL_LOSS_DECIDED
from autotune.report._common import (
    FEASIBLE,
    NUMBER,
    SETTINGS,
    find_row,
    frame_rows,
    info_budget,
    info_int,
    is_measured,
    reference_number,
)
from autotune.report._format import (
    MISSING,
    as_float,
    as_text,
    format_bytes,
    format_percent,
    format_seconds,
    format_throughput,
    format_value,
)


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
        verdict: A sentence shown when the best is within the noise of the reference (the
            reference is then what is exported), else None.
    """

    reference_number: int | None
    best_number: int | None
    reference_throughput: float | None
    best_throughput: float | None
    speedup: float | None
    rows: tuple[ComparisonRow, ...]
    message: str | None
    verdict: str | None = None


def get_best_info(frame: pd.DataFrame, info: dict[str, Any]) -> BestInfo:
    """Gathers the best and reference trials' settings and results side by side."""
    rows = frame_rows(frame)
    reference = find_row(rows, reference_number(rows, info))
    best = find_row(rows, info_int(info, "best_number"))
    ref_row = reference if reference is not None else {}
    best_row = best if best is not None else {}
    unit = str(info.get("rate_unit") or "samples/s")
    reference_throughput = _judged_throughput(ref_row, unit) if is_measured(ref_row) else None
    best_throughput = _judged_throughput(best_row, unit) if is_measured(best_row) else None
    # Measured side by side in confirmation rounds where the frame has it (see autotune.study).
    speedup = as_float(best_row.get("speedup")) if best is not None else None
    if speedup is None and reference_throughput and best_throughput is not None:
        speedup = best_throughput / reference_throughput
    table = [
        *_trial_rows(reference, best),
        *_setting_rows(reference, best),
        *_result_rows(ref_row, best_row, (reference_throughput, best_throughput), speedup, unit),
    ]
    message = None
    if best is None:
        message = _no_best_message(rows, info, reference, reference_throughput)
    return BestInfo(
        reference_number=None if reference is None else ref_row[NUMBER],
        best_number=None if best is None else best_row[NUMBER],
        reference_throughput=reference_throughput,
        best_throughput=best_throughput,
        speedup=speedup,
        rows=tuple(table),
        message=message,
        verdict=as_text(info.get("verdict")) or None,
    )


def _trial_rows(
    reference: dict[str, Any] | None, best: dict[str, Any] | None
) -> list[ComparisonRow]:
    """The trial numbers and statuses."""
    ref_row, best_row = reference or {}, best or {}
    return [
        ComparisonRow(
            "trial",
            MISSING if reference is None else str(ref_row[NUMBER]),
            MISSING if best is None else str(best_row[NUMBER]),
        ),
        ComparisonRow(
            "status",
            as_text(ref_row.get(STATUS)) or MISSING,
            as_text(best_row.get(STATUS)) or MISSING,
        ),
    ]


def _setting_rows(
    reference: dict[str, Any] | None, best: dict[str, Any] | None
) -> list[ComparisonRow]:
    """The settings either trial has, marked where they differ."""
    ref_row, best_row = reference or {}, best or {}
    table = []
    for name in SETTINGS:
        ref_value = format_value(ref_row.get(name))
        best_value = format_value(best_row.get(name))
        if ref_value == MISSING and best_value == MISSING:
            continue
        differs = reference is not None and best is not None and ref_value != best_value
        table.append(ComparisonRow(name, ref_value, best_value, differs))
    return table


def _result_rows(
    ref_row: dict[str, Any],
    best_row: dict[str, Any],
    judged: tuple[float | None, float | None],
    speedup: float | None,
    unit: str,
) -> list[ComparisonRow]:
    """Throughput (in the study's ``unit``, judged over its windows; the other unit's figure
    from the trial's own window, where measured), its windows, the speed-up, accuracy loss,
    memory and step times."""
    reference_throughput, best_throughput = judged
    other, other_unit = (
        (TOKENS_PER_SECOND, "tokens/s") if unit == "samples/s" else (THROUGHPUT, "samples/s")
    )
    own = [as_float(row.get(other)) if is_measured(row) else None for row in (ref_row, best_row)]
    other_rows = [ComparisonRow(other_unit, format_throughput(own[0]), format_throughput(own[1]))]
    return [
        ComparisonRow(
            f"throughput ({unit})",
            format_throughput(reference_throughput),
            format_throughput(best_throughput),
        ),
        *(other_rows if any(value is not None for value in own) else []),
        ComparisonRow(f"timed windows ({unit})", _windows(ref_row), _windows(best_row)),
        ComparisonRow(
            "speed-up vs reference",
            "1.00×" if reference_throughput else MISSING,
            MISSING if speedup is None else f"{speedup:.2f}×{_side_by_side(best_row)}",
        ),
        ComparisonRow(
            "accuracy loss",
            format_percent(as_float(ref_row.get(ACCURACY_LOSS))),
            format_percent(as_float(best_row.get(ACCURACY_LOSS))),
        ),
        ComparisonRow("accuracy verdict", _verdict(ref_row, True), _verdict(best_row, False)),
        ComparisonRow(
            "samples trained",
            _count(ref_row.get(SAMPLES_TRAINED)),
            _count(best_row.get(SAMPLES_TRAINED)),
        ),
        ComparisonRow(
            "eval loss (mean of its seeds)",
            _number(ref_row.get(EVAL_LOSS)),
            _number(best_row.get(EVAL_LOSS)),
        ),
        ComparisonRow(
            "peak memory",
            format_bytes(as_float(ref_row.get(PEAK_MEMORY_BYTES))),
            format_bytes(as_float(best_row.get(PEAK_MEMORY_BYTES))),
        ),
        ComparisonRow("step time p50 / p90", _step_times(ref_row), _step_times(best_row)),
    ]


def _no_best_message(
    rows: list[dict[str, Any]],
    info: dict[str, Any],
    reference: dict[str, Any] | None,
    reference_throughput: float | None,
) -> str:
    """Why the best column is empty."""
    best_number = info_int(info, "best_number")
    if best_number is not None:
        return f"The best trial ({best_number}) is not in the trial table."
    if not rows:
        return "No feasible trial yet: no trial has run."
    over = sum(1 for row in rows if is_measured(row))
    message = (
        f"No feasible trial yet: none of the {len(rows)} trials finished within the "
        f"accuracy budget of {format_percent(info_budget(info))}"
        + (f" ({over} finished over the budget)." if over else ".")
    )
    if reference is not None and reference_throughput is None:
        reason = as_text(reference.get(REASON)).strip()
        message += " The reference configuration has no measured throughput" + (
            f": {reason}" if reason else "."
        )
    return message


def _verdict(row: dict[str, Any], reference: bool) -> str:
    """How the accuracy verdict was reached: "reference (3 seeds)", "96% sure (1 seed)", "the
    eval loss decided (3 seeds)"."""
    seeds = as_float(row.get(VERDICT_SEEDS))
    if seeds is None:
        return MISSING
    count = f"{seeds:.0f} seed{'' if seeds == 1 else 's'}"
    if reference:
        return f"the reference ({count})"
    if row.get(VERDICT_BY) == EVAL_LOSS_DECIDED:
        return f"the eval loss decided ({count})"
    confidence = as_float(row.get(VERDICT_CONFIDENCE))
    if confidence is None:
        return count
    sure = confidence if row.get(FEASIBLE) else 1.0 - confidence
    return f"{sure:.0%} sure ({count})"


def _count(value: Any) -> str:
    number = as_float(value)
    return MISSING if number is None else f"{number:,.0f}"


def _number(value: Any) -> str:
    number = as_float(value)
    return MISSING if number is None else f"{number:.4g}"


def _side_by_side(row: dict[str, Any]) -> str:
    """' (median of 2 rounds side by side)' when the speed-up was measured that way."""
    pairs = row.get("speedup_runs")
    if not isinstance(pairs, list | tuple) or not pairs:
        return ""
    return f" (median of {len(pairs)} rounds side by side)"


def _judged_throughput(row: dict[str, Any], unit: str) -> float | None:
    """The median of the windows a trial's configuration was timed over (its own and its
    confirmation runs, in ``unit``), or its own figure in a frame without that column."""
    own = TOKENS_PER_SECOND if unit == "tokens/s" else THROUGHPUT
    return as_float(row.get("estimated_throughput")) or as_float(row.get(own))


def _windows(row: dict[str, Any]) -> str:
    runs = row.get("throughput_runs")
    if not isinstance(runs, list | tuple) or not runs:
        return MISSING
    return ", ".join(format_throughput(float(value)) for value in runs)


def _step_times(row: dict[str, Any]) -> str:
    p50 = as_float(row.get(STEP_TIME_P50))
    p90 = as_float(row.get(STEP_TIME_P90))
    if p50 is None and p90 is None:
        return MISSING
    return f"{format_seconds(p50)} / {format_seconds(p90)}"


def render_best(best: BestInfo) -> str:
    """The best-vs-reference table as HTML, with the sentence when there is no best trial."""
    esc = html.escape
    parts = ["<h2>Best vs reference</h2>"]
    if best.message:
        parts.append(f'<p class="notice">{esc(best.message)}</p>')
    if best.verdict:
        parts.append(f'<p class="notice verdict">{esc(best.verdict)}</p>')
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
        title = setting_help(row.label)
        label_cell = f'<th title="{esc(row.label)}: {esc(title)}">' if title else "<th>"
        cells = label_cell + esc(setting_label(row.label)) + "</th>"
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
