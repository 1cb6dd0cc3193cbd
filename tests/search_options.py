"""The options of the small grid searches the end-to-end tests run, in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autotune import SearchOptions


def grid_search_options(folder: Path, model: Path, space: Path, **values: Any) -> SearchOptions:
    """A grid search of ``model`` over ``space`` whose study, trials and report stay in
    ``folder``, with a 120 s trial timeout and no confirmation rounds; ``values`` set the rest
    (or override these)."""
    options: dict[str, Any] = {
        "model": model,
        "space": space,
        "sampler": "grid",
        "storage": f"sqlite:///{folder}/study.db",
        "trials_dir": folder / "trials",
        "reports_dir": folder / "reports",
        "trial_timeout": 120,
        "confirm": 0,
    }
    options.update(values)
    return SearchOptions(**options)
