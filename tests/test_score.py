"""Scoring against the reference (autotune/_score.py) and storage URL redaction
(autotune.study.redact)."""

from __future__ import annotations

import math
import sys

import pytest

from autotune._score import (
    ACCURACY_CONSTRAINT,
    RUNNABLE_CONSTRAINT,
    accuracy_loss,
    constraints_for_no_run,
    constraints_for_run,
    is_feasible,
    reference_noise,
    validate_budget,
)
from autotune.study import redact

# --- accuracy loss -------------------------------------------------------------------------


def test_accuracy_loss_is_relative_to_the_reference() -> None:
    assert accuracy_loss(0.8, 0.76) == pytest.approx(0.05)
    assert accuracy_loss(0.5, 0.25) == pytest.approx(0.5)
    assert accuracy_loss(0.8, 0.8) == 0.0


def test_accuracy_loss_is_negative_when_the_trial_does_better() -> None:
    assert accuracy_loss(0.8, 0.84) == pytest.approx(-0.05)
    assert accuracy_loss(0.5, 1.0) == pytest.approx(-1.0)


def test_accuracy_loss_with_a_negative_metric() -> None:
    # Higher is better, e.g. a negated validation loss: -2.2 is worse than -2.0.
    assert accuracy_loss(-2.0, -2.2) == pytest.approx(0.1)
    assert accuracy_loss(-2.0, -1.8) == pytest.approx(-0.1)


def test_accuracy_loss_against_a_zero_reference_is_absolute() -> None:
    assert accuracy_loss(0.0, -0.1) == pytest.approx(0.1)
    assert accuracy_loss(0.0, 0.25) == pytest.approx(-0.25)
    assert accuracy_loss(0.0, 0.0) == 0.0


# --- reference noise -----------------------------------------------------------------------


def test_reference_noise_needs_two_seeds() -> None:
    assert reference_noise([]) is None
    assert reference_noise([0.9]) is None


def test_reference_noise_is_the_relative_spread() -> None:
    assert reference_noise([0.9, 0.81]) == pytest.approx(0.1)
    assert reference_noise([0.81, 0.9]) == pytest.approx(0.09 / 0.81)
    assert reference_noise([0.5, 0.5]) == 0.0
    assert reference_noise([0.8, 0.7, 0.9]) == pytest.approx(0.25)
    assert reference_noise([0.0, 0.1]) == pytest.approx(0.1)  # zero first seed: absolute


# --- constraints ---------------------------------------------------------------------------


def test_constraints_are_feasible_up_to_the_budget() -> None:
    at_budget = constraints_for_run(0.005, 0.005)
    assert at_budget == {ACCURACY_CONSTRAINT: 0.0, RUNNABLE_CONSTRAINT: 0.0}
    assert is_feasible(at_budget)
    assert is_feasible(constraints_for_run(0.0, 0.0))
    assert is_feasible(constraints_for_run(-0.02, 0.005))  # better than reference
    assert is_feasible(constraints_for_run(0.0049, 0.005))


def test_constraints_are_infeasible_above_the_budget() -> None:
    over = constraints_for_run(0.0051, 0.005)
    assert over[ACCURACY_CONSTRAINT] == pytest.approx(0.0001)
    assert not is_feasible(over)
    assert not is_feasible(constraints_for_run(0.001, 0.0))
    assert not is_feasible(constraints_for_run(math.nan, 0.005))


def test_a_trial_that_did_not_run_is_infeasible() -> None:
    constraints = constraints_for_no_run()
    assert constraints[RUNNABLE_CONSTRAINT] > 0
    assert not is_feasible(constraints)
    assert not is_feasible({})


@pytest.mark.parametrize(("reference", "metric"), [(0.8, 0.796), (0.9, 0.8955), (1.0, 0.995)])
def test_a_loss_of_exactly_the_budget_is_feasible(reference: float, metric: float) -> None:
    loss = accuracy_loss(reference, metric)
    assert is_feasible(constraints_for_run(loss, 0.005))


# --- budget --------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0.0, 0.005, 0.5, 0.999])
def test_budget_accepted(budget: float) -> None:
    assert validate_budget(budget) is None


@pytest.mark.parametrize("budget", [1.0, 1.5, -0.01, math.nan, math.inf, -math.inf])
def test_budget_rejected(budget: float) -> None:
    message = validate_budget(budget)
    assert message is not None
    assert "--max-accuracy-loss must be a fraction in [0, 1)" in message
    assert f"got {budget}" in message


# --- redact --------------------------------------------------------------------------------

URL = "postgresql://alice:s3cret@db.example:5432/studies"


def test_redact_hides_the_password() -> None:
    shown = redact(URL)
    assert "s3cret" not in shown
    assert shown == "postgresql://alice:***@db.example:5432/studies"
    assert "s3cret" not in redact("postgresql://alice:s3cret@host/db")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://alice@host/db",
        "postgresql://host/db",
        "sqlite:///trials/autotune.db",
        "sqlite:////tmp/trials/my study.db",
        "mysql+pymysql://bob@db.example:3306/optuna",
        "postgresql://alice@host/db?sslmode=require",
    ],
)
def test_redact_leaves_a_url_without_password_unchanged(url: str) -> None:
    assert redact(url) == url


@pytest.mark.parametrize(
    "url", ["sqlite:///:memory:", "sqlite:///trials/\u00fc.db", "sqlite:///trials/a%20b.db"]
)
def test_redact_does_not_re_encode_a_url_without_password(url: str) -> None:
    assert redact(url) == url


@pytest.fixture
def without_sqlalchemy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``from sqlalchemy.engine import make_url`` fail, to reach redact's fallback."""
    monkeypatch.setitem(sys.modules, "sqlalchemy.engine", None)


def test_redact_fallback_hides_the_password(without_sqlalchemy) -> None:
    assert redact(URL) == "postgresql://alice:***@db.example:5432/studies"
    assert redact("sqlite:///trials/autotune.db") == "sqlite:///trials/autotune.db"


def test_redact_hides_the_password_in_a_url_sqlalchemy_cannot_parse() -> None:
    # A bad port makes make_url raise, which sends redact to its fallback.
    assert "s3cret" not in redact("postgresql://alice:s3cret@host:port/db")


@pytest.mark.parametrize("url", ["postgresql://alice@host/db", "postgresql://alice@host:port/db"])
def test_redact_fallback_leaves_a_url_without_password_unchanged(
    without_sqlalchemy, url: str
) -> None:
    assert redact(url) == url


def test_redact_hides_a_password_containing_an_at_sign() -> None:
    assert "ss@" not in redact("postgresql://alice:p@ss@host/db")


def test_redact_hides_a_password_query_parameter() -> None:
    assert "s3cret" not in redact("postgresql://alice@host/db?password=s3cret")
