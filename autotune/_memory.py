"""A per-rank memory pre-screen: predict what a configuration needs before launching it.

A trial that runs out of memory costs its whole launch (DeepSpeed start-up, a crash, a
timeout) and teaches nothing but "too big". The estimate here follows the ZeRO paper's
accounting (Rajbhandari et al., 2020, section 3) from a model footprint measured once, and
learns a constant correction from the peaks of trials that did run, so configurations that
would not fit are skipped with a reason instead.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import statistics
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from autotune._batch import forward, is_dict_batch
from autotune._machine import Machine
from autotune._plan import TrialConfig
from autotune._task import ModelFile

FP32_BYTES = 4
HALF_BYTES = 2
"""Bytes per value under bf16 or fp16."""
MASTER_COPY_BYTES = 4
"""Mixed precision keeps an fp32 copy of every parameter for the optimizer to update."""
DEFAULT_OPTIMIZER_STATE_BYTES = 8.0
"""For optimizer types we do not know: Adam's two fp32 moments, the common worst case."""

# fp32 state bytes per parameter, by lower-cased DeepSpeed optimizer type. Adam-family and
# Lamb keep two moments; Adagrad keeps one sum of squares. SGD is handled apart (momentum).
_OPTIMIZER_STATE_BYTES = {
    "adam": 8.0,
    "adamw": 8.0,
    "fusedadam": 8.0,
    "cpuadam": 8.0,
    "lamb": 8.0,
    "fusedlamb": 8.0,
    "onebitadam": 8.0,
    "zerooneadam": 8.0,
    "onebitlamb": 8.0,
    "adagrad": 4.0,
}

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_MEMORY_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ModelFootprint:
    """What a model needs independent of how it is trained.

    Attributes:
        parameters: Number of parameters.
        activation_bytes_per_sample: fp32 bytes of activations kept for backward, per sample.
        optimizer_state_bytes_per_param: fp32 bytes of optimizer state per parameter.
        checkpointed_activation_bytes_per_sample: The same under activation checkpointing
            (`checkpointed_activations`); None without ``layers()``.
        item_bytes: Mean bytes of a training item, what ``cache_data`` keeps of each.
        train_items: Items in the training data.
    """

    parameters: int
    activation_bytes_per_sample: float
    optimizer_state_bytes_per_param: float
    checkpointed_activation_bytes_per_sample: float | None = None
    item_bytes: float = 0.0
    train_items: int = 0


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """One rank's memory for one configuration, in bytes, by what holds it.

    Attributes:
        parameters: Model weights held by this rank.
        gradients: Gradients held by this rank.
        optimizer_states: Optimizer states plus any fp32 master copy, held by this rank.
        activations: Activations kept for backward during one micro-batch.
        cache: Training items kept by ``cache_data``, on the CPU accelerator (elsewhere they
            are host memory, not the device's): every item, as a long run caches them all.
        buffers: ZeRO's gradient bucket on an accelerator: the configured
            ``reduce_bucket_size`` (``TrialConfig.reduce_bucket_elements``), by default
            DeepSpeed's 500 million values (``autotune._plan.ZERO_BUCKET_ELEMENTS``).
        total: The sum of the above.
    """

    parameters: float
    gradients: float
    optimizer_states: float
    activations: float
    total: float
    buffers: float = 0.0
    cache: float = 0.0

    def describe(self) -> str:
        """One line breaking the total down, e.g. ``params 8.0 MiB + ... = 33.2 MiB``."""
        buffers = f" + ZeRO bucket {format_bytes(self.buffers)}" if self.buffers else ""
        buffers += f" + cache {format_bytes(self.cache)}" if self.cache else ""
        return (
            f"params {format_bytes(self.parameters)} + grads {format_bytes(self.gradients)} + "
            f"optimizer {format_bytes(self.optimizer_states)} + "
            f"activations {format_bytes(self.activations)}{buffers} = {format_bytes(self.total)}"
        )


def format_bytes(value: float) -> str:
    """A byte count in binary units with one decimal: ``8.0 GiB``, ``1.2 MiB``, ``512 B``."""
    size = abs(value)
    sign = "-" if value < 0 else ""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{sign}{size / scale:.1f} {unit}"
    return f"{sign}{size:.0f} B"


def optimizer_state_bytes_per_param(optimizer: dict[str, Any]) -> float:
    """fp32 bytes of state an optimizer keeps per parameter.

    Args:
        optimizer: A DeepSpeed optimizer section, e.g. ``{"type": "AdamW", "params": {...}}``.

    Returns:
        8 for Adam, AdamW and Lamb (two moments), 4 for SGD with momentum, 0 for plain SGD,
        and 8 for types not known here, so an unknown optimizer is never under-estimated.
    """
    kind = str(optimizer.get("type", "")).lower()
    if kind == "sgd":
        momentum = float(optimizer.get("params", {}).get("momentum", 0) or 0)
        return 4.0 if momentum > 0 else 0.0
    return _OPTIMIZER_STATE_BYTES.get(kind, DEFAULT_OPTIMIZER_STATE_BYTES)


def tensor_bytes(value: Any) -> int:
    """Bytes held by a tensor, or by the tensors in a (nested) tuple, list or dict."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, tuple | list):
        return sum(tensor_bytes(item) for item in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(item) for item in value.values())
    return 0


def measure_footprint(model_file: ModelFile, sample_batch: int = 4) -> ModelFootprint:
    """Build the model once and measure its parameters and activations on real data.

    Activations are the summed outputs of every leaf module during a forward pass over the
    first ``sample_batch`` training items, in fp32: leaf outputs are, roughly, what autograd
    keeps for backward. Measuring beats a formula because the model file can be anything.
    With ``layers()`` (pairs), the same pass through them gives what activation checkpointing
    keeps (`checkpointed_activations`).

    Args:
        model_file: The loaded model file.
        sample_batch: Training items in the measured forward pass.

    Returns:
        The model's footprint, activations per sample.
    """
    model = model_file.model()
    parameters = sum(parameter.numel() for parameter in model.parameters())
    train = model_file.datasets()[0]
    count = min(sample_batch, len(train))  # type: ignore[arg-type]
    items = [train[i] for i in range(count)]
    batch = model_file.collate(items)
    total, _ = _leaf_output_bytes(model, lambda: forward(model, batch))
    checkpointed = None
    if model_file.layers is not None and not is_dict_batch(batch):
        checkpointed = checkpointed_activations(model_file.layers(), batch[0]) / count
    return ModelFootprint(
        parameters=parameters,
        activation_bytes_per_sample=total / count,
        optimizer_state_bytes_per_param=optimizer_state_bytes_per_param(model_file.optimizer),
        checkpointed_activation_bytes_per_sample=checkpointed,
        item_bytes=tensor_bytes(items) / count,
        train_items=len(train),  # type: ignore[arg-type]
    )


def checkpointed_activations(layers: list[nn.Module], inputs: Any) -> float:
    """Bytes one pass through ``layers`` keeps for backward when each layer with parameters
    is checkpointed (`autotune.CheckpointedLayers`): the input of each such layer, the leaf
    outputs of the others, and the largest checkpointed layer's own activations, which the
    backward pass recomputes one layer at a time."""
    kept, largest, x = 0, 0, inputs
    for layer in layers:
        inner, output = _leaf_output_bytes(layer, functools.partial(layer, x))
        if any(True for _ in layer.parameters()):
            kept, largest = kept + tensor_bytes(x), max(largest, inner)
        else:
            kept += inner
        x = output
    return float(kept + largest)


def _leaf_output_bytes(module: nn.Module, call: Callable[[], Any]) -> tuple[int, Any]:
    """The bytes of every leaf module's outputs while ``call()`` runs ``module``, and what it
    returns. Only leaves: a container's output is its last child's output, already counted."""
    total = 0

    def count_output(module: nn.Module, args: Any, output: Any) -> None:
        nonlocal total
        total += tensor_bytes(output)

    leaves = [leaf for leaf in module.modules() if not any(leaf.children())]
    handles = [leaf.register_forward_hook(count_output) for leaf in leaves]
    try:
        # No graph is needed to see output sizes, and without one the pass is cheaper.
        with torch.no_grad():
            result = call()
    finally:
        for handle in handles:
            handle.remove()
    return total, result


def estimate_rank_bytes(
    footprint: ModelFootprint, config: TrialConfig, accelerator: str = "cpu"
) -> MemoryEstimate:
    """Estimate one rank's memory for a configuration, following the ZeRO paper.

    Args:
        footprint: The model's measured footprint.
        config: The trial's configuration.
        accelerator: DeepSpeed's accelerator name. On a device ("cuda", ...) ZeRO's gradient
            bucket, as configured (``TrialConfig.reduce_bucket_elements``), is allocated in
            full and counts; on CPU the peak is resident memory and the bucket's untouched
            pages never become resident.

    Returns:
        The estimate by part. It leaves out the framework's own overhead (imports, CUDA
        context, allocator fragmentation), which ``MemoryModel`` learns from trials that ran.
    """
    mixed = config.precision in ("bf16", "fp16")
    value_bytes = HALF_BYTES if mixed else FP32_BYTES
    stages = config.pipeline_stages
    dp = config.data_parallel
    # A pipeline stage holds only its layers; dividing by the stage count is the average
    # stage, and an uneven partition puts more than that on its heaviest stage.
    per_stage = footprint.parameters / stages
    parameters = per_stage * value_bytes
    gradients = per_stage * value_bytes
    optimizer_states = per_stage * (
        footprint.optimizer_state_bytes_per_param + (MASTER_COPY_BYTES if mixed else 0)
    )
    # ZeRO-Offload keeps the optimizer state (and with "all" the parameters) in CPU memory:
    # on an accelerator they leave the device; on CPU offload never runs (`why_not_runnable`).
    if config.offload != "none" and accelerator != "cpu":
        optimizer_states = 0.0
        if config.offload == "all":
            parameters = 0.0
    # Each ZeRO stage partitions one more part across the data-parallel ranks.
    if config.zero_stage >= 1:
        optimizer_states /= dp
    if config.zero_stage >= 2:
        gradients /= dp
    if config.zero_stage >= 3:
        parameters /= dp
    # One micro-batch's activations are alive at a time (gradient accumulation frees each
    # after its backward). A pipeline stage keeps up to ``stages`` micro-batches in flight but
    # only for its 1/``stages`` of the layers, so the two factors cancel.
    per_sample = footprint.activation_bytes_per_sample
    if config.activation_checkpointing and footprint.checkpointed_activation_bytes_per_sample:
        per_sample = footprint.checkpointed_activation_bytes_per_sample
    activations = per_sample * config.micro_batch_size * (value_bytes / FP32_BYTES)
    cache = (
        footprint.item_bytes * footprint.train_items
        if config.cache_data and accelerator == "cpu"
        else 0.0
    )
    # With DeepSpeed's default bucket, measured on an H100 (docs/gpus.md): 1.9 GiB more at
    # ZeRO 1-3 than at 0 in fp32, 0.9 in bf16/fp16. The bucket holds gradients in their dtype.
    buffers = (
        config.reduce_bucket_elements * value_bytes
        if config.zero_stage >= 1 and accelerator != "cpu"
        else 0.0
    )
    return MemoryEstimate(
        parameters=parameters,
        gradients=gradients,
        optimizer_states=optimizer_states,
        activations=activations,
        buffers=buffers,
        cache=cache,
        total=parameters + gradients + optimizer_states + activations + buffers + cache,
    )


class MemoryModel:
    """Corrects estimates with the peaks that finished trials actually reached.

    The correction is one constant: the median of (observed peak - estimate). What the
    estimate misses is mostly fixed per rank (on CPU the peak is resident memory, about
    350 MB of it imports and the runtime; on a GPU the allocator's and DeepSpeed's buffers),
    and the median ignores the odd trial whose peak was measured badly.
    """

    def __init__(self) -> None:
        self._residuals: list[float] = []

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[float, float]]) -> MemoryModel:
        """A model that has observed each ``(estimate_total, observed_peak)`` pair in order,
        e.g. rebuilt from a study's finished trials."""
        model = cls()
        for estimate_total, observed_peak in pairs:
            model.observe(estimate_total, observed_peak)
        return model

    def observe(self, estimate_total: float, observed_peak: float) -> None:
        """Record what a trial was estimated to need and the peak it reached.

        Pairs with a non-finite or non-positive value are ignored: they come from trials
        whose peak was not measured, and would drag the correction towards nonsense.
        """
        values = (estimate_total, observed_peak)
        if all(math.isfinite(value) and value > 0 for value in values):
            self._residuals.append(observed_peak - estimate_total)

    @property
    def observations(self) -> int:
        """How many pairs have been recorded."""
        return len(self._residuals)

    @property
    def offset(self) -> float:
        """Bytes added to every estimate: 0 until a trial has been observed."""
        return statistics.median(self._residuals) if self._residuals else 0.0

    def predict(self, estimate: MemoryEstimate) -> float:
        """Predicted peak bytes per rank for a configuration with this estimate."""
        return estimate.total + self.offset


def memory_limit_bytes(machine: Machine, processes: int, max_memory: float | None) -> float:
    """The memory one rank may use.

    Args:
        machine: The local machine.
        processes: Ranks the trial launches (they share the RAM on CPU).
        max_memory: A user's per-rank limit in bytes, which wins when given.

    Returns:
        ``max_memory``, else one accelerator's total memory (each rank has its own device),
        else this machine's RAM divided among the ranks.
    """
    if max_memory is not None:
        return float(max_memory)
    if machine.accelerator != "cpu":
        from deepspeed.accelerator import get_accelerator  # slow to import; only here

        return float(get_accelerator().total_memory())
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return ram / max(1, machine.local_ranks(processes))


def memory_limit_source(machine: Machine, max_memory: float | None) -> str:
    """Where ``memory_limit_bytes`` takes its limit from, for messages."""
    if max_memory is not None:
        return "--max-memory"
    if machine.accelerator == "cuda":
        return "GPU memory"
    if machine.accelerator != "cpu":
        return f"{machine.accelerator} memory"
    return "RAM per rank"


def parse_memory(text: str) -> float:
    """Read a memory size such as ``8GiB``, ``8 GiB``, ``500MB``, ``1.5G`` or ``123456``.

    KB, MB, GB and TB count in powers of 1000; KiB, MiB, GiB, TiB and the bare K, M, G, T in
    powers of 1024, as ``free -h`` and most tools mean them; no unit means bytes. Units are
    case-insensitive.

    Raises:
        ValueError: ``text`` is not such a size, or is zero.
    """
    match = _MEMORY_PATTERN.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ValueError(
            f"{text!r} is not a memory size; give a positive amount such as 123456 (bytes), "
            "500MB, 8GiB or 1.5G (KB/MB/GB count in 1000s, KiB/MiB/GiB and K/M/G in 1024s)."
        )
    return float(match.group(1)) * _UNITS[unit]


def why_over_memory(
    prediction: float, limit: float, estimate: MemoryEstimate, source: str
) -> str | None:
    """The reason to skip a configuration predicted not to fit, or None when it fits.

    Args:
        prediction: Predicted peak bytes per rank (``MemoryModel.predict``).
        limit: Bytes one rank may use (``memory_limit_bytes``).
        estimate: The estimate the prediction came from, broken down in the message.
        source: Where the limit comes from: "--max-memory", "GPU memory", "RAM per rank".
    """
    if prediction <= limit:
        return None
    breakdown = estimate.describe()
    learned = prediction - estimate.total
    if learned:
        # The learned part is shown apart so a user can see how much is the model's own.
        sign = "+" if learned > 0 else "-"
        breakdown += f", {sign}{format_bytes(abs(learned))} learned from finished trials"
    return (
        f"predicted {format_bytes(prediction)} per rank ({breakdown}) is over the "
        f"{format_bytes(limit)} limit ({source})"
    )
