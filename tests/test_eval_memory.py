"""Evaluation of dict items holds one batch's outputs at a time: the peak memory of an eval set
whose outputs total 1 GiB grows by a few batches' worth, measured in a fresh process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BATCH_OUTPUT_BYTES = 16 * 128 * 2048 * 4  # one batch's logits: 16 MiB
BATCHES = 64  # all of the eval set's logits: 1 GiB

CHILD = textwrap.dedent(
    f"""
    import resource
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
    from autotune._batch import evaluate

    class Output:
        def __init__(self, loss, logits):
            self.loss, self.logits = loss, logits

    class LanguageModel(nn.Module):
        # logits over a 2,048-token vocabulary for every position, as a causal LM returns them
        def forward(self, input_ids, labels=None):
            logits = torch.randn(*input_ids.shape, 2048)
            return Output(logits.mean(), logits)

    class Texts(Dataset):
        def __len__(self):
            return {BATCHES} * 16

        def __getitem__(self, index):
            return {{"input_ids": torch.zeros(128, dtype=torch.long)}}

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    loader = DataLoader(Texts(), batch_size=16)
    model = LanguageModel()
    evaluate(model, iter([next(iter(loader))]), lambda output, batch: -float(output.loss))
    before = peak()
    value = evaluate(model, iter(loader), lambda output, batch: -float(output.loss))
    print(peak() - before, value)
    """
)


@pytest.mark.subprocess
def test_dict_eval_memory_is_bounded_by_one_batch_of_outputs() -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, child.stderr[-2000:]
    growth = int(child.stdout.split()[0])
    # Holding every output would add 1 GiB; streaming adds at most a few batches (allocator
    # slack), far below the whole.
    assert growth < 4 * BATCH_OUTPUT_BYTES, f"peak grew {growth / 2**20:.0f} MiB"
    assert growth < BATCHES * BATCH_OUTPUT_BYTES / 8
