"""Activation checkpointing over a model file's ``layers()``: each layer that holds parameters
keeps only its input for the backward pass and recomputes its own activations there.

DeepSpeed's non-reentrant checkpoint is used, here and in the pipeline (`pipeline_checkpointing`):
its reentrant one gives no gradient to a layer whose inputs need none (an embedding of token
ids), and DeepSpeed's own PipelineModule makes the same choice of layers (those with
parameters). Recomputing restores the random state, so the numbers are the ones trained
without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn


def _checkpoint() -> Any:
    from deepspeed.runtime.activation_checkpointing.checkpointing import non_reentrant_checkpoint

    return non_reentrant_checkpoint


def _has_parameters(layer: nn.Module) -> bool:
    return any(True for _ in layer.parameters())


class CheckpointedLayers(nn.Module):
    """``nn.Sequential(*layers)`` that checkpoints each layer with parameters while training.

    The tuned ``activation_checkpointing: true`` without a pipeline, for your own script::

        model = CheckpointedLayers(layers())   # in place of model() = nn.Sequential(*layers())

    Its parameters are registered in the same order as the ``nn.Sequential``'s, so under the
    same seed both start from the same weights and a state dict of one loads into the other.
    """

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.checkpointed = [_has_parameters(layer) for layer in self.layers]

    def forward(self, x: Any) -> Any:
        checkpoint = _checkpoint() if self.training and any(self.checkpointed) else None
        for layer, checkpointed in zip(self.layers, self.checkpointed, strict=True):
            x = checkpoint(layer, x) if checkpoint is not None and checkpointed else layer(x)
        return x

    def describe(self) -> str:
        """``activation checkpointing: 6 of 9 layers``."""
        return f"activation checkpointing: {sum(self.checkpointed)} of {len(self.layers)} layers"


def pipeline_checkpointing() -> dict[str, Any]:
    """What ``PipelineModule`` (or `autotune.build_pipeline_module`) takes to checkpoint every
    layer with parameters, with the checkpoint `CheckpointedLayers` uses."""
    return {"activation_checkpoint_interval": 1, "activation_checkpoint_func": _checkpoint()}
