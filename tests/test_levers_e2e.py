"""The levers beside the batch and the layout (issue 19), on real CPU DeepSpeed: each reaches
the rank that trains, and keeps the numbers its rule says it keeps."""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from search_options import run_grid_search

from autotune import export
from autotune._machine import detect_machine
from autotune._plan import TrialConfig, automatic_threads
from autotune._records import (
    COMPILE_SECONDS,
    EVAL_LOSS,
    METRIC,
    PADDING,
    SAMPLES_TRAINED,
    TOKENS_PER_SECOND,
    TrialRecord,
)
from autotune._task import load_model_file, reference_settings
from autotune.cli.trials import run as print_trials
from autotune.runner import RunResult, run_trial

MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    BATCH_SIZE = 32

    class Points(Dataset):
        # Each item made on demand from its index: deterministic, as caching needs.
        def __len__(self):
            return 1200

        def __getitem__(self, index):
            x = torch.randn(16, generator=torch.Generator().manual_seed(index))
            return x, x[:4].argmax()

    def model():
        return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))

    def train_data():
        return Points()
    """
)
SAMPLES = 3072  # about three epochs of the 960 training items: later epochs read the cache


@pytest.fixture(scope="module")
def model_path(write_model: Callable[[str, str], Path]) -> Path:
    return write_model(MODEL, "points.py")


def _run(
    model_path: Path, folder: Path, batch: int = 32, **values: object
) -> tuple[RunResult, str]:
    model_file = load_model_file(model_path)
    settings = {**reference_settings(batch), **values}
    config = TrialConfig.from_settings(settings, model_file.optimizer, batch, "sqrt")
    result = run_trial(config, detect_machine(), model_path, SAMPLES, [0], folder, timeout=120)
    assert result.ok, result.failure_reason
    return result, (folder / "log.txt").read_text()


@pytest.mark.e2e
def test_cached_items_are_read_from_memory_and_train_the_same_numbers(
    model_path: Path, tmp_path: Path
) -> None:
    plain, _ = _run(model_path, tmp_path / "plain")
    cached, log = _run(model_path, tmp_path / "cached", cache_data=True)
    held = re.search(r"cache: ([\d,]+) items held, ([\d,]+) of ([\d,]+) reads from memory", log)
    assert held is not None, log
    items, hits, reads = (int(group.replace(",", "")) for group in held.groups())
    assert items == 960 and reads == SAMPLES and hits == SAMPLES - 960
    assert plain.measurements is not None and cached.measurements is not None
    assert cached.measurements[METRIC] == pytest.approx(plain.measurements[METRIC], abs=1e-6)
    assert cached.measurements[EVAL_LOSS] == pytest.approx(plain.measurements[EVAL_LOSS], rel=1e-6)


@pytest.mark.e2e
def test_a_thread_count_reaches_the_rank_and_keeps_the_numbers(
    model_path: Path, tmp_path: Path
) -> None:
    """Threads change only how a reduction is split: the same metric, the loss to 1e-5."""
    one, log = _run(model_path, tmp_path / "one", threads=1)
    assert "1 intra-op threads" in log
    automatic, log = _run(model_path, tmp_path / "auto")
    config = TrialConfig.from_settings(reference_settings(32), {"params": {"lr": 1e-3}}, 32, "none")
    assert f"{automatic_threads(config, detect_machine())} intra-op threads" in log
    assert one.measurements is not None and automatic.measurements is not None
    assert one.measurements[METRIC] == pytest.approx(automatic.measurements[METRIC], abs=1e-6)
    assert one.measurements[EVAL_LOSS] == pytest.approx(automatic.measurements[EVAL_LOSS], rel=1e-5)


@pytest.mark.e2e
def test_each_adam_kernel_reaches_the_engine_and_trains_the_same_numbers_to_rounding(
    model_path: Path, tmp_path: Path
) -> None:
    """DeepSpeed's FusedAdam op and torch's foreach and fused kernels do the same arithmetic in
    other orders (with the same weight decay): the same metric, the eval loss to 1e-5."""
    logged = {"deepspeed": "(FusedAdam)", "torch": "(AdamW", "torch_fused": "(AdamW (fused))"}
    runs = {}
    for impl, engine_line in logged.items():
        runs[impl], log = _run(model_path, tmp_path / impl, optimizer_impl=impl)
        assert engine_line in log.split("engine ready ")[1].splitlines()[0], log
    first = runs["deepspeed"].measurements
    assert first is not None
    for result in runs.values():
        assert result.measurements is not None
        assert result.measurements[METRIC] == pytest.approx(first[METRIC], abs=1e-6)
        assert result.measurements[EVAL_LOSS] == pytest.approx(first[EVAL_LOSS], rel=1e-5)


@pytest.mark.e2e
def test_a_compiled_model_records_its_compile_time_apart_and_trains_the_same_numbers(
    model_path: Path, tmp_path: Path
) -> None:
    """torch.compile fuses operators, so rounding differs: the same metric, the eval loss to
    1e-4; the compile time is its own record, outside the timed window."""
    plain, _ = _run(model_path, tmp_path / "plain")
    compiled, log = _run(model_path, tmp_path / "compiled", compile=True)
    assert "compiling the model with inductor" in log
    assert plain.measurements is not None and compiled.measurements is not None
    assert plain.measurements[COMPILE_SECONDS] is None
    assert compiled.measurements[COMPILE_SECONDS] > 0
    assert compiled.measurements[METRIC] == pytest.approx(plain.measurements[METRIC], abs=1e-6)
    assert compiled.measurements[EVAL_LOSS] == pytest.approx(
        plain.measurements[EVAL_LOSS], rel=1e-4
    )


BLOCKS = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    BATCH_SIZE = 32

    class Block(nn.Module):
        # A residual block with dropout: recomputing it must draw the same mask.
        def __init__(self):
            super().__init__()
            self.inner = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Dropout(0.1), nn.Linear(64, 16))

        def forward(self, x):
            return x + self.inner(x)

    def layers():
        return [nn.Linear(16, 16), Block(), Block(), nn.ReLU(), nn.Linear(16, 4)]

    def model():
        return nn.Sequential(*layers())

    def train_data():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(1200, 16, generator=g)
        return TensorDataset(x, x[:, :4].argmax(1))
    """
)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("layout", "logged"),
    [
        ({}, "activation checkpointing: 4 of 5 layers"),
        (
            {"processes": 2, "pipeline_stages": 2, "partition_method": "uniform"},
            "activation checkpointing: every layer with parameters, on each stage",
        ),
    ],
    ids=["layers", "pipeline"],
)
def test_activation_checkpointing_reaches_the_model_and_trains_the_same_numbers(
    write_model: Callable[[str, str], Path], tmp_path: Path, layout: dict[str, object], logged: str
) -> None:
    path = write_model(BLOCKS, "blocks.py")
    plain, _ = _run(path, tmp_path / "plain", **layout)
    checkpointed, log = _run(
        path, tmp_path / "checkpointed", activation_checkpointing=True, **layout
    )
    assert logged in log
    assert plain.measurements is not None and checkpointed.measurements is not None
    for name in (METRIC, EVAL_LOSS):
        assert checkpointed.measurements[name] == pytest.approx(
            plain.measurements[name], rel=1e-6, abs=1e-6
        )


SPACE = "cache_data: [false, true]\nthreads: [0, 1]\n"


@pytest.mark.e2e
def test_a_search_over_the_levers_records_and_exports_them(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each lever is a setting of the study's trials, a column of `autotune trials`, and part
    of the exported launch recipe; one thread is what threads 0 gives to 1-core machines only."""
    study, lines = run_grid_search(tmp_path, model_path, SPACE, train_samples=SAMPLES, n_trials=4)
    records = [TrialRecord.of(trial) for trial in study.trials]
    ran = {(r.settings["cache_data"], r.settings["threads"]) for r in records if r.is_ok}
    machine = detect_machine()
    one_thread = (0, 1) if machine.cores > 1 else (0,)
    assert ran == {(cache, threads) for cache in (False, True) for threads in one_thread}, lines
    assert any("cache" in line.split("]")[0] for line in lines if "trial" in line), lines

    print_trials(
        argparse.Namespace(study=None, storage=f"sqlite:///{tmp_path}/study.db", format="table")
    )
    header = capsys.readouterr().out.splitlines()[0].split()
    assert "cache" in header and ("threads" in header) == (machine.cores > 1)

    _, launch = export(study, tmp_path / "best")
    recipe = json.loads(launch.read_text())
    chosen = TrialRecord.of(study.trials[recipe["trial"]]).settings
    assert recipe["cache_data"] == chosen["cache_data"]
    config = TrialConfig.from_settings(chosen, {"params": {"lr": 1e-3}}, 32, "none")
    threads = chosen["threads"] or automatic_threads(config, machine)
    assert recipe["threads_per_process"] == threads
    assert recipe["command"].startswith(f"OMP_NUM_THREADS={threads} deepspeed")


SEQUENCES = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    BATCH_SIZE = 16

    class Sequences(Dataset):
        # Token ids 1-7 in sequences of 2 to 60, most short: is token 1 more common than 2?
        def __init__(self, count, seed):
            g = torch.Generator().manual_seed(seed)
            self.items = []
            for _ in range(count):
                length = 2 + int(torch.empty(1).exponential_(1 / 12, generator=g).clamp(max=58))
                ids = torch.randint(1, 8, (length,), generator=g)
                label = int((ids == 1).sum() > (ids == 2).sum())
                self.items.append({"input_ids": ids, "labels": torch.tensor(label)})

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
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.stack([item["labels"] for item in items])}

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(8, 32, padding_idx=0)
            self.head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))

        def forward(self, input_ids, attention_mask, labels):
            mask = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
            pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
            logits = self.head(pooled)
            return {"loss": nn.functional.cross_entropy(logits.float(), labels), "logits": logits}

    def model():
        return Bag()

    def train_data():
        return Sequences(1200, 0)

    def eval_data():
        return Sequences(300, 1)

    def metric(output, batch):
        return (output["logits"].argmax(-1) == batch["labels"]).float().mean().item()
    """
)


@pytest.fixture(scope="module")
def sequences_path(write_model: Callable[[str, str], Path]) -> Path:
    return write_model(SEQUENCES, "sequences.py")


@pytest.mark.e2e
def test_token_batching_pads_less_keeps_the_sample_budget_and_scales_each_steps_rate(
    sequences_path: Path, tmp_path: Path
) -> None:
    items, _ = _run(sequences_path, tmp_path / "items", 16)
    tokens, log = _run(sequences_path, tmp_path / "tokens", 16, batching="tokens")
    budget = re.search(r"micro-batches of at most ([\d,]+) padded tokens", log)
    assert budget is not None, log
    rates = re.search(r"learning rate x([\d.]+) to x([\d.]+) of the trial's", log)
    assert rates is not None, log
    assert float(rates.group(1)) < 1 < float(rates.group(2))  # steps of fewer and more items
    assert items.measurements is not None and tokens.measurements is not None
    assert tokens.measurements[PADDING] < items.measurements[PADDING] / 2
    # The budget is items, whatever each step holds: reached, and by less than one big step.
    assert SAMPLES <= tokens.measurements[SAMPLES_TRAINED] < SAMPLES + 16 * float(rates.group(2))
    assert items.measurements[SAMPLES_TRAINED] == SAMPLES
    assert tokens.measurements[TOKENS_PER_SECOND] > 0 and 0 <= tokens.measurements[METRIC] <= 1


@pytest.mark.e2e
def test_token_batching_trains_the_same_numbers_over_processes_as_with_accumulation(
    sequences_path: Path, tmp_path: Path
) -> None:
    """Its numerics rule: the micro-batches follow from the micro-batch size and each step's
    from the global batch, so one process accumulating two and two processes share a key and
    train the same model."""
    accumulating, _ = _run(
        sequences_path, tmp_path / "gas", 16, batching="tokens", gradient_accumulation_steps=2
    )
    ranks, _ = _run(sequences_path, tmp_path / "ranks", 16, batching="tokens", processes=2)
    assert accumulating.measurements is not None and ranks.measurements is not None
    for name in (METRIC, EVAL_LOSS):
        assert ranks.measurements[name] == pytest.approx(
            accumulating.measurements[name], rel=1e-5, abs=1e-6
        )
    assert ranks.measurements[SAMPLES_TRAINED] == accumulating.measurements[SAMPLES_TRAINED]


@pytest.mark.e2e
def test_a_search_over_batching_records_shows_and_exports_it(
    sequences_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study, lines = run_grid_search(
        tmp_path, sequences_path, "batching: [items, tokens]\n", train_samples=SAMPLES, n_trials=2
    )
    records = [TrialRecord.of(trial) for trial in study.trials]
    assert {r.settings["batching"] for r in records if r.is_ok} == {"items", "tokens"}, lines
    assert any("batch=tokens" in line for line in lines), lines
    print_trials(
        argparse.Namespace(study=None, storage=f"sqlite:///{tmp_path}/study.db", format="table")
    )
    header = capsys.readouterr().out.splitlines()[0].split()
    assert "batch" in header and "padding" in header
    _, launch = export(study, tmp_path / "best")
    recipe = json.loads(launch.read_text())
    assert recipe["batching"] == TrialRecord.of(study.trials[recipe["trial"]]).settings["batching"]
