"""Statistical efficiency of a global batch, from the gradient noise scale (issue 18).

McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training"): with true gradient G and
per-example gradient covariance Sigma, the squared norm of a gradient averaged over B examples
has expectation ``|G|^2 + tr(Sigma) / B``. Timed at two batch sizes, the two unknowns follow:

    |G|^2   ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(S)   ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

and the simple noise scale is ``B_noise = tr(Sigma) / |G|^2``. Each estimate above is unbiased;
their ratio is not, so many measurements are averaged first and divided last, as the paper does.
Near the end of training ``|G|^2`` is small against its noise: where its mean is not at least
`SIGNIFICANCE` standard errors above zero the ratio says nothing (on digits_mlp, 8 measurements
gave 300 to 5,700 examples for the same reference, its |G|^2 mean 0.4 standard errors above
zero in one of them), and there is no noise scale.

Around the critical batch size (about ``B_noise``) steps and samples trade off: reaching a given
loss takes ``E_min (1 + B / B_noise)`` samples at batch B. So against the reference's batch, a
batch B needs ``(1 + B / B_noise) / (1 + B_ref / B_noise)`` times its samples, and its
statistical efficiency is the inverse; goodput (Pollux, OSDI 2021) is throughput times it.
Pure logic: the harness measures the norms, the study scores with them.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

SIGNIFICANCE = 2.0
"""How many standard errors above zero the mean ``|G|^2`` estimate must be for a noise scale."""


@dataclasses.dataclass(frozen=True)
class NoiseScale:
    """The gradient noise scale estimated from squared gradient norms at two batch sizes.

    Attributes:
        gradient_sq: The estimate of ``|G|^2`` (the mean over measurements).
        trace: The estimate of ``tr(Sigma)``, the per-example gradient variance summed.
        measurements: How many pairs of norms it averages.
        gradient_se: The standard error of ``gradient_sq`` (0.0 from one measurement).
    """

    gradient_sq: float
    trace: float
    measurements: int
    gradient_se: float = 0.0

    @property
    def simple(self) -> float | None:
        """``B_noise = tr(Sigma) / |G|^2``; None where ``|G|^2`` did not come out clearly
        positive, `SIGNIFICANCE` standard errors above zero (the gradient is lost in its noise:
        more measurements, or larger batches, are needed)."""
        if self.gradient_sq <= SIGNIFICANCE * self.gradient_se or self.trace <= 0.0:
            return None
        return self.trace / self.gradient_sq

    @property
    def bounds(self) -> tuple[float, float] | None:
        """The noise scale with ``|G|^2`` at `SIGNIFICANCE` standard errors either side of its
        mean: (smallest, largest); None without a noise scale."""
        if self.simple is None:
            return None
        spread = SIGNIFICANCE * self.gradient_se
        return self.trace / (self.gradient_sq + spread), self.trace / (self.gradient_sq - spread)


def estimate(
    small_sq: Sequence[float], big_sq: Sequence[float], small: int, big: int
) -> NoiseScale:
    """The noise scale from squared norms of gradients averaged over ``small`` and over ``big``
    examples: ``small_sq[i]`` and ``big_sq[i]`` are one measurement (the big batch may hold the
    small one, as the accumulated gradient holds its first micro-batch's).

    Raises:
        ValueError: The batch sizes are not ``0 < small < big``, or the lists are empty or of
            different lengths.
    """
    if not 0 < small < big:
        raise ValueError(f"batch sizes must be 0 < small < big; got {small} and {big}")
    if not small_sq or len(small_sq) != len(big_sq):
        raise ValueError("one squared norm at each batch size per measurement is needed")
    gradient = [
        (big * b - small * s) / (big - small) for s, b in zip(small_sq, big_sq, strict=True)
    ]
    trace = [(s - b) / (1.0 / small - 1.0 / big) for s, b in zip(small_sq, big_sq, strict=True)]
    se = statistics.stdev(gradient) / len(gradient) ** 0.5 if len(gradient) > 1 else 0.0
    return NoiseScale(statistics.fmean(gradient), statistics.fmean(trace), len(small_sq), se)


def samples_ratio(batch: float, reference_batch: float, noise_scale: float) -> float:
    """How many times the reference's samples a global batch of ``batch`` needs to reach the
    same loss: ``(1 + batch / B_noise) / (1 + reference_batch / B_noise)``."""
    if batch <= 0 or reference_batch <= 0 or noise_scale <= 0:
        raise ValueError("batches and the noise scale must be positive")
    return (1.0 + batch / noise_scale) / (1.0 + reference_batch / noise_scale)


def efficiency(batch: float, reference_batch: float, noise_scale: float) -> float:
    """Statistical efficiency against the reference: the inverse of `samples_ratio` (1.0 at the
    reference's batch; below 1 for larger batches, above for smaller)."""
    return 1.0 / samples_ratio(batch, reference_batch, noise_scale)


def goodput(throughput: float, batch: float, reference_batch: float, noise_scale: float) -> float:
    """Samples/s that count: throughput times `efficiency`, so that the ratio of two goodputs
    is the ratio of their times to the same loss."""
    return throughput * efficiency(batch, reference_batch, noise_scale)


def of_measured(raw: Mapping[str, Any] | None) -> NoiseScale | None:
    """The estimate from a run's `GRADIENT_NOISE` record (None when it has none)."""
    if not raw or not raw.get("small_sq"):
        return None
    return estimate(raw["small_sq"], raw["big_sq"], int(raw["small"]), int(raw["big"]))


def summary_line(
    raw: Mapping[str, Any] | None, reference_batch: int, batch: int | None
) -> str | None:
    """One line for the search's end: the reference's noise scale, and what the large-batch
    model predicts for the best's global ``batch``; None without a usable measurement."""
    found = of_measured(raw)
    if found is None or found.simple is None or not raw:
        return None
    low, high = found.bounds or (found.simple, found.simple)
    line = (
        f"gradient noise scale after the reference's training: about {found.simple:,.0f} "
        f"examples ({low:,.0f}-{high:,.0f}; {found.measurements} measurements at batches of "
        f"{raw['small']} and {raw['big']})"
    )
    if batch is not None and batch != reference_batch and batch > 0 and reference_batch > 0:
        ratio = samples_ratio(batch, reference_batch, found.simple)
        line += (
            f"; by the large-batch model, the best's global batch of {batch} needs "
            f"{ratio:.2f}x the reference's samples to reach the same loss"
        )
    return line
