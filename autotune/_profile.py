"""Layer profiles for pipeline partitioning: what each layer of ``layers()`` costs, measured.

DeepSpeed's ``PipelineModule`` splits layers by parameter count, layer count or a class-name
regex; its ``profile`` method is unimplemented. Parameter count is a poor proxy for time (an
embedding holds most parameters and does little work), so autotune measures, per layer, on the
trial's device, micro-batch and precision:

- forward + backward seconds per micro-batch (the last layer's includes the loss),
- optimizer-step seconds (the model file's optimizer type over that layer's parameters),
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

from autotune._memory import _tensor_bytes
from autotune._partition import Partition, partition_layers, stage_costs
from autotune._plan import Machine, TrialConfig
from autotune._run import _free_port
from autotune._task import ModelFile

PROFILE_VERSION = 2
"""Bumped when what a profile measures changes, so stale cache files are not read."""
BOTTLENECK_TOLERANCE = 0.03
"""Layer timings repeat within a few percent, so a partition whose slowest stage is within 3% of
the best is taken instead of the best when it sends less between stages."""
_MIN_ROUNDS = 7
_MAX_ROUNDS = 200
_MIN_SECONDS = 0.5
"""Layers are timed in rounds until the rounds add up to this (and at least _MIN_ROUNDS)."""


@dataclasses.dataclass(frozen=True)
class LinkCost:
    """What one point-to-point message between two ranks costs on this machine.

    Attributes:
        latency_seconds: The cost of a tiny message.
        seconds_per_byte: The added cost of each byte.
        backend: The torch.distributed backend it was measured with.
    """

    latency_seconds: float
    seconds_per_byte: float
    backend: str

    def message_seconds(self, nbytes: float) -> float:
        return self.latency_seconds + nbytes * self.seconds_per_byte


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    """Measured costs of each layer of ``layers()`` for one micro-batch size and precision.

    Attributes:
        names: Each layer's class name.
        forward_backward_seconds: Forward plus backward time per micro-batch.
        optimizer_seconds: Optimizer-step time over the layer's parameters.
        activation_bytes: Bytes of the layer's output for one micro-batch.
        parameter_bytes: Bytes of the layer's parameters in the trial's precision.
        optimizer_state_bytes: Bytes of the optimizer's state for the layer's parameters.
        micro_batch_size: The micro-batch it was measured with.
        precision: fp32, bf16 or fp16.
        device: Where it was measured (accelerator, model, threads).
        link: What sending an activation to the next stage costs.
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

    def to_json(self) -> dict[str, Any]:
        return {"version": PROFILE_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerProfile:
        values = {key: value for key, value in data.items() if key != "version"}
        values["link"] = LinkCost(**values["link"])
        for name in (
            "names",
            "forward_backward_seconds",
            "optimizer_seconds",
            "activation_bytes",
            "parameter_bytes",
            "optimizer_state_bytes",
        ):
            values[name] = tuple(values[name])
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class StageCosts:
    """The per-layer cost vectors the partitioner balances, for one trial's layout.

    Attributes:
        layer_seconds: Per micro-batch: forward + backward, plus the optimizer step shared over
            the step's micro-batches.
        send_seconds: Per micro-batch: sending the layer's output to the next stage and
            receiving its gradient back (two messages).
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
    send_seconds = tuple(2 * profile.link.message_seconds(b) for b in profile.activation_bytes)
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
    it warms up the allocator and leaves every layer with gradients for its optimizer step.
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


def _forward_backward(
    layer: nn.Module,
    x_in: torch.Tensor,
    params: list[nn.Parameter],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    targets: torch.Tensor,
) -> Callable[[], None]:
    """One forward and backward pass through ``layer`` alone (and the loss, for the last)."""

    def run() -> None:
        for p in params:
            p.grad = None
        x_in.grad = None
        out = layer(x_in)
        if loss_fn is not None:
            out = loss_fn(out, targets)
        if out.requires_grad:
            # A unit upstream gradient: the same work as the real one.
            out.backward(torch.ones_like(out) if out.dim() else None)

    return run


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
    from autotune._harness import _cast, _dtype

    dtype = _dtype(precision)
    synchronize: Callable[[], None] = (
        torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    )
    torch.manual_seed(seed)
    assert model_file.layers is not None
    layers = [layer.to(device=device, dtype=dtype) for layer in model_file.layers()]
    train, _ = model_file.datasets()
    count = min(micro_batch_size, len(train))  # type: ignore[arg-type]
    items = [train[i] for i in range(count)]
    batch = torch.utils.data.default_collate(items)
    inputs, targets = _cast(batch, dtype, device)

    # Each layer's input: the previous layer's output on the real batch, detached.
    layer_inputs: list[torch.Tensor] = []
    with torch.no_grad():
        x = inputs
        for layer in layers:
            layer_inputs.append(x)
            x = layer(x)

    # What to time: each layer's forward + backward, and its optimizer step.
    tasks: list[tuple[str, int, Callable[[], None]]] = []
    activation: list[int] = []
    parameter: list[int] = []
    optimizers: dict[int, torch.optim.Optimizer] = {}
    last = len(layers) - 1
    for index, layer in enumerate(layers):
        x_in = layer_inputs[index].detach()
        if x_in.is_floating_point():
            x_in.requires_grad_(True)
        params = [p for p in layer.parameters() if p.requires_grad]
        loss_fn = model_file.loss if index == last else None
        tasks.append(("fb", index, _forward_backward(layer, x_in, params, loss_fn, targets)))
        with torch.no_grad():
            activation.append(_tensor_bytes(layer(x_in)))
        parameter.append(sum(_tensor_bytes(p) for p in params))
        if params:
            optimizers[index] = _optimizer_class(model_file.optimizer)(
                params, **_optimizer_params(model_file.optimizer)
            )
            tasks.append(("opt", index, optimizers[index].step))
    times = _time_round_robin(tasks, synchronize)
    fb_seconds = [times[("fb", i)] for i in range(len(layers))]
    opt_seconds = [times.get(("opt", i), 0.0) for i in range(len(layers))]
    state = [
        sum(_tensor_bytes(v) for s in optimizers[i].state.values() for v in s.values())
        if i in optimizers
        else 0
        for i in range(len(layers))
    ]
    return LayerProfile(
        names=tuple(type(layer).__name__ for layer in layers),
        forward_backward_seconds=tuple(fb_seconds),
        optimizer_seconds=tuple(opt_seconds),
        activation_bytes=tuple(activation),
        parameter_bytes=tuple(parameter),
        optimizer_state_bytes=tuple(state),
        micro_batch_size=micro_batch_size,
        precision=precision,
        device=device_label,
        link=link,
    )


def measure_link(machine: Machine, scratch: Path, timeout: float = 120.0) -> LinkCost:
    """Time point-to-point messages between two ranks with the backend a pipeline uses here."""
    from autotune import _link

    backend = "gloo" if machine.accelerator == "cpu" else "nccl"
    if backend == "nccl" and machine.devices < 2:
        # One device holds no pipeline; a trial asking for one is never launched.
        return LinkCost(0.0, 0.0, "none")
    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / f"link-{os.getpid()}.json"
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ranks = [
        subprocess.Popen(
            [
                sys.executable,
                _link.__file__,
                f"--rank={rank}",
                f"--port={port}",
                f"--backend={backend}",
                f"--out={out}",
            ],
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
    small, large = json.loads(out.read_text())
    out.unlink()
    span = _link.SIZES[1] - _link.SIZES[0]
    return LinkCost(
        latency_seconds=small, seconds_per_byte=max(0.0, (large - small) / span), backend=backend
    )


def _device_label(machine: Machine, threads: int | None) -> str:
    if machine.accelerator == "cpu":
        from autotune._plan import cpu_model

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
            return LinkCost(**json.loads(path.read_text()))
        link = measure_link(self.machine, self.directory)
        self._write(path, dataclasses.asdict(link))
        return link

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
        device = torch.device("cuda:0" if self.machine.accelerator == "cuda" else "cpu")
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
