"""Tests of layer profiles: what is measured per layer, the cost vectors the partitioner gets
from them, the cache, and the boundaries that rebuild a pipeline."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from autotune._machine import Machine
from autotune._plan import TrialConfig
from autotune._task import load_model_file, reference_settings
from autotune.pipeline import (
    LayerProfile,
    LinkCost,
    PartitionError,
    build_pipeline_module,
    check_partition_bounds,
    partition_layers,
    predicted_stage_seconds,
    profiled_partition,
    stage_cost_vectors,
)
from autotune.runner import ProfileCache, measure_layers

MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    BATCH_SIZE = 8
    OPTIMIZER = {"type": "Adam", "params": {"lr": 1e-3}}

    def layers():
        return [nn.Embedding(1000, 16), nn.Flatten(), nn.Linear(16 * 4, 32), nn.ReLU(),
                nn.Linear(32, 3)]

    def model():
        return nn.Sequential(*layers())

    def train_data():
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 1000, (64, 4), generator=g)
        return TensorDataset(x, x[:, 0] % 3)
    """
)
LINK = LinkCost(sizes=(0, 1_000_000), seconds=(1e-3, 2e-3), backend="gloo")  # 1 ms + 1 ns/B
CPU = Machine(accelerator="cpu", devices=2, cores=2, fp16=False, bf16=True)


def _config(**values: object) -> TrialConfig:
    settings = {
        **reference_settings(8),
        "gradient_accumulation_steps": 4,
        "processes": 2,
        "pipeline_stages": 2,
        "partition_method": "profile",
        **values,
    }
    return TrialConfig.from_settings(settings, {"type": "Adam", "params": {"lr": 1e-3}}, 8, "none")


@pytest.fixture(scope="module")
def model_path(write_model: Callable[[str, str], Path]) -> Path:
    return write_model(MODEL, "embed.py")


@pytest.fixture(scope="module")
def profile(model_path: Path) -> LayerProfile:
    return measure_layers(
        load_model_file(model_path), 8, "fp32", torch.device("cpu"), LINK, "cpu, test"
    )


def test_measures_every_layer_on_a_real_micro_batch(profile: LayerProfile) -> None:
    assert profile.names == ("Embedding", "Flatten", "Linear", "ReLU", "Linear")
    assert all(seconds > 0 for seconds in profile.forward_backward_seconds)
    # Output of each layer for a micro-batch of 8, in fp32.
    assert profile.activation_bytes == (
        8 * 4 * 16 * 4,
        8 * 64 * 4,
        8 * 32 * 4,
        8 * 32 * 4,
        8 * 3 * 4,
    )
    assert profile.parameter_bytes == (1000 * 16 * 4, 0, (64 * 32 + 32) * 4, 0, (32 * 3 + 3) * 4)
    # Adam keeps two moments per parameter (plus a scalar step count per tensor).
    assert profile.optimizer_state_bytes[0] >= 2 * 1000 * 16 * 4
    assert profile.optimizer_state_bytes[1] == 0 and profile.optimizer_seconds[1] == 0.0
    assert profile.optimizer_seconds[0] > 0


SLOW_LAYER = textwrap.dedent(
    """
    import time

    class _Slow(torch.autograd.Function):
        # Identity whose forward sleeps 20 ms and backward 60 ms: far above what a busy machine
        # adds to the tiny layers beside it.
        @staticmethod
        def forward(ctx, x):
            time.sleep(0.02)
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            time.sleep(0.06)
            return grad

    class SlowLayer(nn.Module):
        def forward(self, x):
            return _Slow.apply(x)
    """
)


def test_layers_are_timed_where_they_run_in_the_pass(tmp_path: Path) -> None:
    # The slow layer's backward runs between the gradient reaching its output and reaching its
    # input; it must be charged to that layer, not to the layers beside it.
    path = tmp_path / "slow.py"
    path.write_text(
        MODEL.replace("nn.ReLU(),", "SlowLayer(),").replace(
            "\ndef layers", SLOW_LAYER + "\ndef layers"
        )
    )
    measured = measure_layers(
        load_model_file(path), 8, "fp32", torch.device("cpu"), LINK, "cpu, test"
    )
    seconds = measured.forward_backward_seconds
    assert measured.names[3] == "SlowLayer"
    assert seconds[3] >= 0.08  # its own sleeps
    assert max(seconds[2], seconds[4]) < 0.04  # none of them leaked to its neighbours


def test_link_cost_is_interpolated_between_measured_sizes() -> None:
    link = LinkCost(sizes=(64, 16384, 65536), seconds=(1e-4, 1e-4, 3e-4), backend="gloo")
    assert link.latency_seconds == 1e-4
    assert link.message_seconds(8192) == pytest.approx(1e-4)  # flat up to 16 KiB
    assert link.message_seconds(40960) == pytest.approx(2e-4)  # halfway up the step
    # Beyond the largest size, at the largest size's bandwidth.
    assert link.message_seconds(131072) == pytest.approx(6e-4)
    assert LinkCost.from_json(json.loads(json.dumps(dataclasses.asdict(link)))) == link


def test_json_round_trip(profile: LayerProfile) -> None:
    again = LayerProfile.from_json(json.loads(json.dumps(profile.to_json())))
    assert again == profile


def test_cost_vectors_follow_the_pipeline_schedule(profile: LayerProfile) -> None:
    costs = stage_cost_vectors(profile, _config())
    for i in range(len(profile.names)):
        assert costs.layer_seconds[i] == pytest.approx(
            profile.forward_backward_seconds[i] + profile.optimizer_seconds[i] / 4
        )
        # Activation forward and gradient back: two messages.
        assert costs.send_seconds[i] == pytest.approx(
            2 * (1e-3 + profile.activation_bytes[i] * 1e-9)
        )
        params = profile.parameter_bytes[i]
        assert costs.layer_bytes[i] == pytest.approx(
            2 * params + profile.optimizer_state_bytes[i] + 2 * profile.activation_bytes[i]
        )
    bf16 = stage_cost_vectors(profile, _config(precision="bf16"))
    assert bf16.layer_bytes[0] > costs.layer_bytes[0]  # fp32 master weights


def test_profiled_partition_and_its_prediction_agree(profile: LayerProfile) -> None:
    config = _config()
    partition = profiled_partition(profile, config, memory_cap=None)
    assert partition.bounds[0] == 0 and partition.bounds[-1] == 5 and len(partition.bounds) == 3
    predicted = predicted_stage_seconds(profile, config, partition.bounds)
    assert predicted == pytest.approx(partition.stage_seconds)
    other = predicted_stage_seconds(profile, config, (0, 1, 5))
    assert max(predicted) <= max(other) + 1e-12


def test_near_ties_are_taken_only_to_communicate_less() -> None:
    def profile(seconds: list[float], activation: list[int]) -> LayerProfile:
        n = len(seconds)
        return LayerProfile(
            names=("L",) * n,
            forward_backward_seconds=tuple(seconds),
            optimizer_seconds=(0.0,) * n,
            activation_bytes=tuple(activation),
            parameter_bytes=(0,) * n,
            optimizer_state_bytes=(0,) * n,
            micro_batch_size=8,
            precision="fp32",
            device="test",
            link=LinkCost(sizes=(0, 1_000_000), seconds=(0.0, 1.0), backend="test"),
        )

    config = _config()
    # Cutting after layer 0 or after layer 1 balances within 1%. With equal activations the
    # better-balanced cut (after layer 1) stays, though the other is earlier.
    even = profile([2.0, 0.05, 2.02], [1000, 1000, 1000])
    assert profiled_partition(even, config, None).bounds == (0, 2, 3)
    # When the better-balanced cut sends 50 times the bytes, the near-tie that sends less wins.
    chatty = profile([2.0, 0.05, 2.02], [100, 5000, 1000])
    strict = partition_layers(*_vectors(chatty, config), 2)
    assert strict.bounds == (0, 2, 3)
    assert profiled_partition(chatty, config, None).bounds == (0, 1, 3)


def _vectors(
    profile: LayerProfile, config: TrialConfig
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    costs = stage_cost_vectors(profile, config)
    return costs.layer_seconds, costs.send_seconds, costs.layer_bytes


def test_a_memory_cap_nothing_fits_is_a_partition_error(profile: LayerProfile) -> None:
    with pytest.raises(PartitionError, match="memory_cap"):
        profiled_partition(profile, _config(), memory_cap=1000.0)


def test_cache_measures_once_per_micro_batch_and_precision(tmp_path: Path) -> None:
    model_path = tmp_path / "embed.py"
    model_path.write_text(MODEL)
    cache = ProfileCache(tmp_path / "profiles", CPU)
    # A stored link cost, so this test times layers but not two-process messages.
    cache.store_link(LINK)
    model_file = load_model_file(model_path)
    assert not cache.is_cached(model_file, _config())
    first = cache.profile(model_file, _config())
    assert first.link == LINK
    assert cache.is_cached(model_file, _config())
    assert cache.profile(model_file, _config()) == first  # read back, not re-measured
    assert not cache.is_cached(model_file, _config(micro_batch_size=16))
    assert not cache.is_cached(model_file, _config(precision="bf16"))
    # Another gradient accumulation reuses the same per-micro-batch profile.
    assert cache.is_cached(model_file, _config(gradient_accumulation_steps=8))
    # A changed model file is profiled again.
    model_path.write_text(MODEL + "\n# edited\n")
    assert not cache.is_cached(load_model_file(model_path), _config())


@pytest.mark.parametrize(
    ("bounds", "layers"),
    [([0, 3], 4), ([1, 4], 4), ([0, 2, 2, 4], 4), ([0], 4), ([0, 3, 2, 4], 4)],
)
def test_bounds_that_do_not_split_the_layers_are_refused(bounds: list[int], layers: int) -> None:
    with pytest.raises(ValueError, match="partition_bounds"):
        check_partition_bounds(bounds, layers)
    with pytest.raises(ValueError, match="partition_bounds"):
        build_pipeline_module([torch.nn.ReLU() for _ in range(layers)], bounds)


def test_valid_bounds_are_plain_ints() -> None:
    assert check_partition_bounds((0, 2, 4), 4) == [0, 2, 4]


def test_stage_count_comes_from_the_bounds() -> None:
    with pytest.raises(ValueError, match="num_stages"):
        build_pipeline_module([torch.nn.ReLU()] * 2, [0, 1, 2], num_stages=2)
