"""Batches as the model file's contract has them: an ``(input, target)`` pair (the input a
tensor or a tuple of tensors), or a dict of tensors passed to the model as ``model(**batch)``;
and the model's output, a tensor, a tuple, or an object or dict with ``loss`` / ``logits`` (a
transformers ``ModelOutput`` is one).

Every place that builds, casts or feeds a batch (the preflight, the harness's training and
evaluation, the memory footprint, the layer profile) goes through these helpers, so pairs and
dicts are handled the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


def is_dict_batch(batch: Any) -> bool:
    """Whether a batch (or an item) is a dict of named tensors rather than a pair."""
    return isinstance(batch, Mapping)


def model_inputs(batch: Any) -> Any:
    """The input of a pair as the model and the first layer of ``layers()`` get it: a tensor,
    or a tuple of tensors (torch's default_collate makes a list of a tuple; DeepSpeed's
    pipeline passes a tuple, so both paths see the same type)."""
    inputs = batch[0]
    return tuple(inputs) if isinstance(inputs, list) else inputs


def tensors_in(value: Any) -> list[torch.Tensor]:
    """The tensors of a value passed between layers: a tensor, or a tuple (or list) of them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [item for item in value if isinstance(item, torch.Tensor)]
    return []


def cast_batch(batch: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """A batch on ``device`` with only its floating-point tensors in ``dtype``: the ids,
    masks and integer targets stay as they are. A pair's tuple input stays a tuple."""

    def cast(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        value = value.to(device, non_blocking=True)
        return value.to(dtype) if value.is_floating_point() else value

    if is_dict_batch(batch):
        return {key: cast(value) for key, value in batch.items()}
    inputs = model_inputs(batch)
    if isinstance(inputs, tuple):
        inputs = tuple(cast(value) for value in inputs)
    else:
        inputs = cast(inputs)
    return inputs, batch[1].to(device, non_blocking=True)


def has_float_inputs(batch: Any) -> bool:
    """Whether a batch feeds the model floating-point tensors (cast under bf16/fp16)."""
    inputs = batch.values() if is_dict_batch(batch) else tensors_in(batch[0])
    return any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in inputs)


def batch_items(batch: Any) -> int:
    """How many items a batch holds: the first dimension of its first tensor."""
    values = list(batch.values()) if is_dict_batch(batch) else tensors_in(batch[0])
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 1


def batch_tokens(batch: Any) -> int | None:
    """The real tokens of a dict batch with ``input_ids``: the ones its ``attention_mask``
    marks, or every id without a mask; None for a batch that carries no token ids."""
    if not is_dict_batch(batch) or not isinstance(batch.get("input_ids"), torch.Tensor):
        return None
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        return int(mask.count_nonzero())
    return int(batch["input_ids"].numel())


def forward(model: Callable[..., Any], batch: Any) -> tuple[Any, Any]:
    """The model's output on a batch and what the loss and metric take beside it: the target
    of a pair, the whole batch of a dict. A pair's tuple input is one argument,
    ``model((input_ids, attention_mask))``, as DeepSpeed's pipeline hands it to ``layers()``."""
    if is_dict_batch(batch):
        return model(**batch), batch
    return model(model_inputs(batch)), batch[1]


def output_loss(output: Any) -> torch.Tensor | None:
    """The loss a model computed itself (``output.loss`` or ``output["loss"]``), or None."""
    if isinstance(output, Mapping):
        loss = output.get("loss")
    else:
        loss = getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


def output_logits(output: Any) -> Any:
    """The prediction in an output: the tensor itself, ``logits`` of an object or dict, or
    the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, tuple | list) and output:
        return output[0]
    return output


class NoLossError(TypeError):
    """The model's output carries no loss, and the model file defines no loss()."""


def default_loss(output: Any, target: Any) -> torch.Tensor:
    """The loss when the model file has no loss(): for a dict batch the model's own
    ``output.loss``; for a pair, cross-entropy over the last dimension."""
    if is_dict_batch(target):
        loss = output_loss(output)
        if loss is None:
            raise NoLossError(f"the model's output ({type(output).__name__}) has no loss")
        return loss
    return nn.functional.cross_entropy(output_logits(output).float(), target)


def default_metric(output: Any, target: Any) -> float:
    """The metric when the model file has neither metric() nor loss(): classification
    accuracy for pairs (argmax over the last dimension); the negative eval loss of a batch for
    dict batches."""
    if is_dict_batch(target):
        return -float(default_loss(output, target))
    return float((output_logits(output).argmax(dim=-1) == target).float().mean().item())


def as_number(value: Any) -> float | None:
    """A metric's value as a float, or None when it is not a number (or a one-element
    tensor)."""
    if isinstance(value, torch.Tensor):
        return float(value.item()) if value.numel() == 1 else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            import numpy

            if isinstance(value, numpy.number | numpy.ndarray) and numpy.size(value) == 1:
                return float(value)
        except ImportError:  # pragma: no cover - numpy ships with torch
            pass
        return None
    return float(value)


def evaluate(
    model: Callable[..., Any],
    batches: Any,
    metric: Callable[[Any, Any], Any],
) -> float:
    """The metric over every eval batch (`evaluate_with_loss` without the loss)."""
    return evaluate_with_loss(model, batches, metric)[0]


def evaluate_with_loss(
    model: Callable[..., Any],
    batches: Any,
    metric: Callable[[Any, Any], Any],
    loss: Callable[[Any, Any], Any] | None = None,
) -> tuple[float, float | None]:
    """The metric over every eval batch, and the eval loss from the same outputs (None
    without ``loss``, or where the outputs carry none).

    Dict batches stream: each batch's metric and loss are computed as they come and only one
    batch's outputs are held; the results are their means weighted by each batch's items.
    Pairs keep the contract of a metric over the whole eval set: their predictions are
    gathered and the metric (and the loss) called once.
    """
    outputs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    total, loss_total, items = 0.0, 0.0, 0
    has_loss = loss is not None
    for batch in batches:
        output, target = forward(model, batch)
        if is_dict_batch(batch):
            count = batch_items(batch)
            value = as_number(metric(output, target))
            if value is None:
                raise TypeError("metric() must return a number")
            total += value * count
            batch_loss = _eval_loss(loss, output, target) if has_loss else None
            has_loss = batch_loss is not None
            loss_total += (batch_loss or 0.0) * count
            items += count
        else:
            outputs.append(output_logits(output).float().cpu())
            targets.append(target.cpu())
    if outputs:
        logits, labels = torch.cat(outputs), torch.cat(targets)
        value = as_number(metric(logits, labels))
        if value is None:
            raise TypeError("metric() must return a number")
        return value, _eval_loss(loss, logits, labels) if has_loss else None
    return total / max(1, items), loss_total / max(1, items) if has_loss else None


def _eval_loss(loss: Callable[[Any, Any], Any] | None, output: Any, target: Any) -> float | None:
    """The loss of one eval batch, or None where it cannot be computed (no loss in the
    output, or a loss that is not a number)."""
    if loss is None:
        return None
    try:
        return as_number(loss(output, target))
    except (NoLossError, TypeError, ValueError, RuntimeError):
        return None
