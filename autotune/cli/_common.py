"""Flags shared by the subcommands that read a study."""

from __future__ import annotations

import argparse

from autotune.study import DEFAULT_STORAGE


def add_study_flags(parser: argparse.ArgumentParser, study_help: str) -> None:
    parser.add_argument("--study", help=study_help)
    parser.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        help="Optuna storage URL (default: %(default)s; postgresql://... to share a study)",
    )
