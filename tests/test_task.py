"""The model file's contract: (input, target) pairs as before, and dict items passed as
``model(**batch)`` with a collate(), outputs with ``loss`` / ``logits`` and a streamed eval."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from autotune._batch import (
    batch_items,
    batch_tokens,
    cast_batch,
    default_loss,
    default_metric,
    evaluate,
    output_logits,
    output_loss,
)
from autotune._errors import UserError
from autotune._memory import measure_footprint
from autotune._task import (
    DEFAULT_EVAL_BATCH_SIZE,
    items_repeat,
    lengths_vary,
    load_model_file,
    load_task,
)

# A tiny classifier of variable-length integer sequences, shaped as a transformers model: it
# takes input_ids, attention_mask and labels and returns an object with .loss and .logits.
DICT_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    BATCH_SIZE = 16
    EVAL_BATCH_SIZE = 24
    VOCAB = 32


    class Output:
        def __init__(self, loss, logits):
            self.loss, self.logits = loss, logits


    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, 16, padding_idx=0)
            self.head = nn.Linear(16, 2)

        def forward(self, input_ids, attention_mask, labels=None):
            mask = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
            pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
            logits = self.head(pooled)
            loss = None
            if labels is not None:
                loss = nn.functional.cross_entropy(logits.float(), labels)
            return Output(loss, logits)


    class Sequences(Dataset):
        # Label: whether the sequence's mean token id is above the vocabulary's middle.
        def __init__(self, count, seed):
            g = torch.Generator().manual_seed(seed)
            self.items = []
            for _ in range(count):
                length = int(torch.randint(3, 12, (1,), generator=g))
                ids = torch.randint(1, VOCAB, (length,), generator=g)
                label = torch.tensor(int(ids.float().mean() > VOCAB / 2))
                self.items.append({"input_ids": ids, "labels": label})

        def __len__(self):
            return len(self.items)

        def __getitem__(self, index):
            return self.items[index]


    def collate(items):
        length = max(len(item["input_ids"]) for item in items)
        ids = torch.zeros(len(items), length, dtype=torch.long)
        mask = torch.zeros(len(items), length, dtype=torch.long)
        for row, item in enumerate(items):
            ids[row, : len(item["input_ids"])] = item["input_ids"]
            mask[row, : len(item["input_ids"])] = 1
        labels = torch.stack([item["labels"] for item in items])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


    def model():
        return Classifier()


    def train_data():
        return Sequences(640, 0)


    def eval_data():
        return Sequences(100, 1)
    """
)

PAIR_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset


    def model():
        return nn.Linear(8, 3)


    def train_data():
        g = torch.Generator().manual_seed(0)
        return TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g))
    """
)


class _Output:
    def __init__(self, loss: Any, logits: Any) -> None:
        self.loss, self.logits = loss, logits


@pytest.fixture(scope="module")
def dict_model(write_model: Callable[[str, str], Path]) -> Path:
    return write_model(DICT_MODEL, "sequences.py")


def test_dict_items_pass_the_preflight(dict_model: Path) -> None:
    task = load_task(dict_model)
    assert task.dict_items and task.items_vary and not task.float_inputs
    assert task.metric_name == "negative eval loss"
    assert task.model_file.eval_batch_size == 24
    assert (task.train_size, task.eval_size) == (640, 100)


def test_pair_files_keep_their_contract(write_model: Callable[[str, str], Path]) -> None:
    task = load_task(write_model(PAIR_MODEL, "pairs.py"))
    assert not task.dict_items and not task.items_vary and not task.model_file.has_collate
    assert task.metric_name == "accuracy"
    assert task.model_file.eval_batch_size == DEFAULT_EVAL_BATCH_SIZE
    assert task.model_file.collate is torch.utils.data.default_collate


def test_a_collate_alone_turns_accuracy_reuse_off(write_model: Callable[[str, str], Path]) -> None:
    text = (
        PAIR_MODEL + "\n\ndef collate(items):\n    return torch.utils.data.default_collate(items)\n"
    )
    task = load_task(write_model(text, "pairs_collate.py"))
    assert not task.dict_items and task.model_file.has_collate and task.items_vary


@pytest.mark.parametrize("value", ["0", "-3", "2.5", "True"])
def test_eval_batch_size_must_be_a_whole_number(
    write_model: Callable[[str, str], Path], value: str
) -> None:
    path = write_model(f"EVAL_BATCH_SIZE = {value}\n" + PAIR_MODEL, "bad_eval_batch.py")
    with pytest.raises(UserError, match="EVAL_BATCH_SIZE"):
        load_model_file(path)


def test_only_floating_tensors_are_cast() -> None:
    batch = {
        "input_ids": torch.tensor([[1, 2]]),
        "attention_mask": torch.tensor([[1, 1]]),
        "pixels": torch.randn(1, 2),
    }
    cast = cast_batch(batch, torch.bfloat16, torch.device("cpu"))
    assert cast["input_ids"].dtype == torch.long and cast["attention_mask"].dtype == torch.long
    assert cast["pixels"].dtype == torch.bfloat16
    inputs, targets = cast_batch((torch.randn(2, 3), torch.tensor([0, 1])), torch.float16, "cpu")
    assert inputs.dtype == torch.float16 and targets.dtype == torch.long


def test_outputs_of_every_shape_give_their_loss_and_logits() -> None:
    logits, loss = torch.randn(2, 3), torch.tensor(0.5)
    assert output_logits(logits) is logits
    assert output_logits((logits, "hidden")) is logits
    assert output_logits({"loss": loss, "logits": logits}) is logits
    assert output_logits(_Output(loss, logits)) is logits
    assert output_loss({"loss": loss}) is loss and output_loss(_Output(loss, logits)) is loss
    assert output_loss(logits) is None and output_loss(_Output(None, logits)) is None


def test_default_loss_and_metric_of_dict_batches_use_the_model_s_loss() -> None:
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long)}
    output = _Output(torch.tensor(0.25), torch.randn(2, 2))
    assert default_loss(output, batch).item() == 0.25
    assert default_metric(output, batch) == -0.25
    with pytest.raises(TypeError, match="no loss"):
        default_loss(torch.randn(2, 2), batch)


def test_default_loss_and_metric_of_pairs_take_the_logits() -> None:
    logits, target = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0])
    assert default_metric(_Output(None, logits), target) == 0.5
    expected = nn.functional.cross_entropy(logits, target)
    assert torch.allclose(default_loss((logits,), target), expected)


def test_dict_eval_streams_a_mean_weighted_by_items() -> None:
    batches = [{"x": torch.full((3, 1), 1.0)}, {"x": torch.full((1, 1), 5.0)}]
    seen: list[int] = []

    def metric(output: torch.Tensor, batch: dict[str, torch.Tensor]) -> float:
        seen.append(batch_items(batch))  # one batch's outputs at a time
        return float(output.mean())

    assert evaluate(lambda x: x, iter(batches), metric) == pytest.approx((3 * 1 + 5) / 4)
    assert seen == [3, 1]


def test_pair_eval_calls_the_metric_once_on_every_output() -> None:
    batches = [(torch.randn(3, 2), torch.zeros(3)), (torch.randn(2, 2), torch.zeros(2))]
    sizes: list[int] = []

    def metric(output: torch.Tensor, target: torch.Tensor) -> float:
        sizes.append(len(output))
        return 1.0

    assert evaluate(lambda x: x, batches, metric) == 1.0
    assert sizes == [5]


def test_a_metric_that_is_no_number_fails_the_eval() -> None:
    with pytest.raises(TypeError, match="number"):
        evaluate(lambda x: x, [{"x": torch.ones(2, 1)}], lambda output, batch: "high")


def test_memory_footprint_runs_the_collated_dict_batch(dict_model: Path) -> None:
    footprint = measure_footprint(load_model_file(dict_model))
    assert footprint.parameters == 32 * 16 + 16 * 2 + 2
    assert footprint.activation_bytes_per_sample > 0


def test_the_real_tokens_of_a_batch() -> None:
    """tokens/s counts what the attention mask marks, every id without one, and nothing for
    batches without input_ids."""
    ids = torch.ones(2, 5, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert batch_tokens({"input_ids": ids, "attention_mask": mask}) == 8
    assert batch_tokens({"input_ids": ids}) == 10
    assert batch_tokens({"pixels": torch.ones(2, 3)}) is None
    assert batch_tokens((ids, torch.zeros(2))) is None


def test_a_custom_metric_is_called_by_its_metric_name(write_model: Callable[..., Path]) -> None:
    metric = "\n\ndef metric(output, target):\n    return float((output.argmax(1) == target).float().mean())\n"
    named = load_task(write_model('METRIC_NAME = "top-1 accuracy"\n' + PAIR_MODEL + metric))
    assert named.metric_name == "top-1 accuracy"
    assert load_task(write_model(PAIR_MODEL + metric)).metric_name == "metric()"
    with pytest.raises(UserError, match="METRIC_NAME must be a non-empty string"):
        load_model_file(write_model("METRIC_NAME = 3\n" + PAIR_MODEL + metric))


AUGMENTED = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    class Jittered(Dataset):
        # Random augmentation: the same index gives a new item on each read.
        def __len__(self):
            return 64

        def __getitem__(self, index):
            return torch.randn(4) + index, index % 2

    def model():
        return nn.Linear(4, 2)

    def train_data():
        return Jittered()
    """
)


def test_the_preflight_tells_whether_items_repeat(write_model: Callable[[str, str], Path]) -> None:
    """What ``cache_data`` needs: the same index read twice gives an equal item."""
    assert load_task(write_model(AUGMENTED, "jittered.py")).items_repeat is False
    fixed = AUGMENTED.replace("torch.randn(4)", "torch.ones(4)")
    assert load_task(write_model(fixed, "fixed.py")).items_repeat is True
    assert items_repeat([{"ids": torch.arange(3), "label": 1}, (np.zeros(2), "text")])
    assert not items_repeat(_Noisy())


def test_the_preflight_tells_whether_items_vary_in_length(
    write_model: Callable[[str, str], Path],
) -> None:
    """What ``batching: tokens`` needs: dict items whose input_ids differ in length."""
    assert lengths_vary([{"input_ids": torch.arange(n)} for n in (3, 3, 5)])
    assert not lengths_vary([{"input_ids": torch.arange(4)} for _ in range(9)])
    assert not lengths_vary([{"input_ids": torch.zeros(2, 3)}, {"input_ids": torch.zeros(2, 5)}])
    assert not lengths_vary([(torch.zeros(3), 1), (torch.zeros(5), 0)])
    assert load_task(write_model(AUGMENTED, "pairs.py")).lengths_vary is False


class _Noisy:
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return np.random.rand(2), index
