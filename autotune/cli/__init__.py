"""The `autotune` command: a thin layer over the Python API, one module per subcommand."""

from __future__ import annotations

import argparse
import importlib.metadata
import signal
import sys
from types import FrameType

from autotune._errors import UserError
from autotune.cli import export, plan, report, search, trials

_COMMANDS = {
    "plan": plan,
    "search": search,
    "export": export,
    "report": report,
    "trials": trials,
}

DISTRIBUTION = "autotune"
"""The name the package is installed under (pyproject.toml's ``project.name``)."""


def version() -> str:
    """The installed package's version, or "unknown" where it runs from a folder never
    installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autotune",
        description="Find the fastest DeepSpeed training configuration that keeps accuracy.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version()}", help="print the version"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in _COMMANDS.items():
        module.add_parser(subparsers, name)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so a stopped search cleans up the same way (its
    process groups killed, its running trial queued again)."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup short
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(_COMMANDS[args.command].run(args) or 0)
    except UserError as exc:
        print(f"autotune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("\nautotune: interrupted; run the same command again to resume.", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
