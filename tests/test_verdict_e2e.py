"""Verdicts near the budget are retrained with more seeds (issue 18, item 1): a real
DeepSpeed search on CPU."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from _models import RANDOM_LABELS_CLASSIFIER
from search_options import run_grid_search

from autotune._score import REFERENCE_SEEDS

pytestmark = pytest.mark.e2e


def test_a_verdict_within_the_noise_of_the_budget_trains_the_reference_s_seed_count(
    tmp_path: Path,
) -> None:
    """The only other configuration changes no numerics (one DataLoader worker), and its metric
    is measured anew: its first seed is the reference's first seed, which is within one
    standard error of the reference's mean. With a budget of 0 that verdict cannot be sure,
    so it trains the reference's other seeds before it counts."""
    model = tmp_path / "noisy.py"
    model.write_text(RANDOM_LABELS_CLASSIFIER)
    study, lines = run_grid_search(
        tmp_path,
        model,
        "num_workers: [0, 1]\n",
        n_trials=2,
        train_samples=512,
        min_measure_seconds=0.2,
        max_accuracy_loss=0.0,
        reuse_accuracy=False,
    )
    trials = study.get_trials()
    reference = trials[0].user_attrs
    # The grid may draw the reference's own configuration first: a repeat, not a run.
    (trial,) = (
        t.user_attrs
        for t in trials
        if t.user_attrs.get("settings", {}).get("num_workers") == 1
        and t.user_attrs.get("status") == "ok"
    )
    seeds = reference["seed_metrics"]
    assert len(seeds) == REFERENCE_SEEDS and len(set(seeds)) > 1
    assert reference["metric"] == pytest.approx(statistics.fmean(seeds))
    assert study.user_attrs["reference_seed_metrics"] == seeds
    assert study.user_attrs["reference_metric"] == pytest.approx(statistics.fmean(seeds))
    assert len(reference["seed_eval_losses"]) == REFERENCE_SEEDS
    assert all(loss > 0 for loss in reference["seed_eval_losses"])
    assert reference["accuracy_loss"] == 0.0
    assert any(
        "within the reference's noise of the budget: training 2 more seeds" in line
        for line in lines
    )
    assert trial["verdict_seeds"] == REFERENCE_SEEDS
    assert len(trial["seed_metrics"]) == REFERENCE_SEEDS
    assert trial["seed_metrics"][0] == pytest.approx(seeds[0], abs=0.02)
    assert trial["metric"] == pytest.approx(statistics.fmean(trial["seed_metrics"]))
    assert trial["verdict_by"] in ("metric", "eval loss")
    assert 0.0 <= trial["verdict_confidence"] <= 1.0
