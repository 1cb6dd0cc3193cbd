"""A trial's plan: one frozen configuration that becomes a DeepSpeed config and a launch recipe,
and the rules that say whether it can run on this machine at all."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from typing import Any

from autotune._cluster import placement
from autotune._machine import Machine
from autotune._space import PARAMETERS

WARMUP_STEPS = 3
"""Optimizer steps run before timing starts (allocator, caches, first communication)."""
MIN_MEASURED_STEPS = 5
"""A trial needs at least this many timed steps for its throughput to mean anything."""
LR_SCALINGS = ("sqrt", "linear", "none", "noise")
LATER_SETTINGS: dict[str, Any] = {
    "threads": 0,
    "activation_checkpointing": False,
    "compile": False,
    "offload": "none",
    "cache_data": False,
    "batching": "items",
}
"""Settings added after studies were stored, with the value those studies ran: a trial's key
holds them only where they differ, so a resumed study still finds its earlier runs."""
ZERO_BUCKET_ELEMENTS = 500_000_000
"""DeepSpeed's default ``reduce_bucket_size``: under ZeRO stages 1-3 each rank allocates one
gradient bucket of this many values, whatever the model's size (1.9 GiB in fp32 on a GPU)."""
ZERO_BUCKET_GRANULE = 2**20
"""Fitted buckets are whole multiples of this many values (4 MiB in fp32), which is also the
smallest bucket a model gets."""


def scale_learning_rate(
    base_lr: float, base_batch: int, batch: int, rule: str, noise_scale: float | None = None
) -> float:
    """The learning rate for a global batch ``batch`` given ``base_lr`` at ``base_batch``.

    ``sqrt`` keeps the gradient noise scale roughly constant for Adam-type optimizers;
    ``linear`` is Goyal et al.'s rule for SGD; ``none`` keeps the user's rate. ``noise``: for a
    batch larger than ``base_batch``, the rate the large-batch model (McCandlish et al. 2018)
    finds best relative to the reference's, ``(1 + B_noise / base_batch) / (1 + B_noise /
    batch)`` for the measured gradient ``noise_scale`` B_noise (it rises about linearly while
    the batch is well below B_noise and levels off past it): the rate that model's
    samples-to-loss prediction assumes, so goodput scoring uses it (`autotune.study._goodput`).
    For a smaller batch it is ``sqrt``: the model's linear drop is SGD's optimum, and with
    AdamW it left batches of 8 and 16 short of the reference's metric at their predicted
    samples where ``sqrt`` reached it (benchmarks/RESULTS.md). Without a noise scale, ``sqrt``.
    """
    if rule == "none" or batch == base_batch:
        return base_lr
    ratio = batch / base_batch
    if rule == "noise" and noise_scale is not None and noise_scale > 0 and batch > base_batch:
        return base_lr * (1 + noise_scale / base_batch) / (1 + noise_scale / batch)
    return base_lr * (ratio if rule == "linear" else math.sqrt(ratio))


def fitted_zero_bucket(parameters: int) -> int:
    """The ZeRO gradient bucket, in values, fitted to a model of ``parameters`` parameters.

    DeepSpeed 0.19.8 allocates ``reduce_bucket_size`` values per rank for its gradient bucket
    whatever the model (stages 1-2 each step with ``contiguous_gradients``, stage 3 once at
    start-up), and fills it with as many gradients as fit before each reduction. A bucket that
    holds the whole model already means one reduction per step, so a larger one is memory that
    is never used: the bucket is the parameter count rounded up to ``ZERO_BUCKET_GRANULE``
    (which is also its floor), and never more than DeepSpeed's default.
    """
    granules = max(1, math.ceil(parameters / ZERO_BUCKET_GRANULE))
    return min(ZERO_BUCKET_ELEMENTS, granules * ZERO_BUCKET_GRANULE)


@dataclasses.dataclass(frozen=True)
class TrialConfig:
    """Everything one trial runs with. Frozen: built once, read everywhere downstream.

    Attributes:
        zero_bucket_elements: ZeRO's gradient bucket (DeepSpeed's ``reduce_bucket_size``) in
            values, fitted to the model by ``fitted_zero_bucket``; None for DeepSpeed's default
            (and always under ZeRO 0, which has no bucket). Not a tuned setting: every ZeRO
            1-3 trial of a study gets its model's bucket (the reference runs ZeRO 0).
    """

    micro_batch_size: int
    gradient_accumulation_steps: int
    precision: str
    zero_stage: int
    processes: int
    pipeline_stages: int
    partition_method: str
    num_workers: int
    pin_memory: bool
    prefetch_factor: int
    learning_rate: float
    optimizer: dict[str, Any] = dataclasses.field(hash=False, compare=False)
    zero_bucket_elements: int | None = None
    # Settings added later: a stored study's plans and settings may lack them.
    threads: int = 0
    activation_checkpointing: bool = False
    compile: bool = False
    offload: str = "none"
    optimizer_impl: str | None = None  # None: as the optimizer section says
    cache_data: bool = False
    batching: str = "items"

    @classmethod
    def from_settings(
        cls,
        settings: dict[str, Any],
        optimizer: dict[str, Any],
        reference_batch: int,
        lr_scaling: str,
        noise_scale: float | None = None,
        parameters: int | None = None,
    ) -> TrialConfig:
        """Build a config from sampled settings, scaling the learning rate for its batch
        (``noise_scale``: B_noise for the ``noise`` rule); ``parameters``, the model's
        parameter count, fits ZeRO's gradient bucket to it (None keeps DeepSpeed's)."""
        base_lr = float(optimizer["params"]["lr"])
        values = {name: settings[name] for name in PARAMETERS if name in settings}
        pipeline = values["pipeline_stages"] > 1
        workers = values["num_workers"] > 0
        zero = values["zero_stage"] >= 1
        # Settings that do not change the run are normalised so equal runs have equal keys.
        values["partition_method"] = values["partition_method"] if pipeline else "parameters"
        values["prefetch_factor"] = values["prefetch_factor"] if workers else 2
        bucket = fitted_zero_bucket(parameters) if zero and parameters is not None else None
        unscaled = cls(
            **values,
            learning_rate=base_lr,
            optimizer=copy.deepcopy(optimizer),
            zero_bucket_elements=bucket,
        )
        lr = scale_learning_rate(
            base_lr, reference_batch, unscaled.global_batch_size, lr_scaling, noise_scale
        )
        return dataclasses.replace(unscaled, learning_rate=lr)

    @property
    def data_parallel(self) -> int:
        return max(1, self.processes // self.pipeline_stages)

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps * self.data_parallel

    def dataloader_arguments(self) -> dict[str, Any]:
        """The training DataLoader's keyword arguments that the settings decide: what the
        harness builds its loader with and what the launch recipe tells a user's script."""
        workers = self.num_workers > 0
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "prefetch_factor": self.prefetch_factor if workers else None,
            "persistent_workers": workers,
        }

    def loader_environment(self) -> dict[str, str]:
        """Variables the data loading needs: with DataLoader workers, HF tokenizers' own
        threads off (forked workers would otherwise deadlock on them or warn; each worker
        is already one process of parallelism)."""
        return {"TOKENIZERS_PARALLELISM": "false"} if self.num_workers > 0 else {}

    @property
    def reduce_bucket_elements(self) -> int:
        """Values in the gradient bucket DeepSpeed allocates under ZeRO 1-3: the fitted bucket,
        else DeepSpeed's default."""
        return self._configured_bucket() or ZERO_BUCKET_ELEMENTS

    def _configured_bucket(self) -> int | None:
        """The bucket this config sets in DeepSpeed's config; None where it sets none."""
        return self.zero_bucket_elements if self.zero_stage >= 1 else None

    def settings(self) -> dict[str, Any]:
        """The tuned settings by parameter name."""
        return {name: getattr(self, name) for name in PARAMETERS}

    def key(self) -> str:
        """A canonical string: two trials with the same key run the same thing.

        A fitted ZeRO bucket is part of it (a run with DeepSpeed's default bucket allocates,
        and may time, differently), and only where it is set, so keys of runs without one
        read as they did before buckets were fitted; so are `LATER_SETTINGS`.
        """
        settings = {
            name: value
            for name, value in self.settings().items()
            if name not in LATER_SETTINGS or value != LATER_SETTINGS[name]
        }
        if self.optimizer_impl in (None, optimizer_impl_of(self.optimizer)):
            settings.pop("optimizer_impl")  # the kernel the optimizer section selects
        key = {**settings, "learning_rate": self.learning_rate}
        bucket = self._configured_bucket()
        if bucket is not None:
            key["zero_bucket_elements"] = bucket
        return json.dumps(key, sort_keys=True)

    def numerics_key(self, items_vary: bool = False) -> str:
        """What decides the trained model's numbers: trials with equal keys train the same
        model up to floating-point reduction order, so one's metric stands for the other's.

        The samples of each optimizer step depend only on the global batch (the harness's
        WholeBatchSampler cuts each epoch to whole global batches and deals each rank one
        contiguous share of each; accumulation takes consecutive micro-batches),
        the gradient is their mean however it is split over processes, stages or accumulation,
        and DataLoader settings change only who loads the items. Precision changes the numbers;
        so does ZeRO under bf16/fp16, whose optimizers keep master weights differently.
        Threads change only the order of a reduction's partial sums (equal numbers up to
        rounding), checkpointing recomputes the same activations (the random state restored),
        and a cached item is the item loaded again (the preflight checks that an item read
        twice is equal).

        When items vary in length (``items_vary``: dict items or a collate()), a loss that is
        a mean over each micro-batch's tokens weighs the tokens of different micro-batches
        differently, so the gradient depends on how the global batch is cut into micro-batches
        (transformers#34191). The sampler makes that cut depend on the micro-batch size alone,
        so the key then holds the micro-batch size too. The ZeRO bucket only decides how many
        gradients are reduced at a time, not what each sums, so it is not part of the key.

        Token batching (``batching: tokens``) trains other micro-batches and steps of other
        sizes, each at its own learning rate: another run, judged by its own metric as any
        other change of batch. Its micro-batches follow from the micro-batch size (the token
        budget) and its steps from the global batch, so the key holds both.
        """
        key: dict[str, Any] = {
            "global_batch_size": self.global_batch_size,
            "precision": self.precision,
            "learning_rate": self.learning_rate,
            "zero_stage": None if self.precision == "fp32" else self.zero_stage,
        }
        if items_vary or self.batching != "items":
            key["micro_batch_size"] = self.micro_batch_size
        if self.batching != "items":
            key["batching"] = self.batching
        return json.dumps(key, sort_keys=True)

    def steps(self, train_samples: int) -> int:
        """Optimizer steps that fit the fixed sample budget."""
        return train_samples // self.global_batch_size

    def ds_config(self) -> dict[str, Any]:
        """The DeepSpeed config, accepted unchanged by ``deepspeed.initialize``.

        Under ZeRO 1-3 with a fitted bucket it sets ``reduce_bucket_size``; the other ZeRO keys
        keep DeepSpeed 0.19.8's defaults, which its source shows need no fitting:
        ``allgather_bucket_size`` allocates nothing (it splits the all-gather only on a backend
        without ``all_gather_into_tensor``); ``stage3_prefetch_bucket_size`` and
        ``stage3_max_live_parameters`` cap what is gathered and size no buffer;
        ``contiguous_gradients`` stays on (DeepSpeed's tested path; its buffer is the bucket);
        ``overlap_comm`` stays off under ZeRO 1-2, where it would allocate a second bucket with
        nothing to overlap (one bucket holding the model is reduced once, after backward).
        """
        optimizer = with_optimizer_impl(self.optimizer, self.optimizer_impl)
        optimizer.setdefault("params", {})["lr"] = self.learning_rate
        zero: dict[str, Any] = {"stage": self.zero_stage}
        bucket = self._configured_bucket()
        if bucket is not None:
            zero["reduce_bucket_size"] = bucket
        # ZeRO-Offload: pinned host memory, for copies the device makes asynchronously.
        if self.offload != "none":
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if self.offload == "all":
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        config: dict[str, Any] = {
            "train_batch_size": self.global_batch_size,
            "train_micro_batch_size_per_gpu": self.micro_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "optimizer": optimizer,
            "zero_optimization": zero,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if self.precision == "bf16":
            config["bf16"] = {"enabled": True}
        elif self.precision == "fp16":
            # loss_scale 0 asks DeepSpeed for dynamic loss scaling.
            config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
        return config

    def threads_per_process(self, machine: Machine) -> int | None:
        """Intra-op threads for each rank: the ``threads`` setting when set, else
        `automatic_threads`."""
        if self.threads:
            return self.threads
        return automatic_threads(self, machine)

    def launch_recipe(self, machine: Machine) -> dict[str, Any]:
        """What a DeepSpeed config does not hold: ranks, pipeline layout, data loading."""
        threads = self.threads_per_process(machine)
        placed = placement(machine.nodes, self.processes) if machine.nodes else ()
        if machine.spans_nodes(self.processes):
            # The ranks each node runs, as DeepSpeed's runner takes them ("host:0,1@host:0");
            # every node also needs the environment below (DeepSpeed's .deepspeed_env).
            include = "@".join(
                f"{node.host}:{','.join(map(str, range(ranks)))}" for node, ranks in placed
            )
            launcher = " --launcher slurm" if machine.launcher == "slurm" else ""
            command = (
                f"deepspeed --hostfile hostfile --include {include} --master_addr "
                f"{placed[0][0].host}{launcher} train.py --deepspeed_config ds_config.json"
            )
        else:
            placed = placed[:1]
            command = (
                f"deepspeed --num_gpus {self.processes} train.py --deepspeed_config ds_config.json"
            )
        environment = dict(machine.environment)
        if threads is not None:
            environment["OMP_NUM_THREADS"] = str(threads)
        environment.update(self.loader_environment())
        command = " ".join([*(f"{k}={v}" for k, v in environment.items()), command])
        recipe: dict[str, Any] = {
            "processes": self.processes,
            "pipeline_stages": self.pipeline_stages,
            "partition_method": self.partition_method,
            # Filled in from the run: the stage boundaries it used (any method), which
            # autotune.build_pipeline_module turns back into the same pipeline.
            "partition_bounds": None,
            "data_parallel": self.data_parallel,
            **self.dataloader_arguments(),
            # The helpers `autotune.CheckpointedLayers` and `autotune.CachedItems` (README).
            "activation_checkpointing": self.activation_checkpointing,
            "compile": self.compile,  # engine.compile() after deepspeed.initialize
            "cache_data": self.cache_data,
            # `autotune.TokenBudgetSampler` as the loader's batch_sampler, its lr_factor per step.
            "batching": self.batching,
            "threads_per_process": threads,
            "accelerator": machine.accelerator,
            "environment": environment,
            "command": command,
        }
        if len(placed) > 1:
            recipe["nodes"] = [{"host": node.host, "ranks": ranks} for node, ranks in placed]
        return recipe


def is_adam(optimizer: dict[str, Any]) -> bool:
    """Whether a DeepSpeed optimizer section is Adam or AdamW, whose kernel is a setting."""
    return str(optimizer.get("type", "")).lower() in ("adam", "adamw")


def optimizer_impl_of(optimizer: dict[str, Any]) -> str:
    """The ``optimizer_impl`` a DeepSpeed optimizer section selects: DeepSpeed's op unless its
    params set ``torch_adam``, then torch's fused kernel with ``fused: true``, else torch's."""
    params = optimizer.get("params", {})
    if not params.get("torch_adam"):
        return "deepspeed"
    return "torch_fused" if params.get("fused") else "torch"


def with_optimizer_impl(optimizer: dict[str, Any], impl: str | None) -> dict[str, Any]:
    """A copy of a DeepSpeed optimizer section that selects Adam's kernel ``impl``: DeepSpeed's
    FusedAdam op (no ``torch_adam``), torch's (``torch_adam: true``; foreach where torch
    supports it), or torch's fused (``fused: true`` as well, passed on to ``torch.optim``).
    Unchanged for None, for the kernel it already selects, and for optimizers other than Adam.

    The kernels' defaults differ where a section names no ``weight_decay``: DeepSpeed's
    FusedAdam decays by 0, torch's AdamW by 0.01. The copy names the one its section's own
    kernel used, so switching kernels does not change the training (it did, by 4e-4 in the
    eval loss of a test model, before).
    """
    out = copy.deepcopy(optimizer)
    if impl is None or not is_adam(optimizer) or impl == optimizer_impl_of(optimizer):
        return out
    params = out.setdefault("params", {})
    torch_adamw = (
        optimizer_impl_of(optimizer) != "deepspeed" and optimizer["type"].lower() == "adamw"
    )
    params.setdefault("weight_decay", 0.01 if torch_adamw else 0.0)
    for key in ("torch_adam", "fused", "foreach"):
        params.pop(key, None)
    if impl != "deepspeed":
        params["torch_adam"] = True
    if impl == "torch_fused":
        params["fused"] = True
    return out


def automatic_threads(config: TrialConfig, machine: Machine) -> int | None:
    """``threads: 0``: on the CPU accelerator a rank's share of the cores less one core for
    each of its DataLoader workers, so nothing is oversubscribed; on an accelerator None (the
    framework's default)."""
    if machine.accelerator != "cpu":
        return None
    return max(1, machine.cores // machine.local_ranks(config.processes) - config.num_workers)


def why_not_runnable(
    config: TrialConfig,
    machine: Machine,
    train_samples: int,
    train_size: int,
    layer_types: tuple[str, ...],
    items_repeat: bool = True,
    lengths_vary: bool = False,
) -> str | None:
    """The reason this configuration cannot run here, or None when it can.

    These are checked before launch so no time is spent on runs that DeepSpeed would refuse.
    ``items_repeat``: the training data gives an equal item when an index is read twice (the
    preflight's check), which caching needs; ``lengths_vary``: its items' ``input_ids`` differ
    in length (`autotune._task.lengths_vary`), which token batching needs.
    """
    if config.precision == "fp16" and not machine.fp16:
        return f"fp16 is not supported on the {machine.accelerator} accelerator"
    if config.precision == "bf16" and not machine.bf16:
        return f"bf16 is not supported on the {machine.accelerator} accelerator"
    if config.processes > machine.slots:
        if machine.nodes:
            return (
                f"{config.processes} processes but the hostfile has {machine.slots} slots "
                f"on {len(machine.nodes)} nodes"
            )
        unit = "cores" if machine.accelerator == "cpu" else "devices"
        return f"{config.processes} processes but this machine has {machine.devices} {unit}"
    if machine.accelerator == "cpu":
        local = machine.local_ranks(config.processes)
        needed_cores = local * (1 + config.num_workers)
        if needed_cores > machine.cores:
            # Ranks and DataLoader workers would share cores, and the measured throughput would
            # depend on the scheduler's luck rather than the configuration.
            ranks = f"{local} ranks on a node" if local < config.processes else f"{local} ranks"
            return (
                f"{ranks} with {config.num_workers} DataLoader workers each need "
                f"{needed_cores} cores; this machine has {machine.cores}"
            )
    if config.pin_memory and machine.accelerator == "cpu":
        return "pin_memory only helps copies to an accelerator; this machine has none"
    reason = (
        _why_not_threads(config, machine)
        or _why_not_cache(config, items_repeat)
        or _why_not_optimizer_impl(config)
        or _why_not_offload(config, machine)
        or _why_not_compile(config, machine)
        or _why_not_batching(config, lengths_vary)
    )
    if reason is not None:
        return reason
    if config.activation_checkpointing and not layer_types:
        return "activation_checkpointing needs layers() in the model file"
    if config.pipeline_stages > 1:
        if not layer_types:
            return "pipeline stages need layers() in the model file"
        if config.processes % config.pipeline_stages:
            return (
                f"pipeline_stages {config.pipeline_stages} does not divide "
                f"processes {config.processes}"
            )
        if config.zero_stage >= 2:
            return "DeepSpeed's pipeline engine supports ZeRO stage 0 or 1 only"
        if config.pipeline_stages > len(layer_types):
            return f"{config.pipeline_stages} pipeline stages but only {len(layer_types)} layers"
        if config.partition_method.startswith("type:"):
            pattern = re.compile(config.partition_method[len("type:") :], re.IGNORECASE)
            if not any(pattern.search(name) for name in layer_types):
                return f"partition_method {config.partition_method} matches no layer type"
    batch = config.global_batch_size
    if batch > train_size:
        return f"global batch {batch} is larger than the training data ({train_size} items)"
    needed = WARMUP_STEPS + MIN_MEASURED_STEPS
    if config.steps(train_samples) < needed:
        return (
            f"global batch {batch} leaves {config.steps(train_samples)} steps in "
            f"--train-samples {train_samples}; {needed} are needed to measure it"
        )
    return None


def _why_not_threads(config: TrialConfig, machine: Machine) -> str | None:
    if not config.threads:
        return None
    local = machine.local_ranks(config.processes)
    # On the CPU accelerator each DataLoader worker needs a core of its own too.
    workers = config.num_workers if machine.accelerator == "cpu" else 0
    needed = local * (config.threads + workers)
    if needed > machine.cores:
        with_workers = f" and {workers} DataLoader workers" if workers else ""
        return (
            f"{local} rank{'s' if local > 1 else ''} of {config.threads} threads{with_workers} "
            f"need{'' if local > 1 or workers else 's'} {needed} cores; this machine has "
            f"{machine.cores}"
        )
    if config.threads == automatic_threads(config, machine):
        # The same run as threads 0, under another name.
        return f"threads {config.threads} is what threads 0 gives on this machine"
    return None


def _why_not_cache(config: TrialConfig, items_repeat: bool) -> str | None:
    if not config.cache_data:
        return None
    if config.num_workers:
        return (
            "cache_data keeps items in the rank's own process; DataLoader workers would each "
            "cache a share of them (use num_workers 0)"
        )
    if not items_repeat:
        return (
            "cache_data needs items that are equal when read twice; this training data's are "
            "not (random augmentation in __getitem__?)"
        )
    return None


def _why_not_optimizer_impl(config: TrialConfig) -> str | None:
    impl, kind = config.optimizer_impl, config.optimizer.get("type")
    if impl is None or is_adam(config.optimizer) or impl == optimizer_impl_of(config.optimizer):
        return None
    return f"optimizer_impl {impl} chooses Adam's kernel; the model file's optimizer is {kind}"


def _why_not_offload(config: TrialConfig, machine: Machine) -> str | None:
    if config.offload == "none":
        return None
    if machine.accelerator == "cpu":
        return (
            "offload moves ZeRO's optimizer state (and parameters) from an accelerator's memory "
            "to the CPU's; this machine has no accelerator"
        )
    if config.offload == "all" and config.zero_stage < 3:
        return "offload all (parameters too) needs ZeRO stage 3"
    if config.zero_stage < 1:
        return "offload of the optimizer state needs ZeRO stage 1-3"
    return None


def _why_not_compile(config: TrialConfig, machine: Machine) -> str | None:
    if not config.compile:
        return None
    if config.pipeline_stages > 1:
        # DeepSpeed's pipeline engine runs each stage's layers itself, outside a compiled forward.
        return "compile is tried without a pipeline only"
    if machine.accelerator == "cpu" and not machine.cxx:
        return "compile on the CPU needs a C++ compiler (torch's inductor writes C++); none found"
    return None


def _why_not_batching(config: TrialConfig, lengths_vary: bool) -> str | None:
    if config.batching == "items":
        return None
    if not lengths_vary:
        return (
            "batching tokens needs items whose input_ids differ in length; this training "
            "data's do not"
        )
    if config.pipeline_stages > 1:
        # DeepSpeed's pipeline engine sizes its micro-batches by the config's item count.
        return "batching tokens is tried without a pipeline only"
    return None
