"""`--scoring goodput` (issue 18) with real CPU DeepSpeed runs: the reference measures its
gradient noise scale; a larger global batch then trains the samples the large-batch model says
it needs to reach the reference's loss, its rate is its throughput times its efficiency, and the
export times what was timed. A learning rate this small keeps the model far from its optimum, so
the gradient stands well clear of its noise and the noise scale is measured."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from autotune import SearchOptions, export, load_study, search
from autotune._records import (
    BUDGET_STEPS,
    LEARNING_RATE,
    RATE,
    STUDY_LR_SCALING,
    STUDY_NOISE_SCALE,
    STUDY_REFERENCE_BATCH,
    THROUGHPUT,
    TrialRecord,
)
from autotune.report import trials_frame
from autotune.study import study_scoring

pytestmark = pytest.mark.e2e

MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    BATCH_SIZE = 16
    OPTIMIZER = {"type": "SGD", "params": {"lr": 1e-4}}

    def model():
        torch.manual_seed(0)
        return nn.Linear(16, 4)

    def train_data():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2048, 16, generator=g) + 3.0
        return TensorDataset(x, x[:, :4].argmax(1))
    """
)
TRAIN_SAMPLES = 640


@pytest.fixture(scope="module")
def searched(
    write_model: Callable[[str, str], Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[optuna.Study, list[str], Path]:
    folder = tmp_path_factory.mktemp("goodput")
    space = folder / "space.yaml"
    space.write_text("micro_batch_size: [16, 64]\n")
    options = SearchOptions(
        model=write_model(MODEL, "far.py"),
        space=space,
        storage=f"sqlite:///{folder}/study.db",
        trials_dir=folder / "trials",
        reports_dir=folder / "reports",
        sampler="grid",
        n_trials=2,
        train_samples=TRAIN_SAMPLES,
        max_accuracy_loss=0.9,  # every batch is feasible: this test is about the scoring
        min_measure_seconds=0.5,
        confirm=0,
        scoring="goodput",
        trial_timeout=120,
        early_stop=False,  # the larger batch trains in full however the machine's load times it
    )
    lines: list[str] = []
    search(options, print_line=lines.append)
    study = load_study(options.study_name, options.storage)
    return study, lines, folder


def test_a_larger_batch_trains_its_predicted_samples_and_scores_its_goodput(
    searched: tuple[optuna.Study, list[str], Path],
) -> None:
    study, lines, _ = searched
    noise = study.user_attrs[STUDY_NOISE_SCALE]
    assert noise is not None and noise > 0
    assert study.user_attrs[STUDY_REFERENCE_BATCH] == 16
    scoring = study_scoring(study.user_attrs, TRAIN_SAMPLES)
    assert scoring.goodput and scoring.ratio(64) > 1.0
    reference, larger = (t for t in study.get_trials(deepcopy=False) if TrialRecord.of(t).ran)
    assert reference.user_attrs[BUDGET_STEPS] == TRAIN_SAMPLES // 16
    assert reference.user_attrs[RATE] == pytest.approx(reference.user_attrs[THROUGHPUT])
    assert larger.user_attrs[BUDGET_STEPS] == scoring.samples_for(64) // 64
    assert larger.user_attrs[BUDGET_STEPS] > TRAIN_SAMPLES // 64
    # Goodput scoring trains each batch at the rate its samples prediction assumes (the
    # `noise` rule, `--lr-scaling auto`), for the noise scale the reference measured.
    assert study.user_attrs[STUDY_LR_SCALING] == "noise"
    assert reference.user_attrs[LEARNING_RATE] == pytest.approx(1e-4)
    best_rate = 1e-4 * (1 + noise / 16) / (1 + noise / 64)
    assert larger.user_attrs[LEARNING_RATE] == pytest.approx(best_rate)
    expected = larger.user_attrs[THROUGHPUT] * scoring.efficiency(64)
    assert larger.user_attrs[RATE] == pytest.approx(expected)
    assert larger.value == pytest.approx(expected)
    assert any(
        line.strip().startswith("scoring by goodput: gradient noise scale") for line in lines
    )
    trained = f"goodput {expected:.1f} (trained {scoring.samples_for(64):,} samples)"
    assert any(trained in line for line in lines)


def test_the_export_keeps_what_was_timed_and_says_what_the_speedup_is_of(
    searched: tuple[optuna.Study, list[str], Path],
) -> None:
    study, _, folder = searched
    larger = [t for t in study.get_trials(deepcopy=False) if TrialRecord.of(t).ran][1]
    _, launch_path = export(study, folder / "export", larger.number)
    launch = json.loads(launch_path.read_text())
    measured = launch["measured"]
    assert measured["throughput_runs"] == [pytest.approx(larger.user_attrs[THROUGHPUT])]
    scoring = study_scoring(study.user_attrs, TRAIN_SAMPLES)
    assert launch["goodput"] == {
        "efficiency": pytest.approx(scoring.efficiency(64)),
        "samples_to_reference_loss": scoring.samples_for(64),
        "reference_samples": TRAIN_SAMPLES,
        "gradient_noise_scale": pytest.approx(scoring.noise_scale),
    }
    # The trials table and the report show the samples/s that were timed, too.
    row = trials_frame(study).set_index("number").loc[larger.number]
    assert row["estimated_throughput"] == pytest.approx(larger.user_attrs[THROUGHPUT])
