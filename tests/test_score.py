"""Scoring against the reference (pure logic)."""

from __future__ import annotations

import math

import pytest

from autotune import _score
from autotune._study import redact


def test_accuracy_loss_is_relative_and_signed() -> None:
    assert _score.accuracy_loss(0.8, 0.76) == pytest.approx(0.05)
    assert _score.accuracy_loss(0.8, 0.84) == pytest.approx(-0.05)
    assert _score.accuracy_loss(-2.0, -2.2) == pytest.approx(0.1)  # negative loss as metric
    assert _score.accuracy_loss(0.0, -0.1) == pytest.approx(0.1)  # zero reference: absolute


def test_reference_noise() -> None:
    assert _score.reference_noise([0.9]) is None
    assert _score.reference_noise([0.9, 0.81]) == pytest.approx(0.1)


def test_constraints_are_feasible_up_to_the_budget() -> None:
    assert _score.is_feasible(_score.constraints_for_run(0.005, 0.005))
    assert _score.is_feasible(_score.constraints_for_run(-0.02, 0.005))
    assert not _score.is_feasible(_score.constraints_for_run(0.0051, 0.005))
    assert not _score.is_feasible(_score.constraints_for_no_run())
    assert not _score.is_feasible({})


@pytest.mark.parametrize("budget", [0.0, 0.005, 0.999])
def test_budget_accepted(budget: float) -> None:
    assert _score.validate_budget(budget) is None


@pytest.mark.parametrize("budget", [1.0, -0.01, math.nan, math.inf])
def test_budget_rejected(budget: float) -> None:
    assert "--max-accuracy-loss" in (_score.validate_budget(budget) or "")


def test_redact_hides_passwords() -> None:
    assert "s3cret" not in redact("postgresql://alice:s3cret@db.example:5432/studies")
    assert "alice" in redact("postgresql://alice:s3cret@db.example:5432/studies")
    assert redact("sqlite:///trials/autotune.db") == "sqlite:///trials/autotune.db"
