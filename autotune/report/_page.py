"""The report's page: its sections in order, each figure embedded (plotly.js once), the CSS,
written as one self-contained HTML file that works offline."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from autotune.report._batches import get_batch_info, render_batches
from autotune.report._best import get_best_info, render_best
from autotune.report._common import FIGURE_HEIGHT
from autotune.report._failures import get_failure_info, render_failures
from autotune.report._header import get_header_info, render_header
from autotune.report._history import get_history_info, render_history
from autotune.report._importance import get_importance_info, render_importance
from autotune.report._memory import get_memory_info, render_memory
from autotune.report._parallel import get_parallel_info, render_parallel
from autotune.report._slices import get_slice_info, render_slices, slice_rows
from autotune.report._stages import get_stages_info, render_stages, stages_height
from autotune.report._summary import get_summary_info, render_summary
from autotune.report._table import get_table_info, render_table
from autotune.report._timeline import get_timeline_info, render_timeline, timeline_height
from autotune.report._tradeoff import get_tradeoff_info, render_tradeoff

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

_Figure = tuple[str, str, go.Figure | str, int]
"""One figure section: its title, its div id, the figure (or a note instead), its height."""


def figure_html(
    figure: go.Figure, div_id: str, include_plotlyjs: bool, height: int = FIGURE_HEIGHT
) -> str:
    """One figure as an HTML fragment, with plotly.js embedded when ``include_plotlyjs``."""
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


def _figures(frame: pd.DataFrame, info: dict[str, Any]) -> tuple[_Figure, ...]:
    """The report's figures, in page order, each gathered and drawn."""
    importance = get_importance_info(frame, info)
    slices = get_slice_info(frame, info)
    timeline = get_timeline_info(frame, info)
    stages = get_stages_info(frame)
    importance_part: go.Figure | str = (
        render_importance(importance)
        if importance.note is None
        else f'<p class="note">{html.escape(importance.note)}</p>'
    )
    return (
        (
            "Throughput per trial",
            "autotune-history",
            render_history(get_history_info(frame, info)),
            FIGURE_HEIGHT,
        ),
        (
            "Throughput vs accuracy loss",
            "autotune-tradeoff",
            render_tradeoff(get_tradeoff_info(frame, info)),
            FIGURE_HEIGHT,
        ),
        (
            "Accuracy by global batch, and the samples each is predicted to need",
            "autotune-batches",
            render_batches(get_batch_info(frame, info)),
            FIGURE_HEIGHT,
        ),
        (
            "Searched settings (parallel coordinates, coloured by throughput)",
            "autotune-parallel",
            render_parallel(get_parallel_info(frame, info)),
            FIGURE_HEIGHT,
        ),
        ("Parameter importances", "autotune-importance", importance_part, 320),
        (
            "Throughput against each setting",
            "autotune-slices",
            render_slices(slices),
            max(FIGURE_HEIGHT, 300 * slice_rows(slices)),
        ),
        (
            "Peak memory vs micro-batch size",
            "autotune-memory",
            render_memory(get_memory_info(frame, info)),
            FIGURE_HEIGHT,
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
            render_timeline(timeline),
            timeline_height(timeline),
        ),
    )


def _figure_sections(figures: tuple[_Figure, ...]) -> list[str]:
    """Each figure under its heading, plotly.js embedded with the first one drawn."""
    sections = []
    plotlyjs_included = False
    for title, div_id, part, height in figures:
        sections.append(f"<h2>{title}</h2>")
        if isinstance(part, str):
            sections.append(part)
            continue
        sections.append(figure_html(part, div_id, not plotlyjs_included, height))
        plotlyjs_included = True
    return sections


def _page(title: str, body: str) -> str:
    """The HTML document around the sections."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def render_report(frame: pd.DataFrame, info: dict[str, Any]) -> str:
    """Builds the report as one self-contained HTML page (plotly.js embedded once).

    Args:
        frame: One row per Optuna trial (see ``trials_frame``). Columns read: ``number``,
            ``role``, ``status``, the settings (those present are shown), ``throughput``,
            ``accuracy_loss``, ``feasible``, ``peak_memory_bytes``, ``step_time_p50``,
            ``step_time_p90``, ``wall_seconds``, ``train_seconds``, ``eval_seconds``,
            ``reason``, ``datetime_start``, ``datetime_complete`` and ``log_tail`` (the last
            lines of a failed trial's log), and for pipeline trials ``partition``,
            ``stage_compute_seconds``, ``stage_comm_seconds`` and ``stage_predicted_seconds``
            (see :func:`get_stages_info`). Missing columns are shown as dashes; an empty
            frame renders empty plots.
        info: Study facts: ``study``, ``model``, ``machine``, ``train_samples``,
            ``max_accuracy_loss``, ``reference_metric``, ``reference_noise``, ``metric_name``,
            ``eval_source``, ``best_number``, ``reference_number``, ``versions`` (library ->
            version), ``best_ds_config`` and ``best_launch`` (the best trial's exported
            config and launch recipe) and ``importances`` (setting -> importance, or None).

    Returns:
        The HTML text.
    """
    header = get_header_info(frame, info)
    sections = [
        render_header(header),
        render_summary(get_summary_info(frame, info)),
        render_best(get_best_info(frame, info)),
        *_figure_sections(_figures(frame, info)),
        render_failures(get_failure_info(frame, info)),
        render_table(get_table_info(frame, info)),
    ]
    return _page(f"autotune report: {header.study}", "\n".join(sections))


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
