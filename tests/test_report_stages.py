"""Tests of the report's pipeline-stage figure: the gathered data, and that it draws."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from autotune.report import get_stages_info, render_stages, stages_height


def _row(number: int, throughput: float, **values: object) -> dict[str, object]:
    row: dict[str, object] = {
        "number": number,
        "status": "ok",
        "throughput": throughput,
        "partition_method": None,
        "partition": None,
        "stage_compute_seconds": None,
        "stage_comm_seconds": None,
        "stage_predicted_seconds": None,
    }
    row.update(values)
    return row


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        [
            _row(0, 100.0),  # not a pipeline: no stages
            _row(
                1,
                110.0,
                partition_method="parameters",
                partition=[0, 1, 9],
                stage_compute_seconds=[0.028, 0.205],
                stage_comm_seconds=[0.180, 0.004],
                stage_predicted_seconds=[0.0026, 0.0236],
            ),
            _row(
                2,
                135.0,
                partition_method="profile",
                partition=[0, 4, 9],
                stage_compute_seconds=[0.145, 0.150],
                stage_comm_seconds=[0.02, 0.03],
                stage_predicted_seconds=[0.0145, 0.0117],
            ),
            # A repeat copies its original's measurements and would show the stages twice.
            _row(
                3,
                135.0,
                status="repeat",
                partition=[0, 4, 9],
                stage_compute_seconds=[0.145, 0.150],
            ),
            # A pipeline trial recorded before stage times were kept.
            _row(4, 90.0, partition_method="uniform", partition=[0, 5, 9]),
        ]
    )


def test_gathers_each_stage_of_pipeline_trials_fastest_first() -> None:
    info = get_stages_info(_frame())
    assert [(bar.number, bar.stage) for bar in info.bars] == [(2, 0), (2, 1), (1, 0), (1, 1)]
    first = info.bars[0]
    assert first.label == "trial 2 (profile) · stage 0"
    assert first.layers == "0-4"
    assert first.compute_seconds == pytest.approx(0.145)
    assert first.comm_seconds == pytest.approx(0.02)
    assert first.predicted_seconds == pytest.approx(0.0145)
    assert info.bars[3].layers == "1-9"


def test_imbalance_is_slowest_stage_over_mean() -> None:
    info = get_stages_info(_frame())
    assert info.imbalance[2] == pytest.approx(0.150 / 0.1475)
    assert info.imbalance[1] == pytest.approx(0.205 / ((0.028 + 0.205) / 2))
    assert set(info.imbalance) == {1, 2}


def test_missing_or_malformed_stage_data_is_left_out() -> None:
    frame = pd.DataFrame(
        [
            _row(5, 1.0, stage_compute_seconds=[0.1, math.nan]),
            _row(6, 1.0, stage_compute_seconds="not a list"),
            _row(7, 1.0, stage_compute_seconds=[0.1, 0.2], partition=[0, 3]),  # bounds mismatch
        ]
    )
    info = get_stages_info(frame)
    assert [bar.number for bar in info.bars] == [7, 7]
    assert {bar.layers for bar in info.bars} == {"?"}
    assert all(bar.comm_seconds == 0.0 for bar in info.bars)


def test_renders_stacked_compute_and_communication() -> None:
    info = get_stages_info(_frame())
    figure = render_stages(info)
    assert [trace.name for trace in figure.data] == ["compute", "communication"]
    assert list(figure.data[0].x) == pytest.approx([145.0, 150.0, 28.0, 205.0])
    assert figure.layout.barmode == "stack"
    assert "layers 0-4" in figure.data[0].hovertext[0]
    assert stages_height(info) >= 260


def test_no_pipeline_trial_draws_an_explained_empty_figure() -> None:
    info = get_stages_info(pd.DataFrame([_row(0, 1.0)]))
    assert info.bars == ()
    figure = render_stages(info)
    assert "No pipeline trial" in figure.layout.annotations[0].text
    assert get_stages_info(pd.DataFrame()).bars == ()
