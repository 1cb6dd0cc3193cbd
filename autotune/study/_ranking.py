"""Which configuration is fastest: every window a trial was timed over (its own and its
confirmation runs, see `autotune.study._confirm`), its speed-up over the reference, and the
feasible trials ranked by it. A window's figure is the trial's rate, what the study
maximises: samples/s, or tokens/s in a study run with ``--objective tokens`` (`records.RATE`).

The confirmation windows live in the study's user attributes (an Optuna trial cannot change
once finished): `STUDY_CONFIRMATIONS` maps a trial number to the rates of its confirmation
runs, `STUDY_CONFIRMATION_ROUNDS` lists the rounds (trial number -> rate, the reference in
each), `STUDY_CONFIRMATION_FAILURES` maps a trial number to the reason a confirmation run
failed (such a configuration is not exported as the best: it did not train twice in a row).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

import optuna

from autotune._records import (
    STUDY_CONFIRMATION_FAILURES,
    STUDY_CONFIRMATION_ROUNDS,
    STUDY_CONFIRMATIONS,
    THROUGHPUT,
    TrialRecord,
)
from autotune._score import is_feasible

_COMPLETE = (optuna.trial.TrialState.COMPLETE,)


def stored_confirmations(study: optuna.Study) -> dict[str, list[float]]:
    """Confirmation runs' rates by trial number (as a string, as JSON keeps it)."""
    return {str(k): list(v) for k, v in study.user_attrs.get(STUDY_CONFIRMATIONS, {}).items()}


def stored_rounds(study: optuna.Study) -> list[dict[str, float]]:
    """Confirmation rounds, oldest first: trial number (a string) -> rate."""
    return [dict(r) for r in study.user_attrs.get(STUDY_CONFIRMATION_ROUNDS, [])]


def stored_failures(study: optuna.Study) -> dict[str, str]:
    """Why a trial's confirmation run failed, by trial number."""
    return dict(study.user_attrs.get(STUDY_CONFIRMATION_FAILURES, {}))


def throughput_runs(
    attrs: dict[str, Any], number: int, confirmations: dict[str, list[float]]
) -> list[float]:
    """Every window a trial's configuration was timed over: its own, then its confirmation
    runs (a repeat's are those of the trial it repeats)."""
    record = TrialRecord(number, attrs)
    if record.rate is None:
        return []
    measured_number = record.repeat_of if record.repeat_of is not None else number
    return [record.rate, *confirmations.get(str(measured_number), [])]


def estimated_throughput(runs: Sequence[float]) -> float | None:
    """A configuration's throughput: the median of its windows."""
    return float(statistics.median(runs)) if runs else None


def paired_speedups(number: int, reference: int, rounds: Sequence[dict[str, float]]) -> list[float]:
    """Trial ``number``'s rate over the reference's in each round that timed both."""
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
    record = TrialRecord(number, attrs)
    if reference is None or record.rate is None:
        return None, []
    measured = record.repeat_of if record.repeat_of is not None else number
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
        (t for t in trials if TrialRecord.of(t).is_reference and TrialRecord.of(t).is_ok), None
    )


def reference_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The study's reference trial, once it has run; else None."""
    return reference_of(study.get_trials(deepcopy=False, states=_COMPLETE))


def runs_of(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that launched a real run (ok or failed), in order."""
    return [t for t in study.get_trials(deepcopy=False, states=_COMPLETE) if TrialRecord.of(t).ran]


def candidates(trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Trials that measured a feasible configuration (repeats and failures excluded)."""
    return [
        t
        for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE
        and TrialRecord.of(t).is_ok
        and TrialRecord.of(t).get(THROUGHPUT) is not None
        and is_feasible(t.constraints)
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
    """The feasible trial with the highest estimated speed-up over the reference (side by side
    in confirmation rounds where it has them), or None while there is none."""
    ranked = rank_candidates(
        study.get_trials(deepcopy=False),
        stored_confirmations(study),
        stored_failures(study),
        stored_rounds(study),
    )
    return ranked[0] if ranked else None


SPEEDUP_NOISE_FLOOR = 0.02
"""The least noise a speed-up is judged against: a window counts as timed once the 95%
interval of its mean step time is within +-2% (`ADAPTIVE`), so a ratio of two windows is known
to no better than that."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether the fastest feasible configuration beats the reference by more than the noise.

    Attributes:
        best: The fastest feasible trial (`best_trial`), or None while there is none.
        reference: The reference trial, or None before it ran.
        speedup: The best's speed-up over the reference (`estimated_speedup`), or None.
        pairs: Its ratios to the reference in the confirmation rounds that timed both.
        noise: What the speed-up must exceed 1 by: half the range of ``pairs``, and at least
            `SPEEDUP_NOISE_FLOOR`.
    """

    best: optuna.trial.FrozenTrial | None
    reference: optuna.trial.FrozenTrial | None
    speedup: float | None
    pairs: tuple[float, ...]
    noise: float

    @property
    def best_is_another(self) -> bool:
        """True when the best is a configuration other than the reference."""
        return (
            self.best is not None
            and self.reference is not None
            and self.best.number != self.reference.number
        )

    @property
    def beats_reference(self) -> bool:
        """True when the best is another configuration, faster by more than the noise."""
        return self.best_is_another and self.speedup is not None and self.speedup - 1 > self.noise

    @property
    def chosen(self) -> optuna.trial.FrozenTrial | None:
        """What to export: the best when it beats the reference, else the reference (what the
        model file runs today); None while no configuration is feasible."""
        if self.best is None:
            return None
        return self.best if self.beats_reference else (self.reference or self.best)

    @property
    def within_noise(self) -> bool:
        """True when a faster configuration was found but not by more than the noise."""
        return self.best_is_another and not self.beats_reference


def speedup_noise(pairs: Sequence[float]) -> float:
    """The noise a speed-up is judged against: half the range of its side-by-side ratios (how
    much the same comparison moved from round to round), at least `SPEEDUP_NOISE_FLOOR`."""
    spread = (max(pairs) - min(pairs)) / 2 if len(pairs) >= 2 else 0.0
    return max(SPEEDUP_NOISE_FLOOR, spread)


def verdict(study: optuna.Study) -> Verdict:
    """The study's verdict: its fastest feasible trial, and whether it beats the reference by
    more than the noise (if not, the reference is what the search recommends)."""
    trials = study.get_trials(deepcopy=False)
    best = best_trial(study)
    reference = reference_of(trials)
    if best is None or reference is None:
        return Verdict(best, reference, None, (), SPEEDUP_NOISE_FLOOR)
    speedup, pairs = estimated_speedup(
        best.user_attrs,
        best.number,
        reference,
        stored_confirmations(study),
        stored_rounds(study),
    )
    return Verdict(best, reference, speedup, tuple(pairs), speedup_noise(pairs))
