"""The options of the small grid searches the end-to-end tests run, in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from autotune import SearchOptions, load_study, search


def grid_search_options(folder: Path, model: Path, space: Path, **values: Any) -> SearchOptions:
    """A grid search of ``model`` over ``space`` whose study, trials and report stay in
    ``folder``, with a 120 s trial timeout, no confirmation rounds and no early stop (whether a
    run stops early depends on the machine's load, which would make the statuses these tests
    count vary); ``values`` set the rest (or override these)."""
    options: dict[str, Any] = {
        "model": model,
        "space": space,
        "sampler": "grid",
        "storage": f"sqlite:///{folder}/study.db",
        "trials_dir": folder / "trials",
        "reports_dir": folder / "reports",
        "trial_timeout": 120,
        "confirm": 0,
        "early_stop": False,
    }
    options.update(values)
    return SearchOptions(**options)


def run_grid_search(
    folder: Path, model: Path, space_text: str, **values: Any
) -> tuple[optuna.Study, list[str]]:
    """Write ``space_text`` to ``folder/space.yaml``, run `grid_search_options`' search of
    ``model`` over it, and return the study and the lines the search printed."""
    space = folder / "space.yaml"
    space.write_text(space_text)
    options = grid_search_options(folder, model, space, **values)
    lines: list[str] = []
    search(options, print_line=lines.append)
    return load_study(options.study_name, options.storage), lines
