"""`autotune plan`: the space judged by this machine's rules before a search, the same refusals
the search then records, and a search time estimated from one real run of the reference."""

from __future__ import annotations

import contextlib
import io
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from search_options import grid_search_options, run_grid_search

from autotune import describe_plan, plan
from autotune._planning import reason_kind
from autotune._records import INFEASIBLE, REASON, TrialRecord
from autotune.cli import main

MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    BATCH_SIZE = 32

    def layers():
        return [nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)]

    def model():
        return nn.Sequential(*layers())

    def train_data():
        x = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0))
        return TensorDataset(x, x[:, :4].argmax(1))
    """
)
# 64 processes and pinned memory cannot run on a CPU machine of fewer than 64 cores.
SPACE = "micro_batch_size: [32, 64]\nprocesses: [1, 64]\npin_memory: [false, true]\n"


@pytest.fixture(scope="module")
def model_path(write_model: Callable[[str, str], Path]) -> Path:
    return write_model(MODEL, "plain.py")


def test_a_reason_kind_reads_the_same_for_any_numbers() -> None:
    assert reason_kind("4 processes but this machine has 2 cores") == reason_kind(
        "64 processes but this machine has 16 cores"
    )
    assert reason_kind("predicted 1.5 GiB per rank (params 12 MiB)") == (
        "predicted N per rank (params N)"
    )


def test_the_plan_judges_every_configuration_by_the_searchs_rules(
    model_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "space.yaml").write_text(SPACE)
    options = grid_search_options(tmp_path, model_path, tmp_path / "space.yaml", n_trials=8)
    found = plan(options, time_a_run=False, print_line=lambda line: None)
    assert (found.size, found.remaining, found.checked, found.runnable) == (8, 2, 2, 2)
    refused = {(v.setting, v.value): v.reason for v in found.refused_values}
    assert set(refused) == {("processes", 64), ("pin_memory", True)}
    assert "64 processes but this machine has" in refused[("processes", 64)]
    assert "pin_memory" in refused[("pin_memory", True)]
    assert found.reasons == ()
    assert [(layout.processes, layout.configurations) for layout in found.layouts] == [(1, 2)]
    lines = describe_plan(found, confirm=0, warm_workers=True)
    assert lines[0] == "space: 8 configurations"
    assert "left without those values: 2 configurations" in lines
    assert "can run here: 2 of the 2 judged (100.0%)" in lines


def test_a_value_refused_beside_the_reference_alone_is_not_refused_everywhere(
    model_path: Path, tmp_path: Path
) -> None:
    """Two pipeline stages are refused beside the reference's one process, but run with two:
    not a value that cannot run here; the combinations that cannot are counted by reason."""
    (tmp_path / "space.yaml").write_text("processes: [1, 2]\npipeline_stages: [1, 2]\n")
    options = grid_search_options(tmp_path, model_path, tmp_path / "space.yaml", n_trials=4)
    found = plan(options, time_a_run=False, print_line=lambda line: None)
    assert found.refused_values == () and (found.size, found.runnable) == (4, 3)
    assert [(kind, count) for kind, count, _ in found.reasons] == [
        ("pipeline_stages N does not divide processes N", 1)
    ]
    assert found.run is None and found.search_seconds(0, True) is None


@pytest.mark.e2e
def test_the_search_then_refuses_what_the_plan_said_and_a_run_gives_the_time(
    model_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "space.yaml").write_text(SPACE)
    options = grid_search_options(
        tmp_path, model_path, tmp_path / "space.yaml", n_trials=8, train_samples=2048
    )
    found = plan(options, print_line=lambda line: None)
    study, lines = run_grid_search(tmp_path, model_path, SPACE, n_trials=8, train_samples=2048)
    recorded = {
        reason_kind(str(trial.user_attrs[REASON]))
        for trial in study.trials
        if TrialRecord.of(trial).status == INFEASIBLE
    }
    planned = {reason_kind(v.reason) for v in found.refused_values}
    planned |= {other for v in found.refused_values for other in v.others}
    assert recorded == planned | {kind for kind, _, _ in found.reasons}, lines
    run = found.run
    assert run is not None and run.wall_seconds >= run.train_seconds + run.eval_seconds > 0
    estimate = found.search_seconds(0, True)
    assert estimate is not None and estimate > run.wall_seconds
    assert any(
        line.startswith("a search of 8 runs: about") for line in describe_plan(found, 0, True)
    )


def test_the_command_prints_the_plan_and_refuses_bad_input(
    model_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "space.yaml").write_text(SPACE)
    out, err = io.StringIO(), io.StringIO()
    args = ["plan", str(model_path), "--space", str(tmp_path / "space.yaml"), "--no-run"]
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    assert "cannot run here, whatever else is chosen:" in out.getvalue()
    with contextlib.redirect_stderr(err):
        assert main(["plan", str(model_path), "--space", str(tmp_path / "none.yaml")]) == 2
    assert err.getvalue().startswith("autotune: error:") and "Traceback" not in err.getvalue()
