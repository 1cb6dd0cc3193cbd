"""Confirmation runs: once the search is over, the fastest feasible configurations and the
reference are timed again, in rounds that each time the reference too, and the best is chosen
on its speed-up over the reference measured side by side.

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

The extra windows live in the study's user attributes (an Optuna trial cannot change once
finished): ``confirmations`` maps a trial number to the samples/s of its confirmation runs,
``confirmation_rounds`` lists the rounds (trial number -> samples/s, the reference in each),
``confirmation_failures`` maps a trial number to the reason a confirmation run failed (such a
configuration is not exported as the best: it did not train twice in a row).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import optuna

from autotune import _score

CONFIRMATIONS_ATTR = "confirmations"
ROUNDS_ATTR = "confirmation_rounds"
FAILURES_ATTR = "confirmation_failures"
DEFAULT_CONFIRM = 2
"""Fastest feasible configurations (besides the reference) timed again by default."""
CONFIRM_ROUNDS = 2
"""Confirmation runs per configuration: with the trial's own window, a median of three."""


def stored_confirmations(study: optuna.Study) -> dict[str, list[float]]:
    """Confirmation runs' samples/s by trial number (as a string, as JSON keeps it)."""
    return {str(k): list(v) for k, v in study.user_attrs.get(CONFIRMATIONS_ATTR, {}).items()}


def stored_rounds(study: optuna.Study) -> list[dict[str, float]]:
    """Confirmation rounds, oldest first: trial number (a string) -> samples/s."""
    return [dict(r) for r in study.user_attrs.get(ROUNDS_ATTR, [])]


def stored_failures(study: optuna.Study) -> dict[str, str]:
    """Why a trial's confirmation run failed, by trial number."""
    return dict(study.user_attrs.get(FAILURES_ATTR, {}))


def throughput_runs(
    attrs: dict[str, Any], number: int, confirmations: dict[str, list[float]]
) -> list[float]:
    """Every window a trial's configuration was timed over: its own, then its confirmation
    runs (a repeat's are those of the trial it repeats)."""
    if attrs.get("throughput") is None:
        return []
    measured_number = attrs.get("repeat_of", number)
    return [float(attrs["throughput"]), *confirmations.get(str(measured_number), [])]


def estimated_throughput(runs: Sequence[float]) -> float | None:
    """A configuration's throughput: the median of its windows."""
    return float(statistics.median(runs)) if runs else None


def paired_speedups(number: int, reference: int, rounds: Sequence[dict[str, float]]) -> list[float]:
    """Trial ``number``'s samples/s over the reference's in each round that timed both."""
    if number == reference:
        return [1.0 for r in rounds if r.get(str(reference))]
    return [
        r[str(number)] / r[str(reference)]
        for r in rounds
        if r.get(str(number)) is not None and r.get(str(reference))
    ]


def estimated_speedup(
    attrs: dict[str, Any],
    number: int,
    reference: optuna.trial.FrozenTrial | None,
    confirmations: dict[str, list[float]],
    rounds: Sequence[dict[str, float]],
) -> tuple[float | None, list[float]]:
    """A trial's speed-up over the reference, and the paired ratios it is the median of.

    With confirmation rounds that timed it beside the reference, the median of those ratios;
    without, the median of its windows over the reference's (windows taken at other times,
    so the drift between them counts as speed). None when either was never measured.
    """
    if reference is None or attrs.get("throughput") is None:
        return None, []
    measured = int(attrs.get("repeat_of", number))
    pairs = paired_speedups(measured, reference.number, rounds)
    if pairs:
        return float(statistics.median(pairs)), pairs
    mine = estimated_throughput(throughput_runs(attrs, number, confirmations))
    theirs = estimated_throughput(
        throughput_runs(reference.user_attrs, reference.number, confirmations)
    )
    if mine is None or not theirs:
        return None, []
    return mine / theirs, []


def reference_of(trials: Sequence[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
    """The reference trial among ``trials``, once it has run; else None."""
    return next(
        (
            t
            for t in trials
            if t.user_attrs.get("role") == "reference" and t.user_attrs.get("status") == "ok"
        ),
        None,
    )


def candidates(trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Trials that measured a feasible configuration (repeats and failures excluded)."""
    return [
        t
        for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE
        and t.user_attrs.get("status") == "ok"
        and t.user_attrs.get("throughput") is not None
        and _score.is_feasible(t.constraints)
    ]


def rank_candidates(
    trials: Sequence[optuna.trial.FrozenTrial],
    confirmations: dict[str, list[float]],
    failures: dict[str, str],
    rounds: Sequence[dict[str, float]] = (),
) -> list[optuna.trial.FrozenTrial]:
    """Feasible trials, fastest first by estimated speed-up over the reference (see
    ``estimated_speedup``; the median of their windows without a reference), earlier trial on
    a tie; trials whose confirmation run failed are left out."""
    kept = [t for t in candidates(trials) if str(t.number) not in failures]
    reference = reference_of(trials)

    def order(trial: optuna.trial.FrozenTrial) -> tuple[float, int]:
        if reference is None:
            runs = throughput_runs(trial.user_attrs, trial.number, confirmations)
            return (-(estimated_throughput(runs) or 0.0), trial.number)
        speedup, _ = estimated_speedup(
            trial.user_attrs, trial.number, reference, confirmations, rounds
        )
        return (-(speedup or 0.0), trial.number)

    return sorted(kept, key=order)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The feasible trial with the highest estimated speed-up, or None while there is none."""
    ranked = rank_candidates(
        study.get_trials(deepcopy=False),
        stored_confirmations(study),
        stored_failures(study),
        stored_rounds(study),
    )
    return ranked[0] if ranked else None


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


Remeasure = Callable[[optuna.trial.FrozenTrial, str], tuple[float | None, str | None]]
"""Times a trial's configuration again (throughput only) in a run named by the string:
returns (samples/s, None), or (None, why it failed)."""


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
        trials = study.get_trials(deepcopy=False)
        confirmations, failures = stored_confirmations(study), stored_failures(study)
        ranked = rank_candidates(trials, confirmations, failures, stored_rounds(study))
        if not ranked:
            return
        reference = reference_of(ranked)
        if not chosen:
            # The first pick goes by each trial's own window, so that confirming the same
            # study again picks the same trials and finds nothing missing.
            searched = sorted(
                (t for t in ranked if t.user_attrs.get("role") != "reference"),
                key=lambda t: (-float(t.user_attrs["throughput"]), t.number),
            )
            chosen = searched[:count]
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
    layouts = {
        number: int(trials[number].user_attrs["settings"]["processes"]) for number in missing
    }
    order = confirmation_order(layouts, count, seed)
    total = sum(missing.values())
    print_line(
        f"confirming: timing trials {', '.join(str(n) for n in sorted(missing))} again "
        f"({total} runs in {count} rounds, each beside the reference)"
    )
    done = 0
    round_size = len(layouts)
    for index, number in enumerate(order):
        if index % round_size == 0:
            # A new round: it gets its own entry, filled as its runs finish.
            study.set_user_attr(ROUNDS_ATTR, [*stored_rounds(study), {}])
        if missing.get(number, 0) <= 0:
            continue
        missing[number] -= 1
        done += 1
        confirmations = stored_confirmations(study)
        failures = stored_failures(study)
        if str(number) in failures:
            continue
        name = f"confirm_{number:04d}_{len(confirmations.get(str(number), [])) + 1}"
        throughput, failure = remeasure(trials[number], name)
        if throughput is None:
            failures[str(number)] = failure or "failed"
            study.set_user_attr(FAILURES_ATTR, failures)
            print_line(f"  [{done}/{total}] trial {number:>3}: failed: {failure}")
            continue
        confirmations.setdefault(str(number), []).append(throughput)
        study.set_user_attr(CONFIRMATIONS_ATTR, confirmations)
        all_rounds = stored_rounds(study)
        all_rounds[-1][str(number)] = throughput
        study.set_user_attr(ROUNDS_ATTR, all_rounds)
        runs = throughput_runs(trials[number].user_attrs, number, confirmations)
        print_line(
            f"  [{done}/{total}] trial {number:>3}: {throughput:.1f} samples/s "
            f"(median of {len(runs)}: {estimated_throughput(runs):.1f})"
        )
    if reference is None:
        return
    all_rounds = stored_rounds(study)
    for number in sorted(n for n in trials if n != reference.number):
        pairs = paired_speedups(number, reference.number, all_rounds)
        if pairs:
            print_line(
                f"  trial {number:>3}: {', '.join(f'{r:.2f}x' for r in pairs)} the reference "
                f"side by side (median {statistics.median(pairs):.2f}x)"
            )
