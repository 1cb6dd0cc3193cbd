"""Memory pre-screen: measured footprint, ZeRO accounting, the learned offset, limits and
messages (autotune/_memory.py)."""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from autotune._machine import Machine
from autotune._memory import (
    MemoryEstimate,
    MemoryModel,
    ModelFootprint,
    estimate_rank_bytes,
    format_bytes,
    measure_footprint,
    memory_limit_bytes,
    memory_limit_source,
    optimizer_state_bytes_per_param,
    parse_memory,
    why_over_memory,
)
from autotune._plan import TrialConfig
from autotune._task import load_model_file, reference_settings

WriteModel = Callable[[str, str], Path]
CPU = Machine("cpu", devices=4, cores=4, fp16=False, bf16=True)
GPUS = Machine("cuda", 8, 32, True, True)
OPTIMIZER = {"type": "AdamW", "params": {"lr": 1e-3}}
REFERENCE = reference_settings(32)
# Round numbers so every expected total below can be checked by hand.
FOOTPRINT = ModelFootprint(
    parameters=1000, activation_bytes_per_sample=100.0, optimizer_state_bytes_per_param=8.0
)

# Nested on purpose: the container's output must not be counted on top of its leaves'.
NESTED_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    BATCH_SIZE = 32
    OPTIMIZER = {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9}}

    def model():
        return nn.Sequential(nn.Sequential(nn.Linear(16, 64), nn.ReLU()), nn.Linear(64, 4))

    def train_data():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(100, 16, generator=g)
        return TensorDataset(x, x[:, :4].argmax(1))
    """
)


def config(**changes: object) -> TrialConfig:
    return TrialConfig.from_settings({**REFERENCE, **changes}, OPTIMIZER, 32, "none")


def estimate(**changes: object) -> MemoryEstimate:
    return estimate_rank_bytes(FOOTPRINT, config(**changes))


# --- footprint -----------------------------------------------------------------------------


def test_footprint_counts_parameters_and_leaf_outputs(write_model: WriteModel) -> None:
    path = write_model(NESTED_MODEL, "nested.py")
    footprint = measure_footprint(load_model_file(path))
    assert footprint.parameters == (16 * 64 + 64) + (64 * 4 + 4)
    # Leaf outputs per sample: Linear 64, ReLU 64, Linear 4 fp32 values.
    assert footprint.activation_bytes_per_sample == (64 + 64 + 4) * 4
    assert footprint.optimizer_state_bytes_per_param == 4.0


def test_footprint_divides_by_the_items_it_had(write_model: WriteModel) -> None:
    path = write_model(NESTED_MODEL, "nested.py")
    model_file = load_model_file(path)
    assert measure_footprint(model_file, sample_batch=1) == measure_footprint(model_file, 7)


@pytest.mark.parametrize(
    ("optimizer", "expected"),
    [
        ({"type": "Adam", "params": {"lr": 1e-3}}, 8.0),
        ({"type": "AdamW", "params": {"lr": 1e-3}}, 8.0),
        ({"type": "Lamb", "params": {"lr": 1e-3}}, 8.0),
        ({"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9}}, 4.0),
        ({"type": "SGD", "params": {"lr": 0.1, "momentum": 0.0}}, 0.0),
        ({"type": "sgd", "params": {"lr": 0.1}}, 0.0),
        ({"type": "SomethingNew", "params": {"lr": 0.1}}, 8.0),
    ],
)
def test_optimizer_state_bytes(optimizer: dict[str, object], expected: float) -> None:
    assert optimizer_state_bytes_per_param(optimizer) == expected


# --- estimate ------------------------------------------------------------------------------


def test_fp32_zero0_keeps_everything() -> None:
    got = estimate()
    # 1000 params x 4 B weights, 4 B grads, 8 B Adam moments; 100 B x 32 samples.
    assert (got.parameters, got.gradients, got.optimizer_states) == (4000, 4000, 8000)
    assert got.activations == 3200
    assert got.total == 19200


def test_zero0_does_not_divide_by_data_parallel() -> None:
    assert estimate(processes=4) == estimate()


def test_half_precision_halves_values_and_adds_a_master_copy() -> None:
    for precision in ("bf16", "fp16"):
        got = estimate(precision=precision)
        assert (got.parameters, got.gradients) == (2000, 2000)
        assert got.optimizer_states == 1000 * (8 + 4)
        assert got.activations == 1600
        assert got.total == 2000 + 2000 + 12000 + 1600


@pytest.mark.parametrize(
    ("zero_stage", "expected"),
    [
        (1, (4000, 4000, 2000)),
        (2, (4000, 1000, 2000)),
        (3, (1000, 1000, 2000)),
    ],
)
def test_zero_stages_partition_across_data_parallel(
    zero_stage: int, expected: tuple[float, float, float]
) -> None:
    got = estimate(zero_stage=zero_stage, processes=4)
    assert (got.parameters, got.gradients, got.optimizer_states) == expected
    assert got.activations == 3200  # activations are never partitioned
    assert got.total == sum(expected) + 3200


def test_zero1_partitions_the_master_copy_too() -> None:
    got = estimate(zero_stage=1, processes=4, precision="bf16")
    assert got.optimizer_states == 1000 * 12 / 4
    assert (got.parameters, got.gradients) == (2000, 2000)


@pytest.mark.parametrize(
    ("precision", "zero_stage", "bucket"),
    [("fp32", 0, 0), ("fp32", 1, 2_000_000_000), ("bf16", 2, 1_000_000_000), ("fp16", 3, 1e9)],
)
def test_zero_bucket_counts_on_an_accelerator(
    precision: str, zero_stage: int, bucket: float
) -> None:
    settings = {"precision": precision, "zero_stage": zero_stage}
    on_gpu = estimate_rank_bytes(FOOTPRINT, config(**settings), "cuda")
    on_cpu = estimate_rank_bytes(FOOTPRINT, config(**settings), "cpu")
    assert on_gpu.buffers == bucket
    assert on_gpu.total == on_cpu.total + bucket
    assert on_cpu.buffers == 0  # never resident on CPU: its pages are not touched


@pytest.mark.parametrize(("precision", "value_bytes"), [("fp32", 4), ("bf16", 2), ("fp16", 2)])
def test_the_estimate_counts_the_fitted_bucket(precision: str, value_bytes: int) -> None:
    for zero_stage in (1, 2, 3):
        fitted = TrialConfig.from_settings(
            {**REFERENCE, "precision": precision, "zero_stage": zero_stage},
            OPTIMIZER,
            32,
            "none",
            parameters=FOOTPRINT.parameters,
        )
        assert fitted.zero_bucket_elements == 2**20  # the floor: the model has 1000 parameters
        on_gpu = estimate_rank_bytes(FOOTPRINT, fitted, "cuda")
        assert on_gpu.buffers == 2**20 * value_bytes
        on_cpu = estimate_rank_bytes(FOOTPRINT, fitted, "cpu")
        assert on_cpu.buffers == 0  # never resident on CPU, fitted or not
        assert on_gpu.total == on_cpu.total + on_gpu.buffers


def test_describe_names_the_zero_bucket() -> None:
    got = estimate_rank_bytes(FOOTPRINT, config(zero_stage=1), "cuda")
    assert "+ ZeRO bucket 1.9 GiB = 1.9 GiB" in got.describe()
    fitted = TrialConfig.from_settings(
        {**REFERENCE, "zero_stage": 1}, OPTIMIZER, 32, "none", parameters=FOOTPRINT.parameters
    )
    assert (
        "+ ZeRO bucket 4.0 MiB = 4.0 MiB"
        in estimate_rank_bytes(FOOTPRINT, fitted, "cuda").describe()
    )


def test_pipeline_divides_the_model_not_the_activations() -> None:
    got = estimate(processes=2, pipeline_stages=2)
    assert (got.parameters, got.gradients, got.optimizer_states) == (2000, 2000, 4000)
    assert got.activations == 3200


def test_pipeline_with_zero1_divides_by_data_parallel_only() -> None:
    got = estimate(processes=4, pipeline_stages=2, zero_stage=1)  # dp = 2
    assert (got.parameters, got.gradients, got.optimizer_states) == (2000, 2000, 2000)


def test_activations_scale_with_micro_batch() -> None:
    assert estimate(micro_batch_size=8).activations == 800


def test_describe() -> None:
    footprint = ModelFootprint(2**21, 40960.0, 8.0)  # 2 Mi params, 1.25 MiB at batch 32
    got = estimate_rank_bytes(footprint, config())
    assert got.describe() == (
        "params 8.0 MiB + grads 8.0 MiB + optimizer 16.0 MiB + activations 1.2 MiB = 33.2 MiB"
    )


def test_format_bytes() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30) == "3.0 GiB"
    assert format_bytes(-(2**20)) == "-1.0 MiB"


# --- memory model --------------------------------------------------------------------------


def test_prediction_is_the_raw_estimate_before_any_observation() -> None:
    model = MemoryModel()
    assert model.offset == 0
    assert model.predict(estimate()) == estimate().total


def test_offset_is_the_median_residual() -> None:
    model = MemoryModel()
    for estimate_total, peak in [(100, 450), (200, 500), (300, 1000)]:  # residuals 350, 300, 700
        model.observe(estimate_total, peak)
    assert model.offset == 350
    assert model.predict(estimate()) == 19200 + 350
    model.observe(400, 400)  # residuals 0, 300, 350, 700: the median averages the middle two
    assert model.offset == 325


def test_offset_can_be_negative() -> None:
    model = MemoryModel.from_pairs([(1000, 800)])
    assert model.predict(estimate()) == 19200 - 200


def test_unmeasured_peaks_are_ignored() -> None:
    model = MemoryModel.from_pairs([(100, 450), (100, 0), (100, float("nan"))])
    assert model.observations == 1
    assert model.offset == 350


def test_from_pairs_equals_incremental_observes() -> None:
    pairs = [(100.0, 450.0), (200.0, 500.0), (300.0, 1000.0), (50.0, 60.0)]
    incremental = MemoryModel()
    for pair in pairs:
        incremental.observe(*pair)
    rebuilt = MemoryModel.from_pairs(pairs)
    assert rebuilt.observations == incremental.observations == 4
    assert rebuilt.offset == incremental.offset
    assert rebuilt.predict(estimate()) == incremental.predict(estimate())


# --- limits --------------------------------------------------------------------------------


def test_max_memory_wins() -> None:
    assert memory_limit_bytes(CPU, 4, 2**30) == 2**30
    assert memory_limit_source(CPU, 2**30) == "--max-memory"


def test_cpu_limit_is_ram_shared_by_ranks() -> None:
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert memory_limit_bytes(CPU, 1, None) == ram
    assert memory_limit_bytes(CPU, 4, None) == ram / 4
    assert memory_limit_source(CPU, None) == "RAM per rank"


def test_accelerator_limit_is_one_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in for DeepSpeed's accelerator: no GPU is needed, and deepspeed is not imported.
    fake = types.ModuleType("deepspeed.accelerator")
    fake.get_accelerator = lambda: types.SimpleNamespace(total_memory=lambda: 80 * 2**30)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "deepspeed.accelerator", fake)
    assert memory_limit_bytes(GPUS, 8, None) == 80 * 2**30  # per device, not divided
    assert memory_limit_source(GPUS, None) == "GPU memory"


# --- parsing and messages ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8GiB", 8 * 2**30),
        ("8 GiB", 8 * 2**30),
        ("8gib", 8 * 2**30),
        ("500MB", 500 * 10**6),
        ("2KB", 2000),
        ("2KiB", 2048),
        ("1.5G", 1.5 * 2**30),
        ("3M", 3 * 2**20),
        ("123456", 123456),
        ("64B", 64),
        (" 0.5 GB ", 5 * 10**8),
    ],
)
def test_parse_memory(text: str, expected: float) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "8 GiBs", "8XB", "-1GB", "0", "0GiB", "1e9", "8 G B"])
def test_parse_memory_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a memory size; give a positive amount") as err:
        parse_memory(text)
    assert "8GiB" in str(err.value) and "500MB" in str(err.value)


def test_no_reason_under_the_limit() -> None:
    assert why_over_memory(8 * 2**30, 8 * 2**30, estimate(), "--max-memory") is None
    assert why_over_memory(100.0, 2**30, estimate(), "GPU memory") is None


def test_reason_over_the_limit() -> None:
    footprint = ModelFootprint(2**21, 40960.0, 8.0)
    raw = estimate_rank_bytes(footprint, config())
    reason = why_over_memory(raw.total, 32 * 2**20, raw, "--max-memory")
    assert reason == (
        "predicted 33.2 MiB per rank (params 8.0 MiB + grads 8.0 MiB + optimizer 16.0 MiB + "
        "activations 1.2 MiB = 33.2 MiB) is over the 32.0 MiB limit (--max-memory)"
    )


def test_reason_shows_the_learned_offset() -> None:
    raw = estimate()
    model = MemoryModel.from_pairs([(2**20, 4 * 2**20)])  # learned +3 MiB
    reason = why_over_memory(model.predict(raw), 2 * 2**20, raw, "RAM per rank")
    assert reason is not None
    assert reason.startswith("predicted 3.0 MiB per rank (params 3.9 KiB")
    assert "= 18.8 KiB, +3.0 MiB learned from finished trials)" in reason
    assert reason.endswith("is over the 2.0 MiB limit (RAM per rank)")


BLOCKS_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    def block():
        return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16))

    def layers():
        return [block(), nn.ReLU(), block(), nn.Linear(16, 4)]

    def model():
        return nn.Sequential(*layers())

    def train_data():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(100, 16, generator=g)
        return TensorDataset(x, x[:, :4].argmax(1))
    """
)


def test_checkpointing_keeps_layer_inputs_and_one_layers_own_activations(
    write_model: WriteModel,
) -> None:
    footprint = measure_footprint(load_model_file(write_model(BLOCKS_MODEL, "blocks.py")))
    # Every leaf's output: per block 64 + 64 + 16, the ReLU 16, the last Linear 4 (fp32).
    assert footprint.activation_bytes_per_sample == (2 * 144 + 16 + 4) * 4
    # Checkpointed: the inputs of the three layers with parameters (16 each), the ReLU's
    # output, and one block's own activations recomputed in the backward pass.
    assert footprint.checkpointed_activation_bytes_per_sample == (3 * 16 + 16 + 144) * 4
    assert footprint.item_bytes == 16 * 4 + 8 and footprint.train_items == 80  # 20% held out
    plain = estimate_rank_bytes(footprint, config())
    checkpointed = estimate_rank_bytes(footprint, config(activation_checkpointing=True))
    assert checkpointed.activations == 32 * (3 * 16 + 16 + 144) * 4 < plain.activations
    # A model without layers() has nothing to checkpoint by: the estimate stays.
    assert estimate(activation_checkpointing=True) == estimate()


def test_cached_items_count_on_the_cpu_only() -> None:
    footprint = dataclasses.replace(FOOTPRINT, item_bytes=72.0, train_items=1000)
    cached = estimate_rank_bytes(footprint, config(cache_data=True))
    assert cached.cache == 72_000 and cached.total == estimate().total + 72_000
    assert "cache 70.3 KiB" in cached.describe()
    assert estimate_rank_bytes(footprint, config(cache_data=True), "cuda").cache == 0


def test_offload_leaves_the_device_without_optimizer_state_and_then_parameters() -> None:
    on_device = estimate_rank_bytes(FOOTPRINT, config(zero_stage=3), "cuda")
    optimizer = estimate_rank_bytes(FOOTPRINT, config(zero_stage=3, offload="optimizer"), "cuda")
    everything = estimate_rank_bytes(FOOTPRINT, config(zero_stage=3, offload="all"), "cuda")
    assert on_device.optimizer_states > 0 and optimizer.optimizer_states == 0
    assert optimizer.parameters == on_device.parameters > 0 and everything.parameters == 0
    assert everything.total < optimizer.total < on_device.total
