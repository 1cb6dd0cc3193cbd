"""Model files that several test modules run: small enough for a trial in seconds on 2 cores."""

from __future__ import annotations

import textwrap

SMALL_CLASSIFIER = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    BATCH_SIZE = 32

    def model():
        return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))

    def train_data():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(1200, 16, generator=g)
        return TensorDataset(x, x[:, :4].argmax(1))
    """
)
"""A two-layer classifier of synthetic points: which of the first 4 coordinates is largest."""

RANDOM_LABELS_CLASSIFIER = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    BATCH_SIZE = 32

    def model():
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def train_data():
        g = torch.Generator().manual_seed(3)
        x = torch.randn(1024, 16, generator=g)
        return TensorDataset(x, torch.randint(0, 4, (1024,), generator=g))
    """
)
"""The same shape of classifier on random labels: what a seed learns is noise, so the
reference's seeds disagree (a verdict within their noise of the budget can be built)."""
