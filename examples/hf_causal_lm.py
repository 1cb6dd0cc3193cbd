"""A small GPT-2 learning to write Python, byte by byte (autotune example; needs transformers).

The text is real and ships with Python: the source of a fixed list of standard-library modules
(``argparse.py``, ``inspect.py`` and eight others, read from ``sysconfig.get_paths()["stdlib"]``),
so nothing is downloaded. Each file's UTF-8 bytes are the tokens (a vocabulary of 256), cut into
chunks of 32; the training set is every chunk of the ten modules (about 23,000), the evaluation
set 512 chunks at an even stride through two others (``configparser.py``, ``statistics.py``).
The modules are named, not found by listing the folder, so the data is the same on every machine
with the same Python version (from 3.11 on each is a plain file of the stdlib; its text changes
a little between versions).

The model is ``transformers.GPT2LMHeadModel`` built from a small ``GPT2Config`` (no download):
2 layers, width 256, 4 heads, 32 positions (1.7M parameters), dropout off so that training seeds
agree closely. Items are dicts ``{"input_ids", "attention_mask", "labels"}``; autotune calls
``model(**batch)`` and trains on the loss the model returns, and the metric is autotune's default
for dict items, the negative mean eval loss (nats per byte).

Under a fixed sample budget a larger micro-batch trains fewer steps, and this model is far from
converged, so that costs more than a 0.5% budget of loss; the speed is in what keeps the steps:
precision (bf16 pays where the CPU or GPU has bf16 matrix units), ZeRO stage, processes.

Install the extra and run it with::

    pip install '.[hf]'      # in autotune's folder: the hf extra, transformers
    autotune search examples/hf_causal_lm.py
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel

BATCH_SIZE = 32
EVAL_BATCH_SIZE = 128
OPTIMIZER = {"type": "AdamW", "params": {"lr": 5e-4, "weight_decay": 0.0}}

SEQ_LEN = 32
VOCAB_SIZE = 256  # one token per byte
TRAIN_MODULES = (
    "argparse.py",
    "ast.py",
    "dataclasses.py",
    "difflib.py",
    "enum.py",
    "functools.py",
    "inspect.py",
    "shutil.py",
    "subprocess.py",
    "threading.py",
)
EVAL_MODULES = ("configparser.py", "statistics.py")
EVAL_ITEMS = 512


def _chunks(modules: tuple[str, ...]) -> torch.Tensor:
    """The modules' bytes as ``[n, SEQ_LEN]`` int64 chunks, each file's tail dropped."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows = []
    for name in modules:
        data = (stdlib / name).read_bytes()
        usable = len(data) - len(data) % SEQ_LEN
        rows.append(torch.frombuffer(bytearray(data[:usable]), dtype=torch.uint8))
    return torch.cat(rows).view(-1, SEQ_LEN).long()


class ByteChunks(Dataset):
    """Fixed-length byte chunks as causal-LM items (the model shifts the labels itself).

    Args:
        chunks: Int64 tensor of shape ``[n, SEQ_LEN]``.
    """

    def __init__(self, chunks: torch.Tensor) -> None:
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.chunks[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def model() -> GPT2LMHeadModel:
    """A fresh 2-layer GPT-2 over bytes, dropout off."""
    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=SEQ_LEN,
        n_embd=256,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    net = GPT2LMHeadModel(config)
    net.loss_type = "ForCausalLM"  # the class name does not say it; saves a warning per rank
    return net


def train_data() -> Dataset:
    """Every chunk of the training modules (23,310 on Python 3.11)."""
    return ByteChunks(_chunks(TRAIN_MODULES))


def eval_data() -> Dataset:
    """512 chunks of the evaluation modules, at an even stride through them."""
    chunks = _chunks(EVAL_MODULES)
    return ByteChunks(chunks[:: len(chunks) // EVAL_ITEMS][:EVAL_ITEMS])
