"""Dict items on real CPU DeepSpeed: a transformers-shaped classifier of variable-length
integer sequences (``model(**batch)``, a padding collate, an output with ``.loss`` and
``.logits``) trains and evaluates under every layout and precision a search tries."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from search_options import grid_search_options
from test_task import DICT_MODEL

from autotune import load_study, search
from autotune._plan import TrialConfig, detect_machine
from autotune._task import load_model_file, reference_settings
from autotune.runner import RunResult, WarmWorkers, remove_shm_buffers, run_trial

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


@pytest.mark.e2e
def test_the_plain_deepspeed_replay_trains_dict_items(
    write_model: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """benchmarks/replay_export.py, what a user's own script does with an export: the
    model file's collate, ``model(**batch)`` and the model's own loss, on 2 processes in bf16."""
    model_path = write_model(DICT_MODEL, "sequences.py")
    model_file = load_model_file(model_path)
    settings = {
        **reference_settings(8),
        "processes": 2,
        "precision": "bf16",
        "zero_stage": 2,
    }
    config = TrialConfig.from_settings(settings, model_file.optimizer, 16, "sqrt")
    (tmp_path / "ds_config.json").write_text(json.dumps(config.ds_config()))
    (tmp_path / "launch.json").write_text(json.dumps(config.launch_recipe(detect_machine())))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "replay_export.py"
    port = 29800 + os.getpid() % 500
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2"]
    command += ["--master_port", str(port), str(script), "--model", str(model_path)]
    command += ["--export", str(tmp_path), "--train-samples", "256"]
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    remove_shm_buffers(port)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "replay:" in result.stdout


@pytest.mark.e2e
def test_a_search_of_dict_items_measures_every_metric(
    write_model: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """Micro-batch 8 x 2 trains the reference's global batch, yet with padded items its splits
    weigh tokens differently: the trial measures its own metric instead of reusing one."""
    model_path = write_model(DICT_MODEL, "sequences.py")
    space = tmp_path / "space.yaml"
    space.write_text("micro_batch_size: [8]\ngradient_accumulation_steps: [2]\n")
    lines: list[str] = []
    search(
        grid_search_options(tmp_path, model_path, space, n_trials=2, train_samples=SAMPLES),
        print_line=lines.append,
    )
    study = load_study("sequences", f"sqlite:///{tmp_path}/study.db")
    assert study.user_attrs["metric_name"] == "negative eval loss"
    trials = [t for t in study.get_trials() if t.user_attrs.get("status") == "ok"]
    assert len(trials) == 2
    for trial in trials:
        assert trial.user_attrs.get("accuracy_reused_from") is None
        assert math.isfinite(trial.user_attrs["metric"]) and trial.user_attrs["eval_seconds"] > 0


@pytest.mark.e2e
def test_a_search_of_dict_items_records_pipelines_as_infeasible(
    write_model: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """Dict items without layers(): every other setting runs, and a pipeline proposal is
    recorded as infeasible with the reason instead of failing the search."""
    model_path = write_model(DICT_MODEL, "sequences.py")
    space = tmp_path / "space.yaml"
    space.write_text("processes: [2]\npipeline_stages: [1, 2]\n")
    lines: list[str] = []
    search(
        grid_search_options(tmp_path, model_path, space, n_trials=3, train_samples=SAMPLES),
        print_line=lines.append,
    )
    study = load_study("sequences", f"sqlite:///{tmp_path}/study.db")
    by_stages: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for trial in study.get_trials():
        by_stages[trial.user_attrs["settings"]["pipeline_stages"]].append(trial.user_attrs)
    assert [attrs["status"] for attrs in by_stages[1]] == ["ok", "ok"]  # reference, 2 processes
    assert [attrs["status"] for attrs in by_stages[2]] == ["infeasible"]
    reason = "pipeline stages need layers() in the model file"
    assert by_stages[2][0]["reason"] == reason
    assert any(line.endswith(f"skipped: {reason}") for line in lines)
