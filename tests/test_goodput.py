"""Goodput scoring (issue 18, `--scoring goodput`): how long each global batch trains and how
its throughput is scored, from the reference's gradient noise scale. Pure logic; the search
that uses it is tested in test_goodput_e2e.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from autotune._noise_scale import samples_ratio
from autotune._records import (
    STUDY_FIXED,
    STUDY_LR_SCALING,
    STUDY_MAX_ACCURACY_LOSS,
    STUDY_MODEL_SHA256,
    STUDY_NOISE_SCALE,
    STUDY_OBJECTIVE,
    STUDY_REFERENCE_BATCH,
    STUDY_SCORING,
    STUDY_SEED,
    STUDY_TRAIN_SAMPLES,
    rate_label,
)
from autotune.study import Scoring, study_scoring
from autotune.study._goodput import MAX_SAMPLES_RATIO, goodput_line


def test_plain_scoring_changes_nothing() -> None:
    plain = Scoring(1000)
    assert not plain.goodput
    assert plain.ratio(512) == plain.efficiency(512) == 1.0
    assert plain.samples_for(512) == 1000
    assert plain.too_large(10**9) is None
    assert plain.describe(512, 123.0) == ""


def test_a_larger_batch_trains_longer_and_scores_lower() -> None:
    """B_noise 300, reference batch 30: batch 300 needs (1 + 1) / (1 + 0.1) of the samples."""
    scoring = Scoring(1100, noise_scale=300.0, reference_batch=30)
    assert scoring.ratio(300) == pytest.approx(2.0 / 1.1)
    assert scoring.samples_for(300) == 2000
    assert scoring.efficiency(300) == pytest.approx(1.1 / 2.0)
    assert scoring.samples_for(30) == 1100 and scoring.efficiency(30) == 1.0
    assert scoring.describe(30, 50.0) == ""
    assert "goodput 50.0 (trained 2,000 samples)" in scoring.describe(300, 50.0)
    # A smaller batch than the reference's needs fewer samples, and scores above its rate.
    assert scoring.samples_for(15) < 1100 and scoring.efficiency(15) > 1.0


def test_goodput_is_the_inverse_of_the_predicted_time_to_the_same_loss() -> None:
    """Arithmetic on given figures (nothing is timed): a goodput is the reference's samples
    over the time the large-batch model predicts a run takes to reach the reference's loss."""
    scoring = Scoring(4096, noise_scale=800.0, reference_batch=32)
    for batch, throughput in ((64, 1500.0), (512, 4000.0)):
        time_to_loss = scoring.train_samples * samples_ratio(batch, 32, 800.0) / throughput
        goodput = throughput * scoring.efficiency(batch)
        assert goodput == pytest.approx(scoring.train_samples / time_to_loss)


def test_a_batch_far_past_the_noise_scale_cannot_run() -> None:
    scoring = Scoring(1000, noise_scale=100.0, reference_batch=10)
    ratio_at = (1 + 2000 / 100) / (1 + 10 / 100)
    assert ratio_at > MAX_SAMPLES_RATIO
    reason = scoring.too_large(2000)
    assert reason is not None and "global batch 2000" in reason and "19.1x" in reason
    assert scoring.too_large(500) is None  # 5.5x


def test_the_study_scores_goodput_only_once_its_reference_measured_a_noise_scale() -> None:
    wanted = {STUDY_SCORING: "goodput"}
    assert not study_scoring(wanted, 100).goodput  # the reference has not run yet
    unmeasured = {**wanted, STUDY_NOISE_SCALE: None, STUDY_REFERENCE_BATCH: 32}
    assert not study_scoring(unmeasured, 100).goodput
    measured = {**wanted, STUDY_NOISE_SCALE: 640.0, STUDY_REFERENCE_BATCH: 32}
    assert study_scoring(measured, 100) == Scoring(100, 640.0, 32)
    # A throughput study, or one written before scoring existed, never scales.
    assert not study_scoring({**measured, STUDY_SCORING: "throughput"}, 100).goodput
    del measured[STUDY_SCORING]
    assert not study_scoring(measured, 100).goodput


def test_the_rates_say_when_they_are_goodput() -> None:
    attrs = {STUDY_SCORING: "goodput", STUDY_NOISE_SCALE: 640.0, STUDY_OBJECTIVE: "samples"}
    assert rate_label(attrs) == "samples/s of goodput"
    assert rate_label({**attrs, STUDY_NOISE_SCALE: None}) == "samples/s"
    assert rate_label({STUDY_OBJECTIVE: "tokens"}) == "tokens/s"


def test_the_search_says_how_it_scores() -> None:
    assert "goodput" in goodput_line(1234.0) and "1,234" in goodput_line(1234.0)
    assert goodput_line(None).startswith("scoring by plain throughput")
    assert math.isfinite(Scoring(10, 5.0, 1).efficiency(3))


def test_a_study_resumes_only_with_the_scoring_it_was_run_with() -> None:
    from autotune.study._loop import resume_problem

    fixed = {
        STUDY_MODEL_SHA256: "abc",
        STUDY_TRAIN_SAMPLES: 100,
        STUDY_MAX_ACCURACY_LOSS: 0.005,
        STUDY_LR_SCALING: "linear",
        STUDY_SEED: 0,
        STUDY_OBJECTIVE: "samples",
        STUDY_SCORING: "goodput",
    }
    assert set(fixed) == set(STUDY_FIXED)
    problem = resume_problem("s", fixed, {**fixed, STUDY_SCORING: "throughput"}, "m.py")
    assert problem is not None and "--scoring goodput, not throughput" in problem
    older = {k: v for k, v in fixed.items() if k != STUDY_SCORING}  # before scoring existed
    assert resume_problem("s", older, {**fixed, STUDY_SCORING: "throughput"}, "m.py") is None
    assert resume_problem("s", older, fixed, "m.py") is not None


def test_goodput_scoring_trains_each_batch_at_the_rate_its_prediction_assumes(
    tmp_path: Path,
) -> None:
    from autotune import SearchOptions
    from autotune._errors import UserError

    model = tmp_path / "m.py"
    assert SearchOptions(model=model).lr_rule == "sqrt"  # the default scoring keeps sqrt
    assert SearchOptions(model=model, scoring="goodput").lr_rule == "noise"
    assert SearchOptions(model=model, scoring="goodput", lr_scaling="none").lr_rule == "none"
    with pytest.raises(UserError, match="--lr-scaling must be one of auto, sqrt"):
        SearchOptions(model=model, lr_scaling="cubic")
    with pytest.raises(UserError, match="lr_noise_scale must be a positive"):
        SearchOptions(model=model, lr_noise_scale=-1.0)
