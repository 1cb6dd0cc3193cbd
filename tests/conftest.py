"""Shared fixtures and paths for the test suite.

Markers (registered in pyproject.toml): ``e2e`` for real training (DeepSpeed ranks launched on
the CPU), ``browser`` for headless Chromium, ``subprocess`` for the `autotune` command run in a
child process. The fast lane is ``python -m pytest -m "not e2e and not browser"``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autotune._plan import Machine, TrialConfig
from autotune._task import reference_settings

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SPACES = REPO / "search_spaces"

# The benchmarks' own modules (the landscape replay) are tested here but are not the product.
sys.path.insert(0, str(REPO / "benchmarks"))

ADAM = {"type": "Adam", "params": {"lr": 1e-3}}


@pytest.fixture
def cpu_machine() -> Machine:
    """A 2-core CPU machine with bf16 and no fp16, as this project's CI machines are."""
    return Machine("cpu", devices=2, cores=2, fp16=False, bf16=True)


@pytest.fixture
def gpu_machine() -> Machine:
    """Eight CUDA GPUs beside 32 cores."""
    return Machine("cuda", 8, 32, True, True)


@pytest.fixture
def make_config() -> Callable[..., TrialConfig]:
    """Build a TrialConfig from the reference settings of ``batch`` with some overridden:
    ``make_config(batch=32, optimizer=ADAM, lr_scaling="sqrt", processes=2, ...)``."""

    def build(
        batch: int = 32,
        optimizer: dict[str, Any] | None = None,
        lr_scaling: str = "sqrt",
        **values: Any,
    ) -> TrialConfig:
        settings = {**reference_settings(batch), **values}
        return TrialConfig.from_settings(settings, optimizer or ADAM, batch, lr_scaling)

    return build
