"""The interactive HTML report of a study, and the table of its trials it is drawn from."""

from __future__ import annotations

from autotune._export import report_info, trials_frame, write_study_report
from autotune._report import (
    LIBRARIES,
    MIN_TRIALS_FOR_IMPORTANCE,
    failure_class,
    log_tail,
    render_report,
    write_report,
)

__all__ = [
    "LIBRARIES",
    "MIN_TRIALS_FOR_IMPORTANCE",
    "failure_class",
    "log_tail",
    "render_report",
    "report_info",
    "trials_frame",
    "write_report",
    "write_study_report",
]
