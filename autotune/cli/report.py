"""`autotune report`: write the HTML report of a study."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autotune import load_study, write_study_report
from autotune.cli._common import add_study_flags


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="write the HTML report of a study",
        description="Write an interactive HTML "
        "report: best vs reference, history, throughput vs accuracy loss, all trials.",
    )
    add_study_flags(parser, "study name (required unless the storage holds one study)")
    parser.add_argument("-o", "--output", type=Path, help="HTML file (default: reports/STUDY.html)")


def run(args: argparse.Namespace) -> int:
    study = load_study(args.study, args.storage)
    path = write_study_report(study, args.output or Path("reports") / f"{study.study_name}.html")
    print(f"wrote {path}")
    return 0
