"""The model file: load it, fill in the defaults, and check it before any trial runs.

The same loader serves the orchestrator (a quick preflight) and the harness inside each
DeepSpeed rank (which builds the model and data from it), so both read the file the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import sys
import traceback
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from autotune._batch import (
    as_number,
    batch_tokens,
    default_loss,
    default_metric,
    forward,
    has_float_inputs,
    is_dict_batch,
    model_inputs,
    output_logits,
    output_loss,
    tensors_in,
)
from autotune._errors import UserError
from autotune._plan import optimizer_impl_of

DEFAULT_BATCH_SIZE = 32
DEFAULT_EVAL_BATCH_SIZE = 256
PREFLIGHT_BATCH = 4
"""Items in the preflight's train and eval batches."""
DEFAULT_OPTIMIZER: dict[str, Any] = {"type": "AdamW", "params": {"lr": 1e-3}}
HELD_OUT_FRACTION = 0.2
"""Share of train_data() kept for evaluation when the model file has no eval_data()."""
_SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A loaded model file with its defaults filled in.

    Attributes:
        path: The file, resolved.
        model: Builds a fresh model.
        layers: Builds the same network as a list of modules, or None (no pipeline).
        loss: loss(output, target) -> Tensor; for dict items loss(output, batch).
        metric: metric(output, target) -> float, higher is better; for dict items
            metric(output, batch), the metric of one eval batch.
        metric_name: How to call the metric in reports (a custom metric(): METRIC_NAME,
            default "metric()"), for (input, target) items
            (`Task.metric_name` says it for the items the data has).
        collate: collate(items) -> batch, for every DataLoader the tool builds.
        has_collate: Whether the file defines collate().
        batch_size: BATCH_SIZE, the reference micro-batch.
        eval_batch_size: EVAL_BATCH_SIZE, the items of each eval batch.
        optimizer: OPTIMIZER, a DeepSpeed optimizer section.
        has_eval_data: Whether the file defines eval_data().
    """

    path: Path
    model: Callable[[], nn.Module]
    layers: Callable[[], list[nn.Module]] | None
    loss: Callable[[Any, Any], torch.Tensor]
    metric: Callable[[Any, Any], Any]
    metric_name: str
    collate: Callable[[list[Any]], Any]
    has_collate: bool
    batch_size: int
    eval_batch_size: int
    optimizer: dict[str, Any]
    has_eval_data: bool
    _module: types.ModuleType = dataclasses.field(repr=False)

    def datasets(self) -> tuple[Dataset[Any], Dataset[Any]]:
        """The training and evaluation datasets.

        Without eval_data(), a fixed, seeded HELD_OUT_FRACTION of train_data() is held out
        for evaluation and left out of training.
        """
        train = self._module.train_data()
        if self.has_eval_data:
            return train, self._module.eval_data()
        n = len(train)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_SPLIT_SEED)).tolist()
        n_eval = max(1, int(n * HELD_OUT_FRACTION))
        return Subset(train, order[n_eval:]), Subset(train, order[:n_eval])

    @property
    def eval_source(self) -> str:
        """A sentence for the report saying where the eval data came from."""
        if self.has_eval_data:
            return "eval_data()"
        percent = round(HELD_OUT_FRACTION * 100)
        return f"a fixed held-out {percent}% of train_data(), as the model file has no eval_data()"


def _user_frame(exc: BaseException, path: Path) -> str:
    """file:line of the deepest frame of the user's file in a traceback, for messages."""
    where = str(path)
    if isinstance(exc, SyntaxError) and exc.lineno is not None:
        return f"{path}:{exc.lineno}"
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == path:
            where = f"{path}:{frame.lineno}"
    return where


def _describe(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


def _call(path: Path, name: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (Exception, SystemExit) as exc:  # the user's code: any error becomes one message
        raise UserError(f"{_user_frame(exc, path)}: {name} raised {_describe(exc)}") from None


def _whole_number(path: Path, module: types.ModuleType, name: str, default: int) -> int:
    value = getattr(module, name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{path}: {name} must be a whole number >= 1, got {value!r}.")
    return value


def load_model_file(path: str | Path) -> ModelFile:
    """Import a model file and fill in the defaults, without calling any of its functions.

    Raises:
        UserError: The file is missing, fails to import, or lacks model() or train_data().
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"Model file {path} does not exist.")
    if path.is_dir():
        raise UserError(f"{path} is a directory; give the model's .py file.")
    path = path.resolve()
    module_name = f"autotune_model_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"{path} cannot be imported as Python; give a .py file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # so DataLoader workers can unpickle its classes
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[module_name]
        raise UserError(
            f"{_user_frame(exc, path)}: importing the model file raised {_describe(exc)}"
        ) from None
    for required in ("model", "train_data"):
        if not callable(getattr(module, required, None)):
            raise UserError(
                f"{path} has no {required}() function; define it (see the README's model file"
                " contract)."
            )
    batch_size = _whole_number(path, module, "BATCH_SIZE", DEFAULT_BATCH_SIZE)
    eval_batch_size = _whole_number(path, module, "EVAL_BATCH_SIZE", DEFAULT_EVAL_BATCH_SIZE)
    optimizer = getattr(module, "OPTIMIZER", DEFAULT_OPTIMIZER)
    lr = optimizer.get("params", {}).get("lr") if isinstance(optimizer, dict) else None
    if (
        not isinstance(optimizer, dict)
        or "type" not in optimizer
        or not isinstance(lr, float | int)
    ):
        raise UserError(
            f"{path}: OPTIMIZER must be a DeepSpeed optimizer section such as "
            "{'type': 'AdamW', 'params': {'lr': 1e-3}}."
        )
    custom_loss = getattr(module, "loss", None)
    custom_metric = getattr(module, "metric", None)
    if callable(custom_metric):
        name = getattr(module, "METRIC_NAME", "metric()")
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"{path}: METRIC_NAME must be a non-empty string, got {name!r}.")
        metric, metric_name = custom_metric, name.strip()
    elif callable(custom_loss):

        def metric(output: Any, target: Any) -> float:
            return -float(custom_loss(output, target))

        metric_name = "negative eval loss"
    else:
        metric, metric_name = default_metric, "accuracy"
    layers = getattr(module, "layers", None)
    collate = getattr(module, "collate", None)
    return ModelFile(
        path=path,
        model=module.model,
        layers=layers if callable(layers) else None,
        loss=custom_loss if callable(custom_loss) else default_loss,
        metric=metric,
        metric_name=metric_name,
        collate=collate if callable(collate) else torch.utils.data.default_collate,
        has_collate=callable(collate),
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        optimizer=optimizer,
        has_eval_data=callable(getattr(module, "eval_data", None)),
        _module=module,
    )


@dataclasses.dataclass(frozen=True)
class Task:
    """What the orchestrator needs to know about the model file, checked once.

    Attributes:
        model_file: The loaded file.
        train_size: Items in the training data (after any held-out split).
        eval_size: Items in the evaluation data.
        layer_types: Class names of layers(), in order; empty without layers().
        token_batches: Whether batches carry ``input_ids`` (tokens/s is measured).
        float_inputs: Whether inputs are floating point (cast under bf16/fp16).
        dict_items: Whether batches are dicts of tensors (``model(**batch)``), not pairs.
        items_repeat: Whether training items read twice are equal (`items_repeat`): what
            ``cache_data`` needs.
        lengths_vary: Whether training items' ``input_ids`` differ in length
            (`lengths_vary`): what ``batching: tokens`` needs.
    """

    model_file: ModelFile
    train_size: int
    eval_size: int
    layer_types: tuple[str, ...]
    float_inputs: bool
    dict_items: bool = False
    token_batches: bool = False
    items_repeat: bool = True
    lengths_vary: bool = False

    @property
    def has_layers(self) -> bool:
        return self.model_file.layers is not None

    @property
    def metric_name(self) -> str:
        """How to call the metric in reports, for the items this data has."""
        if self.dict_items and self.model_file.metric is default_metric:
            return "negative eval loss"  # the default metric of dict items
        return self.model_file.metric_name

    @property
    def items_vary(self) -> bool:
        """Whether items may differ in length (dict items, or a collate()): then splits of
        one global batch into micro-batches can weigh them differently (a token-mean loss)."""
        return self.dict_items or self.model_file.has_collate

    def reference_settings(self) -> dict[str, Any]:
        """What the user runs today (see `reference_settings`)."""
        return reference_settings(self.model_file.batch_size, self.model_file.optimizer)


def reference_settings(batch_size: int, optimizer: dict[str, Any] | None = None) -> dict[str, Any]:
    """The reference trial: the model file's BATCH_SIZE, fp32, ZeRO 0, one process, no
    DataLoader workers, the automatic thread count, no activation checkpointing, no compile,
    no offload,
    the Adam kernel the model file's ``optimizer`` selects, no cache, micro-batches of a fixed
    item count."""
    return {
        "micro_batch_size": batch_size,
        "gradient_accumulation_steps": 1,
        "precision": "fp32",
        "zero_stage": 0,
        "processes": 1,
        "pipeline_stages": 1,
        "partition_method": "parameters",
        "num_workers": 0,
        "pin_memory": False,
        "prefetch_factor": 2,
        "threads": 0,
        "activation_checkpointing": False,
        "compile": False,
        "offload": "none",
        "optimizer_impl": optimizer_impl_of(optimizer or {}),
        "cache_data": False,
        "batching": "items",
    }


_TORCH_FORMAT_HINT = 'for a `datasets` Dataset, call .with_format("torch")'


def _check_item(path: Path, name: str, item: Any, has_collate: bool) -> None:
    """An item is a dict of tensors or an (input, target) pair; with a collate() in the
    file, what the collate makes of the items is checked instead."""
    if has_collate:
        return
    if is_dict_batch(item):
        for key, value in item.items():
            if not isinstance(value, torch.Tensor | int | float):
                raise UserError(
                    f"{path}: {name} items are dicts, whose values must be tensors; "
                    f"{key!r} is a {type(value).__name__} ({_TORCH_FORMAT_HINT}, or define "
                    "collate())."
                )
        return
    if not (isinstance(item, tuple | list) and len(item) == 2):
        raise UserError(
            f"{path}: {name} items must be (input, target) pairs of tensors or dicts of "
            f"tensors, got {type(item).__name__}."
        )
    inputs, target = item
    values = list(inputs) if isinstance(inputs, tuple | list) and inputs else [inputs]
    for part, value in [*(("input", value) for value in values), ("target", target)]:
        if not isinstance(value, torch.Tensor | int | float):
            raise UserError(
                f"{path}: {name} items must be (input, target) pairs of tensors (the input may "
                f"be a tuple of tensors); the {part} is a {type(value).__name__}."
            )


def _check_batch(path: Path, name: str, batch: Any, collate_name: str) -> None:
    if is_dict_batch(batch):
        for key, value in batch.items():
            if not isinstance(value, torch.Tensor):
                raise UserError(
                    f"{path}: {collate_name} made a batch of {name} items whose {key!r} is a "
                    f"{type(value).__name__}; every value of a dict batch must be a tensor "
                    f"({_TORCH_FORMAT_HINT})."
                )
    elif not (
        isinstance(batch, tuple | list)
        and len(batch) == 2
        and isinstance(batch[1], torch.Tensor)
        and _is_input(batch[0])
    ):
        raise UserError(
            f"{path}: {collate_name} must make a batch of {name} items into an (inputs, "
            "targets) pair of tensors (the inputs may be a tuple of tensors) or a dict of "
            f"tensors, got {type(batch).__name__}."
        )


def _is_input(inputs: Any) -> bool:
    """Whether a batch's inputs are a tensor or a non-empty tuple (or list) of tensors."""
    if isinstance(inputs, tuple | list):
        return bool(inputs) and all(isinstance(value, torch.Tensor) for value in inputs)
    return isinstance(inputs, torch.Tensor)


def _first_batch(path: Path, model_file: ModelFile, data: Dataset[Any], name: str) -> Any:
    """The first PREFLIGHT_BATCH items of ``data``, collated as every DataLoader will."""
    items = [data[i] for i in range(min(PREFLIGHT_BATCH, len(data)))]  # type: ignore[arg-type]
    collate_name = "collate()" if model_file.has_collate else "torch's default_collate"
    batch = _call(path, f"{collate_name} on {name} items", lambda: model_file.collate(items))
    _check_batch(path, name, batch, collate_name)
    return batch


def _check_data(path: Path, name: str, data: Any, has_collate: bool) -> int:
    """The number of items in ``data``, after checking its first item."""
    try:
        size = len(data)
    except TypeError:
        raise UserError(f"{path}: {name} must return a map-style Dataset with len().") from None
    if size == 0:
        raise UserError(f"{path}: {name} is empty; it must hold at least one item.")
    first = _call(path, f"{name}[0]", functools.partial(data.__getitem__, 0))
    _check_item(path, name, first, has_collate)
    return int(size)


def _check_train_step(path: Path, model_file: ModelFile, model: nn.Module, batch: Any) -> Any:
    """Forward and loss on a train batch; returns the model's output."""
    with torch.no_grad():
        output, target = _call(
            path, "model() forward on a train_data() batch", lambda: forward(model, batch)
        )
        if is_dict_batch(batch) and model_file.loss is default_loss:
            if output_loss(output) is None:
                raise UserError(
                    f"{path}: model() returned a {type(output).__name__} with no loss on a "
                    "train_data() batch; with dict items and no loss() in the file, the model "
                    "must return an output with .loss (give it the labels), or define "
                    "loss(output, batch)."
                )
        loss = _call(path, "loss()", lambda: model_file.loss(output, target))
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise UserError(f"{path}: loss() must return a scalar tensor.")
    return output


def _check_eval_step(path: Path, model_file: ModelFile, model: nn.Module, batch: Any) -> None:
    """One eval step, as the harness runs it: forward on an eval batch, then the metric."""
    model.eval()
    with torch.no_grad():
        output, target = _call(
            path, "model() forward on an eval_data() batch", lambda: forward(model, batch)
        )
        if not is_dict_batch(batch):
            output = output_logits(output).float()  # what the harness's eval hands metric()
        value = _call(path, "metric()", lambda: model_file.metric(output, target))
    number = as_number(value)
    if number is None:
        raise UserError(
            f"{path}: metric() must return a number, got a {type(value).__name__} on an "
            "eval_data() batch."
        )
    if not math.isfinite(number):
        raise UserError(f"{path}: metric() returned {number} on a first batch; it must be finite.")


def _check_layers(path: Path, model_file: ModelFile, batch: Any, output: Any) -> tuple[str, ...]:
    if model_file.layers is None:
        return ()
    if is_dict_batch(batch):
        raise UserError(
            f"{path}: layers() (pipelines) takes (input, target) items, and these items are "
            "dicts; give (input, target) pairs whose input is a tuple of tensors, e.g. "
            "((input_ids, attention_mask), labels), with layers that take and return tuples "
            "(see docs/pipelines.md), or remove layers() to tune every other setting."
        )
    layers = _call(path, "layers()", model_file.layers)
    if not isinstance(layers, list | tuple) or not layers:
        raise UserError(f"{path}: layers() must return a non-empty list of nn.Module.")
    outputs = _call(path, "layers() forward", lambda: _run_layers(layers, model_inputs(batch)))
    piped = outputs[-1]
    shape = getattr(output_logits(output), "shape", None)
    if not isinstance(piped, torch.Tensor) or piped.shape != shape:
        raise UserError(
            f"{path}: layers() in sequence must compute what model() computes, the last layer "
            f"returning the logits; its output differs "
            f"({getattr(piped, 'shape', type(piped).__name__)} vs {shape})."
        )
    loss = _call(path, "loss() on the output of layers()", lambda: model_file.loss(piped, batch[1]))
    _check_passed_outputs(path, layers, outputs, loss)
    return tuple(type(layer).__name__ for layer in layers)


def _run_layers(layers: Sequence[nn.Module], inputs: Any) -> list[Any]:
    """Every layer's output on ``inputs``, with autograd on (the gradients are checked)."""
    outputs: list[Any] = []
    with torch.enable_grad():
        for layer in layers:
            inputs = layer(inputs)
            outputs.append(inputs)
    return outputs


def _check_passed_outputs(
    path: Path, layers: Sequence[nn.Module], outputs: list[Any], loss: Any
) -> None:
    """What DeepSpeed's pipeline needs of an output it may pass between stages: a tensor or a
    tuple of tensors, whose floating tensors (activations) all require grad and get a gradient
    back, since it sends a gradient back for each; integer tensors (ids, masks) pass as they
    are. Outputs before any parameter (nothing requires grad yet) are left as they are."""
    tracked: dict[tuple[int, int], torch.Tensor] = {}
    for index, output in enumerate(outputs[:-1]):
        if isinstance(output, list) or not _is_input(output):
            raise UserError(
                f"{path}: layer {index} ({type(layers[index]).__name__}) of layers() returns a "
                f"{type(output).__name__}; a pipeline passes a tensor or a tuple of tensors "
                "between stages (return a tuple)."
            )
        tensors = tensors_in(output)
        if any(tensor.requires_grad for tensor in tensors):
            for position, tensor in enumerate(tensors):
                if tensor.is_floating_point():
                    tracked[index, position] = tensor
                    if tensor.requires_grad:
                        tensor.retain_grad()
    backward = isinstance(loss, torch.Tensor) and loss.requires_grad
    if backward:
        _call(path, "backward through layers()", loss.backward)
    for (index, position), tensor in tracked.items():
        if not tensor.requires_grad:
            problem = "does not require grad"
        elif backward and tensor.grad is None:
            problem = "gets no gradient"
        else:
            continue
        raise UserError(
            f"{path}: layer {index} ({type(layers[index]).__name__}) of layers() returns a "
            f"floating-point tensor (item {position} of its output) that {problem}; "
            "DeepSpeed's pipeline sends a gradient back for every floating tensor passed "
            "between stages, so pass ids and masks as integer tensors and leave out floating "
            "tensors the later layers do not differentiate through."
        )


def load_task(path: str | Path) -> Task:
    """Load and check a model file in a few seconds, before any trial runs.

    Builds the model, reads an item of each dataset, runs one forward pass and loss on a
    small train batch and one eval step (forward and metric) on a small eval batch; with
    layers(), the same pass through the sequence.

    Raises:
        UserError: With one message naming the problem and where it is.
    """
    model_file = load_model_file(path)
    where = model_file.path
    train, evaluation = _call(where, "train_data()/eval_data()", model_file.datasets)
    sizes = {
        name: _check_data(where, name, data, model_file.has_collate)
        for name, data in (("train_data()", train), ("eval_data()", evaluation))
    }
    model = _call(where, "model()", model_file.model)
    if not isinstance(model, nn.Module):
        raise UserError(
            f"{where}: model() must return a torch.nn.Module, got {type(model).__name__}."
        )
    batch = _first_batch(where, model_file, train, "train_data()")
    output = _check_train_step(where, model_file, model, batch)
    layer_types = _check_layers(where, model_file, batch, output)
    _check_eval_step(
        where, model_file, model, _first_batch(where, model_file, evaluation, "eval_data()")
    )
    return Task(
        model_file=model_file,
        train_size=sizes["train_data()"],
        eval_size=sizes["eval_data()"],
        layer_types=layer_types,
        float_inputs=has_float_inputs(batch),
        dict_items=is_dict_batch(batch),
        token_batches=batch_tokens(batch) is not None,
        items_repeat=items_repeat(train),
        lengths_vary=lengths_vary(train),
    )


def items_repeat(data: Any, probes: int = 3) -> bool:
    """Whether the items at a few indices (first, middle, last) are equal when read twice: a
    ``__getitem__`` with random augmentation gives new items each time, and caching them would
    change what the model trains on."""
    size = len(data)
    indices = sorted({0, size // 2, size - 1}) if size else []
    return all(_equal(data[i], data[i]) for i in indices[:probes])


def lengths_vary(data: Any, probes: int = 64) -> bool:
    """Whether the training items are dicts whose ``input_ids`` differ in length, read at up
    to ``probes`` evenly spaced indices: the variable-length data token batching packs."""
    size = len(data)
    count = min(probes, size)
    lengths = set()
    for index in sorted({i * size // count for i in range(count)}):
        item = data[index]
        ids = item.get("input_ids") if is_dict_batch(item) else None
        if ids is None or (isinstance(ids, torch.Tensor) and ids.dim() != 1):
            return False
        lengths.add(len(ids))
    return len(lengths) > 1


def _equal(first: Any, second: Any) -> bool:
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
        return first.shape == second.shape and bool(torch.equal(first, second))
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(_equal(first[k], second[k]) for k in first)
    if isinstance(first, np.ndarray) and isinstance(second, np.ndarray):
        return bool(np.array_equal(first, second))
    if isinstance(first, tuple | list) and isinstance(second, tuple | list):
        return len(first) == len(second) and all(map(_equal, first, second))
    return bool(first == second)
