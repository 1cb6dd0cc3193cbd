"""The report's parameter-importance figure: how much each setting explains throughput
(Optuna's fANOVA, computed from the study by ``report_info``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from autotune._space import setting_label
from autotune.report._common import frame_rows, ok_rows
from autotune.report._format import as_float

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


def get_importance_info(frame: pd.DataFrame, info: dict[str, Any]) -> ImportanceInfo:
    """Reads ``info['importances']`` (computed from the study by ``report_info``)."""
    importances = info.get("importances") or {}
    pairs = sorted(
        ((str(name), value) for name, value in importances.items() if as_float(value) is not None),
        key=lambda pair: -float(pair[1]),
    )
    if pairs:
        return ImportanceInfo(
            tuple(name for name, _ in pairs), tuple(float(v) for _, v in pairs), None
        )
    ok = len(ok_rows(frame_rows(frame)))
    if ok < MIN_TRIALS_FOR_IMPORTANCE:
        note = (
            f"Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} measured trials "
            f"({ok} so far)."
        )
    else:
        note = "Parameter importances are not available for this study."
    return ImportanceInfo((), (), note)


def render_importance(importance: ImportanceInfo) -> go.Figure:
    """A horizontal bar per setting, the most important on top."""
    figure = go.Figure(
        go.Bar(
            x=list(importance.importances)[::-1],
            y=[setting_label(name) for name in importance.names][::-1],
            orientation="h",
            marker={"color": "#1f77b4"},
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    figure.update_layout(xaxis_title="importance for throughput (fANOVA)", xaxis_range=[0, 1])
    return figure
