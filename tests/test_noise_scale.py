"""The gradient noise scale and the statistical efficiency it predicts (autotune/_noise_scale.py),
on synthetic gradients whose noise scale is known: pure logic, no runs."""

from __future__ import annotations

import pytest
import torch

from autotune._noise_scale import (
    SIGNIFICANCE,
    efficiency,
    estimate,
    goodput,
    of_measured,
    samples_ratio,
    summary_line,
)

DIM = 50


def _synthetic_norms(
    noise_scale: float, small: int, big: int, measurements: int, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Squared norms of minibatch gradients: per-example gradients are a fixed G (|G|^2 = 1)
    plus independent Gaussian noise of variance s^2 in each of DIM directions, so that
    tr(Sigma) / |G|^2 = DIM s^2 = ``noise_scale``. The big batch holds the small one."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.full((DIM,), DIM**-0.5, dtype=torch.float64)
    sigma = (noise_scale / DIM) ** 0.5
    noise = torch.randn(measurements, big, DIM, generator=generator, dtype=torch.float64)
    examples = mean + sigma * noise
    small_mean = examples[:, :small].mean(dim=1)
    big_mean = examples.mean(dim=1)
    return small_mean.square().sum(1).tolist(), big_mean.square().sum(1).tolist()


@pytest.mark.parametrize(
    ("noise_scale", "small", "big"), [(8.0, 4, 32), (64.0, 8, 128), (400.0, 32, 512)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_noise_scale_is_recovered_from_two_batch_sizes(
    noise_scale: float, small: int, big: int, seed: int
) -> None:
    """With batches around the noise scale (as the paper advises), 400 measurements give it to
    within 15% whatever the seed."""
    small_sq, big_sq = _synthetic_norms(noise_scale, small, big, measurements=400, seed=seed)
    found = estimate(small_sq, big_sq, small, big)
    assert found.measurements == 400
    assert found.trace == pytest.approx(noise_scale, rel=0.1)
    assert found.simple == pytest.approx(noise_scale, rel=0.15)


def test_a_gradient_lost_in_its_noise_gives_no_noise_scale() -> None:
    # |G_big|^2 above what the small batch implies: no positive |G|^2 can explain it.
    found = estimate([1.0], [1.2], 4, 32)
    assert found.gradient_sq > 0 and found.trace < 0 and found.simple is None
    assert estimate([10.0], [0.1], 1, 2).simple is None  # |G|^2 estimate negative


def test_a_gradient_within_its_standard_errors_of_zero_gives_no_noise_scale() -> None:
    """Late in training |G|^2 is small against its noise: a mean |G|^2 estimate less than
    SIGNIFICANCE standard errors above zero gives no noise scale, whatever the ratio reads."""
    weak = _synthetic_norms(4000.0, 8, 32, measurements=8, seed=0)
    found = estimate(*weak, 8, 32)
    assert found.gradient_se > 0
    assert found.gradient_sq < SIGNIFICANCE * found.gradient_se
    assert found.simple is None and found.bounds is None
    # The same gradient measured at batches around its noise scale stands clear of zero.
    strong = estimate(*_synthetic_norms(400.0, 128, 1024, measurements=32, seed=0), 128, 1024)
    assert strong.gradient_sq > SIGNIFICANCE * strong.gradient_se
    assert strong.simple is not None and strong.bounds is not None
    low, high = strong.bounds
    assert low < strong.simple < high


def test_bad_batch_sizes_and_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="0 < small < big"):
        estimate([1.0], [1.0], 8, 8)
    with pytest.raises(ValueError, match="per measurement"):
        estimate([1.0, 2.0], [1.0], 4, 8)
    with pytest.raises(ValueError, match="positive"):
        samples_ratio(64, 32, 0.0)


def test_samples_and_efficiency_follow_the_large_batch_model() -> None:
    # Far below the noise scale, a batch costs no more samples; far above, samples grow with it.
    assert samples_ratio(64, 32, 1e6) == pytest.approx(1.0, rel=1e-3)
    assert samples_ratio(6400, 3200, 1.0) == pytest.approx(2.0, rel=1e-3)
    # At B_noise = 32: (1 + 2) / (1 + 1) from 32 to 64.
    assert samples_ratio(64, 32, 32.0) == pytest.approx(1.5)
    assert efficiency(64, 32, 32.0) == pytest.approx(2.0 / 3.0)
    assert efficiency(32, 32, 32.0) == 1.0
    assert efficiency(16, 32, 32.0) > 1.0
    # Twice the throughput at 1.5 times the samples: 4/3 of the reference's goodput.
    assert goodput(2000.0, 64, 32, 32.0) / goodput(1000.0, 32, 32, 32.0) == pytest.approx(4 / 3)


def test_the_summary_line_reads_a_run_record() -> None:
    small_sq, big_sq = _synthetic_norms(64.0, 8, 128, measurements=400)
    raw = {"small": 8, "big": 128, "small_sq": small_sq, "big_sq": big_sq}
    found = of_measured(raw)
    assert found is not None and found.simple == pytest.approx(64.0, rel=0.15)
    line = summary_line(raw, 32, 64)
    assert line is not None and line.startswith("gradient noise scale after the reference")
    assert f"{samples_ratio(64, 32, found.simple):.2f}x the reference's samples" in line
    assert "needs" not in (summary_line(raw, 32, 32) or "")  # the reference's own batch
    assert summary_line(None, 32, 64) is None
    assert "needs" not in (summary_line(raw, 0, 64) or "")  # no reference batch: no prediction
    assert summary_line({**raw, "small_sq": [1.0], "big_sq": [1.2]}, 32, 64) is None
