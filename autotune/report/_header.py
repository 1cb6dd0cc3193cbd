"""The report's header: the study, the model, the machine, the budget and the trial counts."""

from __future__ import annotations

import dataclasses
import html
from collections import Counter
from typing import Any

import pandas as pd

from autotune._records import STATUS
from autotune.report._common import frame_rows, info_budget, info_int
from autotune.report._format import MISSING, as_float, as_text, format_metric, format_percent


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


def get_header_info(frame: pd.DataFrame, info: dict[str, Any]) -> HeaderInfo:
    """Gathers the header's facts from ``info`` and the status counts from ``frame``."""
    budget = info_budget(info)
    noise = as_float(info.get("reference_noise"))
    counts = Counter(as_text(row.get(STATUS)) or "unknown" for row in frame_rows(frame))
    return HeaderInfo(
        study=as_text(info.get("study")),
        model=as_text(info.get("model")),
        machine=as_text(info.get("machine")),
        train_samples=info_int(info, "train_samples"),
        metric_name=as_text(info.get("metric_name")) or "metric",
        reference_metric=as_float(info.get("reference_metric")),
        budget=budget,
        noise=noise,
        budget_below_noise=noise is not None and budget < noise,
        eval_source=as_text(info.get("eval_source")),
        status_counts=tuple(counts.most_common()),
    )


def render_header(header: HeaderInfo) -> str:
    """The title, the facts list and the noise warning as HTML."""
    esc = html.escape
    items = "\n".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in _facts(header))
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
            f"({format_percent(header.budget)}) is below the reference configuration's "
            f"seed-to-seed noise ({format_percent(header.noise)}), so whether a trial is "
            "within the budget is decided by noise. Consider a budget above the noise.</p>"
        )
    return "\n".join(parts)


def _facts(header: HeaderInfo) -> list[tuple[str, str]]:
    """(label, HTML value) pairs of the facts list."""
    esc = html.escape
    noise = (
        f" (reference seed-to-seed noise: {format_percent(header.noise)})"
        if header.noise is not None
        else " (reference seed-to-seed noise: not measured)"
    )
    samples = MISSING if header.train_samples is None else f"{header.train_samples:,}"
    counts = ", ".join(f"{count} {esc(status)}" for status, count in header.status_counts)
    return [
        ("model", f"<code>{esc(header.model)}</code>"),
        ("machine", esc(header.machine)),
        ("train samples", samples),
        (
            f"reference {esc(header.metric_name)}",
            format_metric(header.reference_metric),
        ),
        ("accuracy budget", f"{format_percent(header.budget)}{noise}"),
        (
            "trials",
            f"{sum(c for _, c in header.status_counts)}" + (f": {counts}" if counts else ""),
        ),
    ]
