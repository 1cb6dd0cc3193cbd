"""The report's table of all trials, best first."""

from __future__ import annotations

import dataclasses
import html
from typing import Any

import pandas as pd

from autotune._records import (
    ACCURACY_LOSS,
    PEAK_MEMORY_BYTES,
    REASON,
    ROLE,
    STATUS,
    THROUGHPUT,
    TOKENS_PER_SECOND,
    WALL_SECONDS,
)
from autotune._space import setting_help, setting_label
from autotune.report._common import (
    NUMBER,
    SETTINGS,
    category,
    frame_rows,
    info_budget,
    is_measured,
    rate_only,
    roles_of,
)
from autotune.report._format import (
    as_float,
    as_text,
    format_bytes,
    format_percent,
    format_seconds,
    format_throughput,
    format_value,
)


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
_TOKENS_COLUMN = "tokens/s"
"""Shown after the throughput when some trial measured tokens (batches with input_ids)."""


def get_table_info(frame: pd.DataFrame, info: dict[str, Any]) -> TrialTableInfo:
    """Gathers one line of formatted cells per trial, best first."""
    budget = info_budget(info)
    rows = sorted(frame_rows(frame), key=lambda row: _best_first_key(row, budget))
    trial_roles = roles_of(rows, info)
    settings = tuple(name for name in SETTINGS if name in frame.columns)
    tokens = any(as_float(row.get(TOKENS_PER_SECOND)) is not None for row in rows)
    results = _RESULT_COLUMNS[:1] + (_TOKENS_COLUMN,) * tokens + _RESULT_COLUMNS[1:]
    return TrialTableInfo(
        columns=("trial", "role", "status", *settings, *results, "reason"),
        rows=tuple(_cells(row, settings, tokens) for row in rows),
        highlights=tuple(trial_roles.get(row[NUMBER], "") for row in rows),
        categories=tuple(category(row, budget) for row in rows),
    )


def _cells(row: dict[str, Any], settings: tuple[str, ...], tokens: bool) -> tuple[str, ...]:
    """One trial's formatted cells (with a tokens/s cell when ``tokens``)."""
    measured = is_measured(row)
    timed = measured or rate_only(row)  # stopped early, or a probe: a throughput, no loss
    throughput = as_float(row.get(THROUGHPUT)) if timed else None
    token_rate = as_float(row.get(TOKENS_PER_SECOND)) if timed else None
    loss = as_float(row.get(ACCURACY_LOSS)) if measured else None
    return (
        str(row[NUMBER]),
        as_text(row.get(ROLE)),
        as_text(row.get(STATUS)),
        *(format_value(row.get(name)) for name in settings),
        format_throughput(throughput),
        *((format_throughput(token_rate),) if tokens else ()),
        format_percent(loss),
        format_bytes(as_float(row.get(PEAK_MEMORY_BYTES))),
        format_seconds(as_float(row.get(WALL_SECONDS))),
        as_text(row.get(REASON)).strip(),
    )


def _best_first_key(row: dict[str, Any], budget: float) -> tuple[int, float, int]:
    """Sort key: feasible trials by throughput, then over budget by throughput, then the rest."""
    throughput = as_float(row.get(THROUGHPUT)) or 0.0
    ranks = {"feasible": 0, "over budget": 1, "stopped early": 2, "probed": 3}
    rank = ranks.get(category(row, budget), 4)
    return (rank, -throughput if rank < 4 else 0.0, row[NUMBER])


def render_table(table: TrialTableInfo) -> str:
    """The table of all trials as HTML."""
    esc = html.escape
    heads = []
    for column in table.columns:
        title = setting_help(column)
        attr = f' title="{esc(column)}: {esc(title)}"' if title else ""
        heads.append(f"<th{attr}>{esc(setting_label(column))}</th>")
    reason_index = table.columns.index("reason")
    lines = []
    for cells, highlight, row_category in zip(
        table.rows, table.highlights, table.categories, strict=True
    ):
        tds = []
        for index, cell in enumerate(cells):
            css = ' class="reason"' if index == reason_index else ""
            tds.append(f"<td{css}>{esc(cell)}</td>")
        classes = ["cat-" + row_category.replace(" ", "-")]
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
