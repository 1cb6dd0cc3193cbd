"""The training sampler: every split of one global batch trains on the same items in the same
steps, across epochs (autotune/runner/_data.py, WholeBatchSampler). Accuracy reuse relies on it."""

from __future__ import annotations

import itertools

import pytest

from autotune.runner import WholeBatchSampler

SIZE = 1437  # digits_mlp's training items: no global batch below divides it


def _steps(processes: int, micro: int, accumulation: int, steps: int) -> list[list[int]]:
    """The sorted items of each optimizer step, as the ranks' DataLoaders would batch them
    (whole micro-batches per rank, epoch after epoch)."""
    global_batch = micro * accumulation * processes
    samplers = [
        WholeBatchSampler(SIZE, global_batch, processes, r, seed=7) for r in range(processes)
    ]

    def micro_batches(sampler: WholeBatchSampler) -> itertools.chain[list[int]]:
        def epoch(number: int) -> list[list[int]]:
            sampler.set_epoch(number)
            items = list(sampler)
            assert len(items) == len(sampler)
            return [items[i : i + micro] for i in range(0, len(items) - micro + 1, micro)]

        return itertools.chain.from_iterable(epoch(n) for n in itertools.count())

    streams = [micro_batches(sampler) for sampler in samplers]
    result = []
    for _ in range(steps):
        items = [i for stream in streams for _ in range(accumulation) for i in next(stream)]
        assert len(items) == global_batch
        result.append(sorted(items))
    return result


@pytest.mark.parametrize(
    "split",
    [(2, 256, 1), (2, 128, 2), (1, 256, 2), (1, 128, 4), (4, 32, 4)],
)
def test_every_split_of_a_global_batch_trains_the_same_steps(split: tuple[int, int, int]) -> None:
    steps = 7  # past the end of the first two epochs (2 steps of 512 per epoch)
    assert _steps(*split, steps) == _steps(1, 512, 1, steps)


def test_each_epoch_is_whole_global_batches_of_distinct_items() -> None:
    sampler = WholeBatchSampler(SIZE, 96, 2, 0, seed=0)
    other = WholeBatchSampler(SIZE, 96, 2, 1, seed=0)
    mine, theirs = list(sampler), list(other)
    assert len(mine) == len(theirs) == SIZE // 96 * 96 // 2
    assert not set(mine) & set(theirs)
    sampler.set_epoch(1)
    assert list(sampler) != mine  # reshuffled each epoch


def test_a_global_batch_larger_than_the_data_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        WholeBatchSampler(100, 128, 1, 0, seed=0)


def _micro_batches_of_step(processes: int, micro: int, accumulation: int) -> set[frozenset[int]]:
    """The micro-batches of the first optimizer step, as sets of items."""
    global_batch = micro * accumulation * processes
    result = set()
    for rank in range(processes):
        items = list(WholeBatchSampler(SIZE, global_batch, processes, rank, seed=7))
        share = items[: micro * accumulation]
        result |= {frozenset(share[i : i + micro]) for i in range(0, len(share), micro)}
    return result


def test_the_micro_batches_depend_only_on_the_micro_batch_size() -> None:
    """What makes variable-length items' metric reusable between splits with one micro-batch:
    a token-mean loss sees the same micro-batches whether they are accumulated or spread over
    processes (TrialConfig.numerics_key adds the micro-batch size for such items)."""
    accumulated = _micro_batches_of_step(1, 16, 4)
    assert _micro_batches_of_step(2, 16, 2) == accumulated
    assert _micro_batches_of_step(4, 16, 1) == accumulated
    assert _micro_batches_of_step(2, 32, 1) != accumulated


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused() -> None:
    with pytest.raises(ValueError, match="does not split"):
        WholeBatchSampler(SIZE, 10, 4, 0, seed=0)
