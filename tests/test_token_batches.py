"""Token-budget batching's sampler and per-step learning rate (pure logic,
autotune/runner/_token_batches.py)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from autotune.runner import StepLearningRate, TokenBudgetSampler, WholeBatchSampler, item_lengths


def _lengths(count: int = 3000, seed: int = 0) -> list[int]:
    """Skewed lengths, most short and a few long, as sentences are."""
    rng = random.Random(seed)
    return [min(200, 2 + int(rng.expovariate(1 / 20))) for _ in range(count)]


def _padding(batches: list[list[int]], lengths: list[int]) -> float:
    real = sum(lengths[i] for batch in batches for i in batch)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1 - real / padded


def test_micro_batches_hold_each_item_once_within_the_budget() -> None:
    lengths = _lengths()
    sampler = TokenBudgetSampler(lengths, 32, 1, 1, 0, seed=3)
    assert sampler.budget == round(32 * sum(lengths) / len(lengths))
    for epoch in range(3):
        batches = sampler.micro_batches(epoch)
        flat = [i for batch in batches for i in batch]
        assert len(flat) == len(set(flat))
        assert len(flat) > 0.95 * len(lengths)  # only the last partial step is left out
        for batch in batches:
            longest = max(lengths[i] for i in batch)
            assert len(batch) == 1 or len(batch) * longest <= sampler.budget
    assert sampler.micro_batches(0) != sampler.micro_batches(1)  # reshuffled each epoch
    again = TokenBudgetSampler(lengths, 32, 1, 1, 0, seed=3)
    assert again.micro_batches(1) == sampler.micro_batches(1)


def test_it_pads_far_less_than_batches_of_a_fixed_item_count() -> None:
    lengths = _lengths()
    sampler = TokenBudgetSampler(lengths, 32, 1, 1, 0, seed=0)
    order = list(WholeBatchSampler(len(lengths), 32, 1, 0, seed=0))
    fixed = [order[i : i + 32] for i in range(0, len(order), 32)]
    assert sampler.padding() == pytest.approx(_padding(sampler.micro_batches(0), lengths))
    assert sampler.padding() < 0.1 < 0.5 < _padding(fixed, lengths)


def test_splits_of_a_step_over_ranks_and_accumulation_train_the_same_micro_batches() -> None:
    lengths = _lengths(1000)
    accumulating = TokenBudgetSampler(lengths, 16, 2, 1, 0, seed=5)
    ranks = [TokenBudgetSampler(lengths, 16, 1, 2, rank, seed=5) for rank in range(2)]
    for epoch in range(2):
        for sampler in (accumulating, *ranks):
            sampler.set_epoch(epoch)
        alone = list(accumulating)
        shares = [list(sampler) for sampler in ranks]
        assert len(alone) == len(accumulating) == 2 * len(shares[0]) == 2 * len(ranks[1])
        # Step s: micro-batches 2s and 2s+1 of one process; micro-batch s of each rank.
        assert alone[0::2] == shares[0] and alone[1::2] == shares[1]
        assert accumulating.step_sizes(epoch) == ranks[0].step_sizes(epoch)


def test_the_sample_budget_is_counted_in_items_and_each_step_scales_its_rate() -> None:
    lengths = _lengths(1000)
    sampler = TokenBudgetSampler(lengths, 16, 2, 1, 0, seed=1)
    sizes = sampler.step_sizes(0)
    assert sampler.lr_factor(0, 3) == sizes[3] / 32
    assert min(sizes) < 32 < max(sizes)
    for samples in (100, 1000, 2500):  # within the first epoch and across epochs
        steps = sampler.steps_for(samples)
        assert sampler.items_in_steps(steps) >= samples > sampler.items_in_steps(steps - 1)
    assert sampler.items_in_steps(len(sizes) + 2) == sum(sizes) + sum(sampler.step_sizes(1)[:2])


def test_the_step_learning_rate_follows_the_steps_items() -> None:
    lengths = _lengths(1000)
    sampler = TokenBudgetSampler(lengths, 16, 2, 1, 0, seed=1)
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([weight], lr=1e-3)
    position = SimpleNamespace(position=(0, 0))
    scaled = StepLearningRate(optimizer, sampler, position)
    for epoch, index in ((0, 0), (0, 7), (1, 4)):
        position.position = (epoch, index)  # the step's first micro-batch was just drawn
        scaled.before_step()
        step_items = sampler.step_sizes(epoch)[index // 2]
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * step_items / 32)
    assert "learning rate x" in scaled.describe()


def test_lengths_come_from_each_items_input_ids() -> None:
    items = [{"input_ids": torch.arange(n), "labels": torch.tensor(0)} for n in (3, 5, 1)]
    assert item_lengths(items) == [3, 5, 1]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no input_ids"):
        item_lengths([(torch.zeros(3), 1)])  # type: ignore[arg-type]
