"""`autotune plan MODEL.py`: what a search would do on this machine, before it runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autotune import describe_plan, plan
from autotune.cli.search import add_measurement_flags, add_search_flags, options_from


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="show what a search would run here, and about how long it takes",
        description=(
            "Judge the search space by this machine's rules, as the search will: how many "
            "configurations, the values that cannot run here and why, the reasons the other "
            "refused configurations are refused, the memory each layout is predicted to need; "
            "then time one run of the reference and estimate the search's time. Takes the "
            "search's flags; writes no study."
        ),
    )
    parser.add_argument("model", type=Path, help="the model file (see the README's contract)")
    parser.add_argument(
        "--no-run",
        action="store_true",
        help="judge the space only: no run of the reference, no time estimate",
    )
    add_search_flags(parser)
    add_measurement_flags(parser)


def run(args: argparse.Namespace) -> int:
    options = options_from(args)
    found = plan(options, not args.no_run, print_line=lambda line: print(line, flush=True))
    for line in describe_plan(found, options.confirm, options.warm_workers):
        print(line)
    return 0
