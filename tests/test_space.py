"""Search-space files: parsing, validation and sampling (pure logic, autotune/_space.py)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autotune._errors import UserError
from autotune._space import (
    PARAMETERS,
    IntRange,
    SearchSpace,
    every_settings,
    load_space,
    random_runnable_settings,
    record_reference,
    reference_with,
    sampled_params,
    suggest,
)
from autotune._task import reference_settings

REPO = Path(__file__).resolve().parents[1]

REFERENCE = reference_settings(32)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(tmp_path: Path, text: str) -> SearchSpace:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return load_space(path)


def _random_study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))


# --- loading -------------------------------------------------------------------------------


def test_reference_covers_every_parameter() -> None:
    assert set(REFERENCE) == set(PARAMETERS)


def test_lists_pins_and_ranges_load(tmp_path: Path) -> None:
    space = _space(
        tmp_path,
        "micro_batch_size: [16, 32]\n"
        "precision: bf16\n"
        "zero_stage: [2]\n"
        "partition_method: [uniform, 'type:Linear']\n"
        "pin_memory: [false, true]\n"
        "num_workers: {low: 1, high: 4, log: true}\n"
        "gradient_accumulation_steps: {low: 1, high: 3}\n",
    )
    assert space.source == str(tmp_path / "space.yaml")
    assert space.domains == {
        "micro_batch_size": (16, 32),
        "precision": ("bf16",),  # a bare scalar pins the setting
        "zero_stage": (2,),
        "partition_method": ("uniform", "type:Linear"),
        "pin_memory": (False, True),
        "num_workers": IntRange(1, 4, True),
        "gradient_accumulation_steps": IntRange(1, 3, False),
    }
    assert space.size() == 2 * 1 * 1 * 2 * 2 * 4 * 3
    grid = space.grid()
    assert grid["num_workers"] == [1, 2, 3, 4]
    assert grid["gradient_accumulation_steps"] == [1, 2, 3]
    assert grid["precision"] == ["bf16"]
    assert space.describe()["num_workers"] == {"low": 1, "high": 4, "log": True}
    assert space.describe()["micro_batch_size"] == [16, 32]


def test_a_range_may_be_a_single_point(tmp_path: Path) -> None:
    space = _space(tmp_path, "zero_stage: {low: 2, high: 2}\n")
    assert space.domains["zero_stage"] == IntRange(2, 2)
    assert space.size() == 1


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_file_is_an_empty_space(tmp_path: Path, text: str) -> None:
    space = _space(tmp_path, text)
    assert space.domains == {}
    assert space.size() == 1
    assert space.grid() == {}


@pytest.mark.parametrize("name", ["default.yaml", "cpu_small.yaml"])
def test_shipped_space_files_load(name: str) -> None:
    space = load_space(REPO / "search_spaces" / name)
    assert space.domains
    assert set(space.domains) <= set(PARAMETERS)


@pytest.mark.parametrize(
    ("text", "phrases"),
    [
        # unknown key: names it and lists the known ones
        ("micro_batch: [1]\n", ["unknown setting 'micro_batch'", "Known settings:", "zero_stage"]),
        # unknown values
        ("precision: [fp8]\n", ["'precision' must be one of fp32, bf16, fp16", "'fp8'"]),
        ("precision: fp8\n", ["'precision' must be one of fp32, bf16, fp16", "'fp8'"]),
        ("zero_stage: [4]\n", ["'zero_stage' must be 0, 1, 2 or 3", "got 4"]),
        ("zero_stage: [-1]\n", ["'zero_stage' must be 0, 1, 2 or 3", "got -1"]),
        ("partition_method: ['type:[']\n", ["'partition_method'", "valid regular expression"]),
        ("partition_method: ['type:']\n", ["'partition_method' must be", "type:REGEX"]),
        ("partition_method: [layers]\n", ["'partition_method' must be", "'layers'"]),
        ("num_workers: [-1]\n", ["'num_workers' must be a whole number >= 0", "got -1"]),
        ("micro_batch_size: [0]\n", ["'micro_batch_size' must be a whole number >= 1", "got 0"]),
        ("micro_batch_size: [1.5]\n", ["whole number >= 1", "got 1.5"]),
        ("pin_memory: [1]\n", ["'pin_memory' must be true or false", "got 1"]),
        # a bool is not an int, even though bool subclasses int in Python
        ("micro_batch_size: [true]\n", ["'micro_batch_size' must be a whole number >= 1", "True"]),
        ("zero_stage: [false]\n", ["'zero_stage' must be 0, 1, 2 or 3", "False"]),
        # empty list, duplicates
        ("zero_stage: []\n", ["'zero_stage' has an empty list"]),
        ("micro_batch_size: [8, 8]\n", ["'micro_batch_size' lists a value twice"]),
        ("precision: [bf16, fp32, bf16]\n", ["'precision' lists a value twice"]),
        # ranges
        ("precision: {low: 1, high: 2}\n", ["'precision' takes a list of values, not a range"]),
        ("pin_memory: {low: 0, high: 1}\n", ["'pin_memory' takes a list of values, not a range"]),
        (
            "partition_method: {low: 1, high: 2}\n",
            ["'partition_method' takes a list of values, not a range"],
        ),
        ("micro_batch_size: {low: 8, high: 4}\n", ["'micro_batch_size' has low 8 above high 4"]),
        ("zero_stage: {low: 0, high: 5}\n", ["'zero_stage' range ends must be 0, 1, 2 or 3"]),
        ("micro_batch_size: {low: true, high: 4}\n", ["range ends must be a whole number >= 1"]),
        ("micro_batch_size: {low: 1.5, high: 4}\n", ["range ends must be", "1.5"]),
        ("num_workers: {low: 0, high: 2, log: true}\n", ["log: true must start at 1", "low 0"]),
        ("micro_batch_size: {low: 1, high: 4, log: 1}\n", ["'log' must be true or false"]),
        ("micro_batch_size: {low: 1}\n", ["range must be {low: N, high: M}"]),
        ("micro_batch_size: {low: 1, high: 4, step: 2}\n", ["range must be {low: N, high: M}"]),
        # the file as a whole
        ("- a\n- b\n", ["must map setting names to values"]),
        ("just some text\n", ["must map setting names to values"]),
        ("micro_batch_size: [1, 2\n", ["is not valid YAML", "fix its syntax"]),
        ("a: b\n  c: d\n", ["is not valid YAML (line 2)"]),
    ],
)
def test_bad_spaces_are_rejected_with_a_useful_message(
    tmp_path: Path, text: str, phrases: list[str]
) -> None:
    with pytest.raises(UserError) as caught:
        _space(tmp_path, text)
    message = str(caught.value)
    assert str(tmp_path / "space.yaml") in message  # says which file
    for phrase in phrases:
        assert phrase in message, message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.yaml does not exist\. Pass --space"):
        load_space(tmp_path / "nope.yaml")


def test_a_folder_is_not_a_space_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_space(tmp_path)


def test_search_space_validates_when_built_directly() -> None:
    with pytest.raises(UserError, match=r"<dict>: 'zero_stage' must be 0, 1, 2 or 3, got 5"):
        SearchSpace({"zero_stage": (5,)})
    with pytest.raises(UserError, match="unknown setting 'lr'"):
        SearchSpace({"lr": (0.1,)})
    assert SearchSpace({"zero_stage": IntRange(0, 3)}).size() == 4


# --- sampling ------------------------------------------------------------------------------


def test_conditions_follow_the_settings_they_depend_on() -> None:
    # suggest() walks PARAMETERS in order; a condition must see its setting already chosen.
    names = list(PARAMETERS)
    assert names.index("pipeline_stages") < names.index("partition_method")
    assert names.index("num_workers") < names.index("prefetch_factor")
    assert PARAMETERS["partition_method"].active_when({"pipeline_stages": 1}) is False
    assert PARAMETERS["partition_method"].active_when({"pipeline_stages": 2}) is True
    assert PARAMETERS["prefetch_factor"].active_when({"num_workers": 0}) is False
    assert PARAMETERS["prefetch_factor"].active_when({"num_workers": 1}) is True


def test_suggest_fills_every_setting_and_skips_inactive_ones(tmp_path: Path) -> None:
    space = _space(
        tmp_path,
        "micro_batch_size: [16, 64]\npipeline_stages: [1]\npartition_method: [uniform, parameters]\n"
        "num_workers: [0]\nprefetch_factor: [3, 4]\nzero_stage: {low: 0, high: 3}\n",
    )
    study = _random_study()
    seen_batches = set()
    for _ in range(20):
        trial = study.ask()
        chosen = suggest(trial, space, REFERENCE)
        assert list(chosen) == list(PARAMETERS)
        assert chosen["micro_batch_size"] in (16, 64)
        assert 0 <= chosen["zero_stage"] <= 3
        seen_batches.add(chosen["micro_batch_size"])
        # Left out of the space: the reference value.
        for name in ("precision", "gradient_accumulation_steps", "processes", "pin_memory"):
            assert chosen[name] == REFERENCE[name]
        # With one stage and no workers these settings change nothing: reference, not sampled.
        assert chosen["partition_method"] == "parameters"
        assert chosen["prefetch_factor"] == 2
        # Pinned settings are not sampled either.
        assert set(trial.params) == {"micro_batch_size", "zero_stage"}
        assert trial.params["micro_batch_size"] == chosen["micro_batch_size"]
        study.tell(trial, 0.0)
    assert seen_batches == {16, 64}


def test_conditional_settings_are_sampled_exactly_when_active(tmp_path: Path) -> None:
    space = _space(
        tmp_path,
        "pipeline_stages: [1, 2]\npartition_method: [uniform, 'type:Linear']\n"
        "num_workers: {low: 0, high: 2}\nprefetch_factor: [3, 4]\n",
    )
    study = _random_study(seed=1)
    seen = set()
    for _ in range(40):
        trial = study.ask()
        chosen = suggest(trial, space, REFERENCE)
        piped = chosen["pipeline_stages"] > 1
        workers = chosen["num_workers"] > 0
        seen.add((piped, workers))
        assert ("partition_method" in trial.params) == piped
        assert ("prefetch_factor" in trial.params) == workers
        if piped:
            assert chosen["partition_method"] in ("uniform", "type:Linear")
        else:
            assert chosen["partition_method"] == REFERENCE["partition_method"]
        if workers:
            assert chosen["prefetch_factor"] in (3, 4)
        else:
            assert chosen["prefetch_factor"] == REFERENCE["prefetch_factor"]
        study.tell(trial, 0.0)
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


def test_suggest_samples_within_the_domain(tmp_path: Path) -> None:
    space = _space(
        tmp_path,
        "micro_batch_size: {low: 4, high: 64, log: true}\n"
        "gradient_accumulation_steps: {low: 2, high: 3}\n"
        "precision: [bf16, fp16]\n"
        "pin_memory: [true, false]\n",
    )
    study = _random_study(seed=2)
    values: dict[str, set] = {name: set() for name in space.domains}
    for _ in range(60):
        trial = study.ask()
        chosen = suggest(trial, space, REFERENCE)
        assert 4 <= chosen["micro_batch_size"] <= 64
        assert isinstance(chosen["micro_batch_size"], int)
        assert chosen["gradient_accumulation_steps"] in (2, 3)
        assert chosen["precision"] in ("bf16", "fp16")
        assert chosen["pin_memory"] in (True, False)
        assert trial.params == {name: chosen[name] for name in space.domains}
        for name in space.domains:
            values[name].add(chosen[name])
        study.tell(trial, 0.0)
    assert values["gradient_accumulation_steps"] == {2, 3}
    assert values["precision"] == {"bf16", "fp16"}
    assert values["pin_memory"] == {True, False}
    assert len(values["micro_batch_size"]) > 3


def test_empty_space_gives_the_reference_and_samples_nothing() -> None:
    trial = optuna.create_study().ask()
    assert suggest(trial, SearchSpace({}), REFERENCE) == REFERENCE
    assert trial.params == {}


# --- the reference trial -------------------------------------------------------------------


def test_enqueued_reference_comes_back_unchanged(tmp_path: Path) -> None:
    space = _space(
        tmp_path,
        "micro_batch_size: [16, 32, 64]\nprecision: [bf16, fp32]\n"
        "zero_stage: {low: 0, high: 3}\nprocesses: [1, 2]\n",
    )
    enqueued = sampled_params(space, REFERENCE)
    assert enqueued == {
        "micro_batch_size": 32,
        "precision": "fp32",
        "zero_stage": 0,
        "processes": 1,
    }
    study = _random_study(seed=3)
    study.enqueue_trial(enqueued)
    trial = study.ask()
    assert record_reference(trial, space, REFERENCE) == REFERENCE
    assert trial.params == enqueued
    # The same trial through the ordinary path gives the same settings back too.
    again = _random_study(seed=4)
    again.enqueue_trial(enqueued)
    assert suggest(again.ask(), space, REFERENCE) == REFERENCE


def test_record_reference_returns_a_copy(tmp_path: Path) -> None:
    space = _space(tmp_path, "micro_batch_size: [16, 32]\n")
    study = optuna.create_study()
    study.enqueue_trial(sampled_params(space, REFERENCE))
    settings = record_reference(study.ask(), space, REFERENCE)
    settings["micro_batch_size"] = 999
    assert REFERENCE["micro_batch_size"] == 32


def test_reference_values_the_space_cannot_express_are_not_enqueued(tmp_path: Path) -> None:
    space = _space(
        tmp_path,
        "micro_batch_size: [64, 128]\nzero_stage: {low: 1, high: 3}\nprecision: fp32\n",
    )
    # Outside the list, outside the range, and pinned (a pin is never sampled).
    assert sampled_params(space, REFERENCE) == {}
    trial = optuna.create_study().ask()
    assert record_reference(trial, space, REFERENCE) == REFERENCE
    assert trial.params == {}


def test_reference_trial_samples_what_suggest_would(tmp_path: Path) -> None:
    space = _space(
        tmp_path,
        "pipeline_stages: [1, 2]\npartition_method: [parameters, uniform]\n"
        "num_workers: [0, 1]\nprefetch_factor: [2, 4]\n",
    )
    study = optuna.create_study()
    study.enqueue_trial(sampled_params(space, REFERENCE))
    reference_trial = study.ask()
    assert record_reference(reference_trial, space, REFERENCE) == REFERENCE
    study.enqueue_trial({"pipeline_stages": 1, "num_workers": 0})
    ordinary_trial = study.ask()
    assert suggest(ordinary_trial, space, REFERENCE) == REFERENCE
    assert ordinary_trial.params == {"pipeline_stages": 1, "num_workers": 0}
    assert reference_trial.params == ordinary_trial.params


# --- the random start-up -------------------------------------------------------------------


def _two_core_rule(settings: dict) -> bool:
    """As on the 2-core CPU machine: ranks plus their DataLoader workers fit the cores, and a
    pipeline's stages divide the processes."""
    fits = settings["processes"] * (1 + settings["num_workers"]) <= 2
    return fits and settings["processes"] % settings["pipeline_stages"] == 0


CPU_SMALL = load_space(REPO / "search_spaces" / "cpu_small.yaml")


def test_start_up_draws_are_runnable_distinct_and_not_the_reference() -> None:
    drawn = random_runnable_settings(CPU_SMALL, REFERENCE, _two_core_rule, 9, seed=0)
    assert len(drawn) == 9
    assert all(_two_core_rule(settings) for settings in drawn)
    assert REFERENCE not in drawn
    assert len({repr(sorted(s.items())) for s in drawn}) == 9
    for settings in drawn:
        # Each is a point of the space, filled in as suggest() fills it in.
        assert set(settings) == set(REFERENCE)
        for name, domain in CPU_SMALL.domains.items():
            condition = PARAMETERS[name].active_when
            if condition is None or condition(settings):
                assert settings[name] in domain
            else:
                assert settings[name] == REFERENCE[name]
    # Data parallelism does come up among the runnable draws (2 processes, no workers).
    assert any(s["processes"] == 2 for s in drawn)


def test_start_up_draws_take_each_listed_value_in_turn(tmp_path: Path) -> None:
    space = _space(tmp_path, "micro_batch_size: [16, 32, 64, 128]\nzero_stage: [0, 1, 2, 3]\n")
    for seed in range(5):
        drawn = random_runnable_settings(space, REFERENCE, lambda _: True, 3, seed)
        # The values other than the reference's (32, ZeRO 0) each come up once.
        assert sorted(s["micro_batch_size"] for s in drawn) == [16, 64, 128]
        assert sorted(s["zero_stage"] for s in drawn) == [1, 2, 3]
        # Past one turn the values come round again; all 15 other points can be drawn.
        assert len(random_runnable_settings(space, REFERENCE, lambda _: True, 20, seed)) == 15
    # On the 2-core CPU machine's small space the first draw tries 2 processes (the
    # reference has 1), with no DataLoader worker, since a worker beside 2 ranks cannot run.
    first = random_runnable_settings(CPU_SMALL, REFERENCE, _two_core_rule, 1, seed=0)[0]
    assert first["processes"] == 2 and first["num_workers"] == 0


def test_start_up_draws_are_seeded() -> None:
    first = random_runnable_settings(CPU_SMALL, REFERENCE, _two_core_rule, 9, seed=1)
    assert first == random_runnable_settings(CPU_SMALL, REFERENCE, _two_core_rule, 9, seed=1)
    assert first != random_runnable_settings(CPU_SMALL, REFERENCE, _two_core_rule, 9, seed=2)


def test_start_up_draws_stop_at_what_the_space_holds(tmp_path: Path) -> None:
    space = _space(tmp_path, "micro_batch_size: [16, 32, 64]\nprocesses: [1, 2, 4]\n")

    def one_process(settings: dict) -> bool:
        return settings["processes"] == 1

    drawn = random_runnable_settings(space, REFERENCE, one_process, 9, seed=0)
    # 9 points, of which 3 run on one process, one of them the reference.
    assert sorted(s["micro_batch_size"] for s in drawn) == [16, 64]
    assert random_runnable_settings(space, REFERENCE, lambda _: False, 9, seed=0) == []


def test_start_up_draws_from_ranges_stay_inside_them(tmp_path: Path) -> None:
    space = _space(
        tmp_path,
        "micro_batch_size: {low: 1, high: 512, log: true}\nzero_stage: {low: 0, high: 3}\n",
    )
    drawn = random_runnable_settings(space, REFERENCE, lambda _: True, 50, seed=0)
    assert len(drawn) == 50
    assert all(1 <= s["micro_batch_size"] <= 512 and 0 <= s["zero_stage"] <= 3 for s in drawn)
    # Log-uniform, as Optuna's log int draws: about 60% of draws are at most 32 (a uniform
    # draw would give 6%).
    assert sum(s["micro_batch_size"] <= 32 for s in drawn) > 15


def test_reference_with_changes_one_setting_where_the_space_can_record_it(tmp_path: Path) -> None:
    space = _space(tmp_path, "micro_batch_size: [16, 32]\nprecision: [fp32, bf16]\n")
    assert reference_with(space, REFERENCE, "precision", ["bf16", "fp16"], lambda _: True) == [
        {**REFERENCE, "precision": "bf16"}  # fp16 is not in the space; fp32 is the reference's
    ]
    assert reference_with(space, REFERENCE, "precision", ["bf16"], lambda _: False) == []
    # A space without the reference's micro-batch could not record the changed reference.
    other = _space(tmp_path, "micro_batch_size: [16, 64]\nprecision: [fp32, bf16]\n")
    assert reference_with(other, REFERENCE, "precision", ["bf16"], lambda _: True) == []
    # Drawn start-up runs leave out those already taken.
    taken = [{**REFERENCE, "precision": "bf16"}]
    drawn = random_runnable_settings(space, REFERENCE, lambda _: True, 5, 0, taken)
    assert sorted(s["micro_batch_size"] for s in drawn) == [16, 16]
    assert taken[0] not in drawn


def test_every_settings_lists_the_space_with_its_conditions(tmp_path: Path) -> None:
    space = _space(
        tmp_path,
        "micro_batch_size: [16, 64]\npipeline_stages: [1, 2]\n"
        "partition_method: [uniform, parameters]\nzero_stage: {low: 0, high: 1}\n",
    )
    every = every_settings(space, REFERENCE, limit=100)
    assert every is not None
    # 2 batches x 2 ZeRO stages x (1 stage, or 2 stages x 2 partition methods).
    assert len(every) == 2 * 2 * 3
    assert all(list(settings) == list(PARAMETERS) for settings in every)
    one_stage = [s for s in every if s["pipeline_stages"] == 1]
    assert {s["partition_method"] for s in one_stage} == {REFERENCE["partition_method"]}
    assert {s["precision"] for s in every} == {REFERENCE["precision"]}  # not in the space
    assert every_settings(space, REFERENCE, limit=11) is None
