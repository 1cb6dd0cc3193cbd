"""The Hugging Face examples (``examples/hf_*.py``): their data is what their docstrings say, they
pass the preflight, and one real trial of each trains on 2 processes in bf16. Skipped without
transformers (the ``hf`` extra: ``pip install '.[hf]'``)."""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import pytest
import torch
from test_examples import load_example

pytest.importorskip("transformers")

from autotune._machine import detect_machine
from autotune._plan import TrialConfig
from autotune._task import load_model_file, load_task, reference_settings  # noqa: E402
from autotune.runner import run_trial  # noqa: E402

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
# Example file -> how the study names its metric.
METRIC_NAMES = {"hf_causal_lm.py": "negative eval loss", "hf_classifier.py": "accuracy"}
TRIAL_SAMPLES = 256


@pytest.mark.parametrize("name", sorted(METRIC_NAMES))
def test_the_preflight_accepts_the_example(name: str) -> None:
    task = load_task(EXAMPLES_DIR / name)
    assert task.dict_items and task.items_vary and not task.has_layers
    assert task.metric_name == METRIC_NAMES[name]
    assert task.model_file.has_eval_data


def test_the_language_model_reads_fixed_byte_chunks() -> None:
    module = load_example("hf_causal_lm.py")
    train, evaluation = module.train_data(), module.eval_data()
    assert len(train) >= 8192 and len(evaluation) == module.EVAL_ITEMS
    item = train[0]
    assert set(item) == {"input_ids", "attention_mask", "labels"}
    assert item["input_ids"].shape == (module.SEQ_LEN,) and item["input_ids"].dtype == torch.long
    assert torch.equal(item["labels"], item["input_ids"]) and bool(item["attention_mask"].all())
    # The first training chunk is the first 64 bytes of the first training module.
    first_module = Path(sysconfig.get_paths()["stdlib"]) / module.TRAIN_MODULES[0]
    assert bytes(item["input_ids"].tolist()) == first_module.read_bytes()[: module.SEQ_LEN]
    assert torch.equal(module.train_data()[123]["input_ids"], train[123]["input_ids"])


def test_the_classifier_reads_balanced_lines_of_every_length() -> None:
    module = load_example("hf_classifier.py")
    train, evaluation = module.train_data(), module.eval_data()
    for data, per_kind in ((train, module.TRAIN_PER_KIND), (evaluation, module.EVAL_PER_KIND)):
        labels = torch.stack([data[i]["labels"] for i in range(len(data))])
        assert torch.bincount(labels).tolist() == [per_kind] * len(module.KINDS)
    lengths = {len(train[i]["input_ids"]) for i in range(len(train))}
    assert min(lengths) < 8 and max(lengths) == module.MAX_BYTES + 1
    kinds = {"    # a comment": 0, "@cache": 1, "else:": 2, "iffy = if_ + 1": 3}
    assert {line: module.line_kind(line) for line in kinds} == kinds


def test_the_classifier_collate_pads_and_masks() -> None:
    module = load_example("hf_classifier.py")
    data = module.train_data()
    items = [data[0], data[len(data) - 1]]
    batch = module.collate(items)
    longest = max(len(item["input_ids"]) for item in items)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, longest)
    for row, item in enumerate(items):
        length = len(item["input_ids"])
        assert torch.equal(batch["input_ids"][row, :length], item["input_ids"])
        assert bool((batch["input_ids"][row, length:] == module.PAD_ID).all())
        assert int(batch["attention_mask"][row].sum()) == length
    assert batch["labels"].tolist() == [int(item["labels"]) for item in items]
    output = module.model()(**batch)
    assert 0.0 <= module.metric(output, batch) <= 1.0


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(METRIC_NAMES))
def test_a_trial_trains_the_example_on_two_processes_in_bf16(name: str, tmp_path: Path) -> None:
    model_path = EXAMPLES_DIR / name
    model_file = load_model_file(model_path)
    settings = {
        **reference_settings(model_file.batch_size),
        "processes": 2,
        "micro_batch_size": max(1, model_file.batch_size // 2),
        "precision": "bf16",
    }
    config = TrialConfig.from_settings(
        settings, model_file.optimizer, model_file.batch_size, "sqrt"
    )
    result = run_trial(
        config, detect_machine(), model_path, TRIAL_SAMPLES, [0], tmp_path / "trial", 180
    )
    assert result.ok, result.failure_reason
    metric = result.measurements["metric"]
    assert metric is not None and math.isfinite(metric)
    if name == "hf_classifier.py":
        assert 0.0 <= metric <= 1.0
    else:
        assert metric < 0  # the negative eval loss
    assert result.measurements["throughput"] > 0
