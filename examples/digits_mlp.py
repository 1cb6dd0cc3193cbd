"""Handwritten-digit classification with a small MLP (autotune example).

The data is scikit-learn's bundled ``digits`` set: 1797 grayscale 8x8 images of the digits 0-9,
scaled to [0, 1] and split 80/20 (stratified, fixed seed) into training and evaluation sets. The
training set applies a light, deterministic augmentation in ``__getitem__``: gaussian noise on
every image and, on a quarter of them, a random shift of up to one pixel. The randomness is seeded
by the item index, so DataLoader workers have real per-item work to overlap and an item is the
same whichever process loads it (and in every epoch).

The network is a three-layer MLP with LayerNorm (which lets it converge within three epochs),
given both as ``layers()`` (separate modules, so a pipeline can split it) and as ``model()`` (the
same layers in an ``nn.Sequential``). The default loss (cross-entropy) and metric (accuracy)
apply.

Run it with::

    autotune search examples/digits_mlp.py
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import Dataset

BATCH_SIZE = 32
OPTIMIZER = {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.0}}

_SPLIT_SEED = 0
_AUGMENT_SEED = 1234
_SHIFT_PROB = 0.25
_NOISE_STD = 0.05
_HIDDEN = 512


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load the digits and split them 80/20 with a fixed seed.

    Returns:
        ``(x_train, x_eval, y_train, y_eval)``: images as float32 arrays of shape ``[n, 8, 8]``
        in [0, 1] and labels as int64 arrays of shape ``[n]``.
    """
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(
        images, labels, test_size=0.2, random_state=_SPLIT_SEED, stratify=labels
    )
    return x_train, x_eval, y_train, y_eval


class DigitsDataset(Dataset):
    """Flattened 8x8 digit images, optionally with deterministic per-item augmentation.

    Args:
        images: Float array of shape ``[n, 8, 8]`` with values in [0, 1].
        labels: Integer array of shape ``[n]`` with class indices 0-9.
        augment: Whether ``__getitem__`` adds noise and sometimes shifts the image.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool = False) -> None:
        self.images = images
        self.labels = labels
        self.augment = augment

    def __len__(self) -> int:
        """Return the number of images."""
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return one item.

        Args:
            index: Position of the item in the dataset (negative values count from the end).

        Returns:
            A float32 tensor of shape ``[64]`` and a long scalar tensor with the class index.
        """
        index = range(len(self))[index]  # plain non-negative int; raises IndexError if out of range
        image = self.images[index]
        if self.augment:
            # Randomness comes from the index alone, so every worker process produces the same item.
            rng = np.random.default_rng((_AUGMENT_SEED, index))
            if rng.random() < _SHIFT_PROB:
                dy, dx = rng.integers(-1, 2, size=2)
                padded = np.pad(image, 1)
                image = padded[1 + dy : 9 + dy, 1 + dx : 9 + dx]
            image = image + rng.normal(0.0, _NOISE_STD, size=image.shape)
            image = np.clip(image, 0.0, 1.0)
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32).reshape(64))
        y = torch.tensor(self.labels[index], dtype=torch.long)
        return x, y


def layers() -> list[nn.Module]:
    """Build the MLP as a list of single-tensor-in, single-tensor-out modules.

    Returns:
        Fresh layers: ``Linear(64, 512) - LayerNorm - ReLU - Linear(512, 512) - LayerNorm - ReLU -
        Linear(512, 10)``.
    """
    return [
        nn.Linear(64, _HIDDEN),
        nn.LayerNorm(_HIDDEN),
        nn.ReLU(),
        nn.Linear(_HIDDEN, _HIDDEN),
        nn.LayerNorm(_HIDDEN),
        nn.ReLU(),
        nn.Linear(_HIDDEN, 10),
    ]


def model() -> nn.Module:
    """Build a fresh MLP with the same initialisation as ``layers()`` under the same seed.

    Returns:
        ``nn.Sequential(*layers())``.
    """
    return nn.Sequential(*layers())


def train_data() -> Dataset:
    """Return the augmented training split (1437 images).

    Returns:
        A map-style dataset of ``(float32 [64], long scalar)`` items.
    """
    x_train, _, y_train, _ = _split()
    return DigitsDataset(x_train, y_train, augment=True)


def eval_data() -> Dataset:
    """Return the evaluation split (360 images), without augmentation.

    Returns:
        A map-style dataset of ``(float32 [64], long scalar)`` items.
    """
    _, x_eval, _, y_eval = _split()
    return DigitsDataset(x_eval, y_eval, augment=False)
