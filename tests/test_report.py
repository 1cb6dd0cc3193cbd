"""Tests of the HTML report: the gathered plot data, and the rendered page."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from autotune import _report

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
    history = _report._get_history_info(frame, _info(best_number=3))

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

    history = _report._get_history_info(frame, _info())

    assert history.best_numbers == (2, 3)
    assert history.best_throughputs == (80.0, 90.0)


def test_history_categories_and_unmeasured_trials_at_zero(frame: pd.DataFrame) -> None:
    history = _report._get_history_info(frame, _info(best_number=3))

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


def test_history_hover_gives_the_reason_escaped(frame: pd.DataFrame) -> None:
    history = _report._get_history_info(frame, _info(best_number=3))

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

    hover = _report._get_history_info(frame, _info()).points[0].hover

    assert "…" in hover
    assert len(hover) < 1000


# --- best vs reference -------------------------------------------------------------------------


def test_best_info_speedup_and_differing_settings(frame: pd.DataFrame) -> None:
    best = _report._get_best_info(frame, _info(best_number=3))

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


def test_best_info_without_feasible_trial_gives_the_sentence(frame: pd.DataFrame) -> None:
    best = _report._get_best_info(frame, _info(best_number=None))

    assert best.best_number is None
    assert best.speedup is None
    assert best.message is not None
    assert best.message.startswith("No feasible trial yet")
    assert "1.00%" in best.message
    html = _report._render_best(best)
    assert "No feasible trial yet" in html
    assert "<th>best</th>" not in html
    assert "<th>reference</th>" in html


def test_best_info_when_the_reference_failed() -> None:
    frame = pd.DataFrame(
        [_trial(0, "failed", role="reference", reason="oom"), _trial(1, "infeasible")]
    )

    best = _report._get_best_info(frame, _info())

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

    header = _report._get_header_info(pd.DataFrame(), info)

    assert header.budget_below_noise is warned
    assert ("Warning:" in _report._render_header(header)) is warned


def test_header_shows_facts_and_eval_source(frame: pd.DataFrame) -> None:
    info = _info(eval_source="held-out 20% of train_data(), as the model file has no eval_data()")

    header = _report._get_header_info(frame, info)
    html = _report._render_header(header)

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
    tradeoff = _report._get_tradeoff_info(frame, _info(best_number=3))

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
    tradeoff = _report._get_tradeoff_info(frame, _info(best_number=6))

    roles = {point.number: point.role for point in tradeoff.points}
    assert roles[6] == "best"


# --- table of all trials -----------------------------------------------------------------------


def test_table_has_every_trial_with_reasons_and_percent(frame: pd.DataFrame) -> None:
    table = _report._get_table_info(frame, _info(best_number=3))

    assert len(table.rows) == 8
    cells = [dict(zip(table.columns, row, strict=True)) for row in table.rows]
    assert cells[2]["reason"] == "pipeline_stages 4 needs <= 2 processes"
    assert cells[4]["reason"] == "oom: CUDA out of memory"
    assert cells[3]["accuracy loss"] == "0.30%"
    assert cells[3]["throughput (samples/s)"] == "250.0"
    assert cells[2]["throughput (samples/s)"] == "—"
    assert cells[0]["learning_rate"] == "0.001"
    assert cells[0]["partition_method"] == "—"
    assert table.highlights[0] == "reference" and table.highlights[3] == "best"
    html = _report._render_table(table)
    assert "pipeline_stages 4 needs &lt;= 2 processes" in html


# --- the page ----------------------------------------------------------------------------------


def test_render_report_embeds_plotlyjs_once(frame: pd.DataFrame) -> None:
    html = _report.render_report(frame, _info(best_number=3))

    assert html.startswith("<!DOCTYPE html>")
    assert html.count("* plotly.js v") == 1
    assert html.count("Plotly.newPlot(") == 2
    assert re.search(r"<script[^>]*\bsrc=", html) is None  # nothing loaded from a network
    assert "Best vs reference" in html and "All trials" in html


def test_render_report_escapes_user_text(frame: pd.DataFrame) -> None:
    info = _info(study="<script>alert('study')</script>", model="a&b.py", best_number=3)

    html = _report.render_report(frame, info)

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
    html = _report.render_report(frame, _info(best_number=best_number))

    assert html.count("* plotly.js v") == 1
    assert "demo" in html
    if len(frame):
        assert "1.00×" in html
    else:
        assert "No feasible trial yet: no trial has run." in html


def test_write_report_creates_parent_folders(tmp_path: Path, frame: pd.DataFrame) -> None:
    target = tmp_path / "reports" / "nested" / "demo.html"

    written = _report.write_report(frame, _info(best_number=3), target)

    assert written == target
    text = target.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "autotune report: demo" in text
