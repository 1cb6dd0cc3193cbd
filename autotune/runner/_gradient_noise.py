"""The gradient noise scale's raw figures, measured in the reference's ranks after its training
(issue 18; the estimate itself is `autotune._noise_scale`).

On a plain fp32 copy of the trained model, outside the timed window, with the engine untouched
(no optimizer step, no gradient of its own): ``MEASUREMENTS`` times, the gradients of
``MICRO_BATCHES`` micro-batches in a row, each one's squared norm (averaged: a gradient over the
micro-batch) and the squared norm of their mean (a gradient over all of them). Rank 0 measures
on its own micro-batches; the other ranks go on.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from autotune._batch import cast_batch, forward

MEASUREMENTS = 32
"""Pairs of norms averaged (McCandlish et al. average many before they divide). With 8, the
|G|^2 estimate of digits_mlp's trained reference came out 0.4 and 2.0 standard errors above
zero in two runs."""
MICRO_BATCHES = 4
"""Micro-batches in the large batch: it is this many times the small one."""


def measurable(pipeline: bool, zero_stage: int) -> str | None:
    """None when a run's trained weights can be read whole on every rank; else why not."""
    if pipeline:
        return "a pipeline's weights are split across its stages"
    if zero_stage >= 3:
        return "ZeRO 3 partitions the weights"
    return None


def gradient_norms(
    trained: nn.Module,
    model_file: Any,
    batches: Iterator[Any],
    micro_batch: int,
    device: torch.device,
) -> dict[str, Any]:
    """Squared gradient norms at one micro-batch and at `MICRO_BATCHES` of them, on a copy of
    ``trained`` in fp32 built by ``model_file.model()``; ``batches`` gives uncast micro-batches.

    Returns:
        ``{"small": micro_batch, "big": micro_batch * MICRO_BATCHES, "small_sq": [...],
        "big_sq": [...]}``: the raw figures `autotune._noise_scale.estimate` takes.
    """
    model = model_file.model()
    model.load_state_dict({k: v.detach().float() for k, v in trained.state_dict().items()})
    model = model.to(device=device, dtype=torch.float32).train()
    params = [p for p in model.parameters() if p.requires_grad]
    small_sq: list[float] = []
    big_sq: list[float] = []
    for _ in range(MEASUREMENTS):
        total: torch.Tensor | None = None
        norms = []
        for _ in range(MICRO_BATCHES):
            for param in params:
                param.grad = None
            output, target = forward(model, cast_batch(next(batches), torch.float32, device))
            model_file.loss(output, target).float().backward()
            flat = torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).float().reshape(-1)
                    for p in params
                ]
            )
            norms.append(float(flat.dot(flat)))
            total = flat if total is None else total + flat
        assert total is not None
        mean = total / MICRO_BATCHES
        small_sq.append(statistics.fmean(norms))
        big_sq.append(float(mean.dot(mean)))
    return {
        "small": micro_batch,
        "big": micro_batch * MICRO_BATCHES,
        "small_sq": small_sq,
        "big_sq": big_sq,
    }
