"""`autotune export -o DIR`: write a trial's ds_config.json and launch.json; `--json` prints the
launch recipe."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from autotune import UserError, load_study, study_recipe
from autotune.cli._common import add_study_flags


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="write a trial's DeepSpeed config and launch recipe",
        description="Write DIR/ds_config.json and DIR/launch.json for the recommended trial (the "
        "fastest feasible one when it beats the reference by more than the noise, else the "
        "reference) or for --trial N. With --json, print launch.json's content on stdout "
        "instead of the 'wrote' line; -o is then optional, and without it nothing is written.",
    )
    add_study_flags(parser, "study name (required unless the storage holds one study)")
    parser.add_argument("--trial", type=int, help="trial number (default: the recommended one)")
    parser.add_argument(
        "-o", "--output", type=Path, help="output folder (required unless --json is given)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the launch recipe (launch.json's content) as JSON on stdout; with -o the "
        "files are written too",
    )


def run(args: argparse.Namespace) -> int:
    if args.output is None and not args.json:
        raise UserError(
            "export needs -o DIR (the folder to write to), or --json to print the launch recipe."
        )
    recipe = study_recipe(load_study(args.study, args.storage), args.trial)
    if args.output is not None:
        ds_config, launch = recipe.write(args.output)
        if not args.json:
            print(f"wrote {ds_config} and {launch}")
    if args.json:
        print(json.dumps(recipe.launch, indent=2))
    return 0
