"""Trial plans: DeepSpeed config, launch recipe, learning-rate scaling and feasibility rules
(pure logic, autotune/_plan.py)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import socket

import pytest
import torch.distributed as dist

from autotune._machine import Machine, native_half_precisions
from autotune._plan import (
    LATER_SETTINGS,
    MIN_MEASURED_STEPS,
    WARMUP_STEPS,
    ZERO_BUCKET_ELEMENTS,
    ZERO_BUCKET_GRANULE,
    TrialConfig,
    fitted_zero_bucket,
    scale_learning_rate,
    why_not_runnable,
)
from autotune._space import PARAMETERS
from autotune._task import reference_settings

CPU = Machine("cpu", devices=2, cores=2, fp16=False, bf16=True)
GPUS = Machine("cuda", 8, 32, True, True)
OPTIMIZER = {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.01}}
LAYERS = ("Linear", "ReLU", "Linear")
REFERENCE_BATCH = 32
REFERENCE = reference_settings(REFERENCE_BATCH)


def config(
    lr_scaling: str = "sqrt", parameters: int | None = None, **changes: object
) -> TrialConfig:
    return TrialConfig.from_settings(
        {**REFERENCE, **changes}, OPTIMIZER, REFERENCE_BATCH, lr_scaling, parameters=parameters
    )


def test_reference_covers_every_parameter() -> None:
    assert set(REFERENCE) == set(PARAMETERS)


# --- ds_config -----------------------------------------------------------------------------


def test_fp32_has_no_precision_section() -> None:
    ds = config().ds_config()
    assert "bf16" not in ds and "fp16" not in ds
    assert ds["train_micro_batch_size_per_gpu"] == 32
    assert ds["gradient_accumulation_steps"] == 1
    assert ds["train_batch_size"] == 32
    assert ds["zero_optimization"] == {"stage": 0}
    assert ds["optimizer"] == {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.01}}
    json.dumps(ds)  # plain JSON, written as ds_config.json


def test_bf16_section() -> None:
    ds = config(precision="bf16").ds_config()
    assert ds["bf16"] == {"enabled": True}
    assert "fp16" not in ds


def test_fp16_uses_dynamic_loss_scaling() -> None:
    ds = config(precision="fp16").ds_config()
    assert ds["fp16"]["enabled"] is True
    assert ds["fp16"]["loss_scale"] == 0  # 0 asks DeepSpeed for dynamic loss scaling
    assert "bf16" not in ds


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_section(stage: int) -> None:
    assert config(zero_stage=stage).ds_config()["zero_optimization"] == {"stage": stage}


# --- ZeRO bucket ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "bucket"),
    [
        (0, ZERO_BUCKET_GRANULE),  # the floor
        (300_000, ZERO_BUCKET_GRANULE),
        (2**20, 2**20),
        (2**20 + 1, 2 * 2**20),
        (124_439_808, 119 * 2**20),  # GPT-2 small, rounded up to whole granules
        (499_500_000, ZERO_BUCKET_ELEMENTS),  # rounding up never passes DeepSpeed's default
        (7_000_000_000, ZERO_BUCKET_ELEMENTS),
    ],
)
def test_the_bucket_fits_the_model_up_to_deepspeeds_default(parameters: int, bucket: int) -> None:
    assert fitted_zero_bucket(parameters) == bucket
    assert bucket >= min(parameters, ZERO_BUCKET_ELEMENTS)  # the whole model, when it can


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_1_to_3_set_the_fitted_bucket(stage: int) -> None:
    trial = config(zero_stage=stage, parameters=300_000)
    assert trial.zero_bucket_elements == trial.reduce_bucket_elements == 2**20
    # Only the bucket DeepSpeed allocates; the rest keep DeepSpeed's defaults (ds_config()).
    assert trial.ds_config()["zero_optimization"] == {"stage": stage, "reduce_bucket_size": 2**20}


def test_zero_0_has_no_bucket_and_no_parameter_count_keeps_deepspeeds() -> None:
    unzeroed = config(zero_stage=0, parameters=300_000)
    assert unzeroed.zero_bucket_elements is None
    assert unzeroed.ds_config()["zero_optimization"] == {"stage": 0}
    assert unzeroed.key() == config(zero_stage=0).key()
    default = config(zero_stage=2)
    assert default.reduce_bucket_elements == ZERO_BUCKET_ELEMENTS
    assert default.ds_config()["zero_optimization"] == {"stage": 2}


def test_the_bucket_is_part_of_the_key_but_not_of_the_numerics() -> None:
    fitted, default = config(zero_stage=2, parameters=300_000), config(zero_stage=2)
    assert fitted != default
    assert fitted.key() != default.key()
    assert json.loads(fitted.key())["zero_bucket_elements"] == 2**20
    assert "zero_bucket_elements" not in json.loads(default.key())  # as keys read before
    assert fitted.numerics_key() == default.numerics_key()
    assert fitted.settings() == default.settings()


@pytest.mark.parametrize(
    ("mbs", "gas", "processes", "stages", "data_parallel"),
    [
        (32, 1, 1, 1, 1),
        (16, 2, 4, 2, 2),
        (8, 4, 4, 1, 4),
        (64, 3, 4, 4, 1),
        (4, 1, 8, 2, 4),
    ],
)
def test_train_batch_size_is_micro_times_accumulation_times_data_parallel(
    mbs: int, gas: int, processes: int, stages: int, data_parallel: int
) -> None:
    trial = config(
        micro_batch_size=mbs,
        gradient_accumulation_steps=gas,
        processes=processes,
        pipeline_stages=stages,
    )
    ds = trial.ds_config()
    assert trial.data_parallel == data_parallel
    assert ds["train_batch_size"] == mbs * gas * (processes // stages)
    assert trial.global_batch_size == ds["train_batch_size"]
    assert ds["train_micro_batch_size_per_gpu"] == mbs
    assert ds["gradient_accumulation_steps"] == gas


def test_steps_fit_the_sample_budget() -> None:
    trial = config(micro_batch_size=16, gradient_accumulation_steps=2, processes=2)  # batch 64
    assert trial.steps(640) == 10
    assert trial.steps(703) == 10
    assert trial.steps(63) == 0


# --- learning rate -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "batch", "expected"),
    [
        ("sqrt", 128, 2e-3),
        ("sqrt", 8, 0.5e-3),
        ("sqrt", 64, math.sqrt(2) * 1e-3),
        ("linear", 128, 4e-3),
        ("linear", 8, 0.25e-3),
        ("none", 128, 1e-3),
        ("none", 8, 1e-3),
        ("sqrt", 32, 1e-3),
        ("linear", 32, 1e-3),
    ],
)
def test_scale_learning_rate(rule: str, batch: int, expected: float) -> None:
    assert scale_learning_rate(1e-3, 32, batch, rule) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("batch", "noise_scale", "expected"),
    [
        (128, 96.0, 1e-3 * (1 + 3) / (1 + 0.75)),  # between sqrt (2x) and linear (4x)
        (8, 96.0, 0.5e-3),  # below the reference: sqrt
        (4096, 96.0, 1e-3 * (1 + 3) / (1 + 96 / 4096)),  # far past B_noise: flat, near 4x
        (64, 1e9, 2e-3),  # B_noise far above every batch: linear
        (64, 1e-9, 1e-3),  # B_noise far below every batch: the reference's rate
        (32, 96.0, 1e-3),  # the reference's own batch
    ],
)
def test_the_noise_rule_is_the_large_batch_models_best_rate(
    batch: int, noise_scale: float, expected: float
) -> None:
    got = scale_learning_rate(1e-3, 32, batch, "noise", noise_scale)
    assert got == pytest.approx(expected, rel=1e-6)


def test_the_noise_rule_without_a_noise_scale_is_sqrt() -> None:
    assert scale_learning_rate(1e-3, 32, 128, "noise", None) == pytest.approx(2e-3)
    trial = TrialConfig.from_settings(
        {**REFERENCE, "micro_batch_size": 128}, OPTIMIZER, 32, "noise"
    )
    assert trial.learning_rate == pytest.approx(2e-3)
    trial = TrialConfig.from_settings(
        {**REFERENCE, "micro_batch_size": 128}, OPTIMIZER, 32, "noise", 96.0
    )
    assert trial.learning_rate == pytest.approx(1e-3 * 4 / 1.75)


@pytest.mark.parametrize(("rule", "expected"), [("sqrt", 2e-3), ("linear", 4e-3), ("none", 1e-3)])
def test_learning_rate_scales_with_the_global_batch(rule: str, expected: float) -> None:
    # Global batch 128 = 32 per rank x 2 accumulation x 2 data-parallel ranks: 4x the reference.
    trial = config(rule, gradient_accumulation_steps=2, processes=2)
    assert trial.global_batch_size == 128
    assert trial.learning_rate == pytest.approx(expected)
    params = trial.ds_config()["optimizer"]["params"]
    assert params["lr"] == pytest.approx(expected)
    assert params["weight_decay"] == 0.01  # the rest of the user's section is kept
    assert trial.ds_config()["optimizer"]["type"] == "AdamW"


def test_the_optimizer_section_is_never_mutated() -> None:
    optimizer = {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9}}
    before = copy.deepcopy(optimizer)
    trial = TrialConfig.from_settings(
        {**REFERENCE, "micro_batch_size": 128}, optimizer, 32, "linear"
    )
    ds = trial.ds_config()
    assert ds["optimizer"]["params"]["lr"] == pytest.approx(0.4)
    assert optimizer == before
    # Nor does editing one generated config leak into the trial or the next config.
    ds["optimizer"]["params"]["lr"] = 123.0
    ds["optimizer"]["params"]["momentum"] = 0.0
    assert trial.optimizer == before
    assert trial.ds_config()["optimizer"]["params"] == {"lr": pytest.approx(0.4), "momentum": 0.9}
    # And editing the user's dict afterwards does not change the trial.
    optimizer["params"]["momentum"] = 0.5
    assert trial.ds_config()["optimizer"]["params"]["momentum"] == 0.9


# --- keys ----------------------------------------------------------------------------------


def test_settings_that_change_nothing_are_normalised() -> None:
    trial = config(partition_method="uniform", prefetch_factor=4)
    assert trial.partition_method == "parameters"
    assert trial.prefetch_factor == 2
    kept = config(
        processes=2, pipeline_stages=2, partition_method="uniform", num_workers=1, prefetch_factor=4
    )
    assert kept.partition_method == "uniform"
    assert kept.prefetch_factor == 4


def test_keys_ignore_settings_that_change_nothing() -> None:
    assert config(partition_method="uniform").key() == config().key()  # no pipeline
    assert config(partition_method="type:Linear").key() == config().key()
    assert config(prefetch_factor=4).key() == config().key()  # no workers
    assert config(partition_method="uniform", prefetch_factor=8).key() == config().key()


@pytest.mark.parametrize(
    "changes",
    [
        {"micro_batch_size": 64},
        {"gradient_accumulation_steps": 2},
        {"precision": "bf16"},
        {"zero_stage": 1},
        {"processes": 2},
        {"num_workers": 1},
        {"pin_memory": True},
    ],
)
def test_keys_differ_for_settings_that_matter(changes: dict) -> None:
    assert config(**changes).key() != config().key()


def test_conditional_settings_matter_when_active() -> None:
    assert config(num_workers=1, prefetch_factor=4).key() != config(num_workers=1).key()
    piped = {"processes": 2, "pipeline_stages": 2}
    assert config(partition_method="uniform", **piped).key() != config(**piped).key()
    assert config(**piped).key() != config(processes=2).key()


def test_key_includes_the_learning_rate() -> None:
    big = {"micro_batch_size": 64}
    assert config("sqrt", **big).key() != config("linear", **big).key()
    # At the reference batch every rule gives the same rate, so the same run.
    assert config("sqrt").key() == config("none").key()
    stored = {k: v for k, v in REFERENCE.items() if k not in (*LATER_SETTINGS, "optimizer_impl")}
    assert json.loads(config().key()) == {**stored, "learning_rate": 1e-3}


# --- launch recipe -------------------------------------------------------------------------


def test_launch_recipe_on_cpu() -> None:
    recipe = config(processes=2, num_workers=1).launch_recipe(CPU)
    assert recipe["processes"] == 2
    assert recipe["pipeline_stages"] == 1
    assert recipe["data_parallel"] == 2
    assert recipe["num_workers"] == 1
    assert recipe["persistent_workers"] is True
    assert recipe["prefetch_factor"] == 2
    assert recipe["accelerator"] == "cpu"
    assert recipe["threads_per_process"] == 1  # 2 cores / 2 ranks, at least one thread
    assert "deepspeed --num_gpus 2 " in recipe["command"]
    assert recipe["command"].startswith("OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false ")
    assert recipe["environment"]["TOKENIZERS_PARALLELISM"] == "false"  # workers fork


def test_without_dataloader_workers_tokenizers_keep_their_threads() -> None:
    assert "TOKENIZERS_PARALLELISM" not in config(num_workers=0).launch_recipe(CPU)["command"]


def test_launch_recipe_on_gpus() -> None:
    recipe = config(
        processes=8, pipeline_stages=2, partition_method="uniform", num_workers=2, prefetch_factor=4
    ).launch_recipe(GPUS)
    assert recipe["processes"] == 8
    assert recipe["pipeline_stages"] == 2
    assert recipe["partition_method"] == "uniform"
    assert recipe["data_parallel"] == 4
    assert recipe["num_workers"] == 2
    assert recipe["prefetch_factor"] == 4
    assert recipe["threads_per_process"] is None
    assert recipe["accelerator"] == "cuda"
    assert recipe["command"].startswith("TOKENIZERS_PARALLELISM=false deepspeed --num_gpus 8 ")
    assert "OMP_NUM_THREADS" not in recipe["command"]


def test_launch_recipe_sets_what_deepspeed_needs_to_build_its_ops() -> None:
    gpus = Machine("cuda", 8, 32, True, True, environment={"TORCH_CUDA_ARCH_LIST": "9.0"})
    recipe = config(processes=8).launch_recipe(gpus)
    assert recipe["environment"] == {"TORCH_CUDA_ARCH_LIST": "9.0"}
    assert recipe["command"].startswith("TORCH_CUDA_ARCH_LIST=9.0 deepspeed --num_gpus 8 ")


def test_launch_recipe_without_workers() -> None:
    recipe = config().launch_recipe(CPU)
    assert recipe["num_workers"] == 0
    assert recipe["prefetch_factor"] is None  # DataLoader refuses prefetch_factor without workers
    assert recipe["persistent_workers"] is False
    assert "--num_gpus 1 " in recipe["command"]


def test_threads_per_process() -> None:
    many = Machine("cpu", devices=16, cores=16, fp16=False, bf16=True)
    assert config().threads_per_process(many) == 16
    assert config(processes=4).threads_per_process(many) == 4
    assert config(processes=4, num_workers=2).threads_per_process(many) == 2
    assert config(processes=4, num_workers=8).threads_per_process(many) == 1  # at least one
    assert config(num_workers=1).threads_per_process(CPU) == 1
    assert config().threads_per_process(GPUS) is None


# --- why_not_runnable ----------------------------------------------------------------------


def _reason(
    trial: TrialConfig,
    machine: Machine = CPU,
    samples: int = 4096,
    size: int = 1000,
    layers: tuple[str, ...] = LAYERS,
) -> str | None:
    return why_not_runnable(trial, machine, samples, size, layers)


def test_a_plain_configuration_runs() -> None:
    assert _reason(config()) is None
    assert _reason(config(), GPUS) is None


def test_fp16_needs_an_accelerator_that_supports_it() -> None:
    assert _reason(config(precision="fp16")) == "fp16 is not supported on the cpu accelerator"
    assert _reason(config(precision="fp16"), GPUS) is None
    assert _reason(config(processes=2, num_workers=4), GPUS) is None  # workers use host cores


def test_bf16_needs_an_accelerator_that_supports_it() -> None:
    assert _reason(config(precision="bf16")) is None
    no_bf16 = Machine("cpu", 2, 2, fp16=False, bf16=False)
    assert (
        _reason(config(precision="bf16"), no_bf16) == "bf16 is not supported on the cpu accelerator"
    )


def test_processes_must_fit_the_devices() -> None:
    assert _reason(config(processes=2)) is None
    assert _reason(config(processes=3)) == "3 processes but this machine has 2 cores"
    assert _reason(config(processes=8), GPUS) is None
    assert _reason(config(processes=9), GPUS) == "9 processes but this machine has 8 devices"


def test_pin_memory_needs_an_accelerator() -> None:
    assert "pin_memory" in (_reason(config(pin_memory=True)) or "")
    assert _reason(config(pin_memory=True), GPUS) is None


def test_threads_may_not_oversubscribe_the_cores_nor_repeat_the_automatic_count() -> None:
    assert config(threads=1).threads_per_process(CPU) == 1
    assert config().threads_per_process(CPU) == 2  # automatic: the rank's share of 2 cores
    assert config().threads_per_process(GPUS) is None  # the framework's default
    assert config(threads=3).threads_per_process(GPUS) == 3
    assert _reason(config(threads=1)) is None
    assert _reason(config(threads=2)) == "threads 2 is what threads 0 gives on this machine"
    assert _reason(config(threads=3)) == "1 rank of 3 threads needs 3 cores; this machine has 2"
    assert (
        _reason(config(threads=1, num_workers=1))
        == "threads 1 is what threads 0 gives on this machine"
    )
    assert _reason(config(threads=2, num_workers=1)) == (
        "1 rank of 2 threads and 1 DataLoader workers need 3 cores; this machine has 2"
    )
    assert _reason(config(processes=8, threads=4), GPUS) is None  # 32 cores
    assert _reason(config(processes=8, threads=5), GPUS) == (
        "8 ranks of 5 threads need 40 cores; this machine has 32"
    )


def test_threads_and_caching_keep_the_numerics_and_reach_the_launch_recipe() -> None:
    for changed in (config(threads=1), config(cache_data=True)):
        assert changed.numerics_key() == config().numerics_key()
        assert changed.key() != config().key()
    recipe = config(threads=1, cache_data=True).launch_recipe(CPU)
    assert recipe["threads_per_process"] == 1 and recipe["cache_data"] is True
    assert recipe["command"].startswith("OMP_NUM_THREADS=1 deepspeed")
    assert config(threads=4).launch_recipe(GPUS)["environment"]["OMP_NUM_THREADS"] == "4"


def test_caching_needs_items_that_repeat_and_no_workers() -> None:
    cached = config(cache_data=True)
    assert _reason(cached) is None
    assert "equal when read twice" in (
        why_not_runnable(cached, CPU, 4096, 1000, LAYERS, False) or ""
    )
    assert "num_workers 0" in (_reason(config(cache_data=True, num_workers=1)) or "")


def test_a_stored_study_without_the_later_settings_still_makes_its_config_and_key() -> None:
    later = ("threads", "activation_checkpointing", "cache_data")
    old = {k: v for k, v in REFERENCE.items() if k not in later}
    assert TrialConfig.from_settings(old, OPTIMIZER, 32, "sqrt") == config()
    # Keys as stored before these settings existed, so a resumed study finds its runs.
    assert not set(later) & set(json.loads(config().key()))
    assert json.loads(config(threads=1, cache_data=True).key())["threads"] == 1


def test_the_optimizer_kernel_is_chosen_in_the_optimizer_section() -> None:
    def params(impl: str, **given: object) -> dict[str, object]:
        optimizer = {"type": "AdamW", "params": {"lr": 1e-3, **given}}
        trial = TrialConfig.from_settings(
            {**REFERENCE, "optimizer_impl": impl}, optimizer, REFERENCE_BATCH, "none"
        )
        return trial.ds_config()["optimizer"]["params"]

    assert params("deepspeed") == {"lr": 1e-3}
    # FusedAdam's default weight decay (0) is named: torch's AdamW would decay by 0.01.
    assert params("torch") == {"lr": 1e-3, "torch_adam": True, "weight_decay": 0.0}
    assert params("torch_fused") == {
        "lr": 1e-3,
        "torch_adam": True,
        "fused": True,
        "weight_decay": 0.0,
    }
    assert params("deepspeed", torch_adam=True, foreach=False) == {
        "lr": 1e-3,
        "weight_decay": 0.01,
    }
    assert params("torch", weight_decay=0.1)["weight_decay"] == 0.1
    # The kernel the section already selects leaves it as the user wrote it.
    assert params("torch", torch_adam=True, foreach=False) == {
        "lr": 1e-3,
        "torch_adam": True,
        "foreach": False,
    }
    assert (
        reference_settings(32, {"type": "AdamW", "params": {"torch_adam": True}})["optimizer_impl"]
        == "torch"
    )


def test_the_optimizer_kernel_is_adam_s_only_and_keeps_the_numerics() -> None:
    sgd = {"type": "SGD", "params": {"lr": 0.1}}
    reference = reference_settings(REFERENCE_BATCH, sgd)
    assert reference["optimizer_impl"] == "deepspeed"  # what DeepSpeed runs for it

    def sgd_config(impl: str) -> TrialConfig:
        settings = {**reference, "optimizer_impl": impl}
        return TrialConfig.from_settings(settings, sgd, REFERENCE_BATCH, "none")

    assert _reason(sgd_config("deepspeed")) is None
    assert _reason(sgd_config("torch_fused")) == (
        "optimizer_impl torch_fused chooses Adam's kernel; the model file's optimizer is SGD"
    )
    assert sgd_config("torch_fused").ds_config()["optimizer"] == {
        "type": "SGD",
        "params": {"lr": 0.1},
    }
    fused = config(optimizer_impl="torch_fused")
    assert fused.numerics_key() == config().numerics_key() and fused.key() != config().key()
    assert "optimizer_impl" not in json.loads(config().key())  # the section's own kernel


def test_offload_reaches_zero_s_section_and_needs_an_accelerator_and_its_zero_stage() -> None:
    optimizer_only = config(zero_stage=2, offload="optimizer")
    zero = optimizer_only.ds_config()["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert "offload_param" not in zero
    everything = config(zero_stage=3, offload="all").ds_config()["zero_optimization"]
    assert everything["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert "offload" not in json.dumps(config(zero_stage=2).ds_config())
    assert "no accelerator" in (_reason(optimizer_only) or "")
    assert _reason(optimizer_only, GPUS) is None
    assert _reason(config(zero_stage=3, offload="all"), GPUS) is None
    assert _reason(config(zero_stage=2, offload="all"), GPUS) == (
        "offload all (parameters too) needs ZeRO stage 3"
    )
    assert _reason(config(offload="optimizer"), GPUS) == (
        "offload of the optimizer state needs ZeRO stage 1-3"
    )
    assert optimizer_only.numerics_key() == config(zero_stage=2).numerics_key()


def test_compile_runs_without_a_pipeline_and_on_a_cpu_with_a_compiler() -> None:
    assert _reason(config(compile=True)) is None
    assert _reason(config(compile=True, processes=2, pipeline_stages=2)) == (
        "compile is tried without a pipeline only"
    )
    no_compiler = dataclasses.replace(CPU, cxx=False)
    assert "C++ compiler" in (_reason(config(compile=True), no_compiler) or "")
    assert _reason(config(compile=True), dataclasses.replace(GPUS, cxx=False)) is None
    assert config(compile=True).numerics_key() == config().numerics_key()


def test_pipeline_needs_layers() -> None:
    piped = config(processes=2, pipeline_stages=2)
    assert _reason(piped, layers=()) == "pipeline stages need layers() in the model file"
    assert _reason(piped) is None
    assert _reason(config(), layers=()) is None  # no pipeline: layers() is optional


@pytest.mark.parametrize(("processes", "stages"), [(1, 2), (3, 2), (8, 3)])
def test_pipeline_stages_must_divide_processes(processes: int, stages: int) -> None:
    trial = config(processes=processes, pipeline_stages=stages)
    assert _reason(trial, GPUS, layers=("L",) * 8) == (
        f"pipeline_stages {stages} does not divide processes {processes}"
    )


@pytest.mark.parametrize(("stage", "allowed"), [(0, True), (1, True), (2, False), (3, False)])
def test_pipeline_supports_zero_0_and_1_only(stage: int, allowed: bool) -> None:
    reason = _reason(config(processes=2, pipeline_stages=2, zero_stage=stage))
    if allowed:
        assert reason is None
    else:
        assert reason == "DeepSpeed's pipeline engine supports ZeRO stage 0 or 1 only"
    assert _reason(config(zero_stage=stage)) is None  # without a pipeline every stage is fine


def test_no_more_stages_than_layers() -> None:
    piped = config(processes=2, pipeline_stages=2)
    assert _reason(piped, layers=("Linear",)) == "2 pipeline stages but only 1 layers"
    assert _reason(piped, layers=("Linear", "Linear")) is None
    four = config(processes=4, pipeline_stages=4)
    assert _reason(four, GPUS, layers=LAYERS) == "4 pipeline stages but only 3 layers"


def test_partition_regex_must_match_a_layer() -> None:
    def piped(method: str) -> TrialConfig:
        return config(processes=2, pipeline_stages=2, partition_method=method)

    assert _reason(piped("type:Conv")) == "partition_method type:Conv matches no layer type"
    assert _reason(piped("type:Linear")) is None
    assert _reason(piped("type:linear")) is None  # DeepSpeed matches layer types ignoring case
    assert _reason(piped("type:^Re")) is None
    assert _reason(piped("uniform")) is None


def test_global_batch_must_fit_the_training_data() -> None:
    assert _reason(config(micro_batch_size=1000), samples=10**6) is None  # equal is fine
    assert _reason(config(micro_batch_size=1001), samples=10**6) == (
        "global batch 1001 is larger than the training data (1000 items)"
    )
    # The global batch counts every data-parallel rank.
    assert "global batch 1200 is larger" in (
        _reason(config(micro_batch_size=600, processes=2), samples=10**6) or ""
    )


def test_enough_steps_to_measure() -> None:
    needed = WARMUP_STEPS + MIN_MEASURED_STEPS
    assert _reason(config(), samples=32 * needed) is None
    assert _reason(config(), samples=32 * needed - 1) == (
        f"global batch 32 leaves {needed - 1} steps in --train-samples {32 * needed - 1}; "
        f"{needed} are needed to measure it"
    )
    # The budget is in samples, so a bigger global batch needs more of them.
    trial = config(gradient_accumulation_steps=2, processes=2)  # global batch 128
    assert _reason(trial, samples=128 * needed) is None
    assert "steps in --train-samples" in (_reason(trial, samples=128 * needed - 1) or "")


# --- DeepSpeed's own parser ----------------------------------------------------------------


@pytest.fixture
def single_rank_group():
    """A one-process gloo group, so DeepSpeedConfig can read the world size (1)."""
    if dist.is_initialized():
        assert dist.get_world_size() == 1
        yield
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def engine_group():
    """One gloo group for every engine this module builds: DeepSpeed keeps the first group it
    sees (its data-parallel groups), which a group made per test would leave stale."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


# Only data-parallel 1 here: DeepSpeed checks train_batch_size against the world size.
@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"precision": "bf16", "zero_stage": 2},
        {"precision": "fp16", "zero_stage": 1},
        {"micro_batch_size": 8, "gradient_accumulation_steps": 4, "zero_stage": 3},
        {"micro_batch_size": 128, "precision": "bf16"},
        {"processes": 2, "pipeline_stages": 2, "gradient_accumulation_steps": 2},
    ],
)
def test_deepspeed_parses_the_generated_config(single_rank_group, changes: dict) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    trial = config(**changes)
    assert trial.data_parallel == 1
    parsed = DeepSpeedConfig(trial.ds_config(), mpu=None)
    assert parsed.train_batch_size == trial.global_batch_size
    assert parsed.train_micro_batch_size_per_gpu == trial.micro_batch_size
    assert parsed.gradient_accumulation_steps == trial.gradient_accumulation_steps
    assert parsed.zero_optimization_stage == trial.zero_stage
    assert parsed.optimizer_name == "adamw"
    assert parsed.optimizer_params["lr"] == pytest.approx(trial.learning_rate)
    assert parsed.optimizer_params["weight_decay"] == 0.01
    assert parsed.float16_config.enabled == (trial.precision == "fp16")
    assert parsed.bfloat16_config.enabled == (trial.precision == "bf16")
    if trial.precision == "fp16":
        assert parsed.float16_config.loss_scale == 0  # dynamic


def test_deepspeed_would_catch_a_wrong_batch(single_rank_group) -> None:
    """The check above can fail: DeepSpeed refuses an inconsistent train_batch_size."""
    from deepspeed.runtime.config import DeepSpeedConfig

    ds = config().ds_config()
    ds["train_batch_size"] += 1
    with pytest.raises(AssertionError, match="train_batch_size is not equal"):
        DeepSpeedConfig(ds, mpu=None)


@pytest.mark.e2e
def test_the_fitted_bucket_reaches_deepspeeds_engine(
    engine_group, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deepspeed.initialize under ZeRO 2 on the CPU builds its optimizer with the bucket."""
    import deepspeed
    import torch
    from torch import nn

    for name, value in {"DS_ACCELERATOR": "cpu", "LOCAL_RANK": "0", "RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    parameters = sum(p.numel() for p in model.parameters())
    # torch's AdamW, so no DeepSpeed op is compiled for the test.
    adamw = {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}
    settings = {**REFERENCE, "micro_batch_size": 4, "zero_stage": 2, "optimizer_impl": "torch"}
    trial = TrialConfig.from_settings(settings, adamw, 4, "none", None, parameters)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=trial.ds_config()
    )
    assert trial.zero_bucket_elements == fitted_zero_bucket(parameters) < ZERO_BUCKET_ELEMENTS
    assert engine.optimizer.reduce_bucket_size == trial.zero_bucket_elements
    engine.backward(engine(torch.randn(4, 8)).sum())  # the bucket fills and reduces
    engine.step()


@pytest.mark.e2e
def test_offload_reaches_deepspeeds_engine(engine_group, monkeypatch: pytest.MonkeyPatch) -> None:
    """The search refuses offload without an accelerator, but DeepSpeed's CPU accelerator
    accepts the section: the engine it builds keeps the optimizer state on the CPU."""
    import deepspeed
    import torch
    from torch import nn

    for name, value in {"DS_ACCELERATOR": "cpu", "LOCAL_RANK": "0", "RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    adamw = {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}  # no op to compile
    settings = {**REFERENCE, "micro_batch_size": 4, "zero_stage": 2, "offload": "optimizer"}
    trial = TrialConfig.from_settings({**settings, "optimizer_impl": "torch"}, adamw, 4, "none")
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=trial.ds_config()
    )
    assert engine.zero_offload_optimizer().device == "cpu"
    engine.backward(engine(torch.randn(4, 8)).sum())
    engine.step()


def test_ranks_and_workers_never_oversubscribe_cpu_cores() -> None:
    assert _reason(config(processes=2, num_workers=1)) == (
        "2 ranks with 1 DataLoader workers each need 4 cores; this machine has 2"
    )
    assert "need 3 cores" in (_reason(config(num_workers=2)) or "")
    assert _reason(config(num_workers=1)) is None
    assert _reason(config(processes=2, num_workers=4), GPUS) is None  # workers use host cores


def test_dataloader_arguments_are_what_the_recipe_exports() -> None:
    with_workers = config(processes=2, num_workers=1, prefetch_factor=4)
    assert with_workers.dataloader_arguments() == {
        "num_workers": 1,
        "pin_memory": False,
        "prefetch_factor": 4,
        "persistent_workers": True,
    }
    assert config().dataloader_arguments()["prefetch_factor"] is None  # no workers, no prefetch
    for trial in (with_workers, config()):
        recipe = trial.launch_recipe(CPU)
        assert {k: recipe[k] for k in trial.dataloader_arguments()} == trial.dataloader_arguments()


def test_native_half_precisions_follow_the_cpu_flags_and_the_cuda_capability() -> None:
    sapphire = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16"})
    assert native_half_precisions("cpu", sapphire, None) == ("bf16", "fp16")
    assert native_half_precisions("cpu", frozenset({"avx2", "amx_bf16"}), None) == ("bf16",)
    assert native_half_precisions("cpu", frozenset({"avx2", "avx512f"}), None) == ()
    assert native_half_precisions("cuda", frozenset(), 9) == ("bf16", "fp16")
    assert native_half_precisions("cuda", frozenset(), 7) == ("fp16",)  # V100 emulates bf16
    assert native_half_precisions("cuda", frozenset(), 6) == ()
    assert native_half_precisions("mps", sapphire, None) == ()


def test_token_batching_needs_items_of_varying_length_and_no_pipeline() -> None:
    tokens = config(batching="tokens")
    assert "differ in length" in (_reason(tokens) or "")
    assert why_not_runnable(tokens, CPU, 4096, 1000, LAYERS, True, True) is None
    piped = config(batching="tokens", processes=2, pipeline_stages=2)
    assert "without a pipeline" in (
        why_not_runnable(piped, CPU, 4096, 1000, LAYERS, True, True) or ""
    )


def test_token_batching_is_another_run_in_the_numerics_and_reaches_the_launch_recipe() -> None:
    """Other micro-batches and step sizes: not the items run's numbers. Its micro-batches follow
    from the micro-batch size and its steps from the global batch, so splits of one global
    batch over processes and accumulation still share a key."""
    tokens = config(batching="tokens", micro_batch_size=16, gradient_accumulation_steps=2)
    assert (
        tokens.numerics_key()
        != config(micro_batch_size=16, gradient_accumulation_steps=2).numerics_key()
    )
    assert json.loads(tokens.numerics_key())["batching"] == "tokens"
    split = config(batching="tokens", micro_batch_size=16, processes=2)
    assert split.numerics_key() == tokens.numerics_key()
    other_cut = config(batching="tokens", micro_batch_size=8, gradient_accumulation_steps=4)
    assert other_cut.numerics_key() != tokens.numerics_key()
    assert json.loads(tokens.key())["batching"] == "tokens"
    assert "batching" not in json.loads(config().key())  # as stored before the setting
    assert tokens.launch_recipe(CPU)["batching"] == "tokens"
    assert (
        tokens.ds_config() == config(micro_batch_size=16, gradient_accumulation_steps=2).ds_config()
    )
