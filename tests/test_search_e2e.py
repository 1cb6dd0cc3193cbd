"""End-to-end searches: real DeepSpeed trials on CPU, no mocks on the trial path."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from _dashboard import attrs, feasible_in_dashboard, served_dashboard, study_detail
from search_options import grid_search_options

from autotune import SearchOptions, export, load_study, search, trials_frame
from autotune._score import constraints_for_no_run, is_feasible
from autotune.runner import remove_shm_buffers
from autotune.study import MAX_ROUNDS

pytestmark = pytest.mark.e2e

TINY_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    BATCH_SIZE = 32

    def layers():
        return [nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)]

    def model():
        return nn.Sequential(*layers())

    def train_data():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(1200, 16, generator=g)
        return TensorDataset(x, x[:, :4].argmax(1))
    """
)

REQUIRED_ATTRS = (
    "throughput",
    "accuracy_loss",
    "metric",
    "peak_memory_bytes",
    "step_time_p50",
    "measured_seconds",
    "extra_steps",
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _options(tmp_path: Path, model: Path, space: Path, **overrides: object) -> SearchOptions:
    values: dict[str, object] = {"n_trials": 3, "train_samples": 1024, "min_measure_seconds": 0.5}
    return grid_search_options(tmp_path, model, space, **{**values, **overrides})


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], object]:
    """One grid search over data parallelism, pipeline (DeepSpeed's uniform split and autotune's
    profile) and pin_memory (which no CPU can use, whatever its fp16 and bf16): four real runs, then the fastest and the reference timed twice more
    each (confirmation runs)."""
    tmp_path = tmp_path_factory.mktemp("search")
    model = _write(tmp_path / "tiny.py", TINY_MODEL)
    space = _write(
        tmp_path / "space.yaml",
        "processes: [1, 2]\npipeline_stages: [1, 2]\npartition_method: [uniform, profile]\n"
        "pin_memory: [false, true]\n",
    )
    lines: list[str] = []
    # More runs asked for than the grid holds: the grid sampler ends the study when exhausted.
    summary = search(
        _options(tmp_path, model, space, n_trials=10, confirm=1), print_line=lines.append
    )
    return tmp_path, lines, summary


def test_reference_runs_first_and_trials_record_measurements(searched: tuple) -> None:
    tmp_path, _, summary = searched
    study = load_study("tiny", f"sqlite:///{tmp_path}/study.db")
    trials = study.get_trials()
    assert trials[0].user_attrs["role"] == "reference"
    assert trials[0].user_attrs["settings"]["micro_batch_size"] == 32
    assert len(trials[0].user_attrs["seed_metrics"]) == 3  # the reference's noise runs
    ran = [t for t in trials if t.user_attrs.get("status") == "ok"]
    assert len(ran) == 4 == summary.runs
    for trial in ran:
        for name in REQUIRED_ATTRS:
            assert trial.user_attrs[name] is not None, name
        assert trial.value == pytest.approx(trial.user_attrs["throughput"])
        assert trial.user_attrs["throughput"] > 0
        assert trial.user_attrs["peak_memory_bytes"] > 10_000_000
        assert (Path(trial.user_attrs["trial_dir"]) / "ds_config.json").exists()
        assert (Path(trial.user_attrs["trial_dir"]) / "log.txt").exists()
    assert trials[0].user_attrs["accuracy_loss"] == 0.0


def test_pipeline_and_data_parallel_trials_ran(searched: tuple) -> None:
    tmp_path, _, _ = searched
    frame = trials_frame(load_study("tiny", f"sqlite:///{tmp_path}/study.db"))
    ok = frame[frame.status == "ok"]
    layouts = {(int(r.processes), int(r.pipeline_stages)) for r in ok.itertuples()}
    assert layouts == {(1, 1), (2, 1), (2, 2)}
    study = load_study("tiny", f"sqlite:///{tmp_path}/study.db")
    pipe = {
        t.user_attrs["settings"]["partition_method"]: t
        for t in study.get_trials()
        if t.user_attrs.get("settings", {}).get("pipeline_stages") == 2
        and t.user_attrs.get("status") == "ok"
    }
    assert set(pipe) == {"uniform", "profile"}
    assert pipe["uniform"].user_attrs["partition"] == [0, 2, 3]  # uniform split of 3 layers
    for trial in pipe.values():
        attrs = trial.user_attrs
        # The boundaries the run used are exported, and every stage's time was measured.
        assert attrs["launch"]["partition_bounds"] == attrs["partition"]
        assert len(attrs["stage_compute_seconds"]) == 2
        assert all(seconds > 0 for seconds in attrs["stage_compute_seconds"])
        assert len(attrs["stage_predicted_seconds"]) == 2


def test_profile_partition_comes_from_a_cached_layer_profile(searched: tuple) -> None:
    tmp_path, lines, _ = searched
    profiles = sorted((tmp_path / "trials" / "profiles").glob("layers-*.json"))
    assert len(profiles) == 1  # both pipeline trials share micro-batch and precision
    profile = json.loads(profiles[0].read_text())
    assert profile["names"] == ["Linear", "ReLU", "Linear"]
    assert all(seconds > 0 for seconds in profile["forward_backward_seconds"])
    assert profile["activation_bytes"] == [32 * 64 * 4, 32 * 64 * 4, 32 * 4 * 4]
    assert profile["parameter_bytes"] == [(16 * 64 + 64) * 4, 0, (64 * 4 + 4) * 4]
    assert profile["link"]["backend"] == "gloo" and profile["link"]["seconds"][0] > 0
    assert sum("profiling each layer" in line for line in lines) == 1


def test_cannot_run_configurations_are_infeasible_with_reason(searched: tuple) -> None:
    tmp_path, lines, _ = searched
    study = load_study("tiny", f"sqlite:///{tmp_path}/study.db")
    skipped = [t for t in study.get_trials() if t.user_attrs.get("status") == "infeasible"]
    reasons = {t.user_attrs["reason"] for t in skipped}
    assert any("pin_memory only helps" in r for r in reasons)
    assert any("does not divide processes" in r for r in reasons)
    for trial in skipped:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        # The sampler sees them as infeasible (Optuna's list form, which the dashboard reads).
        assert list(trial.constraints.values()) == list(constraints_for_no_run().values())
    assert any("skipped: pin_memory only helps" in line for line in lines)


def test_the_dashboard_shows_feasibility_the_objective_and_the_choice(searched: tuple) -> None:
    """optuna-dashboard's own app, on a loopback port, serves the search's study: the JSON its
    pages fetch marks what autotune found infeasible as such, and names autotune's choice."""
    tmp_path, _, summary = searched
    url = f"sqlite:///{tmp_path}/study.db"
    with served_dashboard(url) as base:
        detail = study_detail(base, "tiny")
    assert detail["objective_names"] == ["samples/s"]
    study = load_study("tiny", url)
    for trial in detail["trials"]:
        feasible = is_feasible(study.trials[trial["number"]].constraints)
        assert feasible_in_dashboard(trial) == feasible, trial["number"]
        assert attrs(trial["user_attrs"])["feasible"] == str(feasible)
    assert any(not feasible_in_dashboard(t) for t in detail["trials"])  # the skipped ones
    chosen = summary.chosen.number
    assert attrs(detail["user_attrs"])["chosen_trial"] == str(chosen)
    assert detail["note"]["body"].startswith(f"**autotune's choice: trial {chosen}**")


def test_repeated_configuration_reuses_stored_result(searched: tuple) -> None:
    tmp_path, _, _ = searched
    study = load_study("tiny", f"sqlite:///{tmp_path}/study.db")
    repeats = [t for t in study.get_trials() if t.user_attrs.get("status") == "repeat"]
    assert repeats, "the grid holds the reference's own settings"
    original = study.trials[repeats[0].user_attrs["repeat_of"]]
    assert repeats[0].value == original.value
    assert repeats[0].user_attrs["throughput"] == original.user_attrs["throughput"]


def test_best_is_feasible_and_exported_config_initializes_deepspeed(searched: tuple) -> None:
    tmp_path, lines, summary = searched
    assert summary.best is not None
    assert summary.best.user_attrs["accuracy_loss"] <= 0.005
    assert any(line.startswith("best: trial") for line in lines)
    assert summary.report_path is not None and summary.report_path.stat().st_size > 100_000
    study = load_study("tiny", f"sqlite:///{tmp_path}/study.db")
    for trial in (t for t in study.get_trials() if t.user_attrs.get("status") == "ok"):
        out = tmp_path / f"export_{trial.number}"
        ds_config_path, launch_path = export(study, out, trial.number)
        launch = json.loads(launch_path.read_text())
        assert launch["processes"] == trial.user_attrs["settings"]["processes"]
        assert "deepspeed --num_gpus" in launch["command"]
        # Timed over at least the search's minimum window (0.5 s here), steps past the budget
        # included.
        assert launch["measured"]["timed_seconds"] >= 0.5
        assert launch["measured"]["timed_steps"] == trial.user_attrs["measured_steps"]
        output = _replay(tmp_path / "tiny.py", out, launch["processes"])
        if launch["pipeline_stages"] > 1:
            # The plain script rebuilt the trial's exact stages with build_pipeline_module.
            assert f"pipeline bounds: {launch['partition_bounds']}" in output


def test_confirmation_runs_time_the_fastest_and_the_reference_again(searched: tuple) -> None:
    tmp_path, lines, summary = searched
    study = load_study("tiny", f"sqlite:///{tmp_path}/study.db")
    confirmations = study.user_attrs["confirmations"]
    reference = str(study.user_attrs["reference_number"])
    fastest = max(
        (
            t
            for t in study.get_trials()
            if t.user_attrs.get("role") == "search"
            and t.user_attrs.get("status") == "ok"
            and is_feasible(t.constraints)
        ),
        key=lambda t: t.value or 0.0,
    )
    assert set(confirmations) >= {reference, str(fastest.number)}
    rounds = study.user_attrs["confirmation_rounds"]
    assert all(reference in r for r in rounds)  # every round times the reference too
    for number, runs in confirmations.items():
        # Two confirmation runs each (the fastest, confirmed), and the two fastest up to 6
        # rounds more while their order is settled (the reference is timed in every round); a
        # configuration the confirmation moved into the top two joins only those rounds.
        expected = len(rounds) if number == reference else len(runs)
        least = 2 if number in (reference, str(fastest.number)) else 1
        assert len(runs) == expected and least <= len(runs) <= 2 + MAX_ROUNDS, number
        assert all(value > 0 for value in runs), number
        for index in range(1, len(runs) + 1):
            # Each confirmation is a real run with its own folder (throughput only, no eval).
            result = json.loads(
                (
                    tmp_path
                    / "trials"
                    / "tiny"
                    / f"confirm_{int(number):04d}_{index}"
                    / "result.json"
                ).read_text()
            )
            assert result["throughput"] == pytest.approx(runs[index - 1])
            assert result["measured_seconds"] >= 0.5
    assert any(line.startswith("confirming: timing trials") for line in lines)
    settled = ("order settled: ", "order not settled after ", "order left open: ")
    assert any(line.startswith(settled) for line in lines), lines
    # Throughput is the median of the best's windows; the speed-up the median of its windows
    # over the reference's in the same rounds. The export says both.
    best = str(summary.best.number)
    assert summary.best_runs == pytest.approx([summary.best.value, *confirmations[best]])
    assert len(summary.reference_runs) == 1 + len(rounds)
    assert summary.best_throughput == pytest.approx(statistics.median(summary.best_runs))
    pairs = [r[best] / r[reference] for r in rounds if best in r]
    assert len(pairs) == len(confirmations[best]) and summary.best_speedups == pytest.approx(pairs)
    assert summary.speedup == pytest.approx(statistics.median(pairs))
    launch = json.loads((tmp_path / "trials" / "tiny" / "best" / "launch.json").read_text())
    assert launch["measured"]["throughput_runs"] == pytest.approx(list(summary.best_runs))
    assert launch["measured"]["throughput_samples_per_s"] == pytest.approx(summary.best_throughput)
    assert launch["measured"]["speedup_vs_reference"] == pytest.approx(summary.speedup)
    assert launch["measured"]["speedup_runs"] == pytest.approx(pairs)
    best_line = next(line for line in lines if line.startswith("best:"))
    assert f"(median of {len(summary.best_runs)} windows)" in best_line
    assert f"median of {len(pairs)} rounds side by side" in best_line


_RUN_NOTE = re.compile(
    r" running \(run (\d+) of 10, ([^;]+); (\d+) done, (?:at most )?(\d+) to run(; .*)?\)$"
)


def test_each_run_line_says_its_phase_the_runs_done_and_left_and_the_time(
    searched: tuple,
) -> None:
    """Issue 20: the reference, then the search runs, then the confirmation runs; each run's
    line counts the runs done and left, and from the second run on says the time the search
    has run and about how long it has left."""
    _, lines, summary = searched
    notes = [match.groups() for line in lines if (match := _RUN_NOTE.search(line))]
    assert len(notes) == summary.runs == sum(" running (" in line for line in lines), lines
    runs = [int(run) for run, *_ in notes]
    assert runs == list(range(1, len(notes) + 1))
    assert [phase for _, phase, *_ in notes] == ["the reference"] + ["search"] * (len(notes) - 1)
    assert [int(done) for _, _, done, *_ in notes] == [run - 1 for run in runs]
    to_run = [int(left) for *_, left, _ in notes]
    assert to_run == sorted(set(to_run), reverse=True), to_run  # fewer left at each run
    assert notes[0][-1] is None  # nothing timed yet
    for *_, times in notes[1:]:
        assert times is not None and re.fullmatch(r"; [\w ]+ in, about [\w ]+ left", times)
    last_run = max(i for i, line in enumerate(lines) if " running (" in line)
    confirming = next(i for i, line in enumerate(lines) if line.startswith("confirming:"))
    assert last_run < confirming
    assert not any("\r" in line or "\x1b" in line for line in lines)  # no live line here


def _replay(model: Path, export_dir: Path, processes: int) -> str:
    """Train with the exported files through DeepSpeed's launcher and a plain script."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "replay_export.py"
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    port = 29500 + processes * 7 + os.getpid() % 500
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            "--num_gpus",
            str(processes),
            "--master_port",
            str(port),
            str(script),
            "--model",
            str(model),
            "--export",
            str(export_dir),
            "--train-samples",
            "512",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    remove_shm_buffers(port)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "replay:" in result.stdout
    return result.stdout


def test_resume_neither_loses_nor_repeats_runs(tmp_path: Path) -> None:
    model = _write(tmp_path / "tiny.py", TINY_MODEL)
    space = _write(tmp_path / "space.yaml", "micro_batch_size: [16, 32, 64]\n")
    first = search(_options(tmp_path, model, space, n_trials=2), print_line=lambda _: None)
    assert first.runs == 2
    study = load_study("tiny", f"sqlite:///{tmp_path}/study.db")
    before = {t.number: t.value for t in study.get_trials()}
    lines: list[str] = []
    second = search(_options(tmp_path, model, space, n_trials=3), print_line=lines.append)
    assert second.runs == 3
    after = load_study("tiny", f"sqlite:///{tmp_path}/study.db").get_trials()
    assert {t.number: t.value for t in after if t.number in before} == before
    ran = [
        t.user_attrs["settings"]["micro_batch_size"]
        for t in after
        if t.user_attrs.get("status") == "ok"
    ]
    assert sorted(ran) == [16, 32, 64]  # each configuration ran exactly once
    assert sum("running" in line for line in lines) == 1
    third: list[str] = []
    search(_options(tmp_path, model, space, n_trials=3), print_line=third.append)
    assert not any("running" in line for line in third)


def test_resume_with_a_different_budget_is_refused(tmp_path: Path) -> None:
    from autotune import UserError

    model = _write(tmp_path / "tiny.py", TINY_MODEL)
    space = _write(tmp_path / "space.yaml", "micro_batch_size: [32]\n")
    search(_options(tmp_path, model, space, n_trials=1), print_line=lambda _: None)
    with pytest.raises(UserError, match="--train-samples"):
        search(_options(tmp_path, model, space, n_trials=2, train_samples=2048), print_line=print)


FAILING_MODEL = TINY_MODEL + textwrap.dedent(
    """
    import time

    class _Stuck(nn.Module):
        # Diverges at micro-batch 64, hangs at micro-batch 16: failures the search must survive.
        def forward(self, x):
            if x.shape[0] == 64:
                return x * float("nan")
            if x.shape[0] == 16:
                time.sleep(3600)
            return x

    def model():
        return nn.Sequential(*layers(), _Stuck())
    """
)


def test_failed_runs_are_recorded_and_the_search_goes_on(tmp_path: Path) -> None:
    model = _write(tmp_path / "failing.py", FAILING_MODEL)
    space = _write(tmp_path / "space.yaml", "micro_batch_size: [16, 32, 64, 128]\n")
    lines: list[str] = []
    summary = search(
        _options(tmp_path, model, space, n_trials=4, trial_timeout=30), print_line=lines.append
    )
    study = load_study("failing", f"sqlite:///{tmp_path}/study.db")
    by_mbs = {
        t.user_attrs["settings"]["micro_batch_size"]: t
        for t in study.get_trials()
        if t.user_attrs.get("status") in ("ok", "failed")
    }
    assert by_mbs[16].user_attrs["failure_reason"].startswith("timeout")
    assert by_mbs[64].user_attrs["failure_reason"].startswith("diverged")
    assert by_mbs[128].user_attrs["status"] == "ok"
    assert summary.runs == 4
    assert not _leftover_ranks(tmp_path)


def _leftover_ranks(tmp_path: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(tmp_path) in line and "_harness" in line]
