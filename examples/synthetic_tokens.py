"""Synthetic sequence classification over token ids (autotune example).

This task is made up, and says so: each item is a sequence of 32 token ids over a vocabulary of
64, generated from a fixed seed. Tokens 0-3 are "motifs"; the others are background noise. The
label is the motif that occurs most often in the sequence; it always leads the runner-up by at
least two occurrences, so the label is unambiguous. The training set (4096 sequences) and the
evaluation set (1024 sequences) come from different seeds.

The model embeds the tokens, mean-pools the embeddings over the sequence and classifies the
pooled vector with a two-layer MLP. It is given both as ``layers()`` (separate modules, each one
tensor in and one tensor out, so a pipeline can split it) and as ``model()``. The file also
defines a custom ``loss`` (cross-entropy with label smoothing 0.05) and ``metric`` (accuracy)
to exercise both hooks.

Run it with::

    autotune search examples/synthetic_tokens.py
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

BATCH_SIZE = 64
OPTIMIZER = {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.0}}

VOCAB_SIZE = 64
SEQ_LEN = 32
NUM_CLASSES = 4  # motif tokens are the ids 0 .. NUM_CLASSES - 1
EMBED_DIM = 64
HIDDEN = 128

_TRAIN_SEED = 0
_EVAL_SEED = 1
_TRAIN_SIZE = 4096
_EVAL_SIZE = 1024
_MIN_WIN_COUNT = 3
_MAX_WIN_COUNT = 6
_MARGIN = 2


def _make_sequences(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``n`` labelled token sequences from ``seed``.

    Each sequence draws the winning motif's count from ``[3, 6]``, each other motif's count from
    ``[0, winner - 2]``, fills the remaining positions with background tokens and shuffles.

    Args:
        n: Number of sequences.
        seed: Seed of the numpy generator.

    Returns:
        ``(tokens, labels)``: an int64 tensor of shape ``[n, 32]`` and an int64 tensor of shape
        ``[n]``.
    """
    rng = np.random.default_rng(seed)
    tokens = np.empty((n, SEQ_LEN), dtype=np.int64)
    labels = rng.integers(0, NUM_CLASSES, size=n)
    for i in range(n):
        win = rng.integers(_MIN_WIN_COUNT, _MAX_WIN_COUNT + 1)
        counts = rng.integers(0, win - _MARGIN + 1, size=NUM_CLASSES)
        counts[labels[i]] = win
        motifs = np.repeat(np.arange(NUM_CLASSES), counts)
        background = rng.integers(NUM_CLASSES, VOCAB_SIZE, size=SEQ_LEN - len(motifs))
        tokens[i] = rng.permutation(np.concatenate([motifs, background]))
    return torch.from_numpy(tokens), torch.from_numpy(labels)


class MeanPool(nn.Module):
    """Average a ``[batch, seq, dim]`` tensor over the sequence dimension."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool over the sequence.

        Args:
            x: Tensor of shape ``[batch, seq, dim]``.

        Returns:
            Tensor of shape ``[batch, dim]``.
        """
        return x.mean(dim=1)


def layers() -> list[nn.Module]:
    """Build the classifier as a list of single-tensor-in, single-tensor-out modules.

    Returns:
        Fresh layers: ``Embedding - MeanPool - Linear - ReLU - Linear(..., 4)``.
    """
    return [
        nn.Embedding(VOCAB_SIZE, EMBED_DIM),
        MeanPool(),
        nn.Linear(EMBED_DIM, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, NUM_CLASSES),
    ]


def model() -> nn.Module:
    """Build a fresh classifier with the same initialisation as ``layers()`` under the same seed.

    Returns:
        ``nn.Sequential(*layers())``.
    """
    return nn.Sequential(*layers())


def train_data() -> Dataset:
    """Return 4096 training sequences (seed 0).

    Returns:
        A dataset of ``(int64 [32], long scalar)`` items.
    """
    return TensorDataset(*_make_sequences(_TRAIN_SIZE, _TRAIN_SEED))


def eval_data() -> Dataset:
    """Return 1024 evaluation sequences (seed 1).

    Returns:
        A dataset of ``(int64 [32], long scalar)`` items.
    """
    return TensorDataset(*_make_sequences(_EVAL_SIZE, _EVAL_SEED))


def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with label smoothing 0.05.

    Args:
        output: Logits of shape ``[batch, 4]``.
        target: Class indices of shape ``[batch]``.

    Returns:
        The mean loss, a scalar tensor.
    """
    return F.cross_entropy(output, target, label_smoothing=0.05)


def metric(output: torch.Tensor, target: torch.Tensor) -> float:
    """Classification accuracy (higher is better).

    Args:
        output: Logits of shape ``[batch, 4]``.
        target: Class indices of shape ``[batch]``.

    Returns:
        The fraction of rows whose arg-max logit equals the target.
    """
    return (output.argmax(dim=-1) == target).float().mean().item()
