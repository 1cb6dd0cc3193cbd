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
