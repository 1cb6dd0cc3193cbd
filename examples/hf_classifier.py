"""A small BERT telling kinds of Python lines apart (autotune example; needs transformers).

The text is real and ships with Python: lines of a fixed list of standard-library modules, read
from ``sysconfig.get_paths()["stdlib"]``, so nothing is downloaded. Each non-blank line is
labelled by a plain rule on its first word, which the model has to learn from the bytes:

- 0, comment: it starts with ``#``;
- 1, definition: ``def``, ``class``, ``async`` or a decorator (``@``);
- 2, block: ``if``, ``elif``, ``else``, ``for``, ``while``, ``try``, ``except``, ``finally``,
  ``with``;
- 3, other: everything else (assignments, calls, ``return``, imports, docstring text).

The classes are balanced: 1024 lines of each from ten training modules, 128 of each from two
other modules (``configparser.py``, ``statistics.py``) for evaluation, taken at even strides
through each module list. The modules are named, not found by listing the folder, so the data
is the same on every machine with the same Python version (from 3.11 on; their text changes a
little between versions).

A line, its indentation removed, becomes ``[CLS]`` and its first 32 UTF-8 bytes, so items have
different lengths (2 to 33 tokens); ``collate`` pads a batch to its longest line and builds the
attention mask. The model is ``transformers.BertForSequenceClassification`` built from a small
``BertConfig`` (no download): 2 layers, width 64, 4 heads, dropout off so that training seeds
agree closely. autotune calls ``model(**batch)`` and trains on the loss the model returns;
``metric`` is the accuracy of an eval batch.

Install the extra and run it with::

    pip install '.[hf]'      # in autotune's folder: the hf extra, transformers
    autotune search examples/hf_classifier.py
"""

from __future__ import annotations

import re
import sysconfig
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

BATCH_SIZE = 8
EVAL_BATCH_SIZE = 128
OPTIMIZER = {"type": "AdamW", "params": {"lr": 5e-4, "weight_decay": 0.0}}
METRIC_NAME = "accuracy"  # what metric() below computes, as the output and report call it

MAX_BYTES = 32
PAD_ID = 0
CLS_ID = 1
VOCAB_SIZE = 258  # pad, [CLS], then one token per byte
KINDS = ("comment", "definition", "block", "other")
TRAIN_MODULES = (
    "argparse.py",
    "ast.py",
    "dataclasses.py",
    "difflib.py",
    "enum.py",
    "functools.py",
    "inspect.py",
    "shutil.py",
    "threading.py",
    "typing.py",
)
EVAL_MODULES = ("configparser.py", "statistics.py")
TRAIN_PER_KIND = 1024
EVAL_PER_KIND = 128

_FIRST_WORD = re.compile(r"[A-Za-z_]\w*")
_DEFINITIONS = {"def", "class", "async"}
_BLOCKS = {"if", "elif", "else", "for", "while", "try", "except", "finally", "with"}


def line_kind(line: str) -> int:
    """The label of a source line: its index in ``KINDS``, by the line's first word."""
    text = line.lstrip()
    if text.startswith("#"):
        return 0
    match = _FIRST_WORD.match(text)
    word = match.group() if match else ""
    if word in _DEFINITIONS or text.startswith("@"):
        return 1
    if word in _BLOCKS:
        return 2
    return 3


def _lines(modules: tuple[str, ...], per_kind: int) -> list[tuple[bytes, int]]:
    """``per_kind`` lines of each kind, at even strides through the modules' non-blank lines,
    each without its indentation and cut to ``MAX_BYTES``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    by_kind: list[list[str]] = [[] for _ in KINDS]
    for name in modules:
        for line in (stdlib / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                by_kind[line_kind(line)].append(line)
    picked = []
    for kind, lines in enumerate(by_kind):
        if len(lines) < per_kind:
            raise ValueError(f"only {len(lines)} {KINDS[kind]} lines in {modules}")
        for i in range(per_kind):
            line = lines[i * len(lines) // per_kind]
            picked.append((line.strip().encode("utf-8")[:MAX_BYTES], kind))
    return picked


class SourceLines(Dataset):
    """Labelled source lines as unpadded items: ``input_ids`` (``[CLS]`` and the bytes) and
    ``labels``.

    Args:
        lines: ``(line bytes, kind)`` pairs.
    """

    def __init__(self, lines: list[tuple[bytes, int]]) -> None:
        self.lines = lines

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        text, kind = self.lines[index]
        ids = torch.tensor([CLS_ID, *(byte + 2 for byte in text)], dtype=torch.long)
        return {"input_ids": ids, "labels": torch.tensor(kind)}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest line: ``input_ids`` with ``PAD_ID``, an ``attention_mask``
    of ones over the real tokens, and the ``labels`` stacked."""
    length = max(len(item["input_ids"]) for item in items)
    ids = torch.full((len(items), length), PAD_ID, dtype=torch.long)
    mask = torch.zeros(len(items), length, dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, : len(item["input_ids"])] = item["input_ids"]
        mask[row, : len(item["input_ids"])] = 1
    labels = torch.stack([item["labels"] for item in items])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def model() -> BertForSequenceClassification:
    """A fresh 2-layer BERT over bytes with a 4-way head, dropout off."""
    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=MAX_BYTES + 1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
        pad_token_id=PAD_ID,
        num_labels=len(KINDS),
    )
    return BertForSequenceClassification(config)


def train_data() -> Dataset:
    """4096 training lines, 1024 of each kind."""
    return SourceLines(_lines(TRAIN_MODULES, TRAIN_PER_KIND))


def eval_data() -> Dataset:
    """512 evaluation lines from other modules, 128 of each kind."""
    return SourceLines(_lines(EVAL_MODULES, EVAL_PER_KIND))


def metric(output: SequenceClassifierOutput, batch: dict[str, torch.Tensor]) -> float:
    """The accuracy of one eval batch (higher is better): the share of lines whose arg-max
    logit is their kind."""
    return (output.logits.argmax(dim=-1) == batch["labels"]).float().mean().item()
