"""Search-space files: parsing, validation and sampling (pure logic)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autotune._errors import UserError
from autotune._space import (
    PARAMETERS,
    IntRange,
    load_space,
    record_reference,
    sampled_reference_params,
    suggest,
)

REFERENCE = {
    "micro_batch_size": 32,
    "gradient_accumulation_steps": 1,
    "precision": "fp32",
    "zero_stage": 0,
    "processes": 1,
    "pipeline_stages": 1,
    "partition_method": "parameters",
    "num_workers": 0,
    "pin_memory": False,
    "prefetch_factor": 2,
}


def _space(tmp_path: Path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return load_space(path)


def test_lists_pins_and_ranges_load(tmp_path: Path) -> None:
    space = _space(
        tmp_path,
        "micro_batch_size: [16, 32]\nprecision: bf16\nnum_workers: {low: 1, high: 4, log: true}\n",
    )
    assert space.domains["micro_batch_size"] == (16, 32)
    assert space.domains["precision"] == ("bf16",)
    assert space.domains["num_workers"] == IntRange(1, 4, True)
    assert space.size() == 2 * 1 * 4
    assert space.grid()["num_workers"] == [1, 2, 3, 4]


def test_empty_file_is_an_empty_space(tmp_path: Path) -> None:
    assert _space(tmp_path, "").domains == {}


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("micro_batch: [1]\n", "unknown setting 'micro_batch'"),
        ("precision: [fp8]\n", "'precision' must be one of fp32, bf16, fp16"),
        ("zero_stage: [4]\n", "'zero_stage' must be 0, 1, 2 or 3"),
        ("partition_method: ['type:[']\n", "valid regular expression"),
        ("zero_stage: []\n", "empty list"),
        ("micro_batch_size: [8, 8]\n", "lists a value twice"),
        ("precision: {low: 1, high: 2}\n", "takes a list of values, not a range"),
        ("micro_batch_size: {low: 8, high: 4}\n", "low 8 above high 4"),
        ("num_workers: {low: 0, high: 2, log: true}\n", "must start at 1"),
        ("micro_batch_size: [true]\n", "whole number >= 1"),
        ("micro_batch_size: {low: 1}\n", "range must be {low: N, high: M}"),
        ("- a\n- b\n", "must map setting names"),
        ("micro_batch_size: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_spaces_are_rejected_with_a_useful_message(
    tmp_path: Path, text: str, phrase: str
) -> None:
    with pytest.raises(UserError, match=None) as caught:
        _space(tmp_path, text)
    assert phrase in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_space(tmp_path / "nope.yaml")


def test_suggest_fills_every_setting_and_skips_inactive_ones(tmp_path: Path) -> None:
    space = _space(
        tmp_path,
        "micro_batch_size: [16, 64]\npipeline_stages: [1]\npartition_method: [uniform, parameters]\n"
        "num_workers: [0]\nprefetch_factor: [2, 4]\nzero_stage: {low: 0, high: 3}\n",
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        chosen = suggest(trial, space, REFERENCE)
        assert set(chosen) == set(PARAMETERS)
        assert chosen["micro_batch_size"] in (16, 64)
        assert 0 <= chosen["zero_stage"] <= 3
        assert chosen["precision"] == "fp32"  # left out: the reference value
        # With one stage and no workers these settings change nothing, so they are not sampled.
        assert "partition_method" not in trial.params
        assert "prefetch_factor" not in trial.params
        assert set(trial.params) == {"micro_batch_size", "zero_stage"}


def test_conditional_settings_are_sampled_when_active(tmp_path: Path) -> None:
    space = _space(tmp_path, "pipeline_stages: [2]\npartition_method: [uniform, parameters]\n")
    trial = optuna.create_study().ask()
    chosen = suggest(trial, space, REFERENCE)
    assert chosen["pipeline_stages"] == 2
    assert "partition_method" in trial.params


def test_enqueued_reference_comes_back_unchanged(tmp_path: Path) -> None:
    space = _space(tmp_path, "micro_batch_size: [16, 32, 64]\nprecision: [bf16, fp32]\n")
    study = optuna.create_study()
    study.enqueue_trial(sampled_reference_params(space, REFERENCE))
    trial = study.ask()
    assert record_reference(trial, space, REFERENCE) == REFERENCE
    assert trial.params == {"micro_batch_size": 32, "precision": "fp32"}


def test_reference_values_outside_the_space_are_not_enqueued(tmp_path: Path) -> None:
    space = _space(tmp_path, "micro_batch_size: [64, 128]\nzero_stage: {low: 1, high: 3}\n")
    assert sampled_reference_params(space, REFERENCE) == {}
