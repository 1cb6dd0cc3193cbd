"""Token-budget batching (``batching: tokens``): micro-batches built to a budget of padded
token positions rather than a fixed item count, and each optimizer step's learning rate scaled
by the items it holds.

Items of different lengths padded to the longest in their micro-batch waste the padding's
compute. `TokenBudgetSampler` sorts windows of the seeded order by length and packs each into
micro-batches of at most ``micro_batch_size`` x the mean item length padded positions: short
items go many to a micro-batch, long ones few, and little is padding. A step then holds more or
fewer items than the global batch; `StepLearningRate` sets its learning rate to the trial's
rate x its items / the global batch (DeepSpeed's variable batch size and learning rate, with
its default linear rule), so every item moves the model as much as under item batching.

Use both in your own script as the tuned ``batching: tokens`` did (see
`TokenBudgetSampler`).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from autotune._batch import is_dict_batch

WINDOW_MICRO_BATCHES = 32
"""Items sorted by length together: this many micro-batches' worth of the seeded order. A
larger window pads less and mixes less (each micro-batch's items come from one window)."""


def item_lengths(data: Dataset[Any]) -> list[int]:
    """The token count of every item: the length of its ``input_ids`` (each item is read
    once)."""
    lengths = []
    for index in range(len(data)):  # type: ignore[arg-type]
        item = data[index]
        if not is_dict_batch(item) or "input_ids" not in item:
            raise ValueError(f"item {index} has no input_ids: token batching needs them")
        lengths.append(len(item["input_ids"]))
    return lengths


class TokenBudgetSampler(Sampler[list[int]]):
    """One rank's micro-batches (lists of indices) of each epoch, built to a token budget.

    Each epoch is a seeded permutation of the items (``seed + epoch``), cut into windows of
    ``WINDOW_MICRO_BATCHES x micro_batch_size`` items; each window is sorted by length and cut
    into micro-batches whose padded size (items x longest) stays within the budget,
    ``micro_batch_size`` x the mean length (a single item longer than that is a micro-batch of
    its own). The epoch's micro-batches are shuffled with the same generator and cut to a
    whole number of optimizer steps of ``replicas x accumulation`` micro-batches; each step
    deals every rank ``accumulation`` consecutive ones. So, as with `WholeBatchSampler`, the
    micro-batches depend on the micro-batch size alone and a step's on its global count: one
    process accumulating 2 and two processes train the same micro-batches in the same steps.

    Use it as a DataLoader's ``batch_sampler`` and call `set_epoch` at each epoch::

        sampler = TokenBudgetSampler(item_lengths(data), micro_batch_size, accumulation,
                                     data_parallel_size, data_parallel_rank, seed)
        loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate)

    and before each optimizer step ``step`` of epoch ``epoch`` set every parameter group's
    learning rate to its base rate x ``sampler.lr_factor(epoch, step)``.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        micro_batch_size: int,
        accumulation: int,
        replicas: int,
        rank: int,
        seed: int,
    ) -> None:
        if not lengths:
            raise ValueError("no items to batch")
        self.lengths = list(lengths)
        self.micro_batch_size, self.accumulation = micro_batch_size, accumulation
        self.replicas, self.rank, self.seed = replicas, rank, seed
        self.budget = max(1, round(micro_batch_size * statistics.fmean(self.lengths)))
        self.epoch = 0
        self._epochs: dict[int, list[list[int]]] = {}
        if not self.step_sizes(0):
            raise ValueError(
                f"{len(self.lengths)} items make fewer micro-batches than one step of "
                f"{replicas * accumulation}"
            )

    @property
    def global_batch(self) -> int:
        """The items a step holds under item batching (the learning rate's reference)."""
        return self.micro_batch_size * self.accumulation * self.replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def micro_batches(self, epoch: int) -> list[list[int]]:
        """Every micro-batch of an epoch, over all ranks, in step order."""
        if epoch not in self._epochs:
            if len(self._epochs) > 2:  # a run reads its current epoch and, rarely, the last
                self._epochs.clear()
            self._epochs[epoch] = self._build(epoch)
        return self._epochs[epoch]

    def _build(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        window = WINDOW_MICRO_BATCHES * self.micro_batch_size
        batches: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=self.lengths.__getitem__)
            batches.extend(self._pack(chunk))
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        per_step = self.replicas * self.accumulation
        whole = len(batches) // per_step * per_step
        return [batches[i] for i in shuffled[:whole]]

    def _pack(self, items: list[int]) -> list[list[int]]:
        """Items sorted by length cut into micro-batches within the budget."""
        batches: list[list[int]] = []
        current: list[int] = []
        for index in items:
            # Sorted: the new item is the longest of the micro-batch it would join.
            if current and self.lengths[index] * (len(current) + 1) > self.budget:
                batches.append(current)
                current = []
            current.append(index)
        if current:
            batches.append(current)
        return batches

    def step_sizes(self, epoch: int) -> list[int]:
        """The items of each optimizer step of an epoch, over all ranks."""
        batches = self.micro_batches(epoch)
        per_step = self.replicas * self.accumulation
        return [
            sum(len(batch) for batch in batches[start : start + per_step])
            for start in range(0, len(batches), per_step)
        ]

    def lr_factor(self, epoch: int, step: int) -> float:
        """Step ``step`` of ``epoch``'s learning rate over the trial's: its items over the
        global batch."""
        return self.step_sizes(epoch)[step] / self.global_batch

    def items_in_steps(self, steps: int) -> int:
        """Items trained by the first ``steps`` optimizer steps, epochs counted from 0."""
        total, epoch = 0, 0
        while steps > 0:
            sizes = self.step_sizes(epoch)[:steps]
            total += sum(sizes)
            steps -= len(sizes)
            epoch += 1
        return total

    def steps_for(self, samples: int) -> int:
        """The optimizer steps that train ``samples`` items: the first whose running count of
        items reaches it (a fixed sample budget, whatever each step holds)."""
        steps, total, epoch = 0, 0, 0
        while True:
            for size in self.step_sizes(epoch):
                if total >= samples:
                    return steps
                total += size
                steps += 1
            epoch += 1

    def padding(self, epoch: int = 0) -> float:
        """The share of an epoch's padded positions that are padding."""
        batches = self.micro_batches(epoch)
        real = sum(self.lengths[i] for batch in batches for i in batch)
        padded = sum(len(batch) * max(self.lengths[i] for i in batch) for batch in batches)
        return 1 - real / padded

    def _rank_batches(self) -> list[list[int]]:
        batches = self.micro_batches(self.epoch)
        per_step = self.replicas * self.accumulation
        own = range(self.rank * self.accumulation, (self.rank + 1) * self.accumulation)
        return [batches[i] for i in range(len(batches)) if i % per_step in own]

    def __len__(self) -> int:
        return len(self._rank_batches())

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._rank_batches())


class StepLearningRate:
    """Sets each optimizer step's learning rate: the optimizer's base rate x the step's items
    over the global batch (`TokenBudgetSampler.lr_factor`), read from where ``batches`` (a
    `autotune.runner.Batches`) is. Call `before_step` after the step's first micro-batch was
    drawn, before any of its ``engine.step()``."""

    def __init__(self, optimizer: Any, sampler: TokenBudgetSampler, batches: Any) -> None:
        self.groups = optimizer.param_groups
        self.base = [float(group["lr"]) for group in self.groups]
        self.sampler, self.batches = sampler, batches
        self.low, self.high = float("inf"), 0.0

    def before_step(self) -> None:
        epoch, index = self.batches.position
        factor = self.sampler.lr_factor(epoch, index // self.sampler.accumulation)
        self.low, self.high = min(self.low, factor), max(self.high, factor)
        for group, base in zip(self.groups, self.base, strict=True):
            group["lr"] = base * factor

    def describe(self) -> str:
        """``learning rate x0.62 to x1.41 of the trial's by each step's items``."""
        return (
            f"learning rate x{self.low:.2f} to x{self.high:.2f} of the trial's, by each step's "
            "items"
        )
