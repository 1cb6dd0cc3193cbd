"""Tests of the HTML report: the gathered plot data, and the rendered page."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest

from autotune import report
from autotune.report import report_info, trials_frame

BUDGET = 0.01


def _trial(
    number: int,
    status: str = "ok",
    *,
    role: str = "search",
    throughput: float = math.nan,
    accuracy_loss: float = math.nan,
    feasible: bool | None = None,
    reason: str = "",
    **settings: Any,
) -> dict[str, Any]:
    """One frame row; `feasible` defaults to the rule ok/repeat and loss <= budget."""
    if feasible is None:
        feasible = status in ("ok", "repeat") and accuracy_loss <= BUDGET
    row: dict[str, Any] = {
        "number": number,
        "role": role,
        "status": status,
        "micro_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "precision": "fp32",
        "zero_stage": 0,
        "processes": 1,
        "pipeline_stages": 1,
        "partition_method": None,
        "num_workers": 0,
        "pin_memory": False,
        "prefetch_factor": None,
        "global_batch_size": 8,
        "learning_rate": 1e-3,
        "throughput": throughput,
        "accuracy_loss": accuracy_loss,
        "metric": math.nan,
        "feasible": feasible,
        "peak_memory_bytes": 3 * 2**30 if status in ("ok", "repeat") else math.nan,
        "step_time_p50": 0.05,
        "step_time_p90": 0.07,
        "measured_seconds": 10.0,
        "wall_seconds": 25.0,
        "reason": reason,
        "datetime_start": pd.Timestamp("2025-01-01 12:00") + pd.Timedelta(minutes=number),
    }
    row.update(settings)
    return row


def _info(**overrides: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "study": "demo",
        "model": "examples/mlp.py",
        "train_samples": 4096,
        "max_accuracy_loss": BUDGET,
        "reference_metric": 0.91,
        "reference_noise": 0.002,
        "metric_name": "accuracy",
        "eval_source": "eval_data()",
        "best_number": None,
        "reference_number": 0,
        "machine": "cpu, 2 cores",
    }
    info.update(overrides)
    return info


@pytest.fixture
def frame() -> pd.DataFrame:
    """A reference, a faster feasible trial, one over budget, one infeasible, one failed."""
    return pd.DataFrame(
        [
            _trial(0, role="reference", throughput=100.0, accuracy_loss=0.0),
            _trial(1, throughput=300.0, accuracy_loss=0.05, precision="fp16"),
            _trial(2, "infeasible", reason="pipeline_stages 4 needs <= 2 processes"),
            _trial(3, throughput=250.0, accuracy_loss=0.003, precision="bf16", micro_batch_size=32),
            _trial(4, "failed", reason="oom: CUDA out of memory"),
            _trial(5, throughput=120.0, accuracy_loss=-0.001),
            _trial(6, "repeat", throughput=250.0, accuracy_loss=0.003, precision="bf16"),
            _trial(7, "running"),
        ]
    )


# --- history ---------------------------------------------------------------------------------


def test_running_best_is_monotone_and_counts_only_feasible_trials(frame: pd.DataFrame) -> None:
    history = report.get_history_info(frame, _info(best_number=3))

    assert history.best_numbers == (0, 1, 2, 3, 4, 5, 6, 7)
    # Trial 1 is faster (300) but over the budget, so the line stays at 100 until trial 3.
    assert history.best_throughputs == (100.0, 100.0, 100.0, 250.0, 250.0, 250.0, 250.0, 250.0)
    assert all(
        a <= b for a, b in zip(history.best_throughputs, history.best_throughputs[1:], strict=False)
    )


def test_running_best_starts_at_the_first_feasible_trial() -> None:
    frame = pd.DataFrame(
        [
            _trial(0, role="reference", throughput=100.0, accuracy_loss=0.0, feasible=False),
            _trial(1, "failed", reason="timeout"),
            _trial(2, throughput=80.0, accuracy_loss=0.0),
            _trial(3, throughput=90.0, accuracy_loss=0.0),
        ]
    )

    history = report.get_history_info(frame, _info())

    assert history.best_numbers == (2, 3)
    assert history.best_throughputs == (80.0, 90.0)


def test_history_categories_and_unmeasured_trials_at_zero(frame: pd.DataFrame) -> None:
    history = report.get_history_info(frame, _info(best_number=3))

    by_number = {point.number: point for point in history.points}
    assert [point.number for point in history.points] == list(range(8))
    assert by_number[0].category == "feasible"
    assert by_number[1].category == "over budget"
    assert by_number[2].category == "infeasible"
    assert by_number[4].category == "failed"
    assert by_number[7].category == "running"
    assert by_number[6].category == "feasible"
    assert by_number[1].throughput == 300.0
    assert {by_number[n].throughput for n in (2, 4, 7)} == {0.0}


def test_history_shows_confirmation_runs_beside_their_trial() -> None:
    frame = pd.DataFrame(
        [
            _trial(0, role="reference", throughput=100.0, accuracy_loss=0.0),
            _trial(1, throughput=150.0, accuracy_loss=0.0),
            _trial(2, "repeat", throughput=150.0, accuracy_loss=0.0),
        ]
    )
    frame["throughput_runs"] = [[100.0, 95.0, 105.0], [150.0, 120.0, 130.0], [150.0, 120.0, 130.0]]

    history = report.get_history_info(frame, _info(best_number=1))

    # The trial's own window is its point; a repeat's windows are its original's, drawn once.
    assert history.confirmation_numbers == (0, 0, 1, 1)
    assert history.confirmation_throughputs == (95.0, 105.0, 120.0, 130.0)
    figure = report.render_history(history)
    assert any(trace.name == "confirmation runs" for trace in figure.data)


def test_history_hover_gives_the_reason_escaped(frame: pd.DataFrame) -> None:
    history = report.get_history_info(frame, _info(best_number=3))

    hover = {point.number: point.hover for point in history.points}
    assert "pipeline_stages 4 needs &lt;= 2 processes" in hover[2]
    assert "<= 2" not in hover[2]
    assert "oom: CUDA out of memory" in hover[4]
    assert "(best)" in hover[3]
    assert "(reference)" in hover[0]
    assert "precision=bf16" in hover[3]


def test_history_hover_shortens_a_long_reason() -> None:
    reason = "error: exit status 1: " + "x" * 2000
    frame = pd.DataFrame([_trial(0, "failed", reason=reason)])

    hover = report.get_history_info(frame, _info()).points[0].hover

    assert "…" in hover
    assert len(hover) < 1000


# --- best vs reference -------------------------------------------------------------------------


def test_best_info_speedup_and_differing_settings(frame: pd.DataFrame) -> None:
    best = report.get_best_info(frame, _info(best_number=3))

    assert best.message is None
    assert (best.reference_number, best.best_number) == (0, 3)
    assert best.reference_throughput == 100.0
    assert best.best_throughput == 250.0
    assert best.speedup == pytest.approx(2.5)
    rows = {row.label: row for row in best.rows}
    assert rows["speed-up vs reference"].best == "2.50×"
    assert rows["accuracy loss"].best == "0.30%"
    assert rows["peak memory"].best == "3.00 GiB"
    assert rows["precision"].differs and rows["micro_batch_size"].differs
    assert (rows["precision"].reference, rows["precision"].best) == ("fp32", "bf16")
    assert not rows["zero_stage"].differs


def test_best_info_uses_the_median_of_confirmed_windows(frame: pd.DataFrame) -> None:
    frame = frame.copy()
    frame["throughput_runs"] = [None] * len(frame)
    frame["estimated_throughput"] = math.nan
    for number, runs in ((0, [100.0, 80.0, 90.0]), (3, [250.0, 200.0, 210.0])):
        index = frame.index[frame.number == number][0]
        frame.at[index, "throughput_runs"] = runs
        frame.at[index, "estimated_throughput"] = sorted(runs)[1]

    best = report.get_best_info(frame, _info(best_number=3))

    assert (best.reference_throughput, best.best_throughput) == (90.0, 210.0)
    assert best.speedup == pytest.approx(210.0 / 90.0)
    rows = {row.label: row for row in best.rows}
    assert rows["timed windows (samples/s)"].best == "250.0, 200.0, 210.0"


def test_best_info_without_feasible_trial_gives_the_sentence(frame: pd.DataFrame) -> None:
    best = report.get_best_info(frame, _info(best_number=None))

    assert best.best_number is None
    assert best.speedup is None
    assert best.message is not None
    assert best.message.startswith("No feasible trial yet")
    assert "1.00%" in best.message
    html = report.render_best(best)
    assert "No feasible trial yet" in html
    assert "<th>best</th>" not in html
    assert "<th>reference</th>" in html


def test_best_info_when_the_reference_failed() -> None:
    frame = pd.DataFrame(
        [_trial(0, "failed", role="reference", reason="oom"), _trial(1, "infeasible")]
    )

    best = report.get_best_info(frame, _info())

    assert best.reference_throughput is None
    assert best.message is not None
    assert "no measured throughput: oom" in best.message


# --- header ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "noise", "warned"),
    [(0.001, 0.004, True), (0.004, 0.004, False), (0.01, 0.004, False), (0.001, None, False)],
)
def test_noise_warning_exactly_when_budget_below_noise(
    budget: float, noise: float | None, warned: bool
) -> None:
    info = _info(max_accuracy_loss=budget, reference_noise=noise)

    header = report.get_header_info(pd.DataFrame(), info)

    assert header.budget_below_noise is warned
    assert ("Warning:" in report.render_header(header)) is warned


def test_header_shows_facts_and_eval_source(frame: pd.DataFrame) -> None:
    info = _info(eval_source="held-out 20% of train_data(), as the model file has no eval_data()")

    header = report.get_header_info(frame, info)
    html = report.render_header(header)

    assert dict(header.status_counts) == {
        "ok": 4,
        "infeasible": 1,
        "failed": 1,
        "repeat": 1,
        "running": 1,
    }
    assert "held-out 20% of train_data(), as the model file has no eval_data()" in html
    assert "cpu, 2 cores" in html
    assert "4,096" in html
    assert "1.00% (reference seed-to-seed noise: 0.20%)" in html


# --- throughput vs accuracy loss ---------------------------------------------------------------


def test_tradeoff_points_are_ok_trials_with_roles(frame: pd.DataFrame) -> None:
    tradeoff = report.get_tradeoff_info(frame, _info(best_number=3))

    points = {point.number: point for point in tradeoff.points}
    assert sorted(points) == [0, 1, 3, 5]
    assert points[3].accuracy_loss_percent == pytest.approx(0.3)
    assert points[3].throughput == 250.0
    assert points[3].role == "best"
    assert points[0].role == "reference"
    assert points[1].role == "" and not points[1].feasible
    assert points[5].feasible
    assert tradeoff.budget_percent == pytest.approx(1.0)
    assert tradeoff.noise_percent == pytest.approx(0.2)
    assert "micro_batch_size=32" in points[3].hover


def test_tradeoff_keeps_a_best_trial_that_is_a_repeat(frame: pd.DataFrame) -> None:
    tradeoff = report.get_tradeoff_info(frame, _info(best_number=6))

    roles = {point.number: point.role for point in tradeoff.points}
    assert roles[6] == "best"


# --- accuracy by global batch (issue 18) -------------------------------------------------------


def test_batches_group_scored_runs_and_predict_their_samples() -> None:
    frame = pd.DataFrame(
        [
            _trial(0, role="reference", throughput=100.0, accuracy_loss=0.0),
            _trial(1, throughput=150.0, accuracy_loss=0.003, global_batch_size=16),
            _trial(2, throughput=160.0, accuracy_loss=0.001, global_batch_size=16),
            _trial(3, throughput=300.0, accuracy_loss=0.05, global_batch_size=64),
            _trial(4, "probed", throughput=310.0, global_batch_size=128),
            _trial(5, "failed", reason="timeout", global_batch_size=256),
        ]
    )
    batches = report.get_batch_info(frame, _info(noise_scale=32.0, reference_batch=8))

    assert [row.batch for row in batches.rows] == [8, 16, 64]
    sixteen = batches.rows[1]
    assert sixteen.numbers == (1, 2)
    assert sixteen.losses_percent == pytest.approx((0.3, 0.1))
    assert sixteen.median_percent == pytest.approx(0.2)
    # (1 + B / 32) / (1 + 8 / 32): 1.0, 1.2, 2.4.
    assert [row.predicted_samples for row in batches.rows] == pytest.approx([1.0, 1.2, 2.4])
    assert batches.budget_percent == pytest.approx(1.0)
    assert batches.noise_percent == pytest.approx(0.2)
    names = [trace.name for trace in report.render_batches(batches).data]
    assert any(name.startswith("predicted samples") for name in names)


def test_batches_without_a_noise_scale_show_no_prediction(frame: pd.DataFrame) -> None:
    batches = report.get_batch_info(frame, _info())
    assert [row.batch for row in batches.rows] == [8]
    assert batches.rows[0].predicted_samples is None and batches.noise_scale is None
    names = [trace.name for trace in report.render_batches(batches).data]
    assert not any(name.startswith("predicted samples") for name in names)


# --- table of all trials -----------------------------------------------------------------------


def test_table_has_every_trial_with_reasons_and_percent(frame: pd.DataFrame) -> None:
    table = report.get_table_info(frame, _info(best_number=3))

    assert len(table.rows) == 8
    by_number = {row[0]: dict(zip(table.columns, row, strict=True)) for row in table.rows}
    cells = [by_number[str(number)] for number in range(8)]
    assert cells[2]["reason"] == "pipeline_stages 4 needs <= 2 processes"
    assert cells[4]["reason"] == "oom: CUDA out of memory"
    assert cells[3]["accuracy loss"] == "0.30%"
    assert cells[3]["throughput (samples/s)"] == "250.0"
    assert cells[2]["throughput (samples/s)"] == "—"
    assert cells[0]["learning_rate"] == "0.001"
    assert cells[0]["partition_method"] == "—"
    highlights = dict(zip((row[0] for row in table.rows), table.highlights, strict=True))
    assert highlights["0"] == "reference" and highlights["3"] == "best"
    html = report.render_table(table)
    assert "pipeline_stages 4 needs &lt;= 2 processes" in html


# --- the page ----------------------------------------------------------------------------------


def test_render_report_embeds_plotlyjs_once(frame: pd.DataFrame) -> None:
    html = report.render_report(frame, _info(best_number=3))

    assert html.startswith("<!DOCTYPE html>")
    assert html.count("* plotly.js v") == 1
    # history, trade-off, batches, parallel coordinates, slices, memory, pipeline stages,
    # timeline; importances need the study, so they are a note here.
    assert html.count("Plotly.newPlot(") == 8
    assert "Parameter importances need at least 5 measured trials (4 so far)." in html
    assert re.search(r"<script[^>]*\bsrc=", html) is None  # nothing loaded from a network
    assert "Best vs reference" in html and "All trials" in html


def test_render_report_escapes_user_text(frame: pd.DataFrame) -> None:
    info = _info(study="<script>alert('study')</script>", model="a&b.py", best_number=3)

    html = report.render_report(frame, info)

    assert "<script>alert(" not in html
    assert "&lt;script&gt;alert(&#x27;study&#x27;)" in html
    assert "a&amp;b.py" in html


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame(),
        pd.DataFrame(columns=list(_trial(0))),
        pd.DataFrame([_trial(0, role="reference", throughput=100.0, accuracy_loss=0.0)]),
    ],
    ids=["no-columns", "no-rows", "reference-only"],
)
def test_render_report_with_no_or_one_trial(frame: pd.DataFrame) -> None:
    best_number = 0 if len(frame) else None
    html = report.render_report(frame, _info(best_number=best_number))

    assert html.count("* plotly.js v") == 1
    assert "<h1>autotune report: demo</h1>" in html
    if len(frame):
        assert "1.00×" in html
    else:
        assert "No feasible trial yet: no trial has run." in html


def test_write_report_creates_parent_folders(tmp_path: Path, frame: pd.DataFrame) -> None:
    target = tmp_path / "reports" / "nested" / "demo.html"

    written = report.write_report(frame, _info(best_number=3), target)

    assert written == target
    text = target.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "autotune report: demo" in text


def test_table_is_sorted_best_first(frame: pd.DataFrame) -> None:
    table = report.get_table_info(frame, _info(best_number=3))

    # Feasible by throughput (ties by number), then over budget, then the rest by number.
    assert [row[0] for row in table.rows] == ["3", "6", "5", "0", "1", "2", "4", "7"]
    assert table.categories[:4] == ("feasible",) * 4
    assert table.highlights[0] == "best"


# --- summary -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("oom: CUDA out of memory", "oom"),
        ("timeout: still running after 600 s", "timeout"),
        ("diverged: loss is nan", "diverged"),
        ("error: exit status 1: Traceback", "error"),
        ("Error: something", "error"),
        ("exit status 1", "error"),
        ("the rank died: killed", "error"),
        ("", "error"),
    ],
)
def test_failure_class_is_the_reasons_first_word(reason: str, expected: str) -> None:
    assert report.failure_class(reason) == expected


def test_summary_counts_failures_and_gives_dates_versions_and_best_config() -> None:
    frame = pd.DataFrame(
        [
            _trial(0, role="reference", throughput=100.0, accuracy_loss=0.0),
            _trial(1, "failed", reason="oom: CUDA out of memory"),
            _trial(2, "failed", reason="oom: out of memory on rank 1"),
            _trial(3, "failed", reason="timeout: still running after 60 s"),
            _trial(4, "failed", reason="exit status 1"),
            _trial(5, "infeasible", reason="pipeline_stages 4 needs <= 2 processes"),
        ]
    )
    frame["datetime_complete"] = frame["datetime_start"] + pd.Timedelta(seconds=30)
    info = _info(
        best_number=0,
        versions={"autotune": "0.1.0", "torch": "2.13.0", "deepspeed": None},
        best_ds_config={"train_batch_size": 8, "zero_optimization": {"stage": 0}},
        best_launch={"processes": 1, "command": "deepspeed --num_gpus 1 train.py"},
    )

    summary = report.get_summary_info(frame, info)

    assert summary.failure_counts == (("oom", 2), ("timeout", 1), ("error", 1))
    assert summary.first_trial == "2025-01-01 12:00:00"
    assert summary.last_trial == "2025-01-01 12:05:30"
    assert summary.versions == (
        ("autotune", "0.1.0"),
        ("torch", "2.13.0"),
        ("deepspeed", "not installed"),
    )
    assert summary.best_ds_config is not None
    assert '"train_batch_size": 8' in summary.best_ds_config
    assert summary.best_launch_command == "deepspeed --num_gpus 1 train.py"
    html = report.render_summary(summary)
    assert "2 oom, 1 timeout, 1 error" in html
    assert '<pre class="config">{\n  &quot;train_batch_size&quot;: 8' in html
    assert "deepspeed --num_gpus 1 train.py</pre>" in html


def test_summary_without_best_trial_says_so(frame: pd.DataFrame) -> None:
    summary = report.get_summary_info(frame, _info())

    assert summary.best_ds_config is None and summary.best_launch_command is None
    assert summary.failure_counts == (("oom", 1),)
    assert summary.versions == ()
    assert "No feasible trial to export yet." in report.render_summary(summary)


# --- Pareto front ------------------------------------------------------------------------------


def test_pareto_front_keeps_the_undominated_trials(frame: pd.DataFrame) -> None:
    tradeoff = report.get_tradeoff_info(frame, _info(best_number=3))

    # Losses: 5 -0.1%, 0 0%, 3 0.3%, 1 5%; throughputs 120, 100, 250, 300. Trial 0 is
    # dominated by 5 (faster with less loss).
    assert tradeoff.pareto_numbers == (5, 3, 1)
    figure = report.render_tradeoff(tradeoff)
    front = [trace for trace in figure.data if trace.name == "Pareto front"]
    assert len(front) == 1
    assert list(front[0].y) == [120.0, 250.0, 300.0]


def test_pareto_front_of_equal_points_keeps_one() -> None:
    frame = pd.DataFrame(
        [
            _trial(0, throughput=100.0, accuracy_loss=0.0),
            _trial(1, throughput=100.0, accuracy_loss=0.0),
            _trial(2, throughput=90.0, accuracy_loss=0.001),
        ]
    )

    assert report.get_tradeoff_info(frame, _info()).pareto_numbers == (0,)


# --- parallel coordinates and slices -----------------------------------------------------------


def test_parallel_coordinates_use_searched_settings_of_ok_trials(frame: pd.DataFrame) -> None:
    parallel = report.get_parallel_info(frame, _info(best_number=3))

    assert parallel.numbers == (0, 1, 3, 5)  # 'ok' trials only: no repeat, no failure
    assert parallel.throughputs == (100.0, 300.0, 250.0, 120.0)
    dims = {dimension.name: dimension for dimension in parallel.dimensions}
    assert sorted(dims) == ["micro_batch_size", "precision"]  # the others never vary
    assert dims["micro_batch_size"].values == (8.0, 8.0, 32.0, 8.0)
    assert dims["micro_batch_size"].tick_labels == ("8", "32")  # not 10, 15, 20, ...
    assert dims["precision"].tick_labels == ("bf16", "fp16", "fp32")
    assert dims["precision"].values == (2.0, 1.0, 0.0, 2.0)
    figure = report.render_parallel(parallel)
    assert [d.label for d in figure.data[0].dimensions] == [
        "micro batch",
        "precision",
        "throughput",
    ]


def test_parallel_coordinates_without_variation_is_a_note() -> None:
    frame = pd.DataFrame([_trial(0, throughput=100.0, accuracy_loss=0.0)])

    parallel = report.get_parallel_info(frame, _info())

    assert parallel.dimensions == ()
    assert len(report.render_parallel(parallel).data) == 0


def test_slices_one_per_searched_setting(frame: pd.DataFrame) -> None:
    slices = report.get_slice_info(frame, _info(best_number=3))

    assert [item.name for item in slices.slices] == ["micro_batch_size", "precision"]
    assert slices.slices[0].numeric and not slices.slices[1].numeric
    assert slices.slices[0].ticks == (8.0, 32.0) and slices.slices[1].ticks == ()
    assert slices.slices[1].values == ("fp32", "fp16", "bf16", "fp32")
    assert slices.feasible == (True, False, True, True)
    figure = report.render_slices(slices)
    assert len(figure.data) == 2


# --- importances -------------------------------------------------------------------------------


def test_importances_sorted_from_info(frame: pd.DataFrame) -> None:
    info = _info(importances={"precision": 0.2, "micro_batch_size": 0.7, "zero_stage": 0.1})

    importance = report.get_importance_info(frame, info)

    assert importance.names == ("micro_batch_size", "precision", "zero_stage")
    assert importance.importances == (0.7, 0.2, 0.1)
    assert importance.note is None


def test_importances_note_with_few_trials(frame: pd.DataFrame) -> None:
    importance = report.get_importance_info(frame, _info(importances=None))

    assert importance.names == ()
    assert importance.note is not None and "(4 so far)" in importance.note


# --- memory and timeline -----------------------------------------------------------------------


def test_memory_points_by_zero_stage() -> None:
    frame = pd.DataFrame(
        [
            _trial(0, throughput=100.0, accuracy_loss=0.0, micro_batch_size=8, zero_stage=0),
            _trial(1, throughput=90.0, accuracy_loss=0.0, micro_batch_size=16, zero_stage=2),
            _trial(2, "failed", reason="oom: x", micro_batch_size=64),
        ]
    )

    memory = report.get_memory_info(frame, _info())

    assert [(p.number, p.micro_batch_size, p.zero_stage) for p in memory.points] == [
        (0, 8.0, "0"),
        (1, 16.0, "2"),
    ]
    assert memory.points[0].peak_memory_gib == pytest.approx(3.0)
    names = [trace.name for trace in report.render_memory(memory).data]
    assert names == ["ZeRO 0", "ZeRO 2"]


def test_timeline_splits_wall_time_and_treats_missing_parts_as_setup() -> None:
    rows = [
        _trial(0, throughput=100.0, accuracy_loss=0.0),
        _trial(1, "failed", reason="oom: x"),
        _trial(2, "infeasible"),
        _trial(3, "repeat", throughput=100.0, accuracy_loss=0.0),
    ]
    rows[0].update(wall_seconds=30.0, train_seconds=20.0, eval_seconds=4.0)
    rows[1].update(wall_seconds=12.0, train_seconds=math.nan, eval_seconds=math.nan)
    rows[2].update(wall_seconds=math.nan)
    frame = pd.DataFrame(rows)

    timeline = report.get_timeline_info(frame, _info())

    assert timeline.numbers == (0, 1)  # infeasible never ran; a repeat reuses trial 0's run
    assert timeline.setup_seconds == pytest.approx((6.0, 12.0))
    assert timeline.train_seconds == (20.0, 0.0)
    assert timeline.eval_seconds == (4.0, 0.0)
    figure = report.render_timeline(timeline)
    assert [trace.name for trace in figure.data] == ["launch/setup", "training", "eval"]
    assert figure.layout.barmode == "stack"


# --- failed and infeasible trials --------------------------------------------------------------


def test_failures_table_has_reasons_classes_and_escaped_log_tail() -> None:
    rows = [
        _trial(0, throughput=100.0, accuracy_loss=0.0),
        _trial(1, "infeasible", reason="pipeline_stages 4 needs <= 2 processes"),
        _trial(2, "failed", reason="oom: CUDA out of memory"),
    ]
    rows[2]["log_tail"] = "step 1\n<b>RuntimeError</b>: out of memory\n"
    failures = report.get_failure_info(pd.DataFrame(rows), _info())

    assert [(r.number, r.status, r.failure_class) for r in failures.rows] == [
        (2, "failed", "oom"),
        (1, "infeasible", "infeasible"),
    ]
    assert failures.rows[0].log_tail == "step 1\n<b>RuntimeError</b>: out of memory"
    html = report.render_failures(failures)
    assert "&lt;b&gt;RuntimeError&lt;/b&gt;" in html and "<b>RuntimeError" not in html
    assert "needs &lt;= 2 processes" in html


def test_log_tail_reads_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "\n\n", encoding="utf-8")

    assert report.log_tail(log) == "\n".join(f"line {i}" for i in range(95, 100))
    assert report.log_tail(log, lines=2, max_bytes=20) == "line 98\nline 99"
    assert report.log_tail(tmp_path / "missing.txt") == ""


# --- size of a long study ----------------------------------------------------------------------


def _synthetic_frame(trials: int) -> pd.DataFrame:
    """A long study: varied settings, some failures, infeasible trials and long reasons."""
    rng = np.random.default_rng(0)
    rows = []
    for number in range(trials):
        kind = number % 10
        settings = {
            "micro_batch_size": int(2 ** rng.integers(0, 8)),
            "gradient_accumulation_steps": int(2 ** rng.integers(0, 4)),
            "precision": str(rng.choice(["fp32", "bf16", "fp16"])),
            "zero_stage": int(rng.integers(0, 4)),
            "processes": int(rng.integers(1, 5)),
            "num_workers": int(rng.integers(0, 4)),
            "learning_rate": float(rng.uniform(1e-4, 1e-2)),
        }
        if kind == 8:
            row = _trial(number, "failed", reason="error: exit status 1: " + "x" * 400, **settings)
            row["log_tail"] = "\n".join("Traceback line " + "y" * 100 for _ in range(5))
        elif kind == 9:
            row = _trial(number, "infeasible", reason="pipeline_stages 4 needs <= 2 processes")
        else:
            row = _trial(
                number,
                role="reference" if number == 0 else "search",
                throughput=float(rng.uniform(50, 500)),
                accuracy_loss=float(rng.normal(0.0, 0.01)),
                **settings,
            )
            row.update(train_seconds=15.0, eval_seconds=3.0)
        rows.append(row)
    return pd.DataFrame(rows)


def test_a_500_trial_report_is_small_and_quick(tmp_path: Path) -> None:
    frame = _synthetic_frame(500)
    info = _info(
        best_number=1,
        importances={"micro_batch_size": 0.6, "precision": 0.3, "zero_stage": 0.1},
    )

    start = time.perf_counter()
    path = report.write_report(frame, info, tmp_path / "long.html")
    seconds = time.perf_counter() - start

    size = path.stat().st_size
    print(f"500-trial report: {seconds:.2f} s, {size / 2**20:.1f} MiB")
    assert size < 15 * 2**20


# --- from a study ------------------------------------------------------------------------------


def _study_trial(
    number: int, status: str, throughput: float, micro: int, trial_dir: Path | None = None
) -> optuna.trial.FrozenTrial:
    attrs: dict[str, Any] = {
        "status": status,
        "settings": {"micro_batch_size": micro, "zero_stage": number % 3},
        "throughput": throughput,
        "accuracy_loss": 0.0,
        "ds_config": {"train_micro_batch_size_per_gpu": micro},
        "launch": {"processes": 1, "command": f"deepspeed train.py  # trial {number}"},
    }
    if trial_dir is not None:
        attrs["trial_dir"] = str(trial_dir)
        attrs["reason"] = "oom: out of memory"
    return optuna.trial.create_trial(
        params={"micro_batch_size": micro, "zero_stage": number % 3},
        distributions={
            "micro_batch_size": optuna.distributions.IntDistribution(1, 256, log=True),
            "zero_stage": optuna.distributions.IntDistribution(0, 2),
        },
        value=throughput,
        user_attrs=attrs,
        system_attrs={"constraints": (-1.0,)},
    )


def test_report_info_and_frame_from_a_study(tmp_path: Path) -> None:
    failed_dir = tmp_path / "trial_0006"
    failed_dir.mkdir()
    (failed_dir / "log.txt").write_text(
        "".join(f"line {i}\n" for i in range(10)) + "<script>x</script>\n", encoding="utf-8"
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name="s")
    for number, micro in enumerate((1, 2, 4, 8, 16, 32)):
        study.add_trial(_study_trial(number, "ok", 10.0 * micro, micro))
    study.add_trial(_study_trial(6, "failed", 0.0, 256, failed_dir))

    info = report_info(study)
    frame = trials_frame(study)

    assert info["best_number"] == 5
    assert info["best_ds_config"] == {"train_micro_batch_size_per_gpu": 32}
    assert info["best_launch"]["command"] == "deepspeed train.py  # trial 5"
    assert set(info["versions"]) == {"autotune", "torch", "deepspeed", "optuna"}
    assert info["versions"]["optuna"] == optuna.__version__
    assert set(info["importances"]) == {"micro_batch_size", "zero_stage"}
    assert info["importances"]["micro_batch_size"] > info["importances"]["zero_stage"]
    assert frame.loc[6, "log_tail"] == "line 6\nline 7\nline 8\nline 9\n<script>x</script>"
    assert frame.loc[0, "log_tail"] == ""
    html = report.render_report(frame, info)
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "<script>x</script>" not in html
    assert html.count("Plotly.newPlot(") == 9


def test_report_info_without_enough_trials_has_no_importances() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for number in range(4):
        study.add_trial(_study_trial(number, "ok", 10.0 + number, 2**number))

    info = report_info(study)

    assert info["importances"] is None
    assert info["best_number"] == 3


def test_report_of_a_study_with_only_failed_trials(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name="only-failed")
    for number in range(3):
        failed_dir = tmp_path / f"trial_{number:04d}"
        failed_dir.mkdir()
        (failed_dir / "log.txt").write_text(f"rank died {number}\n", encoding="utf-8")
        trial = _study_trial(number, "failed", 0.0, 8, failed_dir)
        trial.set_user_attr("role", "reference" if number == 0 else "search")
        trial.set_constraint("did_not_run", 1.0)
        study.add_trial(trial)

    info = report_info(study)
    frame = trials_frame(study)
    html = report.render_report(frame, info)

    assert info["best_number"] is None
    assert "No feasible trial yet" in html
    assert html.count("rank died") == 3  # each failed trial's log tail is shown
    assert html.count("* plotly.js v") == 1


def test_report_of_a_study_with_a_trial_still_running() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name="running")
    for number, micro in enumerate((8, 16)):
        study.add_trial(_study_trial(number, "ok", 10.0 * micro, micro))
    running = study.ask()  # a search in progress: the trial has no value yet
    running.set_user_attr("settings", {"micro_batch_size": 32, "zero_stage": 0})

    frame = trials_frame(study)
    info = report_info(study)
    html = report.render_report(frame, info)

    assert frame.loc[2, "status"] == "running"
    assert dict(report.get_header_info(frame, info).status_counts) == {"ok": 2, "running": 1}
    assert report.get_history_info(frame, info).points[2].category == "running"
    assert report.get_table_info(frame, info).categories[-1] == "running"
    assert '<tr class="cat-running"><td>2</td><td>search</td><td>running</td>' in html
    assert info["best_number"] == 1
