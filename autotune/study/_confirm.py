"""Confirmation runs: once the search is over, the fastest feasible configurations and the
reference are timed again, in rounds that each time the reference too, and the best is chosen
on its speed-up over the reference measured side by side (`autotune.study._ranking`).

Why: a trial's throughput is one timed window on a machine whose speed drifts (on the 2-core
CPU machine a plain PyTorch loop swings by +-30% from one second to the next). The fastest of a
dozen single windows is biased upwards, the winner's curse, and a speed-up that divides it by
the reference's own single window carries both draws. Timing the top candidates and the
reference side by side, several times each, gives the export a steadier figure and keeps a
lucky window from choosing it. The drift follows time, not the configuration (two processes
training the same model in alternating 1 s windows moved together between 1,094 and 1,705
samples/s and their paired medians stayed within 2%), so a configuration is judged by the
ratio of its window to the reference's window in the same round: the median of those ratios
is its speed-up, and the best is the feasible configuration with the highest.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence

import optuna

from autotune._records import (
    STUDY_CONFIRMATION_FAILURES,
    STUDY_CONFIRMATION_ROUNDS,
    STUDY_CONFIRMATIONS,
    TrialRecord,
    rate_label,
)
from autotune.study._ranking import (
    SPEEDUP_NOISE_FLOOR,
    estimated_throughput,
    paired_speedups,
    rank_candidates,
    reference_of,
    stored_confirmations,
    stored_failures,
    stored_rounds,
    throughput_runs,
)

DEFAULT_CONFIRM = 2
"""Fastest feasible configurations (besides the reference) timed again by default."""
CONFIRM_ROUNDS = 2
"""Confirmation runs per configuration: with the trial's own window, a median of three."""

SETTLE_CONFIDENCE = 0.9
"""The order of the two fastest is settled once the chance that one leads in as many rounds
as it did, were the two equally fast, is at most 1 - this (a one-sided sign test): the leader
ahead in 4 of 4 rounds (6%), 6 of 7 (6%)."""
MAX_ROUNDS = 6
"""Rounds side by side after which the order of the two fastest is left unsettled."""
TIE_ROUNDS = 3
"""Rounds side by side after which two configurations whose median ratio is within
`SPEEDUP_NOISE_FLOOR` of 1 are left in either order: settling it would buy nothing."""

Remeasure = Callable[[optuna.trial.FrozenTrial, str], tuple[float | None, str | None]]
"""Times a trial's configuration again (throughput only) in a run named by the string:
returns (its rate, samples/s or tokens/s as the study maximises, None), or (None, why it
failed)."""


def confirmation_order(layouts: dict[int, int], rounds: int, seed: int) -> list[int]:
    """The order of the confirmation runs: ``rounds`` rounds over every trial number in
    ``layouts`` (trial number -> processes it launches).

    Each round visits every configuration once, in a shuffled order within each layout, so
    that a slow spell of the machine falls on different configurations in different rounds;
    layouts are grouped (a warm process group serves one layout) and every other round walks
    them backwards, so that only the first run of a round past the first changes layout.
    """
    rng = random.Random(seed)
    by_layout: dict[int, list[int]] = {}
    for number, processes in sorted(layouts.items()):
        by_layout.setdefault(processes, []).append(number)
    groups = [by_layout[processes] for processes in sorted(by_layout)]
    order: list[int] = []
    for round_index in range(rounds):
        walk = groups if round_index % 2 == 0 else groups[::-1]
        for group in walk:
            shuffled = list(group)
            rng.shuffle(shuffled)
            order += shuffled
    return order


def confirm(
    study: optuna.Study,
    remeasure: Remeasure,
    count: int,
    rounds: int,
    seed: int,
    print_line: Callable[[str], None],
) -> None:
    """Time the ``count`` fastest feasible trials (by their own window) again until each has
    ``rounds`` confirmation runs, the reference in every round; then, while the best is a trial
    not yet confirmed (the first ones' speed-ups fell below its unpaired one), confirm that one
    too, beside the reference again (at most ``count`` more). Runs already stored count:
    confirming a study again only fills what is missing."""
    if count < 1 or rounds < 1:
        return
    extra = 0
    chosen: list[optuna.trial.FrozenTrial] = []
    while True:
        confirmations = stored_confirmations(study)
        ranked = rank_candidates(
            study.get_trials(deepcopy=False),
            confirmations,
            stored_failures(study),
            stored_rounds(study),
        )
        if not ranked:
            return
        reference = reference_of(ranked)
        if not chosen:
            chosen = _fastest_windows(ranked, count)
        else:
            best = ranked[0]
            if (
                best is reference
                or len(confirmations.get(str(best.number), [])) >= rounds
                or extra >= count
            ):
                return
            chosen = [best]
            extra += 1
        if not chosen:
            return
        _run_rounds(study, chosen, reference, remeasure, rounds, seed + extra, print_line)


def _fastest_windows(
    ranked: Sequence[optuna.trial.FrozenTrial], count: int
) -> list[optuna.trial.FrozenTrial]:
    """The first pick: the ``count`` searched trials with the fastest own window, so that
    confirming the same study again picks the same trials and finds nothing missing."""
    searched = sorted(
        (t for t in ranked if not TrialRecord.of(t).is_reference),
        key=lambda t: (-float(TrialRecord.of(t).rate or 0.0), t.number),
    )
    return searched[:count]


def _run_rounds(
    study: optuna.Study,
    chosen: Sequence[optuna.trial.FrozenTrial],
    reference: optuna.trial.FrozenTrial | None,
    remeasure: Remeasure,
    rounds: int,
    seed: int,
    print_line: Callable[[str], None],
) -> None:
    """Rounds until every chosen trial has ``rounds`` confirmation runs; each round times
    every chosen trial still short of them, and the reference."""
    confirmations = stored_confirmations(study)
    missing = {
        t.number: rounds - len(confirmations.get(str(t.number), []))
        for t in chosen
        if len(confirmations.get(str(t.number), [])) < rounds
    }
    if not missing:
        return
    trials = {t.number: t for t in chosen}
    count = max(missing.values())
    if reference is not None:
        trials[reference.number] = reference
        missing[reference.number] = count
    layouts = {number: TrialRecord.of(trials[number]).processes for number in missing}
    total = sum(missing.values())
    print_line(
        f"confirming: timing trials {', '.join(str(n) for n in sorted(missing))} again "
        f"({total} runs in {count} rounds, each beside the reference)"
    )
    done = 0
    for index, number in enumerate(confirmation_order(layouts, count, seed)):
        if index % len(layouts) == 0:
            # A new round: it gets its own entry, filled as its runs finish.
            study.set_user_attr(STUDY_CONFIRMATION_ROUNDS, [*stored_rounds(study), {}])
        if missing.get(number, 0) <= 0:
            continue
        missing[number] -= 1
        done += 1
        _confirm_once(study, trials[number], remeasure, f"  [{done}/{total}]", print_line)
    if reference is not None:
        _print_side_by_side(study, trials, reference, print_line)


def _confirm_once(
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    remeasure: Remeasure,
    progress: str,
    print_line: Callable[[str], None],
) -> None:
    """One confirmation run of ``trial``, stored in the study as soon as it finishes (a trial
    whose confirmation failed before is not run again)."""
    number = trial.number
    confirmations, failures = stored_confirmations(study), stored_failures(study)
    if str(number) in failures:
        return
    name = f"confirm_{number:04d}_{len(confirmations.get(str(number), [])) + 1}"
    rate, failure = remeasure(trial, name)
    if rate is None:
        failures[str(number)] = failure or "failed"
        study.set_user_attr(STUDY_CONFIRMATION_FAILURES, failures)
        print_line(f"{progress} trial {number:>3}: failed: {failure}")
        return
    confirmations.setdefault(str(number), []).append(rate)
    study.set_user_attr(STUDY_CONFIRMATIONS, confirmations)
    all_rounds = stored_rounds(study)
    all_rounds[-1][str(number)] = rate
    study.set_user_attr(STUDY_CONFIRMATION_ROUNDS, all_rounds)
    runs = throughput_runs(trial.user_attrs, number, confirmations)
    print_line(
        f"{progress} trial {number:>3}: {rate:.1f} {rate_label(study.user_attrs)} "
        f"(median of {len(runs)}: {estimated_throughput(runs):.1f})"
    )


def _print_side_by_side(
    study: optuna.Study,
    trials: dict[int, optuna.trial.FrozenTrial],
    reference: optuna.trial.FrozenTrial,
    print_line: Callable[[str], None],
) -> None:
    """Each confirmed trial's speed-ups over the reference in the rounds that timed both."""
    all_rounds = stored_rounds(study)
    for number in sorted(n for n in trials if n != reference.number):
        pairs = paired_speedups(number, reference.number, all_rounds)
        if pairs:
            print_line(
                f"  trial {number:>3}: {', '.join(f'{r:.2f}x' for r in pairs)} the reference "
                f"side by side (median {statistics.median(pairs):.2f}x)"
            )


def chance_if_equal(ahead: int, rounds: int) -> float:
    """The chance that one of two equally fast configurations is ahead in at least ``ahead``
    of ``rounds`` rounds (one-sided sign test)."""
    if rounds == 0:
        return 1.0
    return sum(math.comb(rounds, k) for k in range(ahead, rounds + 1)) / 2**rounds


def head_to_head(all_rounds: Sequence[dict[str, float]], first: int, second: int) -> list[float]:
    """``first``'s rate over ``second``'s in each round that timed both."""
    return [
        r[str(first)] / r[str(second)]
        for r in all_rounds
        if r.get(str(first)) is not None and r.get(str(second))
    ]


def settle(
    study: optuna.Study,
    remeasure: Remeasure,
    seed: int,
    print_line: Callable[[str], None],
    max_rounds: int = MAX_ROUNDS,
) -> None:
    """Time the two fastest feasible configurations (the reference may be one) side by side,
    one round more at a time (the reference in each), until the leader is ahead in enough
    rounds that the order holds at `SETTLE_CONFIDENCE`, or ``max_rounds`` rounds timed both,
    or this has added ``max_rounds`` rounds (the two fastest may change on the way); then say
    which."""
    extra = 0
    while True:
        ranked = rank_candidates(
            study.get_trials(deepcopy=False),
            stored_confirmations(study),
            stored_failures(study),
            stored_rounds(study),
        )
        if len(ranked) < 2 or reference_of(ranked) is None:
            return
        first, second = ranked[0], ranked[1]
        ratios = head_to_head(stored_rounds(study), first.number, second.number)
        ahead = sum(ratio > 1 for ratio in ratios)
        chance = chance_if_equal(ahead, len(ratios))
        tally = (
            f"trial {first.number} ahead of trial {second.number} in {ahead} of {len(ratios)} "
            f"rounds side by side (a {chance:.0%} chance if they were equally fast)"
        )
        if chance <= 1 - SETTLE_CONFIDENCE:
            print_line(f"order settled: {tally}")
            return
        if len(ratios) >= TIE_ROUNDS and abs(statistics.median(ratios) - 1) <= SPEEDUP_NOISE_FLOOR:
            print_line(
                f"order left open: trials {first.number} and {second.number} are within "
                f"{SPEEDUP_NOISE_FLOOR:.0%} of each other side by side (median "
                f"{statistics.median(ratios):.3f} over {len(ratios)} rounds); either will do"
            )
            return
        if len(ratios) >= max_rounds or extra >= max_rounds:
            print_line(f"order not settled after {len(ratios)} rounds: {tally}")
            return
        reference = reference_of(ranked)
        assert reference is not None
        extra += 1
        _one_round(study, [first, second, reference], remeasure, seed + 100 + extra, print_line)


def _one_round(
    study: optuna.Study,
    trials: Sequence[optuna.trial.FrozenTrial],
    remeasure: Remeasure,
    seed: int,
    print_line: Callable[[str], None],
) -> None:
    """One more round timing each of ``trials`` (the reference among them) once, whatever
    their counts so far."""
    by_number = {t.number: t for t in trials}
    layouts = {number: TrialRecord.of(t).processes for number, t in by_number.items()}
    order = confirmation_order(layouts, 1, seed)
    print_line(
        f"settling: timing trials {', '.join(str(n) for n in sorted(by_number))} side by side "
        "once more"
    )
    study.set_user_attr(STUDY_CONFIRMATION_ROUNDS, [*stored_rounds(study), {}])
    for index, number in enumerate(order, start=1):
        _confirm_once(study, by_number[number], remeasure, f"  [{index}/{len(order)}]", print_line)
    reference = reference_of(list(trials))
    if reference is not None:
        _print_side_by_side(study, by_number, reference, print_line)
