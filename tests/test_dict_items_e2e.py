"""Dict items on real CPU DeepSpeed: a transformers-shaped classifier of variable-length
integer sequences (``model(**batch)``, a padding collate, an output with ``.loss`` and
``.logits``) trains and evaluates under every layout and precision a search tries."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
from test_task import DICT_MODEL

from autotune._plan import TrialConfig, detect_machine
from autotune._task import load_model_file, reference_settings
from autotune.runner import RunResult, WarmWorkers, run_trial

SAMPLES = 512
RUNS = {
    f"{processes} process(es), {precision}, ZeRO {zero}": {
        "processes": processes,
        "micro_batch_size": 16 // processes,
        "precision": precision,
        "zero_stage": zero,
    }
    for processes in (1, 2)
    for precision in ("fp32", "bf16")
    for zero in (0, 2)
}
RUNS["1 process, bf16, ZeRO 2, a DataLoader worker"] = {
    "num_workers": 1,
    "precision": "bf16",
    "zero_stage": 2,
}


@pytest.fixture(scope="module")
def runs(
    write_model: Callable[[str, str], Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, RunResult]:
    model_path = write_model(DICT_MODEL, "sequences.py")
    model_file = load_model_file(model_path)
    root = tmp_path_factory.mktemp("dict_items")
    machine = detect_machine()
    results = {}
    with WarmWorkers(root / "workers") as workers:
        for index, (name, values) in enumerate(RUNS.items()):
            settings = {**reference_settings(model_file.batch_size), **values}
            config = TrialConfig.from_settings(
                settings, model_file.optimizer, model_file.batch_size, "sqrt"
            )
            results[name] = run_trial(
                config,
                machine,
                model_path,
                SAMPLES,
                [0],
                root / f"run_{index}",
                180,
                workers=workers,
            )
    return results


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(RUNS))
def test_dict_items_train_and_evaluate(runs: dict[str, RunResult], name: str) -> None:
    result = runs[name]
    assert result.ok, result.failure_reason
    metric = result.measurements["metric"]
    # The default metric of dict items: the negative mean eval loss, finite and below zero.
    assert metric is not None and math.isfinite(metric) and metric < 0
    assert result.measurements["throughput"] > 0
