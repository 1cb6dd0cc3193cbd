"""Tests for the example model files in ``examples/``.

Each example is imported by path, the way autotune imports a user's model file, checked against
the model-file contract and trained briefly with plain PyTorch to show that it learns.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"

# Example file name -> eval metric it must reach after TRAIN_SAMPLES training samples.
# (embedding_heavy.py is tested in test_partition.py; hf_*.py, dict items that need the [hf]
# extra, in test_hf_examples.py.)
THRESHOLDS = {"digits_mlp.py": 0.93, "synthetic_tokens.py": 0.9}
TRAIN_SAMPLES = 4096
SEED = 0


def load_example(name: str) -> ModuleType:
    """Import an example model file by path.

    Args:
        name: File name inside ``examples/``.

    Returns:
        The imported module.
    """
    path = EXAMPLES_DIR / name
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=sorted(THRESHOLDS))
def example(request: pytest.FixtureRequest) -> tuple[str, ModuleType]:
    """Each example as ``(file name, module)``, imported once per test module."""
    return request.param, load_example(request.param)


def default_metric(output: torch.Tensor, target: torch.Tensor) -> float:
    """Classification accuracy, autotune's default metric.

    Args:
        output: Logits of shape ``[batch, classes]``.
        target: Class indices of shape ``[batch]``.

    Returns:
        The fraction of correct arg-max predictions.
    """
    return (output.argmax(dim=-1) == target).float().mean().item()


def check_item(item: object) -> None:
    """Assert that a dataset item has the contract's ``(input, target)`` form.

    Args:
        item: One item of a dataset.
    """
    assert isinstance(item, tuple) and len(item) == 2
    x, y = item
    assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
    assert x.dtype.is_floating_point or x.dtype in (torch.int32, torch.int64)
    assert y.dtype == torch.long and y.dim() == 0


def train_and_evaluate(module: ModuleType, samples: int = TRAIN_SAMPLES, seed: int = SEED) -> float:
    """Train an example with plain PyTorch and return its eval metric.

    Uses AdamW with the example's ``OPTIMIZER`` params, its ``BATCH_SIZE``, its ``loss`` and
    ``metric`` hooks (or the defaults) and a shuffle driven by a seeded generator.

    Args:
        module: The imported example.
        samples: Number of training samples to see (several epochs if the set is smaller).
        seed: Seed for the model initialisation and the shuffle.

    Returns:
        The metric over the whole eval set.
    """
    torch.manual_seed(seed)
    net = module.model()
    optimizer = torch.optim.AdamW(net.parameters(), **module.OPTIMIZER["params"])
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = getattr(
        module, "loss", F.cross_entropy
    )
    metric_fn: Callable[[torch.Tensor, torch.Tensor], float] = getattr(
        module, "metric", default_metric
    )
    train_set: Dataset = module.train_data()
    loader = DataLoader(
        train_set,
        batch_size=module.BATCH_SIZE,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    net.train()
    seen = 0
    while seen < samples:
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(net(x), y).backward()
            optimizer.step()
            seen += len(y)
            if seen >= samples:
                break

    eval_set: Dataset = module.eval_data()
    x_eval, y_eval = next(iter(DataLoader(eval_set, batch_size=len(eval_set))))
    net.eval()
    with torch.no_grad():
        return metric_fn(net(x_eval), y_eval)


def test_contract(example: tuple[str, ModuleType]) -> None:
    """The example defines the required hooks with the right types."""
    _, module = example
    assert isinstance(module.BATCH_SIZE, int) and module.BATCH_SIZE > 0
    assert module.OPTIMIZER["type"] == "AdamW"
    assert isinstance(module.model(), nn.Module)
    for dataset in (module.train_data(), module.eval_data()):
        assert len(dataset) > 0
        check_item(dataset[0])
        check_item(dataset[len(dataset) - 1])

    x, y = next(iter(DataLoader(module.train_data(), batch_size=8)))
    output = module.model()(x)
    assert output.shape[0] == 8
    if hasattr(module, "loss"):
        value = module.loss(output, y)
        assert isinstance(value, torch.Tensor) and value.dim() == 0
    if hasattr(module, "metric"):
        assert isinstance(module.metric(output, y), float)


def test_layers_match_model(example: tuple[str, ModuleType]) -> None:
    """``nn.Sequential(*layers())`` and ``model()`` get identical weights under the same seed."""
    _, module = example
    torch.manual_seed(0)
    from_layers = nn.Sequential(*module.layers()).state_dict()
    torch.manual_seed(0)
    from_model = module.model().state_dict()
    assert from_layers.keys() == from_model.keys()
    for key, value in from_layers.items():
        assert torch.equal(value, from_model[key]), key


def test_layers_take_one_tensor(example: tuple[str, ModuleType]) -> None:
    """Each layer maps one tensor to one tensor, so a pipeline can split anywhere."""
    _, module = example
    x, _ = next(iter(DataLoader(module.train_data(), batch_size=4)))
    for layer in module.layers():
        x = layer(x)
        assert isinstance(x, torch.Tensor)


def test_digits_augmentation_is_deterministic() -> None:
    """A digits training item is the same on every access and on a fresh dataset."""
    module = load_example("digits_mlp.py")
    first, second = module.train_data(), module.train_data()
    for index in (0, 7, len(first) - 1):
        x1, y1 = first[index]
        x2, y2 = second[index]
        x3, _ = first[index]
        assert torch.equal(x1, x2) and torch.equal(x1, x3) and torch.equal(y1, y2)
        assert x1.shape == (64,) and x1.min() >= 0.0 and x1.max() <= 1.0
    # The augmentation does change the images.
    eval_like = module.DigitsDataset(first.images, first.labels, augment=False)
    assert not torch.equal(first[0][0], eval_like[0][0])


@pytest.mark.e2e  # trains each example to its threshold (seconds each)
def test_example_learns(example: tuple[str, ModuleType]) -> None:
    """A short plain-PyTorch training run clears the example's eval threshold."""
    name, module = example
    score = train_and_evaluate(module)
    assert score >= THRESHOLDS[name], f"{name}: eval metric {score:.3f} < {THRESHOLDS[name]}"
