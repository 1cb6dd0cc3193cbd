"""The report's run summary: library versions, trial dates, failure counts and the best
configuration as ``autotune export`` writes it."""

from __future__ import annotations

import dataclasses
import html
import json
from collections import Counter
from typing import Any

import pandas as pd

from autotune._records import FAILED, REASON, STATUS
from autotune.report._common import frame_rows, info_int
from autotune.report._failures import failure_class
from autotune.report._format import MISSING, as_text, is_missing

LIBRARIES: tuple[str, ...] = ("autotune", "torch", "deepspeed", "optuna")
"""The libraries whose versions the report lists (read by ``report_info``)."""


@dataclasses.dataclass(frozen=True)
class SummaryInfo:
    """Facts about the run beside the header's: versions, dates, failures, best config.

    Attributes:
        versions: (library, version) pairs; the version is "not installed" when missing.
        first_trial: When the first trial started, formatted, or None.
        last_trial: When the last trial finished (or started), formatted, or None.
        failure_counts: (failure class, count) pairs over failed trials, most common first.
        best_number: The exported trial (the best, or the reference when the best is within
            the noise of it), or None.
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
    if is_missing(value):
        return None
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        return None
    return None if is_missing(stamp) else stamp


def _format_time(stamp: pd.Timestamp | None) -> str | None:
    return None if stamp is None else stamp.strftime("%Y-%m-%d %H:%M:%S")


def get_summary_info(frame: pd.DataFrame, info: dict[str, Any]) -> SummaryInfo:
    """Gathers versions and the best configuration from ``info``, dates and failures from
    ``frame``."""
    rows = frame_rows(frame)
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
        failure_class(as_text(row.get(REASON))) for row in rows if row.get(STATUS) == FAILED
    )
    ds_config = info.get("best_ds_config")
    launch = info.get("best_launch")
    command = launch.get("command") if isinstance(launch, dict) else None
    return SummaryInfo(
        versions=tuple(
            (name, as_text(version) or "not installed") for name, version in versions.items()
        ),
        first_trial=_format_time(min(starts)) if starts else None,
        last_trial=_format_time(max(ends)) if ends else None,
        failure_counts=tuple(failures.most_common()),
        best_number=_exported_number(info),
        best_ds_config=None if not ds_config else json.dumps(ds_config, indent=2),
        best_launch_command=None if command is None else str(command),
        best_launch=None if not launch else json.dumps(launch, indent=2, default=str),
    )


def render_summary(summary: SummaryInfo) -> str:
    """The run facts as a list, then the best configuration in <pre> blocks."""
    esc = html.escape
    facts = []
    if summary.first_trial or summary.last_trial:
        facts.append(
            (
                "trial dates",
                f"{esc(summary.first_trial or MISSING)} to {esc(summary.last_trial or MISSING)}",
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


def _exported_number(info: dict[str, Any]) -> int | None:
    """The trial `autotune export` writes (a report of an older version names only the best)."""
    exported = info_int(info, "exported_number")
    return exported if exported is not None else info_int(info, "best_number")
