"""A DeepSpeed ``PipelineModule`` with stage boundaries given by the caller.

DeepSpeed partitions by ``parameters``, ``uniform`` or ``type:REGEX`` and has no way to take
boundaries computed elsewhere. autotune's ``profile`` method computes them from measured layer
costs; this helper rebuilds exactly that pipeline, both inside autotune's trials and in a user's
own training script from the ``partition_bounds`` of an exported ``launch.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn


def check_partition_bounds(bounds: Sequence[int], num_layers: int) -> list[int]:
    """``bounds`` as a list of ints after checking it splits ``num_layers`` layers.

    Raises:
        ValueError: The bounds do not start at 0, end at ``num_layers`` and strictly increase.
    """
    values = [int(b) for b in bounds]
    if (
        len(values) < 2
        or values[0] != 0
        or values[-1] != num_layers
        or any(b >= c for b, c in zip(values, values[1:], strict=False))
    ):
        raise ValueError(
            f"partition_bounds {values} must start at 0, end at the number of layers "
            f"({num_layers}) and strictly increase (one boundary more than stages)."
        )
    return values


def build_pipeline_module(
    layers: Sequence[nn.Module | Any],
    partition_bounds: Sequence[int],
    loss_fn: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> Any:
    """A ``deepspeed.pipe.PipelineModule`` whose stage ``s`` holds
    ``layers[partition_bounds[s]:partition_bounds[s + 1]]``.

    Call it where you would call ``PipelineModule(layers=..., num_stages=...)``, after
    ``deepspeed.init_distributed()``; the number of stages is ``len(partition_bounds) - 1``.

    Args:
        layers: The network as a sequence of modules (or DeepSpeed ``LayerSpec``s).
        partition_bounds: Stage boundaries in DeepSpeed's ``parts`` form, ``[0, ..., len(layers)]``,
            as ``launch.json`` exports them.
        loss_fn: The loss, computed on the last stage.
        **kwargs: Passed to ``PipelineModule`` (``topology``, ``activation_checkpoint_interval``,
            ...), except ``num_stages`` and ``partition_method``, which the bounds decide.

    Raises:
        ValueError: The bounds do not fit ``layers``.
    """
    from deepspeed.pipe import PipelineModule

    bounds = check_partition_bounds(partition_bounds, len(layers))
    for fixed in ("num_stages", "partition_method"):
        if fixed in kwargs:
            raise ValueError(f"{fixed} is decided by partition_bounds; do not pass it.")

    class _BoundedPipelineModule(PipelineModule):  # type: ignore[misc]
        def _partition_layers(self, method: str = "uniform") -> None:
            # DeepSpeed calls this from __init__ to set self.parts and this rank's layers.
            if len(bounds) - 1 != self.num_stages:
                raise ValueError(
                    f"partition_bounds {bounds} make {len(bounds) - 1} stages but the topology "
                    f"has {self.num_stages}."
                )
            self.parts = list(bounds)
            stage_id = self._topo.get_coord(self.global_rank).pipe
            self._set_bounds(start=self.parts[stage_id], stop=self.parts[stage_id + 1])

    return _BoundedPipelineModule(
        layers=list(layers), num_stages=len(bounds) - 1, loss_fn=loss_fn, **kwargs
    )
