"""Goodput scoring (issue 18; opt in with ``--scoring goodput``, the default ``throughput`` keeps
plain throughput).

A larger global batch takes more samples to reach the same loss (`autotune._noise_scale`), so
its samples/s overstate how soon it trains the model. Under goodput scoring, once the reference
has measured the gradient noise scale B_noise:
- a run of global batch B trains ``--train-samples`` times ``samples_ratio(B)``, the samples the
  large-batch model predicts it needs to reach the reference's loss, and its accuracy verdict is
  read there (a short budget no longer condemns a batch merely for taking fewer steps);
- the study maximises throughput times ``efficiency(B)`` (the inverse ratio): the rate at which
  it trains toward the reference's quality, so that two rates compare times to that quality.
A batch predicted to need more than `MAX_SAMPLES_RATIO` times the samples is past any useful
critical batch and cannot run. Without a usable noise scale (a pipeline or ZeRO-3 reference, or
a gradient lost in its noise) every batch scores by plain throughput, and the search says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna

from autotune.study._ranking import throughput_runs

if TYPE_CHECKING:
    from autotune.study._options import SearchOptions

from autotune._noise_scale import efficiency, of_measured, samples_ratio
from autotune._records import (
    GLOBAL_BATCH_SIZE,
    GRADIENT_NOISE,
    STUDY_FIXED_DEFAULTS,
    STUDY_NOISE_SCALE,
    STUDY_REFERENCE_BATCH,
    STUDY_SCORING,
)

MAX_SAMPLES_RATIO = 8.0
"""The most samples, as a multiple of the reference's, a batch may be predicted to need."""


@dataclasses.dataclass(frozen=True)
class Scoring:
    """How runs of a study are scored and how long they train.

    Attributes:
        train_samples: The reference's sample budget (``--train-samples``).
        noise_scale: B_noise where goodput scoring applies, else None (plain throughput).
        reference_batch: The reference's global batch (what the ratios are relative to).
    """

    train_samples: int
    noise_scale: float | None = None
    reference_batch: int | None = None

    @property
    def goodput(self) -> bool:
        return self.noise_scale is not None and bool(self.reference_batch)

    def ratio(self, batch: int) -> float:
        """The samples a global ``batch`` needs, over the reference's (1.0 without goodput)."""
        if not self.goodput or batch <= 0:
            return 1.0
        assert self.noise_scale is not None and self.reference_batch is not None
        return samples_ratio(batch, self.reference_batch, self.noise_scale)

    def efficiency(self, batch: int) -> float:
        """What a run's throughput is multiplied by to score it (1.0 without goodput)."""
        if not self.goodput or batch <= 0:
            return 1.0
        assert self.noise_scale is not None and self.reference_batch is not None
        return efficiency(batch, self.reference_batch, self.noise_scale)

    def samples_for(self, batch: int) -> int:
        """The samples a run of global ``batch`` trains for its accuracy verdict."""
        return max(1, round(self.train_samples * self.ratio(batch)))

    def describe(self, batch: int, rate: float) -> str:
        """A run's goodput and sample count for its result line ("" where it is its rate)."""
        if not self.goodput or batch == self.reference_batch:
            return ""
        return f", goodput {rate:.1f} (trained {self.samples_for(batch):,} samples)"

    def too_large(self, batch: int) -> str | None:
        """Why a global ``batch`` cannot run under goodput scoring, or None."""
        ratio = self.ratio(batch)
        if ratio <= MAX_SAMPLES_RATIO:
            return None
        return (
            f"global batch {batch} is predicted to need {ratio:.1f}x the reference's samples to "
            f"reach its loss (gradient noise scale about {self.noise_scale:,.0f}), more than "
            f"{MAX_SAMPLES_RATIO:g}x"
        )


def study_scoring(study_attrs: dict[str, Any], train_samples: int) -> Scoring:
    """The study's scoring as it stands: goodput once its reference measured a usable noise
    scale (`store_noise_scale`) in a study that scores goodput; plain throughput before that and
    otherwise."""
    scoring = study_attrs.get(STUDY_SCORING, STUDY_FIXED_DEFAULTS[STUDY_SCORING])
    noise, batch = study_attrs.get(STUDY_NOISE_SCALE), study_attrs.get(STUDY_REFERENCE_BATCH)
    if scoring != "goodput" or noise is None or not batch:
        return Scoring(train_samples)
    return Scoring(train_samples, float(noise), int(batch))


def store_noise_scale(study: optuna.Study, reference_attrs: dict[str, Any]) -> float | None:
    """Store the reference's noise scale and global batch in the study (None where its
    gradient noise could not be measured or was lost in its noise); returns the scale."""
    found = of_measured(reference_attrs.get(GRADIENT_NOISE))
    noise = None if found is None else found.simple
    study.set_user_attr(STUDY_NOISE_SCALE, noise)
    study.set_user_attr(STUDY_REFERENCE_BATCH, reference_attrs.get(GLOBAL_BATCH_SIZE))
    return noise


def timed_runs(
    attrs: dict[str, Any], number: int, confirmations: dict[str, list[float]], scoring: Scoring
) -> list[float]:
    """Every window a trial's configuration was timed over (`throughput_runs`), in what was
    timed: under goodput ``scoring`` its rates divided back by its batch's efficiency."""
    scale = scoring.efficiency(int(attrs.get(GLOBAL_BATCH_SIZE) or 0))
    return [rate / scale for rate in throughput_runs(attrs, number, confirmations)]


def goodput_line(noise_scale: float | None) -> str:
    """What the search says once the reference has (or has not) measured its noise scale."""
    if noise_scale is None:
        return (
            "scoring by plain throughput: the reference's gradient noise scale could not be "
            "measured (a pipeline or ZeRO-3 reference, or a gradient lost in its noise)"
        )
    return (
        f"scoring by goodput: gradient noise scale about {noise_scale:,.0f} examples; each "
        "global batch trains the samples it is predicted to need to reach the reference's loss"
    )


class StudyScoring:
    """A worker's view of its study's scoring: plain throughput until the reference records
    its noise scale (`record`), then fixed.

    Args:
        study: The study.
        options: The search's options (its ``scoring`` and ``train_samples``).
        wait_for_reference: Waits until the reference's run is scored (`get` with ``wait``).
    """

    def __init__(
        self, study: optuna.Study, options: SearchOptions, wait_for_reference: Callable[[], Any]
    ) -> None:
        self.study, self.options, self.wait_for_reference = study, options, wait_for_reference
        self._fixed: Scoring | None = None
        self._lr_noise: tuple[float | None] | None = None

    def get(self, wait: bool = False) -> Scoring:
        """The scoring as it stands; ``wait`` first waits for the reference where the study
        scores goodput (a run's length depends on it)."""
        if self._fixed is not None:
            return self._fixed
        if self.options.scoring != "goodput":  # plain throughput throughout: no need to ask
            self._fixed = Scoring(self.options.train_samples)
            return self._fixed
        if wait:
            self.wait_for_reference()
        attrs = self.study.user_attrs
        found = study_scoring(attrs, self.options.train_samples)
        if STUDY_NOISE_SCALE in attrs:
            self._fixed = found
        return found

    def record(self, reference_attrs: dict[str, Any], print_line: Callable[[str], None]) -> None:
        """Store the reference's noise scale, and say how the study scores from here on."""
        noise = store_noise_scale(self.study, reference_attrs)
        if self.options.scoring == "goodput":
            print_line(" " * 10 + goodput_line(noise))

    def lr_noise_scale(self) -> float | None:
        """The B_noise of the ``noise`` learning-rate rule: pinned (``lr_noise_scale``), or the
        reference's once stored (None before that, or where it could not be measured)."""
        if self.options.lr_rule != "noise" or self.options.lr_noise_scale is not None:
            return self.options.lr_noise_scale
        if self._lr_noise is None:
            attrs = self.study.user_attrs
            if STUDY_NOISE_SCALE not in attrs:
                return None
            self._lr_noise = (attrs[STUDY_NOISE_SCALE],)
        return self._lr_noise[0]

    def lr_waits(self) -> bool:
        """Whether a configuration's learning rate still waits for the reference's noise
        scale (the ``noise`` rule before the reference has stored it)."""
        self.lr_noise_scale()
        return (
            self.options.lr_rule == "noise"
            and self.options.lr_noise_scale is None
            and self._lr_noise is None
        )
