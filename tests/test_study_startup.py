"""The start-up queued after the reference (autotune.study.enqueue_startup): pure logic on
in-memory Optuna studies, no runs."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autotune._space import load_space, suggest
from autotune._task import reference_settings
from autotune.study import STARTUP_RUNS, enqueue_startup, make_sampler

REPO = Path(__file__).resolve().parents[1]
REFERENCE = reference_settings(32)
SPACE = load_space(REPO / "search_spaces" / "cpu_small.yaml")

optuna.logging.set_verbosity(optuna.logging.WARNING)
# As search() does: TPE's `group` argument is marked experimental.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def _one_process(settings: dict) -> bool:
    return settings["processes"] == 1 and settings["pipeline_stages"] == 1


def _study(sampler: str) -> optuna.Study:
    return optuna.create_study(sampler=make_sampler(sampler, 0, SPACE.grid()))


@pytest.mark.parametrize("sampler", ["tpe", "gp"])
def test_model_based_samplers_get_a_start_up_that_can_run(sampler: str) -> None:
    study = _study(sampler)
    halves, drawn = enqueue_startup(study, SPACE, REFERENCE, _one_process, sampler, 0, 16)
    queued = len(halves) + len(drawn)
    assert halves == [] and queued == STARTUP_RUNS - 1
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs["role"] for t in waiting] == ["start-up"] * queued
    # Each queued trial comes back through suggest() as a runnable configuration.
    for _ in range(queued):
        settings = suggest(study.ask(), SPACE, REFERENCE)
        assert _one_process(settings) and settings != REFERENCE


@pytest.mark.parametrize("sampler", ["random", "grid"])
def test_random_and_grid_get_no_start_up(sampler: str) -> None:
    study = _study(sampler)
    assert enqueue_startup(study, SPACE, REFERENCE, _one_process, sampler, 0, 16) == ([], [])
    assert not study.get_trials()


def test_the_start_up_leaves_room_for_the_reference_in_a_short_search() -> None:
    study = _study("tpe")
    assert len(enqueue_startup(study, SPACE, REFERENCE, _one_process, "tpe", 0, 3)[1]) == 2
    assert enqueue_startup(_study("tpe"), SPACE, REFERENCE, _one_process, "tpe", 0, 1) == ([], [])


def test_the_start_up_tries_the_reference_in_each_native_half_precision_first() -> None:
    study = _study("tpe")
    space = load_space(REPO / "search_spaces" / "default.yaml")
    halves, drawn = enqueue_startup(
        study, space, REFERENCE, _one_process, "tpe", 0, 16, native_half=("bf16", "fp16")
    )
    assert halves == [{**REFERENCE, "precision": "bf16"}, {**REFERENCE, "precision": "fp16"}]
    assert len(drawn) == STARTUP_RUNS - 1 - 2
    asked = [suggest(study.ask(), space, REFERENCE) for _ in range(STARTUP_RUNS - 1)]
    assert asked[:2] == halves and asked[2:] == drawn
    assert all(settings not in halves and settings != REFERENCE for settings in drawn)


def test_a_native_half_precision_the_space_or_machine_leaves_out_is_not_queued() -> None:
    # cpu_small lists fp32 and bf16 only; this rule refuses bf16.
    def no_bf16(settings: dict) -> bool:
        return _one_process(settings) and settings["precision"] != "bf16"

    halves, drawn = enqueue_startup(
        _study("tpe"), SPACE, REFERENCE, no_bf16, "tpe", 0, 16, native_half=("bf16", "fp16")
    )
    assert halves == [] and len(drawn) == STARTUP_RUNS - 1
    halves, _ = enqueue_startup(
        _study("tpe"), SPACE, REFERENCE, _one_process, "tpe", 0, 2, native_half=("bf16", "fp16")
    )
    assert halves == [{**REFERENCE, "precision": "bf16"}]  # n_trials 2: one start-up run
