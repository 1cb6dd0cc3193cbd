"""Where space files come from: a path, or the name of a space that ships inside the package."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from autotune._errors import UserError


def shipped_spaces() -> dict[str, Path]:
    """The spaces that ship inside the package, by name (``default``, ``cpu_small``, ...)."""
    folder = importlib.resources.files("autotune") / "search_spaces"
    return {
        entry.name.removesuffix(".yaml"): Path(str(entry))
        for entry in sorted(folder.iterdir(), key=lambda entry: entry.name)
        if entry.name.endswith(".yaml")
    }


DEFAULT_SPACE_NAME = "default"


def default_space() -> Path:
    """The space a search uses when none is given: the shipped ``default.yaml``."""
    return shipped_spaces()[DEFAULT_SPACE_NAME]


def resolve_space(given: str | Path) -> Path:
    """The file behind ``--space``: a path to a YAML file, or the name of a shipped space
    (``cpu_small`` or ``cpu_small.yaml``) when no such file exists.

    Raises:
        UserError: Neither a file nor a shipped space has that name.
    """
    path = Path(given)
    if path.is_file():
        return path
    shipped = shipped_spaces()
    name = path.name.removesuffix(".yaml")
    if path.parent == Path(".") and name in shipped:
        return shipped[name]
    raise UserError(
        f"Space file {given} does not exist. Pass --space with a YAML file or the name of a "
        f"shipped space ({', '.join(shipped)})."
    )
