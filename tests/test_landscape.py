"""Landscapes and sampler replays (benchmarks/landscape.py, benchmarks/sampler_replay.py), on
synthetic landscapes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from landscape import (
    Landscape,
    LandscapePoint,
    landscape_from_study,
    reachable_settings,
)
from sampler_replay import ReplayResult, percentile, replay, summarise

from autotune._errors import UserError
from autotune._score import constraints_for_no_run, constraints_for_run
from autotune._space import IntRange, SearchSpace
from autotune._task import reference_settings

REPO = Path(__file__).resolve().parents[1]

REFERENCE = reference_settings(32)

SPACE = SearchSpace(
    {
        "micro_batch_size": (16, 32, 64, 128, 256),
        "gradient_accumulation_steps": (1, 2),
        "zero_stage": (0, 1),
        "num_workers": (0, 1),
        "prefetch_factor": (2, 4),  # only active with workers: grid points repeat without
    }
)

optuna.logging.set_verbosity(optuna.logging.ERROR)


def synthetic(settings: dict[str, Any]) -> tuple[str, float | None, float | None]:
    """Throughput saturating in the micro-batch; accuracy loss growing with the global batch;
    the largest global batch cannot run."""
    mbs, gas = settings["micro_batch_size"], settings["gradient_accumulation_steps"]
    if mbs * gas >= 512:
        return "infeasible", None, None
    throughput = 1000.0 * mbs / (mbs + 64)
    throughput *= 1 + 0.08 * (gas - 1)
    throughput *= 0.97 if settings["zero_stage"] else 1.0
    throughput *= 1.15 if settings["num_workers"] else 1.0
    throughput *= 1.02 if settings["prefetch_factor"] == 4 else 1.0
    loss = 0.002 * math.log2(mbs * gas / 32)
    return "ok", throughput, loss


def _landscape(space: SearchSpace = SPACE, measure: Any = synthetic) -> Landscape:
    return Landscape.from_measure(space, REFERENCE, measure, machine="test", model="synthetic")


LANDSCAPE = _landscape()


# --- the landscape -------------------------------------------------------------------------


def test_the_landscape_holds_each_reachable_configuration_once() -> None:
    # 5 x 2 x 2 micro-batch x accumulation x ZeRO, times workers 0 (prefetch inactive) or
    # workers 1 with prefetch 2 or 4.
    assert len(LANDSCAPE.points) == 5 * 2 * 2 * 3
    assert LANDSCAPE.runnable == len(LANDSCAPE.points) - 2 * 3  # mbs 256 x gas 2 cannot run
    assert LANDSCAPE.missing() == []
    assert len(reachable_settings(SPACE, REFERENCE)) == 60


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = LANDSCAPE.save(tmp_path / "sub" / "landscape.json")
    loaded = Landscape.load(path)
    assert loaded == dataclasses.replace(LANDSCAPE, space=loaded.space)
    assert loaded.space.describe() == SPACE.describe()
    assert loaded.best_feasible() == LANDSCAPE.best_feasible()


def test_load_an_integer_range_space(tmp_path: Path) -> None:
    space = SearchSpace({"gradient_accumulation_steps": IntRange(1, 3)})
    landscape = _landscape(space)
    assert len(landscape.points) == 3
    loaded = Landscape.load(landscape.save(tmp_path / "l.json"))
    assert loaded.space.domains["gradient_accumulation_steps"] == IntRange(1, 3)


def test_load_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--record"):
        Landscape.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"space": {}}')
    with pytest.raises(UserError, match="not a landscape"):
        Landscape.load(tmp_path / "bad.json")


def test_best_feasible_is_the_fastest_point_within_the_budget() -> None:
    best = LANDSCAPE.best_feasible()
    assert best is not None
    within = [
        p
        for p in LANDSCAPE.points
        if p.status == "ok" and p.accuracy_loss is not None and p.accuracy_loss <= 0.005
    ]
    assert best.throughput == max(p.throughput or 0.0 for p in within)
    # Faster points exist over the budget (micro-batch 256) and are not the best.
    assert any((p.throughput or 0) > (best.throughput or 0) for p in LANDSCAPE.points)
    assert best.settings["micro_batch_size"] * best.settings["gradient_accumulation_steps"] == 128
    assert LANDSCAPE.target_throughput() == pytest.approx(0.95 * (best.throughput or 0))


def test_no_feasible_point_is_a_user_error() -> None:
    landscape = _landscape(measure=lambda s: ("ok", 1.0, 0.5))
    assert landscape.best_feasible() is None
    with pytest.raises(UserError, match="no feasible point"):
        replay(landscape, "random", 0)


def test_lookup_normalises_inactive_settings() -> None:
    point = LANDSCAPE.lookup({**REFERENCE, "prefetch_factor": 4})  # workers 0: prefetch unused
    assert point.key == LANDSCAPE.lookup(REFERENCE).key
    with pytest.raises(UserError, match="no point"):
        LANDSCAPE.lookup({**REFERENCE, "micro_batch_size": 8})


def test_points_must_match_their_keys() -> None:
    point = LANDSCAPE.points[0]
    with pytest.raises(ValueError, match="does not match"):
        dataclasses.replace(LANDSCAPE, lr_scaling="linear")
    with pytest.raises(ValueError, match="share the key"):
        dataclasses.replace(LANDSCAPE, points=(point, point))
    with pytest.raises(ValueError, match="throughput"):
        LandscapePoint(point.key, point.settings, "ok")


# --- replays -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_grid_reaches_the_target_within_the_runnable_points(seed: int) -> None:
    result = replay(LANDSCAPE, "grid", seed)
    assert result.runs_to_target is not None
    assert 1 <= result.runs_to_target <= LANDSCAPE.runnable
    assert result.best_found >= result.target
    assert result.fraction == result.runs_to_target / LANDSCAPE.runnable


def test_replays_are_deterministic() -> None:
    for sampler in ("tpe", "random", "grid"):
        assert replay(LANDSCAPE, sampler, 3) == replay(LANDSCAPE, sampler, 3)


def test_gp_replays_on_a_tiny_landscape() -> None:
    space = SearchSpace({"micro_batch_size": (16, 32, 64, 128), "zero_stage": (0, 1)})
    result = replay(_landscape(space), "gp", 0)
    assert result.runs_to_target is not None and result.runs_to_target <= 8


def test_the_reference_is_the_first_run() -> None:
    # A landscape whose best point is the reference: every sampler is done after one run.
    def reference_best(settings: dict[str, Any]) -> tuple[str, float, float]:
        return "ok", 100.0 if settings == REFERENCE else 10.0, 0.0

    landscape = _landscape(measure=reference_best)
    for sampler in ("tpe", "random", "grid"):
        result = replay(landscape, sampler, 0)
        assert (result.runs_to_target, result.proposals_to_target) == (1, 1)


def test_repeats_and_infeasible_proposals_cost_no_run() -> None:
    # A single runnable point (the best); everything else cannot run. The search proposes
    # many configurations, repeats among them, but spends exactly one run.
    best = {**REFERENCE, "micro_batch_size": 128, "zero_stage": 1}

    def one_runnable(settings: dict[str, Any]) -> tuple[str, float | None, float | None]:
        if settings == best or settings == REFERENCE:
            return "ok", 100.0 if settings == best else 1.0, 0.0
        return "infeasible", None, None

    landscape = _landscape(measure=one_runnable)
    assert landscape.runnable == 2
    result = replay(landscape, "random", 1)
    assert result.runs_to_target == 2  # the reference, then the best
    assert result.proposals_to_target is not None and result.proposals_to_target > 2
    assert result.runs == 2
    assert result.repeats > 0  # the space has 60 configurations; repeats happen
    assert result.proposals - result.repeats - result.runs > 0  # infeasible, first seen
    # TPE's random start-up is drawn among runnable configurations only: the one there is
    # comes straight after the reference, and no proposal is wasted.
    result = replay(landscape, "tpe", 1)
    assert (result.runs_to_target, result.proposals_to_target) == (2, 2)
    assert result.runs == 2 and result.repeats == 0


def test_the_proposal_cap_stops_a_replay_short() -> None:
    result = replay(LANDSCAPE, "random", 0, max_proposals=1)
    assert (result.proposals, result.runs, result.repeats) == (1, 1, 0)
    assert result.runs_to_target is None and result.fraction is None


def test_replay_rejects_an_incomplete_landscape() -> None:
    partial = dataclasses.replace(LANDSCAPE, points=LANDSCAPE.points[:-1])
    with pytest.raises(UserError, match="misses 1 configuration"):
        replay(partial, "grid", 0)


# --- a landscape from a study --------------------------------------------------------------


def _grid_study(landscape: Landscape, skip_last: bool = False) -> optuna.Study:
    """A study shaped like `autotune search --sampler grid` leaves it: the reference first,
    then every point, some of them proposed twice (repeats)."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("space", landscape.space.describe())
    study.set_user_attr("max_accuracy_loss", 0.005)
    study.set_user_attr("lr_scaling", "sqrt")
    study.set_user_attr("machine", "cpu, 2 cores")
    study.set_user_attr("model", "/somewhere/digits_mlp.py")
    reference = landscape.lookup(REFERENCE)
    others = [p for p in landscape.points if p.key != reference.key]
    points = [reference, *others[: -1 if skip_last else None], others[0]]
    for number, point in enumerate(points):
        trial = study.ask()
        trial.set_user_attr("role", "reference" if number == 0 else "search")
        trial.set_user_attr("settings", point.settings)
        trial.set_user_attr("config_key", point.key)
        repeat = number == len(points) - 1
        trial.set_user_attr("status", "repeat" if repeat else point.status)
        trial.set_user_attr("throughput", point.throughput)
        trial.set_user_attr("accuracy_loss", point.accuracy_loss)
        study.tell(trial, point.value())
    study.ask()  # a trial still running is ignored
    return study


def test_landscape_from_a_grid_study() -> None:
    rebuilt = landscape_from_study(_grid_study(LANDSCAPE), SPACE, REFERENCE, LANDSCAPE.optimizer)
    assert rebuilt.model == "digits_mlp.py" and rebuilt.machine == "cpu, 2 cores"
    assert sorted(rebuilt.points, key=lambda p: p.key) == sorted(
        LANDSCAPE.points, key=lambda p: p.key
    )


def test_landscape_from_a_study_checks_what_it_ran() -> None:
    study = _grid_study(LANDSCAPE)
    with pytest.raises(UserError, match="--n-trials"):
        landscape_from_study(
            _grid_study(LANDSCAPE, skip_last=True), SPACE, REFERENCE, LANDSCAPE.optimizer
        )
    with pytest.raises(UserError, match="--space"):
        landscape_from_study(
            study, SearchSpace({"zero_stage": (0, 1)}), REFERENCE, LANDSCAPE.optimizer
        )
    with pytest.raises(UserError, match="--model"):
        landscape_from_study(study, SPACE, REFERENCE, {"type": "AdamW", "params": {"lr": 0.1}})
    with pytest.raises(UserError, match="--model"):
        landscape_from_study(
            study, SPACE, {**REFERENCE, "micro_batch_size": 64}, LANDSCAPE.optimizer
        )


# --- statistics ----------------------------------------------------------------------------


def _result(sampler: str, runs: int | None) -> ReplayResult:
    return ReplayResult(sampler, 0, runs, runs, runs or 40, runs or 40, 0, 40, 1.0, 1.0)


def test_percentile_matches_linear_interpolation() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([4, 1, 3, 2], 25) == 1.75
    assert percentile([7], 75) == 7
    assert percentile([1, 2, 3, 4, 5], 0) == 1 and percentile([1, 2, 3, 4, 5], 100) == 5


def test_summarise_per_sampler() -> None:
    results = [_result("tpe", r) for r in (4, 8, 6, 10, None)]
    results += [_result("random", r) for r in (20, 10)]
    results.append(_result("grid", None))
    summary = summarise(results)
    assert list(summary) == ["tpe", "random", "grid"]
    assert summary["tpe"] == {
        "seeds": 5,
        "reached": 4,
        "runnable": 40,
        "median": 7.0,
        "p25": 5.5,
        "p75": 8.5,
        "p90": pytest.approx(9.4),
        "mean": 7.0,
        "min": 4.0,
        "max": 10.0,
        "median_fraction": 7.0 / 40,
        "median_seconds": None,  # an untimed landscape
        "p90_seconds": None,
        "grid_seconds": 0.0,
        "median_seconds_fraction": None,
    }
    assert summary["random"]["median"] == 15.0
    assert summary["grid"]["reached"] == 0 and summary["grid"]["median"] is None


def test_feasibility_follows_the_tool_constraints() -> None:
    point = LANDSCAPE.lookup({**REFERENCE, "micro_batch_size": 128})
    assert point.accuracy_loss == pytest.approx(0.004)
    assert point.constraints(0.005) == constraints_for_run(0.004, 0.005)
    assert point.is_feasible(0.005) and not point.is_feasible(0.003)
    infeasible = LANDSCAPE.lookup(
        {**REFERENCE, "micro_batch_size": 256, "gradient_accumulation_steps": 2}
    )
    assert infeasible.constraints(0.005) == constraints_for_no_run()
    assert infeasible.value() == 0.0 and not infeasible.runnable


def test_the_recording_space_file_is_small() -> None:
    from autotune._space import load_space

    space = load_space(REPO / "search_spaces" / "landscape.yaml")
    assert 30 <= len(reachable_settings(space, REFERENCE)) <= 50


def test_a_replay_tries_the_reference_in_native_half_precision_first_as_the_search_does() -> None:
    space = SearchSpace({"micro_batch_size": (32, 64), "precision": ("fp32", "bf16")})

    def bf16_wins(settings: dict[str, Any]) -> tuple[str, float | None, float | None]:
        fast = settings["precision"] == "bf16" and settings["micro_batch_size"] == 32
        return "ok", 2000.0 if fast else 1000.0, 0.0

    landscape = _landscape(space, bf16_wins)
    # Second run in every seed; the random start-up alone draws it second in about a third.
    for seed in range(5):
        assert replay(landscape, "tpe", seed, native_half=("bf16",)).runs_to_target == 2
    assert any(replay(landscape, "tpe", seed).runs_to_target != 2 for seed in range(5))


# --- time: what each run costs, and one window's noise (issue 17, item 8) ----------------------


def _timed(landscape: Landscape) -> Landscape:
    """The landscape with costs: 2 s of setup, then 10,000 samples trained at the point's
    throughput (a slower configuration trains longer), then 1 s of eval."""
    points = []
    for point in landscape.points:
        if point.runnable:
            train = 10_000.0 / (point.throughput or 1000.0)
            point = dataclasses.replace(
                point, wall_seconds=2.0 + train + 1.0, setup_seconds=2.0, train_seconds=train
            )
        points.append(point)
    return dataclasses.replace(landscape, points=tuple(points), min_measure_seconds=3.0)


def test_a_point_costs_its_wall_time_or_a_throughput_only_run() -> None:
    point = LandscapePoint("k", {}, "ok", 500.0, 0.0, 23.0, 2.0, 20.0)
    assert point.full_seconds() == 23.0
    assert point.timed_seconds(3.0) == 5.0  # setup and 3 s timed, no eval
    short = LandscapePoint("k", {}, "ok", 500.0, 0.0, 4.0, 2.0, 1.5)
    assert short.timed_seconds(3.0) == 3.5  # the budget ends first
    assert not LandscapePoint("k", {}, "ok", 500.0, 0.0).timed


def test_timed_replays_count_wall_time_against_the_grid(tmp_path: Path) -> None:
    timed = _timed(LANDSCAPE)
    assert timed.timed and not LANDSCAPE.timed
    assert timed.grid_seconds() == pytest.approx(
        sum(p.full_seconds() for p in timed.points if p.runnable)
    )
    assert Landscape.load(timed.save(tmp_path / "timed.json")) == dataclasses.replace(
        timed, space=Landscape.load(tmp_path / "timed.json").space
    )
    for seed in range(5):
        result = replay(timed, "tpe", seed)
        assert result.seconds_to_target is not None and result.runs_to_target is not None
        assert 0 < result.seconds_to_target <= result.seconds < result.grid_seconds
        # Without noise, the same runs as an untimed replay: time changes no decision.
        assert result.runs_to_target == replay(LANDSCAPE, "tpe", seed).runs_to_target
    assert replay(LANDSCAPE, "tpe", 0).seconds_to_target is None


def test_window_noise_hides_the_best_from_some_searches() -> None:
    """The tool sees each run through one noisy window and stops runs early on what it sees:
    with 30% noise some near-best runs look slower than the best so far less the margin and are
    stopped, so random search (whose proposals ignore the values) reaches the target later, or
    not at all, on some of the same seeds."""
    timed = _timed(LANDSCAPE)
    quiet = [replay(timed, "random", seed).runs_to_target for seed in range(40)]
    noisy = [replay(timed, "random", seed, noise=0.3).runs_to_target for seed in range(40)]
    assert quiet != noisy
    late = sum(n is None or (q is not None and n > q) for q, n in zip(quiet, noisy, strict=True))
    assert late > 0
