"""What a pipeline's layers and links cost, and the partition those costs choose.

A :class:`LayerProfile` holds what each layer of ``layers()`` costs, measured on the trial's
device, micro-batch and precision (the runner measures it: ``autotune.runner.ProfileCache``):
forward + backward seconds per micro-batch, optimizer-step seconds, the output activation's
bytes, parameter and optimizer-state bytes; and :class:`LinkCost`, what sending a tensor to
another rank costs. From them come the per-layer cost vectors the partitioner balances for one
trial's layout, the partition itself, and the per-stage seconds a partition is predicted to take.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from autotune._plan import TrialConfig
from autotune.pipeline._partition import Partition, partition_layers, stage_costs

PROFILE_VERSION = 3
"""Bumped when what a profile measures changes, so stale cache files are not read."""
BOTTLENECK_TOLERANCE = 0.03
"""Layer timings repeat within a few percent, so a partition whose slowest stage is within 3% of
the best is taken instead of the best when it sends less between stages."""


@dataclasses.dataclass(frozen=True)
class LinkCost:
    """What one point-to-point message between two ranks costs on this machine.

    The cost is not linear in size (on loopback gloo, messages up to some tens of KB cost the
    same and larger ones jump), so it is measured at a ladder of sizes and interpolated.

    Attributes:
        sizes: Message bytes measured, ascending.
        seconds: One-way seconds of a message of each size.
        backend: The torch.distributed backend it was measured with.
    """

    sizes: tuple[int, ...]
    seconds: tuple[float, ...]
    backend: str

    @property
    def latency_seconds(self) -> float:
        """The cost of the smallest message measured."""
        return self.seconds[0] if self.seconds else 0.0

    def message_seconds(self, nbytes: float) -> float:
        """Interpolated between the measured sizes; beyond the largest, at its bandwidth."""
        if not self.sizes:
            return 0.0
        if nbytes >= self.sizes[-1]:
            slope = self.seconds[-1] / self.sizes[-1]
            return self.seconds[-1] + (nbytes - self.sizes[-1]) * slope
        return float(np.interp(nbytes, self.sizes, self.seconds))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LinkCost:
        return cls(tuple(data["sizes"]), tuple(data["seconds"]), data["backend"])


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    """Measured costs of each layer of ``layers()`` for one micro-batch size and precision.

    Attributes:
        names: Each layer's class name.
        forward_backward_seconds: Forward plus backward time per micro-batch.
        optimizer_seconds: Optimizer-step time over the layer's parameters.
        activation_bytes: Bytes of the layer's output for one micro-batch (a tuple's: the
            sum of its tensors').
        parameter_bytes: Bytes of the layer's parameters in the trial's precision.
        optimizer_state_bytes: Bytes of the optimizer's state for the layer's parameters.
        micro_batch_size: The micro-batch it was measured with.
        precision: fp32, bf16 or fp16.
        device: Where it was measured (accelerator, model, threads).
        link: What sending an activation to the next stage costs.
        sent_bytes: Per layer, the bytes of each tensor of its output, each one message to the
            next stage at a boundary after it; empty: one message of ``activation_bytes``.
        returned_bytes: Per layer, the bytes of each gradient sent back at that boundary, one
            per floating tensor (ids and masks get none); empty: as ``activation_bytes``.
    """

    names: tuple[str, ...]
    forward_backward_seconds: tuple[float, ...]
    optimizer_seconds: tuple[float, ...]
    activation_bytes: tuple[int, ...]
    parameter_bytes: tuple[int, ...]
    optimizer_state_bytes: tuple[int, ...]
    micro_batch_size: int
    precision: str
    device: str
    link: LinkCost
    sent_bytes: tuple[tuple[int, ...], ...] = ()
    returned_bytes: tuple[tuple[int, ...], ...] = ()

    def boundary_messages(self) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Per layer, the bytes of the messages a boundary after it sends forward and back."""
        if not self.sent_bytes:
            return [((size,), (size,)) for size in self.activation_bytes]
        return list(zip(self.sent_bytes, self.returned_bytes, strict=True))

    def to_json(self) -> dict[str, Any]:
        return {"version": PROFILE_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerProfile:
        values = {key: value for key, value in data.items() if key != "version"}
        values["link"] = LinkCost.from_json(values["link"])
        for name in (
            "names",
            "forward_backward_seconds",
            "optimizer_seconds",
            "activation_bytes",
            "parameter_bytes",
            "optimizer_state_bytes",
        ):
            values[name] = tuple(values[name])
        for name in ("sent_bytes", "returned_bytes"):
            values[name] = tuple(tuple(sizes) for sizes in values.get(name, ()))
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class StageCosts:
    """The per-layer cost vectors the partitioner balances, for one trial's layout.

    Attributes:
        layer_seconds: Per micro-batch: forward + backward, plus the optimizer step shared over
            the step's micro-batches.
        send_seconds: Per micro-batch: sending the layer's output to the next stage and
            receiving its gradient back (a message per tensor each way; ids and masks have
            no gradient).
        layer_bytes: Memory the layer holds on its stage: parameters, gradients, optimizer
            state, fp32 master weights under bf16/fp16, and its output for every micro-batch
            a stage keeps in flight.
    """

    layer_seconds: tuple[float, ...]
    send_seconds: tuple[float, ...]
    layer_bytes: tuple[float, ...]


def stage_cost_vectors(profile: LayerProfile, config: TrialConfig) -> StageCosts:
    """The partitioner's inputs for ``config`` from a layer profile."""
    gas = config.gradient_accumulation_steps
    master_copy = 0 if config.precision == "fp32" else 2  # fp32 master weights: 4 B vs 2 B
    in_flight = config.pipeline_stages  # DeepSpeed's 1F1B schedule keeps at most this many
    layer_seconds = tuple(
        fb + opt / gas
        for fb, opt in zip(profile.forward_backward_seconds, profile.optimizer_seconds, strict=True)
    )
    send_seconds = tuple(
        math.fsum(profile.link.message_seconds(b) for b in (*sent, *returned))
        for sent, returned in profile.boundary_messages()
    )
    layer_bytes = tuple(
        float(params * (2 + master_copy) + state + activation * in_flight)
        for params, state, activation in zip(
            profile.parameter_bytes,
            profile.optimizer_state_bytes,
            profile.activation_bytes,
            strict=True,
        )
    )
    return StageCosts(layer_seconds, send_seconds, layer_bytes)


def profiled_partition(
    profile: LayerProfile, config: TrialConfig, memory_cap: float | None
) -> Partition:
    """Stage boundaries for ``config`` that minimise the slowest stage under ``memory_cap``.

    Raises:
        PartitionError: No partition fits (more stages than layers, or the memory cap).
    """
    costs = stage_cost_vectors(profile, config)
    vectors = (costs.layer_seconds, costs.send_seconds, costs.layer_bytes, config.pipeline_stages)
    fastest = partition_layers(*vectors, memory_cap=memory_cap)
    # A near-tie (within the profile's noise) is worth taking only to send less between
    # stages; between equally chatty partitions the measured-fastest one stays.
    quieter = partition_layers(
        *vectors, memory_cap=memory_cap, bottleneck_tolerance=BOTTLENECK_TOLERANCE
    )
    total_fastest, total_quieter = (
        math.fsum(fastest.stage_seconds),
        math.fsum(quieter.stage_seconds),
    )
    return quieter if total_quieter < total_fastest * (1 - 1e-9) else fastest


def predicted_stage_seconds(
    profile: LayerProfile, config: TrialConfig, bounds: Sequence[int]
) -> tuple[float, ...]:
    """What the profile predicts each stage costs per micro-batch for given boundaries (any
    partition method's), so trials can be compared on balance."""
    costs = stage_cost_vectors(profile, config)
    seconds, _ = stage_costs(costs.layer_seconds, costs.send_seconds, costs.layer_bytes, bounds)
    return seconds
