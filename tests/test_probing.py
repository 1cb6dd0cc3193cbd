"""The probe-first strategy's plan (autotune/study/_probing.py), on synthetic spaces whose
speeds and accuracy verdicts are known: pure logic, no runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from autotune.study._probing import (
    DEFAULT_NOISE,
    MAX_WINDOWS,
    PROBE,
    PROBED,
    REFERENCE_EVERY,
    RUN,
    SCORED,
    SKIPPED,
    ProbeOption,
    ProbePlan,
    ProbeStep,
    ProbeTiming,
    drifted,
    options_at_distance,
    ratios,
    window_noise,
)

GRID = {"a": [0, 1, 2, 3], "b": [0, 1]}
REFERENCE = {"a": 0, "b": 0}


def _option(settings: Mapping[str, Any]) -> ProbeOption:
    # The numerics are setting a's: b changes only the speed (a layout, say).
    return ProbeOption(f"a{settings['a']}b{settings['b']}", f"a{settings['a']}", dict(settings))


def _plan(everywhere: bool = False) -> ProbePlan:
    def neighbours(settings: Mapping[str, Any], distance: int) -> list[ProbeOption]:
        return options_at_distance(GRID, settings, distance, _option)

    return ProbePlan(_option(REFERENCE), neighbours, everywhere)


def _search(
    speed: Callable[[Mapping[str, Any]], float],
    feasible: Callable[[Mapping[str, Any]], bool],
    everywhere: bool = False,
    limit: int = 200,
) -> tuple[list[ProbeStep], list[ProbeTiming]]:
    """Follow the plan to its end with exact windows; returns its steps and the timings."""
    plan, steps, timings = _plan(everywhere), [], []
    for _ in range(limit):
        step = plan.next_step(timings)
        if step is None:
            return steps, timings
        steps.append(step)
        option = step.option
        rate = speed(option.settings)
        if step.kind == PROBE:
            timings.append(
                ProbeTiming(option.key, option.numerics, PROBED, rate, None, option.settings)
            )
        else:
            ok = feasible(option.settings)
            timings.append(
                ProbeTiming(option.key, option.numerics, SCORED, rate, ok, option.settings)
            )
    raise AssertionError(f"the plan did not end within {limit} steps")


def _timing(key: str, kind: str = PROBED, rate: float | None = 100.0) -> ProbeTiming:
    return ProbeTiming(key, key, kind, rate)


def test_options_at_distance_changes_exactly_that_many_settings() -> None:
    one = options_at_distance(GRID, REFERENCE, 1, _option)
    two = options_at_distance(GRID, REFERENCE, 2, _option)
    assert [o.key for o in one] == ["a1b0", "a2b0", "a3b0", "a0b1"]
    assert [o.key for o in two] == ["a1b1", "a2b1", "a3b1"]
    # What cannot run here (make gives None) is left out.
    odd = options_at_distance(GRID, REFERENCE, 1, lambda s: _option(s) if s["a"] != 2 else None)
    assert "a2b0" not in [o.key for o in odd]


def test_a_probe_is_judged_against_the_reference_windows_beside_it() -> None:
    timings = [
        _timing("ref", SCORED, 100.0),  # its full run: a window until it has been probed
        _timing("x", PROBED, 150.0),
    ]
    assert ratios(timings, "ref") == [1.0, 1.5]
    timings += [
        _timing("ref", PROBED, 200.0),  # from here on, the reference's windows are its probes
        _timing("y", PROBED, 300.0),
        _timing("ref", PROBED, 400.0),  # the machine doubled its speed meanwhile
        _timing("w", PROBED, 600.0),
        _timing("z", SKIPPED, None),
    ]
    assert ratios(timings, "ref") == [1.0, 0.75, 1.0, 1.0, 1.0, 1.5, None]
    assert not drifted(timings, "ref", 1)  # only a probe of the reference counts beside it
    assert drifted(timings, "ref", 3)  # 200 then 400: more than DRIFT_LIMIT apart
    assert not drifted(timings, "ref", 5)  # no reference window after it yet


def test_window_noise_comes_from_the_reference_windows() -> None:
    assert window_noise([_timing("ref", SCORED, 100.0)], "ref") == DEFAULT_NOISE
    steady = [_timing("ref", PROBED, 100.0) for _ in range(4)]
    assert window_noise(steady, "ref") == pytest.approx(0.02)  # the floor
    noisy = [_timing("ref", PROBED, rate) for rate in (80.0, 100.0, 125.0)]
    assert window_noise(noisy, "ref") > 0.15
    # The full run, a longer window from a fresh group, is not one of them once probed.
    cold = [_timing("ref", SCORED, 50.0), *steady]
    assert window_noise(cold, "ref") == pytest.approx(0.02)


def test_the_reference_runs_first_then_its_neighbours_are_probed() -> None:
    plan = _plan()
    first = plan.next_step([])
    assert first is not None and (first.kind, first.option.key) == (RUN, "a0b0")
    timings = [ProbeTiming("a0b0", "a0", SCORED, 100.0, True, REFERENCE)]
    second = plan.next_step(timings)
    assert second is not None and second.kind == PROBE and second.option.key == "a1b0"


def test_the_reference_is_probed_again_between_probes() -> None:
    steps, _ = _search(lambda s: 100.0 + s["a"], lambda s: True)
    kinds = [(s.kind, s.option.key) for s in steps]
    # The reference's full run, REFERENCE_EVERY probes, then the reference again.
    assert kinds[REFERENCE_EVERY + 1] == (PROBE, "a0b0")


def test_the_fastest_is_timed_twice_then_run_and_becomes_the_incumbent() -> None:
    def speed(s: Mapping[str, Any]) -> float:
        return 100.0 * (1 + s["a"]) * (1.5 if s["b"] else 1.0)  # a3b1 is 6x

    steps, timings = _search(speed, lambda s: True)
    runs = [s.option.key for s in steps if s.kind == RUN]
    assert runs[0] == "a0b0" and runs[-1] == "a3b1"
    # Nothing is run that was not probed twice before.
    for index, step in enumerate(steps):
        if step.kind == RUN and step.option.key != "a0b0":
            before = [t for t in timings[:index] if t.key == step.option.key and t.kind == PROBED]
            assert len(before) >= 2, step
    # Climbing took it there: a3b0 first (one setting from the reference), then a3b1.
    assert runs.index("a3b0") < runs.index("a3b1")


def test_numerics_over_the_budget_rule_out_their_configurations_without_a_probe() -> None:
    def speed(s: Mapping[str, Any]) -> float:
        return 100.0 * (1 + s["a"])

    steps, _ = _search(speed, lambda s: s["a"] < 3)  # a3 (the fastest) loses accuracy
    a3 = [s for s in steps if s.option.numerics == "a3"]
    assert [s.kind for s in a3 if s.kind == RUN] == [RUN]  # judged once, by one full run
    assert "a3b1" not in {s.option.key for s in steps}  # never timed: same numerics
    runs = [s.option.key for s in steps if s.kind == RUN]
    assert runs[-1] in ("a2b0", "a2b1")  # the fastest feasible


def test_the_plan_ends_when_nothing_near_can_beat_the_incumbent() -> None:
    steps, _ = _search(lambda s: 100.0, lambda s: True)  # all equally fast
    assert [s.kind for s in steps].count(RUN) == 1  # only the reference
    probed = {s.option.key for s in steps if s.kind == PROBE}
    assert probed == {"a1b0", "a2b0", "a3b0", "a0b1", "a1b1", "a2b1", "a3b1", "a0b0"}


def test_a_contender_within_the_noise_is_timed_again_not_believed() -> None:
    plan = _plan()
    timings = [ProbeTiming("a0b0", "a0", SCORED, 100.0, True, REFERENCE)]
    # One window 1% above the reference: within the noise, so timed again, up to MAX_WINDOWS.
    for key in ("a1b0", "a2b0", "a3b0", "a0b1"):
        timings.append(ProbeTiming(key, key[:2], PROBED, 60.0, None, {}))
    timings.append(ProbeTiming("a0b0", "a0", PROBED, 100.0, None, REFERENCE))
    timings.append(ProbeTiming("a1b1", "a1", PROBED, 101.0, None, {"a": 1, "b": 1}))
    step = plan.next_step(timings)
    assert step is not None and step.kind == PROBE
    # Two settings away is probed first; then the doubtful one is timed again.
    seen = 0
    while step is not None and seen < 40:
        if step.option.key == "a1b1":
            assert step.kind == PROBE
        rate = 101.0 if step.option.key == "a1b1" else 60.0
        if step.option.key == "a0b0":
            rate = 100.0
        timings.append(
            ProbeTiming(
                step.option.key, step.option.numerics, PROBED, rate, None, step.option.settings
            )
        )
        step = plan.next_step(timings)
        seen += 1
    assert step is None
    again = [t for t in timings if t.key == "a1b1"]
    assert 2 <= len(again) <= MAX_WINDOWS  # timed again, never run: 1% is no win
