"""Profiling runs: what each layer of ``layers()`` costs, and what a message between two
ranks costs, measured on this machine (the costs become partitions in ``autotune.pipeline``).

DeepSpeed's ``PipelineModule`` splits layers by parameter count, layer count or a class-name
regex; its ``profile`` method is unimplemented. Parameter count is a poor proxy for time (an
embedding holds most parameters and does little work), so autotune measures, per layer, on the
trial's device, micro-batch and precision:

- forward + backward seconds per micro-batch, timed inside whole-model passes (the last
  layer's includes the loss),
- optimizer-step seconds (the model file's optimizer type over that layer's parameters, less
  the fixed cost of a step call, which each stage pays once),
- the output activation's bytes (what a stage boundary after it sends, and its gradient back),
- parameter and optimizer-state bytes (what the layer pins on its stage),

and, once per machine, what sending a tensor to another rank costs (latency and bytes/s, with
the backend a pipeline uses). Profiles are cached on disk per (model file content, micro-batch,
precision, device, threads), so a study profiles each combination once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autotune._batch import tensors_in
from autotune._machine import Machine, cpu_model
from autotune._memory import tensor_bytes
from autotune._plan import TrialConfig
from autotune._task import ModelFile
from autotune.pipeline import PROFILE_VERSION, LayerProfile, LinkCost
from autotune.runner import _link
from autotune.runner._data import cast_batch, torch_dtype
from autotune.runner._launch import free_port
from autotune.runner._ops import ops_environment
from autotune.runner._owner import guarded_command

_MIN_ROUNDS = 7
_MAX_ROUNDS = 200
_MIN_SECONDS = 0.5
"""Layers are timed in rounds until the rounds add up to this (and at least _MIN_ROUNDS)."""


def _optimizer_class(optimizer: dict[str, Any]) -> type[torch.optim.Optimizer]:
    """The torch optimizer closest to the model file's DeepSpeed optimizer section."""
    kind = str(optimizer.get("type", "")).lower()
    classes: dict[str, type[torch.optim.Optimizer]] = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "sgd": torch.optim.SGD,
        "adagrad": torch.optim.Adagrad,
    }
    return classes.get(kind, torch.optim.AdamW)


def _optimizer_params(optimizer: dict[str, Any]) -> dict[str, Any]:
    params = dict(optimizer.get("params", {}))
    allowed = {"lr", "betas", "eps", "weight_decay", "momentum"}
    return {key: value for key, value in params.items() if key in allowed}


def _time_round_robin(
    tasks: list[tuple[str, int, Callable[[], None]]], synchronize: Callable[[], None]
) -> dict[tuple[str, int], float]:
    """The median time of every task, timed in rounds that each run every task once in a fresh
    random (seeded) order, for at least _MIN_ROUNDS rounds and _MIN_SECONDS.

    Timing one layer after another lets a slow spell, or the cache left by the layer before
    (an embedding's optimizer step sweeps megabytes), land on one layer and tilt the partition;
    rounds in shuffled order spread both over all layers. The first round runs in order, untimed:
    it warms up the allocator.
    """
    for _, _, fn in tasks:
        fn()
    synchronize()
    order = random.Random(0)
    samples: dict[tuple[str, int], list[float]] = {(kind, i): [] for kind, i, _ in tasks}
    spent, rounds = 0.0, 0
    while rounds < _MIN_ROUNDS or (spent < _MIN_SECONDS and rounds < _MAX_ROUNDS):
        shuffled = list(tasks)
        order.shuffle(shuffled)
        for kind, index, fn in shuffled:
            start = time.perf_counter()
            fn()
            synchronize()
            elapsed = time.perf_counter() - start
            samples[(kind, index)].append(elapsed)
            spent += elapsed
        rounds += 1
    return {task: statistics.median(values) for task, values in samples.items()}


def _time_in_graph(
    layers: Sequence[nn.Module],
    inputs: Any,
    loss: Callable[[Any], torch.Tensor],
    synchronize: Callable[[], None],
) -> list[float]:
    """Each layer's forward + backward time per micro-batch, timed inside whole-model passes.

    Timing a layer alone charges it a whole autograd call (and a loss-free backward seed) that
    a stage pays once for all its layers; on small layers that fixed cost is most of the time
    and hides which layers really cost more. So, as PipeDream's profiler does, every layer is
    timed where it runs: the forward between layers, the backward from when the gradient of the
    layer's output arrives (a tensor hook) to when the gradient of its input does. Passes repeat
    for at least _MIN_ROUNDS and _MIN_SECONDS; the median of each layer's time is kept.
    """
    count = len(layers)

    def one_pass() -> tuple[list[float], list[float]]:
        for layer in layers:
            for param in layer.parameters():
                param.grad = None
        forward = [0.0] * count
        arrived: list[float | None] = [None] * count
        x: Any = inputs
        for index, layer in enumerate(layers):
            start = time.perf_counter()
            x = layer(x)
            if index == count - 1:
                x = loss(x)
            synchronize()
            forward[index] = time.perf_counter() - start
            # A tuple's gradient has arrived when the last of its tensors' has.
            for tensor in tensors_in(x) if index < count - 1 else []:
                if tensor.requires_grad:

                    def hook(grad: torch.Tensor, index: int = index) -> None:
                        synchronize()
                        arrived[index] = time.perf_counter()

                    tensor.register_hook(hook)
        backward = [0.0] * count
        if x.requires_grad:
            start = time.perf_counter()
            x.backward()
            synchronize()
            done = time.perf_counter()
            # The gradient reaches layer i's output at reached[i] (the loss at the start) and
            # its input at reached[i - 1] (the end of the pass, for the first layer); a layer
            # whose output gets no gradient does no backward.
            reached = [*arrived[: count - 1], start]
            for index, begin in enumerate(reached):
                if begin is not None:
                    end = reached[index - 1] if index > 0 else None
                    backward[index] = max(0.0, (end if end is not None else done) - begin)
        return forward, backward

    one_pass()  # warms up the allocator
    samples: list[list[float]] = [[] for _ in range(count)]
    spent, rounds = 0.0, 0
    while rounds < _MIN_ROUNDS or (spent < _MIN_SECONDS and rounds < _MAX_ROUNDS):
        forward, backward = one_pass()
        for index in range(count):
            samples[index].append(forward[index] + backward[index])
        spent += math.fsum(forward) + math.fsum(backward)
        rounds += 1
    return [statistics.median(values) for values in samples]


def _messages(output: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The bytes of each message DeepSpeed's pipeline sends for a layer's output at a stage
    boundary: one per tensor forward, and back one gradient per floating tensor."""
    tensors = tensors_in(output)
    return (
        tuple(tensor_bytes(t) for t in tensors),
        tuple(tensor_bytes(t) for t in tensors if t.is_floating_point()),
    )


def _optimizer_costs(
    layers: Sequence[nn.Module],
    inputs: Any,
    optimizer: dict[str, Any],
    dtype: torch.dtype,
    synchronize: Callable[[], None],
) -> tuple[list[tuple[tuple[int, ...], tuple[int, ...]]], list[int], list[float], list[int]]:
    """Each layer's output (its tensors' bytes, `_messages`) and parameter bytes, its
    optimizer step's seconds (timed on its own, less the fixed cost of a step call) and its
    optimizer state's bytes."""
    outputs: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    parameter: list[int] = []
    optimizers: dict[int, torch.optim.Optimizer] = {}
    tasks: list[tuple[str, int, Callable[[], None]]] = []
    device = tensors_in(inputs)[0].device
    with torch.no_grad():
        x = inputs
        for index, layer in enumerate(layers):
            x = layer(x)
            outputs.append(_messages(x))
            params = [p for p in layer.parameters() if p.requires_grad]
            parameter.append(sum(tensor_bytes(p) for p in params))
            if params:
                for p in params:
                    p.grad = torch.randn_like(p) * 1e-3
                optimizers[index] = _optimizer_class(optimizer)(
                    params, **_optimizer_params(optimizer)
                )
                tasks.append(("opt", index, optimizers[index].step))
    # A stage steps one optimizer over all its layers, so the fixed cost of a step call (timed
    # on one scalar parameter) is the stage's, not each layer's.
    scalar = nn.Parameter(torch.zeros((), device=device, dtype=dtype))
    scalar.grad = torch.zeros_like(scalar)
    empty = _optimizer_class(optimizer)([scalar], **_optimizer_params(optimizer))
    tasks.append(("opt", -1, empty.step))
    times = _time_round_robin(tasks, synchronize)
    call = times[("opt", -1)]
    opt_seconds = [
        max(0.0, times[("opt", i)] - call) if i in optimizers else 0.0 for i in range(len(layers))
    ]
    state = [
        sum(tensor_bytes(v) for s in optimizers[i].state.values() for v in s.values())
        if i in optimizers
        else 0
        for i in range(len(layers))
    ]
    return outputs, parameter, opt_seconds, state


def measure_layers(
    model_file: ModelFile,
    micro_batch_size: int,
    precision: str,
    device: torch.device,
    link: LinkCost,
    device_label: str,
    seed: int = 0,
) -> LayerProfile:
    """Time every layer of ``model_file.layers()`` on one micro-batch of its training data."""
    dtype = torch_dtype(precision)
    synchronize: Callable[[], None] = (
        torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    )
    torch.manual_seed(seed)
    assert model_file.layers is not None
    layers = [layer.to(device=device, dtype=dtype) for layer in model_file.layers()]
    train, _ = model_file.datasets()
    count = min(micro_batch_size, len(train))  # type: ignore[arg-type]
    items = [train[i] for i in range(count)]
    # layers() takes (input, target) items (the preflight refuses it beside dict items); the
    # input may be a tuple of tensors, passed to the first layer as one argument.
    inputs, targets = cast_batch(model_file.collate(items), dtype, device)

    # Forward + backward of each layer, timed inside whole-model passes on the real batch.
    fb_seconds = _time_in_graph(
        layers, inputs, lambda out: model_file.loss(out, targets), synchronize
    )

    # Each layer's output bytes and parameters, and its optimizer step timed on its own.
    messages, parameter, opt_seconds, state = _optimizer_costs(
        layers, inputs, model_file.optimizer, dtype, synchronize
    )
    return LayerProfile(
        names=tuple(type(layer).__name__ for layer in layers),
        forward_backward_seconds=tuple(fb_seconds),
        optimizer_seconds=tuple(opt_seconds),
        activation_bytes=tuple(sum(sent) for sent, _ in messages),
        parameter_bytes=tuple(parameter),
        optimizer_state_bytes=tuple(state),
        micro_batch_size=micro_batch_size,
        precision=precision,
        device=device_label,
        link=link,
        sent_bytes=tuple(sent for sent, _ in messages),
        returned_bytes=tuple(returned for _, returned in messages),
    )


def measure_link(machine: Machine, scratch: Path, timeout: float = 120.0) -> LinkCost:
    """Time point-to-point messages between two ranks with the backend a pipeline uses here."""
    backend = "gloo" if machine.accelerator == "cpu" else "nccl"
    if backend == "nccl" and machine.devices < 2:
        # One device holds no pipeline; a trial asking for one is never launched.
        return LinkCost((), (), "none")
    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / f"link-{os.getpid()}.json"
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", **ops_environment()}
    devices = machine.local_device_ids(2)  # --devices: this worker's own
    ranks = [
        subprocess.Popen(
            # Tied to this process, as a trial's launcher is: killed with it.
            guarded_command(
                [
                    sys.executable,
                    _link.__file__,
                    f"--rank={rank}",
                    f"--port={port}",
                    f"--backend={backend}",
                    f"--out={out}",
                    f"--device={devices[rank]}",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        for rank in (0, 1)
    ]
    try:
        errors = [rank.communicate(timeout=timeout)[1] for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    if not out.exists():
        detail = b"".join(errors).decode(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"measuring the link between two ranks failed: {detail}")
    seconds = json.loads(out.read_text())
    out.unlink()
    # A bigger message never costs less: smooth out timing noise between neighbouring sizes.
    monotone = [max(seconds[: i + 1]) for i in range(len(seconds))]
    return LinkCost(tuple(_link.SIZES), tuple(monotone), backend)


def _device_label(machine: Machine, threads: int | None) -> str:
    if machine.accelerator == "cpu":
        return f"cpu ({cpu_model() or 'unknown'}), {threads} threads"
    return f"{machine.accelerator} ({machine.device_name or 'unknown'})"


class ProfileCache:
    """Layer profiles and the machine's link cost, measured once and kept in ``directory``."""

    def __init__(self, directory: Path, machine: Machine) -> None:
        self.directory, self.machine = Path(directory), machine

    def _path(self, kind: str, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.directory / f"{kind}-{digest}.json"

    def _link_path(self) -> Path:
        return self._path("link", {"device": _device_label(self.machine, None)})

    def link(self) -> LinkCost:
        """The machine's point-to-point message cost, measured once."""
        path = self._link_path()
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("version") == PROFILE_VERSION:
                return LinkCost.from_json(data)
        link = measure_link(self.machine, self.directory)
        self.store_link(link)
        return link

    def store_link(self, link: LinkCost) -> None:
        """Keep ``link`` as this machine's link cost (as if measured here)."""
        self._write(self._link_path(), {"version": PROFILE_VERSION, **dataclasses.asdict(link)})

    def is_cached(self, model_file: ModelFile, config: TrialConfig) -> bool:
        return self._profile_path(model_file, config).exists()

    def _profile_path(self, model_file: ModelFile, config: TrialConfig) -> Path:
        threads = config.threads_per_process(self.machine)
        return self._path(
            "layers",
            {
                "version": PROFILE_VERSION,
                "model": hashlib.sha256(model_file.path.read_bytes()).hexdigest(),
                "optimizer": model_file.optimizer,
                "micro_batch_size": config.micro_batch_size,
                "precision": config.precision,
                "device": _device_label(self.machine, threads),
            },
        )

    def profile(self, model_file: ModelFile, config: TrialConfig) -> LayerProfile:
        """The layer profile for ``config``'s micro-batch and precision, measured if needed
        with the threads (CPU) or the device (accelerator) one of its ranks gets."""
        path = self._profile_path(model_file, config)
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("version") == PROFILE_VERSION:
                return LayerProfile.from_json(data)
        threads = config.threads_per_process(self.machine)
        link = self.link()
        previous_threads = torch.get_num_threads()
        first = self.machine.local_device_ids(1)[0]  # --devices: this worker's own
        device = torch.device(f"cuda:{first}" if self.machine.accelerator == "cuda" else "cpu")
        try:
            if threads:
                torch.set_num_threads(threads)
            profile = measure_layers(
                model_file,
                config.micro_batch_size,
                config.precision,
                device,
                link,
                _device_label(self.machine, threads),
            )
        finally:
            torch.set_num_threads(previous_threads)
        self._write(path, profile.to_json())
        return profile

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)
