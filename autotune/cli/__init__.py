"""The `autotune` command: a thin layer over the Python API, one module per subcommand."""

from __future__ import annotations

import argparse
import sys

from autotune._errors import UserError
from autotune.cli import export, report, search, trials

_COMMANDS = {"search": search, "export": export, "report": report, "trials": trials}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autotune",
        description="Find the fastest DeepSpeed training configuration that keeps accuracy.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in _COMMANDS.items():
        module.add_parser(subparsers, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(_COMMANDS[args.command].run(args) or 0)
    except UserError as exc:
        print(f"autotune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nautotune: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
