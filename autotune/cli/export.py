"""`autotune export -o DIR`: write a trial's ds_config.json and launch.json."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autotune import export, load_study
from autotune.cli._common import add_study_flags


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="write a trial's DeepSpeed config and launch recipe",
        description="Write DIR/ds_config.json and DIR/launch.json for the recommended trial (the "
        "fastest feasible one when it beats the reference by more than the noise, else the "
        "reference) or for --trial N.",
    )
    add_study_flags(parser, "study name (required unless the storage holds one study)")
    parser.add_argument("--trial", type=int, help="trial number (default: the recommended one)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    study = load_study(args.study, args.storage)
    ds_config, launch = export(study, args.output, args.trial)
    print(f"wrote {ds_config} and {launch}")
    return 0
