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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from autotune._errors import UserError

DEFAULT_BATCH_SIZE = 32
DEFAULT_OPTIMIZER: dict[str, Any] = {"type": "AdamW", "params": {"lr": 1e-3}}
HELD_OUT_FRACTION = 0.2
"""Share of train_data() kept for evaluation when the model file has no eval_data()."""
_SPLIT_SEED = 0


def default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last dimension."""
    return nn.functional.cross_entropy(output.float(), target)


def default_metric(output: torch.Tensor, target: torch.Tensor) -> float:
    """Classification accuracy: argmax over the last dimension."""
    return float((output.argmax(dim=-1) == target).float().mean().item())


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A loaded model file with its defaults filled in.

    Attributes:
        path: The file, resolved.
        model: Builds a fresh model.
        layers: Builds the same network as a list of modules, or None (no pipeline).
        loss: loss(output, target) -> Tensor.
        metric: metric(output, target) -> float, higher is better.
        metric_name: How to call the metric in reports.
        batch_size: BATCH_SIZE, the reference micro-batch.
        optimizer: OPTIMIZER, a DeepSpeed optimizer section.
        has_eval_data: Whether the file defines eval_data().
    """

    path: Path
    model: Callable[[], nn.Module]
    layers: Callable[[], list[nn.Module]] | None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metric: Callable[[torch.Tensor, torch.Tensor], float]
    metric_name: str
    batch_size: int
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
    batch_size = getattr(module, "BATCH_SIZE", DEFAULT_BATCH_SIZE)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise UserError(f"{path}: BATCH_SIZE must be a whole number >= 1, got {batch_size!r}.")
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
        metric, metric_name = custom_metric, "metric()"
    elif callable(custom_loss):

        def metric(output: torch.Tensor, target: torch.Tensor) -> float:
            return -float(custom_loss(output, target))

        metric_name = "negative eval loss"
    else:
        metric, metric_name = default_metric, "accuracy"
    layers = getattr(module, "layers", None)
    return ModelFile(
        path=path,
        model=module.model,
        layers=layers if callable(layers) else None,
        loss=custom_loss if callable(custom_loss) else default_loss,
        metric=metric,
        metric_name=metric_name,
        batch_size=batch_size,
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
        float_inputs: Whether inputs are floating point (cast under bf16/fp16).
    """

    model_file: ModelFile
    train_size: int
    eval_size: int
    layer_types: tuple[str, ...]
    float_inputs: bool

    @property
    def has_layers(self) -> bool:
        return self.model_file.layers is not None

    def reference_settings(self) -> dict[str, Any]:
        """What the user runs today (see `reference_settings`)."""
        return reference_settings(self.model_file.batch_size)


def reference_settings(batch_size: int) -> dict[str, Any]:
    """The reference trial: the model file's BATCH_SIZE, fp32, ZeRO 0, one process, no
    DataLoader workers."""
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
    }


def _check_item(path: Path, name: str, item: Any) -> None:
    if not (isinstance(item, tuple | list) and len(item) == 2):
        raise UserError(
            f"{path}: {name} items must be (input, target) pairs of tensors, got "
            f"{type(item).__name__}."
        )
    for part, value in zip(("input", "target"), item, strict=True):
        if not isinstance(value, torch.Tensor | int | float):
            raise UserError(
                f"{path}: {name} items must be (input, target) pairs of tensors; the {part} is "
                f"a {type(value).__name__}."
            )


def _first_batch(data: Dataset[Any], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [data[i] for i in range(min(size, len(data)))]  # type: ignore[arg-type]
    inputs, targets = torch.utils.data.default_collate(items)
    return inputs, targets


def load_task(path: str | Path) -> Task:
    """Load and check a model file in a few seconds, before any trial runs.

    Builds the model, reads an item of each dataset and runs one forward pass, loss and
    metric on a small batch; with layers(), the same pass through the sequence.

    Raises:
        UserError: With one message naming the problem and where it is.
    """
    model_file = load_model_file(path)
    where = model_file.path
    train, evaluation = _call(where, "train_data()/eval_data()", model_file.datasets)
    sizes = {}
    for name, data in (("train_data()", train), ("eval_data()", evaluation)):
        try:
            sizes[name] = len(data)
        except TypeError:
            raise UserError(
                f"{where}: {name} must return a map-style Dataset with len()."
            ) from None
        if sizes[name] == 0:
            raise UserError(f"{where}: {name} is empty; it must hold at least one item.")
        first = _call(where, f"{name}[0]", functools.partial(data.__getitem__, 0))
        _check_item(where, name, first)
    model = _call(where, "model()", model_file.model)
    if not isinstance(model, nn.Module):
        raise UserError(
            f"{where}: model() must return a torch.nn.Module, got {type(model).__name__}."
        )
    inputs, targets = _call(where, "collating train_data() items", lambda: _first_batch(train, 4))
    with torch.no_grad():
        output = _call(where, "model() forward on a train_data() batch", lambda: model(inputs))
        loss = _call(where, "loss()", lambda: model_file.loss(output, targets))
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise UserError(f"{where}: loss() must return a scalar tensor.")
        value = _call(where, "metric()", lambda: float(model_file.metric(output, targets)))
        if not math.isfinite(value):
            raise UserError(
                f"{where}: metric() returned {value} on a first batch; it must be finite."
            )
    layer_types: tuple[str, ...] = ()
    if model_file.layers is not None:
        layers = _call(where, "layers()", model_file.layers)
        if not isinstance(layers, list | tuple) or not layers:
            raise UserError(f"{where}: layers() must return a non-empty list of nn.Module.")
        layer_types = tuple(type(layer).__name__ for layer in layers)
        with torch.no_grad():
            piped = _call(where, "layers() forward", lambda: nn.Sequential(*layers)(inputs))
        if not isinstance(piped, torch.Tensor) or piped.shape != output.shape:
            raise UserError(
                f"{where}: layers() in sequence must compute what model() computes; its output "
                f"shape differs ({getattr(piped, 'shape', type(piped).__name__)} vs {output.shape})."
            )
    return Task(
        model_file=model_file,
        train_size=sizes["train_data()"],
        eval_size=sizes["eval_data()"],
        layer_types=layer_types,
        float_inputs=bool(inputs.is_floating_point()),
    )
