"""`autotune trials`: the trials of a study as a table, or as JSON or CSV for scripts."""

from __future__ import annotations

import argparse
from typing import Any

import pandas as pd

from autotune import PARAMETERS, load_study, trials_frame
from autotune._records import (
    ACCURACY_LOSS,
    ACCURACY_REUSED_FROM,
    COMPILE_SECONDS,
    PADDING,
    REASON,
    STATUS,
    THROUGHPUT,
    TOKENS_PER_SECOND,
)
from autotune.cli._common import add_study_flags
from autotune.report import trials_csv, trials_json

_COLUMNS = (
    "number",
    STATUS,
    "micro_batch_size",
    "gradient_accumulation_steps",
    "precision",
    "zero_stage",
    "processes",
    "pipeline_stages",
    "num_workers",
    THROUGHPUT,
    "estimated_throughput",
    "speedup",
    ACCURACY_LOSS,
    "feasible",
    ACCURACY_REUSED_FROM,
    REASON,
)

_HEADERS: dict[str, str] = {
    **{name: parameter.short for name, parameter in PARAMETERS.items()},
    ACCURACY_REUSED_FROM: "acc. of",
    # With confirmation runs, the median of every window, and the median of its windows over
    # the reference's in the same rounds (the best is chosen on that).
    "estimated_throughput": "median",
    "speedup": "speed-up",
    TOKENS_PER_SECOND: "tokens/s",
    COMPILE_SECONDS: "compile s",
    PADDING: "padding",
}
"""Column headers: each setting's abbreviation, and a few shorter names."""


FORMATS = ("table", "json", "csv")
"""What `trials --format` prints: the table for people, or every column for scripts."""


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="list the trials of a study",
        description="Print the trials of a study: a table of the main columns, or with --format "
        "json or csv every trial's settings, status, role, full reason and measurements "
        "(missing values as JSON null or an empty CSV cell), on stdout.",
    )
    add_study_flags(parser, "study name (required unless the storage holds one study)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (default), json (a list of objects, one per trial) or csv (with a header)",
    )


def run(args: argparse.Namespace) -> int:
    study = load_study(args.study, args.storage)
    frame = trials_frame(study)
    if args.format == "json":
        print(trials_json(frame))
        return 0
    if args.format == "csv":
        print(trials_csv(frame), end="")
        return 0
    if frame.empty:
        print(f"study '{study.study_name}' has no trials yet")
        return 0
    columns = list(_COLUMNS)
    if frame[TOKENS_PER_SECOND].notna().any():  # batches with input_ids
        columns.insert(columns.index(THROUGHPUT) + 1, TOKENS_PER_SECOND)
    if frame[COMPILE_SECONDS].notna().any():
        columns.insert(columns.index(THROUGHPUT) + 1, COMPILE_SECONDS)
    # Settings most spaces leave at the reference's value: a column once the trials differ.
    levers = ("batching", "cache_data", "optimizer_impl", "offload", "activation_checkpointing")
    for name in (*levers, "threads"):
        if frame[name].dropna().nunique() > 1:
            columns.insert(columns.index("num_workers") + 1, name)
    if "batching" in columns:  # what token batching saves
        columns.insert(columns.index(THROUGHPUT) + 1, PADDING)
    table = frame[columns].rename(columns=_HEADERS)
    with pd.option_context(
        "display.max_rows", None, "display.width", 200, "display.max_colwidth", 60
    ):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0
