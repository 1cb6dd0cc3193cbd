"""The interactive HTML report of a study, and the table of its trials it is drawn from.

Each section of the report is one private module whose ``get_X_info(frame, info)`` gathers
plain data into a small frozen dataclass and whose ``render_X`` only draws it (an HTML fragment
or a plotly figure), so tests check the data without a browser. :func:`render_report` puts the
sections on one self-contained page; :func:`trials_frame` and :func:`report_info` read a study
into the frame and the facts every section takes; :func:`trials_json` and :func:`trials_csv`
give the frame to scripts.
"""

from __future__ import annotations

from autotune.report._batches import BatchInfo, BatchRow, get_batch_info, render_batches
from autotune.report._best import BestInfo, ComparisonRow, get_best_info, render_best
from autotune.report._common import CATEGORIES, SETTINGS
from autotune.report._data import report_info, trials_frame, write_study_report
from autotune.report._failures import (
    FAILURE_CLASSES,
    LOG_TAIL_LINES,
    FailureInfo,
    FailureRow,
    failure_class,
    get_failure_info,
    log_tail,
    render_failures,
)
from autotune.report._header import HeaderInfo, get_header_info, render_header
from autotune.report._history import HistoryInfo, HistoryPoint, get_history_info, render_history
from autotune.report._importance import (
    MIN_TRIALS_FOR_IMPORTANCE,
    ImportanceInfo,
    get_importance_info,
    render_importance,
)
from autotune.report._listing import trial_records, trials_csv, trials_json
from autotune.report._memory import MemoryInfo, MemoryPoint, get_memory_info, render_memory
from autotune.report._page import render_report, write_report
from autotune.report._parallel import Dimension, ParallelInfo, get_parallel_info, render_parallel
from autotune.report._slices import Slice, SliceInfo, get_slice_info, render_slices
from autotune.report._stages import (
    StageBar,
    StagesInfo,
    get_stages_info,
    render_stages,
    stages_height,
)
from autotune.report._summary import LIBRARIES, SummaryInfo, get_summary_info, render_summary
from autotune.report._table import TrialTableInfo, get_table_info, render_table
from autotune.report._timeline import TimelineInfo, get_timeline_info, render_timeline
from autotune.report._tradeoff import (
    TradeoffInfo,
    TradeoffPoint,
    get_tradeoff_info,
    pareto_front,
    render_tradeoff,
)

__all__ = [
    "BatchInfo",
    "BatchRow",
    "get_batch_info",
    "render_batches",
    "CATEGORIES",
    "FAILURE_CLASSES",
    "LIBRARIES",
    "LOG_TAIL_LINES",
    "MIN_TRIALS_FOR_IMPORTANCE",
    "SETTINGS",
    "BestInfo",
    "ComparisonRow",
    "Dimension",
    "FailureInfo",
    "FailureRow",
    "HeaderInfo",
    "HistoryInfo",
    "HistoryPoint",
    "ImportanceInfo",
    "MemoryInfo",
    "MemoryPoint",
    "ParallelInfo",
    "Slice",
    "SliceInfo",
    "StageBar",
    "StagesInfo",
    "SummaryInfo",
    "TimelineInfo",
    "TradeoffInfo",
    "TradeoffPoint",
    "TrialTableInfo",
    "failure_class",
    "get_best_info",
    "get_failure_info",
    "get_header_info",
    "get_history_info",
    "get_importance_info",
    "get_memory_info",
    "get_parallel_info",
    "get_slice_info",
    "get_stages_info",
    "get_summary_info",
    "get_table_info",
    "get_timeline_info",
    "get_tradeoff_info",
    "log_tail",
    "pareto_front",
    "render_best",
    "render_failures",
    "render_header",
    "render_history",
    "render_importance",
    "render_memory",
    "render_parallel",
    "render_report",
    "render_slices",
    "render_stages",
    "render_summary",
    "render_table",
    "render_timeline",
    "render_tradeoff",
    "report_info",
    "stages_height",
    "trial_records",
    "trials_csv",
    "trials_frame",
    "trials_json",
    "write_report",
    "write_study_report",
]
