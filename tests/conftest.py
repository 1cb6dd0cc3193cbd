"""What every test module shares.

Markers (registered in pyproject.toml): ``e2e`` for real training (DeepSpeed ranks launched on
the CPU, or a model trained to a threshold), ``browser`` for headless Chromium, ``subprocess``
for the `autotune` command run in a child process. The fast lane is
``python -m pytest -m "not e2e and not browser"``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The benchmarks' own modules (the landscape replay) are tested here but are not the product.
sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.fixture(scope="session")
def write_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """Write a model file's text to a fresh folder: ``write_model(TEXT, "tiny.py")``."""

    def write(text: str, name: str = "model.py") -> Path:
        path = tmp_path_factory.mktemp("model") / name
        path.write_text(text)
        return path

    return write
