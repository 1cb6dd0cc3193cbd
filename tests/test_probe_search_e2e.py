"""The probe-first search, the default (issue 17, item 1), with real CPU DeepSpeed runs. Each
forward pass sleeps 10 ms, so throughput follows the micro-batch whatever the machine's load:
micro-batch 64 is the fastest, 4 times the reference's 16. Every step is a trial of the study;
a configuration is run (trained and scored) only after two probes put it ahead."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from autotune import SearchOptions, load_study, search
from autotune._noise_scale import of_measured
from autotune._records import (
    CHOSEN_BECAUSE,
    GRADIENT_NOISE,
    OK,
    PROBE,
    PROBED,
    REFERENCE,
    REPEAT,
    TIMES_REFERENCE,
    TrialRecord,
)
from autotune.report import trials_frame
from autotune.runner._gradient_noise import MEASUREMENTS
from autotune.study import verdict
from autotune.study._probe_search import probe_timings

pytestmark = pytest.mark.e2e

MODEL = textwrap.dedent(
    """
    import time
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    BATCH_SIZE = 16

    class Slow(nn.Module):
        def forward(self, x):
            time.sleep(0.01)  # a fixed cost per micro-batch: throughput follows its size
            return x

    def model():
        return nn.Sequential(Slow(), nn.Linear(16, 4))

    def train_data():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(1600, 16, generator=g)
        return TensorDataset(x, x[:, :4].argmax(1))
    """
)
SPACE = "micro_batch_size: [32, 64]\ngradient_accumulation_steps: [1, 2]\n"
"""Without the reference's own micro-batch of 16: the reference and its probes still run it."""


@pytest.fixture(scope="module")
def searched(
    write_model: Callable[[str, str], Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[optuna.Study, list[str]]:
    folder = tmp_path_factory.mktemp("probe")
    space = folder / "space.yaml"
    space.write_text(SPACE)
    options = SearchOptions(
        model=write_model(MODEL, "sleepy.py"),
        space=space,
        storage=f"sqlite:///{folder}/study.db",
        trials_dir=folder / "trials",
        reports_dir=folder / "reports",
        train_samples=640,
        max_accuracy_loss=0.9,  # every batch is feasible: this test is about speed
        min_measure_seconds=0.5,
        confirm=0,
        trial_timeout=120,
    )
    lines: list[str] = []
    search(options, print_line=lines.append)
    return load_study(options.study_name, options.storage), lines


def test_the_search_probes_then_runs_the_fastest_and_recommends_it(
    searched: tuple[optuna.Study, list[str]],
) -> None:
    study, lines = searched
    records = [TrialRecord.of(t) for t in study.get_trials(deepcopy=False)]
    assert records[0].role == REFERENCE and records[0].status == OK
    assert any(r.status == PROBED and r.role == PROBE for r in records)
    assert not any(r.status == REPEAT for r in records)  # no step repeats a stored result
    assert any("the probe search is done" in line for line in lines), lines[-5:]
    chosen = verdict(study).chosen
    assert chosen is not None
    assert TrialRecord.of(chosen).settings["micro_batch_size"] == 64


def test_a_configuration_is_run_only_after_two_probes_put_it_ahead(
    searched: tuple[optuna.Study, list[str]],
) -> None:
    study, _ = searched
    trials = study.get_trials(deepcopy=False)
    for index, trial in enumerate(trials):
        record = TrialRecord.of(trial)
        if record.status != OK or record.is_reference:
            continue
        probes = [
            t
            for t in trials[:index]
            if TrialRecord.of(t).config_key == record.config_key
            and TrialRecord.of(t).status == PROBED
        ]
        assert len(probes) >= 2, (trial.number, record.settings)
    # The plan reads every finished trial back, in order.
    timings = probe_timings(trials)
    assert len(timings) == len(trials)
    assert [t.key for t in timings] == [TrialRecord.of(t).config_key for t in trials]


def test_probes_of_the_reference_run_its_settings_though_the_space_lacks_them(
    searched: tuple[optuna.Study, list[str]],
) -> None:
    study, lines = searched
    records = [TrialRecord.of(t) for t in study.get_trials(deepcopy=False)]
    again = [r for r in records[1:] if r.get(CHOSEN_BECAUSE, "").startswith("the reference again")]
    assert again, lines
    for record in again:
        assert record.settings == records[0].settings
        assert record.config_key == records[0].config_key
        assert record.get(TIMES_REFERENCE) is True


def test_probes_are_shown_as_such_with_their_throughput(
    searched: tuple[optuna.Study, list[str]],
) -> None:
    study, lines = searched
    assert any(
        "probing (one setting away from the incumbent; run 2, probe" in line for line in lines
    )
    frame = trials_frame(study)
    probed = frame[frame["status"] == PROBED]
    assert len(probed) > 0 and probed["throughput"].notna().all()
    assert probed["accuracy_loss"].isna().all()


def test_the_reference_measures_its_gradient_noise(
    searched: tuple[optuna.Study, list[str]],
) -> None:
    """Issue 18: after its training, the reference's rank 0 measures squared gradient norms at
    its micro-batch and at 4 of them (MEASUREMENTS times); no other run does."""
    study, lines = searched
    runs = [t for t in study.get_trials(deepcopy=False) if TrialRecord.of(t).ran]
    raw = runs[0].user_attrs[GRADIENT_NOISE]
    assert (raw["small"], raw["big"]) == (16, 64)
    assert len(raw["small_sq"]) == len(raw["big_sq"]) == MEASUREMENTS
    assert all(value > 0 for value in raw["small_sq"] + raw["big_sq"])
    assert all(t.user_attrs.get(GRADIENT_NOISE) is None for t in runs[1:])
    found = of_measured(raw)
    assert found is not None
    printed = [line for line in lines if line.startswith("gradient noise scale")]
    assert len(printed) == (found.simple is not None)
