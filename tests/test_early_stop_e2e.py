"""A run that cannot win stops early (issue 17, item 4), and --timeout alone is a budget
(item 7): real CPU DeepSpeed runs. Each forward pass sleeps 20 ms, so throughput is the
micro-batch over about 20 ms: micro-batch 4 is 16 times slower than the reference's 64, whatever
the machine's load, and stops once its step time shows it; with --no-early-stop it trains its
whole budget."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from search_options import run_grid_search

from autotune._records import (
    BUDGET_STEPS,
    CANNOT_WIN,
    CANNOT_WIN_BELOW,
    MEASURED_STEPS,
    METRIC,
    STOPPED,
    THROUGHPUT,
    TrialRecord,
)
from autotune._score import is_feasible
from autotune.report import trials_frame
from autotune.study import CANNOT_WIN_MARGIN

MODEL = textwrap.dedent(
    """
    import time
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    BATCH_SIZE = 64

    class Slow(nn.Module):
        def forward(self, x):
            time.sleep(0.02)  # a fixed cost per micro-batch: throughput follows its size
            return x

    def model():
        return nn.Sequential(Slow(), nn.Linear(16, 4))

    def train_data():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2400, 16, generator=g)
        return TensorDataset(x, x[:, :4].argmax(1))
    """
)
SPACE = "micro_batch_size: [64, 4]\n"
SAMPLES = 1536  # micro-batch 4: 384 steps, about 8 s asleep; 64: 24 steps


@pytest.fixture(scope="module")
def model_path(write_model: Callable[[str, str], Path]) -> Path:
    return write_model(MODEL, "slow.py")


def _searched(folder: Path, model: Path, **values: object) -> tuple[optuna.Study, list[str]]:
    return run_grid_search(
        folder,
        model,
        SPACE,
        n_trials=2,
        train_samples=SAMPLES,
        min_measure_seconds=1.0,
        **{"early_stop": True, **values},
    )


def _slow(study: optuna.Study) -> optuna.trial.FrozenTrial:
    (trial,) = [
        t
        for t in study.get_trials(deepcopy=False)
        if TrialRecord.of(t).settings.get("micro_batch_size") == 4
        and TrialRecord.of(t).status != "repeat"
    ]
    return trial


@pytest.mark.e2e
def test_a_run_that_cannot_win_stops_early_with_its_throughput(
    tmp_path: Path, model_path: Path
) -> None:
    study, lines = _searched(tmp_path, model_path)
    slow = _slow(study)
    record = TrialRecord.of(slow)
    assert record.status == STOPPED, lines
    assert record.get(CANNOT_WIN) is True
    reference = study.trials[0]
    best = TrialRecord.of(reference).throughput
    assert best is not None and is_feasible(reference.constraints)
    assert record.get(CANNOT_WIN_BELOW) == pytest.approx(best * (1 - CANNOT_WIN_MARGIN))
    # It stopped well before its budget, with a throughput, and trained no metric.
    assert record.get(MEASURED_STEPS) < record.get(BUDGET_STEPS) / 2
    assert record.get(METRIC) is None
    throughput = record.get(THROUGHPUT)
    assert 0 < throughput < record.get(CANNOT_WIN_BELOW)
    assert slow.value == pytest.approx(throughput)
    assert not is_feasible(slow.constraints)  # never a candidate for the best
    assert any("samples/s cannot reach" in line for line in lines), lines
    # The report's table and plots show it as stopped early, with its throughput.
    frame = trials_frame(study)
    row = frame[frame["number"] == slow.number].iloc[0]
    assert row["status"] == STOPPED and bool(row[CANNOT_WIN])
    assert (tmp_path / "reports" / "slow.html").exists()
    assert "stopped early" in (tmp_path / "reports" / "slow.html").read_text()


@pytest.mark.e2e
def test_no_early_stop_trains_the_whole_budget(tmp_path: Path, model_path: Path) -> None:
    study, lines = _searched(tmp_path, model_path, early_stop=False)
    record = TrialRecord.of(_slow(study))
    assert record.status == "ok", lines
    assert record.get(MEASURED_STEPS) >= record.get(BUDGET_STEPS) - 3  # all but warm-up
    assert record.get(METRIC) is not None
    assert record.get(CANNOT_WIN_BELOW) is None and record.get(CANNOT_WIN) is False


@pytest.mark.e2e
def test_timeout_alone_ends_the_search_by_time(tmp_path: Path, model_path: Path) -> None:
    """Issue 17, item 7: `--timeout` without `--n-trials` searches as long as the time allows
    (Optuna starts no trial after it; the one running finishes)."""
    space = tmp_path / "space.yaml"
    space.write_text("micro_batch_size: [64, 32, 16, 8, 4]\ngradient_accumulation_steps: [1, 2]\n")
    result = subprocess.run(
        [sys.executable, "-m", "autotune.cli", "search", str(model_path), "--space", str(space)]
        + ["--timeout", "1", "--confirm", "0", "--train-samples", str(SAMPLES)]
        + ["--storage", f"sqlite:///{tmp_path}/study.db", "--sampler", "grid"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "searching for 1 s (--timeout)" in out, out
    assert "running (run 1, the reference; 0 done" in out, out
    assert "\r" not in out and "\x1b" not in out  # no live line into a pipe
    assert out.count(" running (run ") == 1, out  # the reference outlasts the timeout
