"""The data side of a trial inside a rank: the training DataLoader (one seeded order of whole
global batches, dealt to the data-parallel ranks), an endless iterator over its epochs, and
batches cast to the engine's dtype and device."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from autotune._batch import batch_items, batch_tokens, cast_batch
from autotune._plan import TrialConfig
from autotune.runner._token_batches import TokenBudgetSampler, item_lengths


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a precision setting (fp32, bf16, fp16)."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class WholeBatchSampler(Sampler[int]):
    """One rank's share of each epoch, where every epoch is a whole number of global batches.

    Each epoch is a seeded permutation of the data (``seed + epoch``, as DistributedSampler),
    cut to a whole number of global batches; each global batch is cut into one contiguous
    share per data-parallel rank. So the items of every optimizer step, and where each epoch
    ends, depend only on the global batch: one process at micro-batch 256, two at 128, or one
    at 128 accumulating 2 train on the same items in the same steps. And the micro-batches
    themselves (consecutive runs of a rank's share) depend only on the micro-batch size: one
    process accumulating 2 micro-batches of 128 and two processes at 128 form the same
    micro-batches, which matters when a loss is a mean over each micro-batch's tokens.
    (DistributedSampler with a DataLoader's drop_last cuts each rank's share to whole
    micro-batches instead, so those splits used different items after the first epoch, and
    their accuracies were not interchangeable.)
    """

    def __init__(self, size: int, global_batch: int, replicas: int, rank: int, seed: int) -> None:
        if not 0 < global_batch <= size:
            raise ValueError(f"a global batch of {global_batch} does not fit {size} items")
        if global_batch % replicas:
            raise ValueError(f"a global batch of {global_batch} does not split over {replicas}")
        self.size, self.replicas, self.rank, self.seed = size, replicas, rank, seed
        self.global_batch = global_batch
        self.per_epoch = size // global_batch * global_batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_epoch // self.replicas

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator)[: self.per_epoch]
        shares = order.view(-1, self.replicas, self.global_batch // self.replicas)
        return iter(shares[:, self.rank].reshape(-1).tolist())


class CachedItems(Dataset[Any]):
    """A map-style dataset whose items are kept in memory after their first load: for
    training data whose ``__getitem__`` is costly (decoding, tokenizing) and gives the same
    item for the same index every time. Later epochs then read memory. Items are shared, not
    copied: the batches built from them are new tensors (a collate stacks them).

    Use it in your own script as the tuned ``cache_data: true`` did, with DataLoader
    workers off (each worker would keep its own cache)::

        loader = DataLoader(CachedItems(train_data()), ...)
    """

    def __init__(self, data: Dataset[Any]) -> None:
        self.data = data
        self.items: dict[int, Any] = {}
        self.reads = 0

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        self.reads += 1
        if index not in self.items:
            self.items[index] = self.data[index]
        return self.items[index]

    def describe(self) -> str:
        """``cache: 1,024 items held, 3,072 of 4,096 reads from memory``."""
        loads = len(self.items)
        return f"cache: {loads:,} items held, {self.reads - loads:,} of {self.reads:,} reads from memory"


def train_loader(
    data: Dataset[Any],
    config: TrialConfig,
    dp_rank: int,
    seed: int,
    collate: Callable[[list[Any]], Any] | None = None,
) -> tuple[DataLoader[Any], WholeBatchSampler | TokenBudgetSampler]:
    """The training DataLoader of data-parallel rank ``dp_rank`` and its sampler, with the
    DataLoader arguments ``config`` decides (``TrialConfig.dataloader_arguments``) and the
    model file's ``collate`` (torch's default_collate when None); the data is wrapped in
    `CachedItems` under ``cache_data``. Under ``batching: tokens`` the sampler is a
    `TokenBudgetSampler`, the loader's ``batch_sampler``."""
    items = CachedItems(data) if config.cache_data else data
    if config.batching == "tokens":
        budget = TokenBudgetSampler(
            item_lengths(data),
            config.micro_batch_size,
            config.gradient_accumulation_steps,
            config.data_parallel,
            dp_rank,
            seed,
        )
        loader = DataLoader(
            items, batch_sampler=budget, collate_fn=collate, **config.dataloader_arguments()
        )
        return loader, budget
    sampler = WholeBatchSampler(
        len(data),  # type: ignore[arg-type]
        config.global_batch_size,
        config.data_parallel,
        dp_rank,
        seed,
    )
    loader = DataLoader(
        items,
        batch_size=config.micro_batch_size,
        sampler=sampler,
        drop_last=True,
        collate_fn=collate,
        **config.dataloader_arguments(),
    )
    return loader, sampler


class Batches:
    """An endless iterator over a DataLoader, one epoch after another, each reshuffled;
    ``position`` is where the last batch drawn was: its epoch and its index in the epoch."""

    def __init__(self, loader: DataLoader[Any], sampler: Any) -> None:
        self.loader, self.sampler, self.epoch = loader, sampler, 0
        self.position = (0, -1)
        self._it: Iterator[Any] = iter(loader)

    def __iter__(self) -> Batches:
        return self

    def close(self) -> None:
        """Stop the DataLoader's worker processes now (a warm rank goes on to other trials)."""
        shutdown = getattr(self._it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __next__(self) -> Any:
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch += 1
            self.sampler.set_epoch(self.epoch)
            self._it = iter(self.loader)
            batch = next(self._it)
            self.position = (self.epoch, -1)
        self.position = (self.epoch, self.position[1] + 1)
        return batch


class CastingBatches:
    """Wraps a batch iterator so inputs arrive in the engine's dtype (for PipelineEngine),
    and counts the items, real tokens (`batch_tokens`) and padded token positions (the
    ``input_ids``' size) of what it hands out."""

    def __init__(self, batches: Iterator[Any], dtype: torch.dtype, device: torch.device) -> None:
        self.batches, self.dtype, self.device = batches, dtype, device
        self.items = 0
        self.tokens: int | None = None
        self.positions = 0

    def __iter__(self) -> CastingBatches:
        return self

    def start_count(self) -> None:
        """Count from here on (the timed window's start)."""
        self.items, self.tokens, self.positions = 0, None, 0

    def __next__(self) -> Any:
        batch = next(self.batches)
        self.items += batch_items(batch)
        tokens = batch_tokens(batch)  # on the host, before the copy to the device
        if tokens is not None:
            self.tokens = (self.tokens or 0) + tokens
            self.positions += batch["input_ids"].numel()
        return cast_batch(batch, self.dtype, self.device)
