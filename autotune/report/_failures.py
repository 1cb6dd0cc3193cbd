"""The report's table of failed and infeasible trials: each one's reason, failure class and
the last lines of its log."""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path
from typing import Any

import pandas as pd

from autotune._records import FAILED, INFEASIBLE, REASON, STATUS
from autotune.report._common import NUMBER, frame_rows
from autotune.report._format import as_text

FAILURE_CLASSES: tuple[str, ...] = ("oom", "timeout", "diverged", "error")
"""The usual failure classes: a failed trial's reason starts with one of them and a colon."""

LOG_TAIL_LINES = 5
"""How many of a failed trial's last log lines the report shows."""


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


def get_failure_info(frame: pd.DataFrame, info: dict[str, Any]) -> FailureInfo:
    """Gathers the reason (and log tail) of every failed or infeasible trial."""
    failed, infeasible = [], []
    for row in frame_rows(frame):
        status = as_text(row.get(STATUS))
        reason = as_text(row.get(REASON)).strip()
        if status == FAILED:
            failed.append(
                FailureRow(
                    row[NUMBER],
                    status,
                    failure_class(reason),
                    reason,
                    as_text(row.get("log_tail")).rstrip(),
                )
            )
        elif status == INFEASIBLE:
            infeasible.append(FailureRow(row[NUMBER], status, status, reason, ""))
    return FailureInfo(tuple(failed + infeasible))


def render_failures(failures: FailureInfo) -> str:
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
