"""Synthetic token classification with a large embedding (autotune example for pipelines).

The shape of a language model, at toy size: a 32768 x 64 token embedding holds almost all the
parameters (2.1M of 2.3M) and does little work per token, while six residual MLP blocks over
the sequence hold few parameters and do nearly all the work. DeepSpeed's ``parameters``
partitioning balances parameter counts, so with two stages it puts the embedding alone on one
stage and all the blocks on the other; autotune's ``profile`` method balances measured time.

The task is made up, and says so: every token id belongs to one of four classes (its id modulo
4). Each sequence of 32 tokens has a label; 12 of its tokens are drawn from the label's class and
20 uniformly from the whole vocabulary, then shuffled. The model has to learn, per token, which
class it belongs to. The training set (8192 sequences) and the evaluation set (2048) come from
different seeds.

Run it with::

    autotune search examples/embedding_heavy.py --space search_spaces/pipeline.yaml
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

BATCH_SIZE = 32
OPTIMIZER = {"type": "AdamW", "params": {"lr": 2e-3, "weight_decay": 0.0}}

VOCAB_SIZE = 32768
SEQ_LEN = 32
NUM_CLASSES = 4
EMBED_DIM = 64
HIDDEN = 256
BLOCKS = 6
SIGNAL_TOKENS = 12

_TRAIN_SEED = 0
_EVAL_SEED = 1
_TRAIN_SIZE = 8192
_EVAL_SIZE = 2048


def _make_sequences(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` labelled sequences: ``SIGNAL_TOKENS`` of the label's class, the rest uniform.

    Returns:
        ``(tokens, labels)``: int64 tensors of shapes ``[n, 32]`` and ``[n]``.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    per_class = VOCAB_SIZE // NUM_CLASSES
    signal = torch.randint(0, per_class, (n, SIGNAL_TOKENS), generator=g) * NUM_CLASSES
    signal += labels[:, None]
    noise = torch.randint(0, VOCAB_SIZE, (n, SEQ_LEN - SIGNAL_TOKENS), generator=g)
    tokens = torch.cat([signal, noise], dim=1)
    order = torch.argsort(torch.rand(n, SEQ_LEN, generator=g), dim=1)
    return torch.gather(tokens, 1, order), labels


class Block(nn.Module):
    """A residual MLP block over every position: ``x + W2 gelu(W1 layernorm(x))``."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(EMBED_DIM)
        self.up = nn.Linear(EMBED_DIM, HIDDEN)
        self.down = nn.Linear(HIDDEN, EMBED_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(nn.functional.gelu(self.up(self.norm(x))))


class MeanPool(nn.Module):
    """Average ``[batch, seq, dim]`` over the sequence."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def layers() -> list[nn.Module]:
    """``Embedding - Block x 6 - MeanPool - Linear(64, 4)``, each one tensor in, one out."""
    return [
        nn.Embedding(VOCAB_SIZE, EMBED_DIM),
        *(Block() for _ in range(BLOCKS)),
        MeanPool(),
        nn.Linear(EMBED_DIM, NUM_CLASSES),
    ]


def model() -> nn.Module:
    """The same network as ``layers()``, with the same initial weights under the same seed."""
    return nn.Sequential(*layers())


def train_data() -> Dataset:
    """8192 training sequences (seed 0)."""
    return TensorDataset(*_make_sequences(_TRAIN_SIZE, _TRAIN_SEED))


def eval_data() -> Dataset:
    """2048 evaluation sequences (seed 1)."""
    return TensorDataset(*_make_sequences(_EVAL_SIZE, _EVAL_SEED))
