"""The top-level flow of `autotune search`: run the study, then hand back what it found (the
best configuration exported, the HTML report written, a summary)."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from pathlib import Path

import optuna

from autotune._errors import UserError
from autotune._export import export
from autotune._noise_scale import summary_line
from autotune._records import (
    GLOBAL_BATCH_SIZE,
    GRADIENT_NOISE,
    STUDY_REFERENCE_NOISE,
    TrialRecord,
    rate_label,
)
from autotune._score import REFERENCE_SEEDS
from autotune._space import describe_settings
from autotune.report import write_study_report
from autotune.study import (
    SPEEDUP_NOISE_FLOOR,
    SearchOptions,
    Verdict,
    estimated_throughput,
    quality_check,
    reference_trial,
    run_study,
    runs_of,
    show_choice,
    stored_confirmations,
    study_scoring,
    throughput_runs,
    verdict,
)


@dataclasses.dataclass(frozen=True)
class SearchSummary:
    """What a search found.

    Attributes:
        study: The study's name.
        runs: Trials in the study that launched a run.
        reference: The reference trial (None only for a worker that left the study to others
            before the reference finished).
        best: The fastest feasible trial (by its speed-up, see `autotune.study`), or None.
        export_dir: Where the chosen configuration was exported, or None.
        report_path: The HTML report.
        reference_runs: Every window the reference was timed over (its rate: samples/s, or
            tokens/s under ``--objective tokens``): its trial's, then its confirmation runs.
        best_runs: The same for the best trial; empty when there is none.
        best_speedups: The best's window over the reference's in each confirmation round
            that timed both; empty without confirmation runs.
        chosen: What was exported: the best when it beats the reference by more than the
            noise (`autotune.study.Verdict`), else the reference; None with no feasible trial.
    """

    study: str
    runs: int
    reference: optuna.trial.FrozenTrial | None
    best: optuna.trial.FrozenTrial | None
    export_dir: Path | None
    report_path: Path | None
    reference_runs: tuple[float, ...] = ()
    best_runs: tuple[float, ...] = ()
    best_speedups: tuple[float, ...] = ()
    chosen: optuna.trial.FrozenTrial | None = None

    @property
    def reference_throughput(self) -> float | None:
        """The reference's rate: the median of its windows."""
        return estimated_throughput(self.reference_runs)

    @property
    def best_throughput(self) -> float | None:
        """The best trial's rate: the median of its windows."""
        return estimated_throughput(self.best_runs)

    @property
    def speedup(self) -> float | None:
        """The best's speed-up: the median of ``best_speedups`` (its windows over the
        reference's in the same confirmation rounds), else the ratio of the two medians."""
        if self.best_speedups:
            return float(statistics.median(self.best_speedups))
        best, reference = self.best_throughput, self.reference_throughput
        if best is None or not reference:
            return None
        return best / reference


def search(options: SearchOptions, print_line: Callable[[str], None] = print) -> SearchSummary:
    """Run or resume a search, export its best configuration and write its report.

    Raises:
        UserError: Bad input (model file, space, storage, flags), caught before any trial runs,
            or a reference configuration that does not train.
    """
    study, last = run_study(options, print_line)
    return finish(study, options, print_line, last)


def finish(
    study: optuna.Study,
    options: SearchOptions,
    print_line: Callable[[str], None],
    last: bool = True,
) -> SearchSummary:
    """Export the best and write the report, when this worker is the study's ``last`` (the
    others leave both to it, as they left the confirmation runs)."""
    reference = reference_trial(study)
    if not last:
        print_line(
            f"other workers are still searching study '{options.study_name}': the last of them "
            "confirms the fastest, exports the best and writes the report"
        )
        return SearchSummary(options.study_name, len(runs_of(study)), reference, None, None, None)
    if reference is None:
        raise UserError("The study has no finished reference run; run the search again.")
    judged = verdict(study)
    best = judged.best
    _warn_if_noisy(study, options, print_line)
    noise_line = summary_line(
        reference.user_attrs.get(GRADIENT_NOISE),
        int(reference.user_attrs.get(GLOBAL_BATCH_SIZE) or 0),
        None if best is None else best.user_attrs.get(GLOBAL_BATCH_SIZE),
    )
    if noise_line is not None:
        print_line(noise_line)
    confirmations = stored_confirmations(study)
    reference_runs = throughput_runs(reference.user_attrs, reference.number, confirmations)
    best_runs = [] if best is None else throughput_runs(best.user_attrs, best.number, confirmations)
    export_dir: Path | None = None
    if best is None:
        print_line("no feasible configuration yet: every run lost more accuracy than the budget.")
    else:
        _print_best(study, judged, reference_runs, best_runs, print_line)
        check = quality_check(
            best.user_attrs,
            reference.user_attrs,
            study.user_attrs,
            study_scoring(study.user_attrs, options.train_samples).goodput,
        )
        if check is not None and best.number != reference.number:
            print_line(check.line())
        export_dir = _export_chosen(study, judged, options, print_line)
    show_choice(study, judged)  # for optuna-dashboard, whose own best ignores feasibility
    report_path = write_study_report(study, options.reports_dir / f"{options.study_name}.html")
    print_line(f"report: {report_path}")
    return SearchSummary(
        options.study_name,
        len(runs_of(study)),
        reference,
        best,
        export_dir,
        report_path,
        tuple(reference_runs),
        tuple(best_runs),
        judged.pairs,
        judged.chosen,
    )


def _warn_if_noisy(
    study: optuna.Study, options: SearchOptions, print_line: Callable[[str], None]
) -> None:
    noise = study.user_attrs.get(STUDY_REFERENCE_NOISE)
    if noise is not None and noise > options.max_accuracy_loss:
        print_line(
            f"warning: the reference's metric moved {noise:.2%} across {REFERENCE_SEEDS} training "
            f"seeds, more than the {options.max_accuracy_loss:.2%} budget; a verdict within that "
            "noise of the budget trained as many seeds, and each says how sure it is."
        )


def _print_best(
    study: optuna.Study,
    judged: Verdict,
    reference_runs: list[float],
    best_runs: list[float],
    print_line: Callable[[str], None],
) -> None:
    """Print the fastest feasible trial against the reference."""
    assert judged.best is not None
    record = TrialRecord.of(judged.best)
    best_value = estimated_throughput(best_runs) or 0.0
    reference_value = estimated_throughput(reference_runs) or math.nan
    pairs = judged.pairs
    side_by_side = f", median of {len(pairs)} rounds side by side" if pairs else ""
    print_line(
        f"best: trial {judged.best.number} [{describe_settings(record.settings)}] "
        f"{best_value:.1f} {rate_label(study.user_attrs)}{_windows(best_runs)} vs reference "
        f"{reference_value:.1f}{_windows(reference_runs)} "
        f"({judged.speedup or math.nan:.2f}x{side_by_side}), accuracy loss "
        f"{record.accuracy_loss:+.2%}"
    )


def _export_chosen(
    study: optuna.Study,
    judged: Verdict,
    options: SearchOptions,
    print_line: Callable[[str], None],
) -> Path:
    """Export what the search recommends: the best, or the reference when the best does not
    beat it by more than the noise (and say so)."""
    chosen = judged.chosen
    assert chosen is not None
    if judged.within_noise:
        spread = (
            f"half the range of its {len(judged.pairs)} rounds side by side"
            if judged.noise > SPEEDUP_NOISE_FLOOR
            else "the least a ratio of two timed windows is known to"
        )
        print_line(
            f"verdict: {judged.speedup or math.nan:.2f}x is within the noise "
            f"(+-{judged.noise:.1%}, {spread}): no configuration surely beats the reference, "
            "so the reference is exported; keep what the model file runs"
        )
    export_dir = options.trials_dir / options.study_name / "best"
    export(study, export_dir, chosen.number)
    print_line(f"exported: {export_dir / 'ds_config.json'} and {export_dir / 'launch.json'}")
    return export_dir


def _windows(runs: list[float]) -> str:
    """' (median of 3 windows)' when a figure is a median, else nothing."""
    return f" (median of {len(runs)} windows)" if len(runs) > 1 else ""
