"""Trial plans: DeepSpeed config, launch recipe, learning-rate scaling and feasibility rules."""

from __future__ import annotations

import copy
import socket

import pytest
import torch.distributed as dist

from autotune._plan import (
    MIN_MEASURED_STEPS,
    WARMUP_STEPS,
    Machine,
    TrialConfig,
    scale_learning_rate,
    why_not_runnable,
)

CPU = Machine("cpu", devices=2, cores=2, fp16=False, bf16=True)
GPUS = Machine("cuda", devices=8, cores=32, fp16=True, bf16=True)
OPTIMIZER = {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.01}}
LAYERS = ("Linear", "ReLU", "Linear")
REFERENCE = {
    "micro_batch_size": 32,
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


def config(lr_scaling: str = "sqrt", **changes: object) -> TrialConfig:
    return TrialConfig.from_settings({**REFERENCE, **changes}, OPTIMIZER, 32, lr_scaling)


def test_batch_sizes_and_precision_sections() -> None:
    ds = config(
        micro_batch_size=16, gradient_accumulation_steps=2, processes=4, pipeline_stages=2
    ).ds_config()
    assert ds["train_batch_size"] == 16 * 2 * 2
    assert ds["train_micro_batch_size_per_gpu"] == 16
    assert ds["gradient_accumulation_steps"] == 2
    assert "bf16" not in config().ds_config() and "fp16" not in config().ds_config()
    assert config(precision="bf16").ds_config()["bf16"] == {"enabled": True}
    fp16 = config(precision="fp16").ds_config()["fp16"]
    assert fp16["enabled"] is True and fp16["loss_scale"] == 0  # dynamic loss scaling
    assert config(zero_stage=3).ds_config()["zero_optimization"] == {"stage": 3}


@pytest.mark.parametrize(("rule", "expected"), [("sqrt", 2e-3), ("linear", 4e-3), ("none", 1e-3)])
def test_learning_rate_scales_with_the_global_batch(rule: str, expected: float) -> None:
    before = copy.deepcopy(OPTIMIZER)
    trial = config(rule, micro_batch_size=128)
    assert trial.learning_rate == pytest.approx(expected)
    assert trial.ds_config()["optimizer"]["params"]["lr"] == pytest.approx(expected)
    assert trial.ds_config()["optimizer"]["params"]["weight_decay"] == 0.01
    assert OPTIMIZER == before  # the user's section is not mutated
    assert scale_learning_rate(1e-3, 32, 32, "linear") == 1e-3


def test_keys_ignore_settings_that_change_nothing() -> None:
    assert config(partition_method="uniform").key() == config().key()  # no pipeline
    assert config(prefetch_factor=4).key() == config().key()  # no workers
    assert config(num_workers=1, prefetch_factor=4).key() != config(num_workers=1).key()
    piped = {"processes": 2, "pipeline_stages": 2}
    assert config(partition_method="uniform", **piped).key() != config(**piped).key()
    assert config(zero_stage=1).key() != config().key()


def test_launch_recipe() -> None:
    recipe = config(processes=2, num_workers=1).launch_recipe(CPU)
    assert recipe["processes"] == 2 and recipe["num_workers"] == 1
    assert recipe["persistent_workers"] is True and recipe["prefetch_factor"] == 2
    assert recipe["threads_per_process"] == 1  # 2 cores / 2 ranks, at least one thread
    assert "deepspeed --num_gpus 2" in recipe["command"]
    assert config(num_workers=1).threads_per_process(CPU) == 1  # one core left for the worker
    assert config().threads_per_process(CPU) == 2
    assert config().launch_recipe(GPUS)["threads_per_process"] is None
    assert config().launch_recipe(CPU)["prefetch_factor"] is None


def _reason(
    trial: TrialConfig,
    machine: Machine = CPU,
    samples: int = 4096,
    size: int = 1000,
    layers: tuple[str, ...] = LAYERS,
) -> str | None:
    return why_not_runnable(trial, machine, samples, size, layers)


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"precision": "fp16"}, "fp16 is not supported"),
        ({"processes": 4}, "4 processes but this machine has 2 cores"),
        ({"pin_memory": True}, "pin_memory"),
        ({"processes": 2, "pipeline_stages": 2, "zero_stage": 2}, "ZeRO stage 0 or 1"),
        ({"processes": 2, "pipeline_stages": 2, "zero_stage": 3}, "ZeRO stage 0 or 1"),
        ({"processes": 1, "pipeline_stages": 2}, "does not divide processes"),
        (
            {"processes": 2, "pipeline_stages": 2, "partition_method": "type:Conv"},
            "matches no layer",
        ),
        ({"micro_batch_size": 2048}, "larger than the training data"),
        ({"micro_batch_size": 600}, "steps in --train-samples"),
    ],
)
def test_configurations_that_cannot_run(changes: dict, phrase: str) -> None:
    assert phrase in (_reason(config(**changes)) or "")


def test_pipeline_rules() -> None:
    piped = config(processes=2, pipeline_stages=2)
    assert "need layers()" in (_reason(piped, layers=()) or "")
    assert "only 1 layers" in (_reason(piped, layers=("Linear",)) or "")
    assert _reason(piped) is None
    assert _reason(config(processes=2, pipeline_stages=2, zero_stage=1)) is None
    assert _reason(config(processes=2, pipeline_stages=2, partition_method="type:linear")) is None


def test_accelerator_rules() -> None:
    assert _reason(config(precision="fp16"), GPUS) is None
    assert _reason(config(pin_memory=True, processes=8), GPUS) is None
    assert "bf16" in (_reason(config(precision="bf16"), Machine("cpu", 2, 2, False, False)) or "")


def test_step_budget_boundary() -> None:
    needed = WARMUP_STEPS + MIN_MEASURED_STEPS
    assert _reason(config(), samples=32 * needed) is None
    assert _reason(config(), samples=32 * needed - 1) is not None


def test_a_plain_configuration_runs() -> None:
    assert _reason(config()) is None


@pytest.fixture
def single_rank_group():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"precision": "bf16", "zero_stage": 2},
        {"precision": "fp16", "zero_stage": 1},
        {"micro_batch_size": 8, "gradient_accumulation_steps": 4, "zero_stage": 3},
    ],
)
def test_deepspeed_parses_the_generated_config(single_rank_group, changes: dict) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    parsed = DeepSpeedConfig(config(**changes).ds_config())
    assert parsed.train_batch_size == config(**changes).global_batch_size
    assert parsed.zero_optimization_stage == config(**changes).zero_stage
    assert parsed.float16_config.enabled == (changes.get("precision") == "fp16")
    assert parsed.bfloat16_config.enabled == (changes.get("precision") == "bf16")
