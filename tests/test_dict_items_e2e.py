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
from search_options import grid_search_options, run_grid_search
from test_task import DICT_MODEL

from autotune import export, search
from autotune._errors import UserError
from autotune._machine import detect_machine
from autotune._plan import TrialConfig
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
# ZeRO 1 and 3 on two processes, where they partition something.
RUNS.update(
    {
        f"2 processes, {precision}, ZeRO {zero}": {
            "processes": 2,
            "micro_batch_size": 8,
            "precision": precision,
            "zero_stage": zero,
        }
        for precision, zero in (("bf16", 1), ("bf16", 3), ("fp32", 3))
    }
)
RUNS["1 process, bf16, ZeRO 2, a DataLoader worker"] = {
    "num_workers": 1,
    "precision": "bf16",
    "zero_stage": 2,
}


# The same model, noting in a file beside it what each rank's data saw of the tokenizers'
# parallelism when train_data() ran.
NOTING_MODEL = DICT_MODEL.replace(
    """
def train_data():
""",
    """
def train_data():
    import os
    from pathlib import Path

    with open(Path(__file__).with_suffix(".env"), "a") as notes:
        notes.write(f"{os.environ.get('TOKENIZERS_PARALLELISM')}\\n")
""",
)


@pytest.fixture(scope="module")
def noting_model(write_model: Callable[[str, str], Path]) -> Path:
    return write_model(NOTING_MODEL, "sequences.py")


@pytest.fixture(scope="module")
def runs(noting_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunResult]:
    model_path = noting_model
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
    # Real tokens per item over the timed window, from every rank: the items hold 3 to 11
    # token ids, the padding up to the longest in each batch does not count.
    tokens_per_item = result.measurements["tokens_per_second"] / result.measurements["throughput"]
    assert 5 <= tokens_per_item <= 9, tokens_per_item


@pytest.mark.e2e
def test_trials_with_dataloader_workers_turn_tokenizers_parallelism_off(
    runs: dict[str, RunResult], noting_model: Path
) -> None:
    assert all(result.ok for result in runs.values())
    notes = noting_model.with_suffix(".env").read_text().split()
    # One note per rank and run: the runs without workers leave it alone, and the last run,
    # with a worker, turned it off before its data was made.
    assert notes[0] == "None" and notes[-1] == "false", notes


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
def test_a_search_of_dict_items_by_tokens_measures_every_metric(
    write_model: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """Micro-batch 8 x 2 trains the reference's global batch, yet with padded items its splits
    weigh tokens differently: the trial measures its own metric instead of reusing one. Under
    ``--objective tokens`` each trial's value is its real tokens/s, which the export and the
    report show, and the study cannot be resumed for samples/s."""
    model_path = write_model(DICT_MODEL, "sequences.py")
    study, lines = run_grid_search(
        tmp_path,
        model_path,
        "micro_batch_size: [8]\ngradient_accumulation_steps: [2]\n",
        n_trials=2,
        train_samples=SAMPLES,
        objective="tokens",
    )
    assert study.user_attrs["metric_name"] == "negative eval loss"
    trials = [t for t in study.get_trials() if t.user_attrs.get("status") == "ok"]
    assert len(trials) == 2
    for trial in trials:
        assert trial.user_attrs.get("accuracy_reused_from") is None
        assert math.isfinite(trial.user_attrs["metric"]) and trial.user_attrs["eval_seconds"] > 0
        assert trial.value == trial.user_attrs["tokens_per_second"] > trial.user_attrs["throughput"]
    assert any("tokens/s" in line for line in lines)
    _, launch = export(study, tmp_path / "export", trials[1].number)
    measured = json.loads(launch.read_text())["measured"]
    assert measured["tokens_per_s_runs"] == [trials[1].user_attrs["tokens_per_second"]]
    assert measured["throughput_samples_per_s"] == trials[1].user_attrs["throughput"]
    report = next((tmp_path / "reports").glob("*.html")).read_text()
    assert "tokens/s" in report
    resumed = grid_search_options(
        tmp_path, model_path, tmp_path / "space.yaml", n_trials=2, train_samples=SAMPLES
    )
    with pytest.raises(UserError, match="--objective"):
        search(resumed, print_line=lines.append)


# Token tagging with a loss that is the mean over each micro-batch's real tokens, as a
# transformers language model computes it: how a global batch is cut into micro-batches
# changes the gradient, because micro-batches hold different numbers of tokens.
TOKEN_MEAN_MODEL = DICT_MODEL.replace(
    """
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        logits = self.head(pooled)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels)
""",
    """
        logits = self.head(self.embed(input_ids) * mask)
        loss = None
        if labels is not None:
            tags = (input_ids > VOCAB // 2).long().masked_fill(attention_mask == 0, -100)
            loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), tags.flatten())
""",
)


@pytest.mark.e2e
def test_splits_with_one_micro_batch_train_alike_and_others_do_not(
    write_model: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """Variable-length items under a token-mean loss: two splits of a global batch of 16 into
    micro-batches of 8 (accumulated on one process, or over two processes) give the same metric
    and share a numerics key, so reuse between them is allowed; one micro-batch of 16 trains
    other numbers, and its key differs, so reuse is refused."""
    assert TOKEN_MEAN_MODEL != DICT_MODEL
    model_path = write_model(TOKEN_MEAN_MODEL, "tags.py")
    model_file = load_model_file(model_path)
    splits = {
        "8 x 2 accumulated": {"micro_batch_size": 8, "gradient_accumulation_steps": 2},
        "8 on 2 processes": {"micro_batch_size": 8, "processes": 2},
        "16 at once": {"micro_batch_size": 16},
    }
    configs = {
        name: TrialConfig.from_settings(
            {**reference_settings(16), **values}, model_file.optimizer, 16, "sqrt"
        )
        for name, values in splits.items()
    }
    metrics = {}
    with WarmWorkers(tmp_path / "workers") as workers:
        for name, config in configs.items():
            result = run_trial(
                config,
                detect_machine(),
                model_path,
                SAMPLES,
                [0],
                tmp_path / name,
                180,
                workers=workers,
            )
            assert result.ok, result.failure_reason
            metrics[name] = result.measurements["metric"]
    keys = {name: config.numerics_key(items_vary=True) for name, config in configs.items()}
    assert keys["8 x 2 accumulated"] == keys["8 on 2 processes"] != keys["16 at once"]
    # Without varying items the three would share one key: the plain key is not enough here.
    assert len({config.numerics_key() for config in configs.values()}) == 1
    alike = abs(metrics["8 x 2 accumulated"] - metrics["8 on 2 processes"])
    differ = abs(metrics["8 x 2 accumulated"] - metrics["16 at once"])
    assert alike <= 1e-5 * abs(metrics["16 at once"]), metrics
    assert differ > 20 * max(alike, 1e-7), metrics


@pytest.mark.e2e
def test_a_search_of_dict_items_records_pipelines_as_infeasible(
    write_model: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """Dict items without layers(): every other setting runs, and a pipeline proposal is
    recorded as infeasible with the reason instead of failing the search."""
    model_path = write_model(DICT_MODEL, "sequences.py")
    study, lines = run_grid_search(
        tmp_path,
        model_path,
        "processes: [2]\npipeline_stages: [1, 2]\n",
        n_trials=3,
        train_samples=SAMPLES,
    )
    by_stages: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for trial in study.get_trials():
        by_stages[trial.user_attrs["settings"]["pipeline_stages"]].append(trial.user_attrs)
    assert [attrs["status"] for attrs in by_stages[1]] == ["ok", "ok"]  # reference, 2 processes
    assert [attrs["status"] for attrs in by_stages[2]] == ["infeasible"]
    reason = "pipeline stages need layers() in the model file"
    assert by_stages[2][0]["reason"] == reason
    assert any(line.endswith(f"skipped: {reason}") for line in lines)
