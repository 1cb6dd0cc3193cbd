"""A fast search on real CPU DeepSpeed: warm workers, adaptive measurement, accuracy reuse and
the memory pre-screen. No mocks on the trial path."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from _models import SMALL_CLASSIFIER
from search_options import grid_search_options, run_grid_search

from autotune import load_study, search
from autotune._machine import detect_machine
from autotune._plan import TrialConfig
from autotune._records import TrialRecord
from autotune._task import load_model_file, reference_settings
from autotune.runner import WarmWorkers, run_trial, step_time_is_stable, throughput_upper_bound

MODEL = textwrap.dedent(
    """
    import time
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    BATCH_SIZE = 32

    class Gate(nn.Module):
        # Diverges at micro-batch 64, hangs at micro-batch 8: failures a warm group must survive.
        def forward(self, x):
            if x.shape[0] == 64:
                return x * float("nan")
            if x.shape[0] == 8:
                time.sleep(3600)
            return x

    def layers():
        return [nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4), Gate()]

    def model():
        return nn.Sequential(*layers())

    def train_data():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2400, 16, generator=g)
        return TensorDataset(x, x[:, :4].argmax(1))
    """
)
SAMPLES = 2048
REUSED_SAMPLES = 32768


@pytest.fixture(scope="module")
def model_path(write_model: Callable[[str, str], Path]) -> Path:
    return write_model(MODEL, "gated.py")


def _config(model_path: Path, **values: object) -> TrialConfig:
    model_file = load_model_file(model_path)
    settings = {**reference_settings(32), **values}
    return TrialConfig.from_settings(settings, model_file.optimizer, 32, "sqrt")


@pytest.fixture(scope="module")
def warm_runs(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Trials through one WarmWorkers: reused, relaunched on a layout change, after a diverged
    run and after a timeout; and the same configuration as a fresh launch."""
    root = tmp_path_factory.mktemp("warm")
    machine = detect_machine()
    runs: dict[str, object] = {"shm_before": _shm_buffers()}
    plan = [
        ("first", _config(model_path), 120),
        ("zero1", _config(model_path, zero_stage=1), 120),
        ("zero3", _config(model_path, zero_stage=3), 120),
        ("after_zero3", _config(model_path), 120),
        ("two_ranks", _config(model_path, processes=2, micro_batch_size=16), 120),
        (
            "two_ranks_again",
            _config(model_path, processes=2, micro_batch_size=16, zero_stage=1),
            120,
        ),
        (
            "pipeline",
            _config(
                model_path,
                processes=2,
                pipeline_stages=2,
                partition_method="uniform",
                micro_batch_size=16,
            ),
            120,
        ),
        ("two_ranks_after_pipeline", _config(model_path, processes=2, micro_batch_size=16), 120),
        ("diverged", _config(model_path, micro_batch_size=64), 120),
        ("after_diverged", _config(model_path, gradient_accumulation_steps=2), 120),
        ("hangs", _config(model_path, micro_batch_size=8), 20),
        ("after_timeout", _config(model_path, micro_batch_size=16), 120),
        ("two_ranks_kept", _config(model_path, processes=2, micro_batch_size=16), 120),
    ]
    with WarmWorkers(root / "workers") as workers:
        for name, config, timeout in plan:
            runs[name] = run_trial(
                config, machine, model_path, SAMPLES, [0], root / name, timeout, workers=workers
            )
        runs["launches"] = workers.launches
    runs["fresh"] = run_trial(
        _config(model_path), machine, model_path, SAMPLES, [0], root / "fresh", 120
    )
    runs["shm_after"] = _shm_buffers()
    return runs


def _shm_buffers() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")}


@pytest.mark.e2e
def test_no_shared_memory_is_left_behind(warm_runs: dict) -> None:
    """DeepSpeed's CPU comm op never frees its 66 MB /dev/shm segment per rank; every group
    (warm, failed, timed out or fresh) must have had its segments removed."""
    assert warm_runs["shm_after"] <= warm_runs["shm_before"]


@pytest.mark.e2e
def test_warm_trial_measures_what_a_fresh_launch_measures(warm_runs: dict) -> None:
    warm, fresh = warm_runs["first"], warm_runs["fresh"]
    assert warm.ok and fresh.ok
    # Same seeded weights, data order and steps: the same training, to the last bit on CPU.
    assert warm.measurements["metric"] == fresh.measurements["metric"]
    assert warm.measurements["train_loss"] == fresh.measurements["train_loss"]
    assert warm.measurements["steps"] == fresh.measurements["steps"]
    # Both timed their training (benchmarks/warm_vs_fresh.py prints how the two compare).
    assert warm.measurements["throughput"] > 0 and fresh.measurements["throughput"] > 0


@pytest.mark.e2e
def test_a_group_per_layout_is_kept_warm(warm_runs: dict) -> None:
    """Each layout's group is launched once and kept while the other layout's runs: going
    back to one process, and back to two after the one-process group failed twice, launches
    nothing."""
    assert warm_runs["first"].launched
    assert not warm_runs["zero1"].launched
    assert warm_runs["two_ranks"].launched
    assert not warm_runs["two_ranks_again"].launched
    assert warm_runs["zero1"].ok and warm_runs["two_ranks_again"].ok
    assert not warm_runs["diverged"].launched
    kept = warm_runs["two_ranks_kept"]
    assert kept.ok and not kept.launched
    assert kept.measurements["metric"] == warm_runs["two_ranks"].measurements["metric"]


@pytest.mark.e2e
def test_a_zero3_trial_ends_its_group(warm_runs: dict) -> None:
    """A ZeRO-3 engine replaces torch's linear for the rest of its process (and left later
    trials in the group up to 47% slower): its group is closed after it, and the next trial
    trains exactly as the first did."""
    zero3, after, first = warm_runs["zero3"], warm_runs["after_zero3"], warm_runs["first"]
    assert zero3.ok and not zero3.launched
    assert after.ok and after.launched
    assert after.measurements["metric"] == first.measurements["metric"]
    assert after.measurements["train_loss"] == first.measurements["train_loss"]


@pytest.mark.e2e
def test_a_pipeline_trial_leaves_the_warm_group_as_it_found_it(warm_runs: dict) -> None:
    """A pipeline engine registers its topology as DeepSpeed's global model-parallel unit; the
    next engine without a pipeline in the same group took it for model parallelism and failed
    (`'NoneType' object has no attribute 'get_model_parallel_rank'`)."""
    pipeline, after = warm_runs["pipeline"], warm_runs["two_ranks_after_pipeline"]
    assert pipeline.ok and not pipeline.launched
    assert after.ok, after.failure_reason
    assert not after.launched
    # The same configuration trains as it did before the pipeline ran in this group.
    before = warm_runs["two_ranks"]
    assert after.measurements["metric"] == before.measurements["metric"]
    assert after.measurements["train_loss"] == before.measurements["train_loss"]


@pytest.mark.e2e
def test_group_restarts_after_a_failure_and_a_timeout(warm_runs: dict) -> None:
    assert warm_runs["diverged"].failure_reason.startswith("diverged")
    assert warm_runs["after_diverged"].ok and warm_runs["after_diverged"].launched
    assert warm_runs["hangs"].failure_reason.startswith("timeout")
    assert warm_runs["after_timeout"].ok and warm_runs["after_timeout"].launched
    # 1 process, again after ZeRO 3, 2 processes, 1 process after the failure and the timeout.
    assert warm_runs["launches"] == 5
    log = (warm_runs["diverged"].directory / "log.txt").read_text()
    assert "DivergedError" in log  # each trial's own log, even in a shared group


def _reused_accuracy_run(model_path: Path, directory: Path, min_seconds: float) -> dict:
    """A trial whose metric is known: it measures throughput only and may stop early. The
    interval is loose, so the tests check the stopping, not this machine's step-time noise.
    The budget (2048 steps) takes well over the 0.5 s window even where a step of this tiny
    model takes 1 ms (an AVX-512 machine trained 512 of them in under 0.5 s)."""
    adaptive = {"rel_halfwidth": 0.25, "min_steps": 5, "min_seconds": min_seconds}
    config = _config(model_path, micro_batch_size=16)
    result = run_trial(
        config,
        detect_machine(),
        model_path,
        REUSED_SAMPLES,
        [0],
        directory,
        120,
        need_metric=False,
        adaptive=adaptive,
    )
    assert result.ok, result.failure_reason
    return result.measurements


@pytest.mark.e2e
def test_adaptive_measurement_stops_once_throughput_is_known(
    model_path: Path, tmp_path: Path
) -> None:
    measured = _reused_accuracy_run(model_path, tmp_path / "t", 0.0)
    assert measured["metric"] is None and measured["eval_seconds"] < 0.01
    assert measured["stable_after_steps"] == measured["measured_steps"]
    assert measured["steps"] < measured["budget_steps"] == REUSED_SAMPLES // 16


@pytest.mark.e2e
def test_reused_accuracy_trials_still_time_the_minimum_window(
    model_path: Path, tmp_path: Path
) -> None:
    measured = _reused_accuracy_run(model_path, tmp_path / "t", 0.5)
    # Stable early, but it keeps measuring until the window is long enough.
    assert measured["stable_after_steps"] < measured["measured_steps"]
    assert measured["measured_seconds"] >= 0.5
    assert measured["steps"] < measured["budget_steps"] and measured["extra_steps"] == 0


@pytest.mark.e2e
def test_short_budgets_are_timed_over_the_minimum_window(model_path: Path, tmp_path: Path) -> None:
    machine = detect_machine()
    config = _config(model_path)
    adaptive = {"rel_halfwidth": 0.02, "min_steps": 5, "min_seconds": 1.5}
    with WarmWorkers(tmp_path / "workers") as workers:
        plain, timed = (
            run_trial(
                config,
                machine,
                model_path,
                512,
                [0],
                tmp_path / name,
                120,
                workers=workers,
                adaptive=window,
                measure_noise=True,
            )
            for name, window in (("plain", None), ("timed", adaptive))
        )
    assert plain.ok and timed.ok, (plain.failure_reason, timed.failure_reason)
    short, long = plain.measurements, timed.measurements
    assert short["extra_steps"] == 0 and long["extra_steps"] > 0
    # The metric is taken on the sample budget's model, before the steps that lengthen the
    # window: the same as without them.
    assert long["steps"] == short["steps"] == 512 // 32
    assert long["metric"] == short["metric"]
    # So is the gradient noise (issue 18): the extra steps train on, and their count depends
    # on the machine's speed; measured after them, the noise scale moved with it.
    assert short["gradient_noise"] is not None
    assert long["gradient_noise"] == short["gradient_noise"]
    assert long["measured_steps"] == long["steps"] - 3 + long["extra_steps"]
    assert long["measured_seconds"] - long["eval_seconds"] >= 1.5


def test_stability_rule() -> None:
    steady = [0.010, 0.0101, 0.0099, 0.0100, 0.0100, 0.0101, 0.0099, 0.0100]
    assert step_time_is_stable(steady, 0.02, 5)
    assert not step_time_is_stable(steady[:4], 0.02, 5)  # too few steps
    noisy = [0.01, 0.02, 0.01, 0.03, 0.01, 0.02, 0.01, 0.03]
    assert not step_time_is_stable(noisy, 0.02, 5)
    assert step_time_is_stable(noisy * 40, 0.1, 5)  # more steps narrow the interval


def test_throughput_upper_bound() -> None:
    """What a run that cannot win is judged by: the batch over the fast end of the mean step
    time's 95% interval."""
    assert throughput_upper_bound([0.01], 32) is None  # one step has no interval
    assert throughput_upper_bound([0.01] * 8, 32) == pytest.approx(3200)
    noisy = [0.01, 0.02, 0.01, 0.03, 0.01, 0.02, 0.01, 0.03]
    bound = throughput_upper_bound(noisy, 32)
    assert bound is not None and bound > 32 / (sum(noisy) / len(noisy))
    assert throughput_upper_bound(noisy * 40, 32) < bound  # more steps, a tighter bound
    assert throughput_upper_bound([0.001, 1.0], 32) is None  # the interval reaches zero


TINY = SMALL_CLASSIFIER.replace("1200", "2400")


@pytest.mark.e2e
def test_reused_accuracy_agrees_with_a_remeasured_one(tmp_path: Path) -> None:
    """Same global batch, split two other ways: the metric, measured anyway, is the reference's
    (what reuse would have copied), to within one eval item, and on one process so is the
    training loss.

    1912 training items are no whole number of micro-batches or steps, and the budget runs
    past the first epoch, where a per-rank sampler would have given each split other items."""
    path = tmp_path / "tiny.py"
    path.write_text(TINY.replace("2400", "2390"))
    machine = detect_machine()
    splits = {
        "accumulated": _config(path, micro_batch_size=16, gradient_accumulation_steps=2),
        "two processes": _config(path, micro_batch_size=16, processes=2),
    }
    with WarmWorkers(tmp_path / "workers") as workers:
        reference = run_trial(
            _config(path), machine, path, SAMPLES, [0, 1], tmp_path / "ref", 120, workers=workers
        )
        remeasured = {}
        for name, split in splits.items():
            assert split.numerics_key() == _config(path).numerics_key()
            remeasured[name] = run_trial(
                split, machine, path, SAMPLES, [0], tmp_path / name, 120, workers=workers
            )
    assert reference.ok and all(run.ok for run in remeasured.values())
    expected = reference.measurements
    eval_items = 478  # the held-out 20% of 2390
    for name, run in remeasured.items():
        got = run.measurements
        assert abs(got["metric"] - expected["metric"]) <= 1 / eval_items, name
    # Rank 0's training loss covers every item only on one process.
    accumulated = remeasured["accumulated"].measurements["train_loss"]
    # Equal to the last bit here; the old per-rank sampler was 1.1e-4 apart on this test.
    assert accumulated == pytest.approx(expected["train_loss"], rel=1e-6)


@pytest.mark.e2e
def test_search_reuses_accuracy_and_prescreens_memory(tmp_path: Path) -> None:
    path = tmp_path / "tiny.py"
    path.write_text(TINY)
    space = tmp_path / "space.yaml"
    space.write_text("micro_batch_size: [16, 32]\ngradient_accumulation_steps: [1, 2]\n")
    lines: list[str] = []
    search(
        grid_search_options(tmp_path, path, space, n_trials=4, train_samples=SAMPLES),
        print_line=lines.append,
    )
    study = load_study("tiny", f"sqlite:///{tmp_path}/study.db")
    ran = {
        (
            t.user_attrs["settings"]["micro_batch_size"],
            t.user_attrs["settings"]["gradient_accumulation_steps"],
        ): t
        for t in study.get_trials()
        if t.user_attrs.get("status") == "ok"
    }
    reference = ran[(32, 1)]
    # mbs 16 x 2 trains the reference's global batch: its accuracy is the reference's.
    reused = ran[(16, 2)]
    assert reused.user_attrs["accuracy_reused_from"] == reference.number
    assert reused.user_attrs["metric"] == reference.user_attrs["metric"]
    assert reused.user_attrs["accuracy_loss"] == 0.0
    # Throughput only: nothing evaluated, and training stopped once the step time was stable
    # (or ran the budget when it never was).
    assert reused.user_attrs["eval_seconds"] < 1e-3
    assert reused.user_attrs["steps"] <= reused.user_attrs["budget_steps"]
    for key in ((16, 1), (32, 2)):
        assert ran[key].user_attrs.get("accuracy_reused_from") is None
    # Only the first trial of the search launched a process group.
    assert [t.user_attrs["launched"] for t in sorted(ran.values(), key=lambda t: t.number)] == [
        True,
        False,
        False,
        False,
    ]
    for trial in ran.values():
        assert trial.user_attrs["memory_estimate_bytes"] > 0

    # The same space under a 1 MiB limit: everything but the reference is predicted over it.
    lines = []
    search(
        grid_search_options(
            tmp_path,
            path,
            space,
            n_trials=2,
            train_samples=SAMPLES,
            study="tight",
            max_memory=2**20,
        ),
        print_line=lines.append,
    )
    tight = load_study("tight", f"sqlite:///{tmp_path}/study.db")
    skipped = [t for t in tight.get_trials() if t.user_attrs.get("status") == "infeasible"]
    assert skipped and all("limit (--max-memory)" in t.user_attrs["reason"] for t in skipped)
    assert all(t.user_attrs["memory_predicted_bytes"] > 2**20 for t in skipped)


@pytest.mark.e2e
def test_an_exhausted_space_ends_the_search_and_says_so(tmp_path: Path) -> None:
    """8 runs asked of a space of 8 configurations: 3 cannot run (fewer than 8 steps in the
    budget), 1 fails (micro-batch 64 diverges). Once each has been tried, TPE could only
    propose repeats: the search ends with the 5 runs it made, and says why."""
    path = tmp_path / "tiny.py"
    path.write_text(MODEL)
    study, lines = run_grid_search(
        tmp_path,
        path,
        "micro_batch_size: [16, 32, 64, 512]\ngradient_accumulation_steps: [1, 8]\n",
        sampler="tpe",
        n_trials=8,
        train_samples=SAMPLES,
    )
    assert (
        "the space is exhausted: each of its 8 configurations has been tried; "
        "the search ends with 5 of --n-trials 8 runs"
    ) in lines
    statuses = Counter(t.user_attrs.get("status") for t in study.get_trials())
    assert (statuses["ok"], statuses["failed"], statuses["infeasible"]) == (4, 1, 3), statuses
    # Repeats stop with the space (before this, asks went on to 25 per missing run: 75).
    assert statuses["repeat"] < 40, statuses


@pytest.mark.e2e
def test_numerics_found_over_the_budget_skip_their_other_layouts(tmp_path: Path) -> None:
    """Issue 17, item 2: once a run of some numerics is over the accuracy budget, every other
    configuration with those numerics is infeasible without a run. At 1024 samples global
    batches of 64 and 128 train 16 and 8 steps against the reference's 32, and lose far more
    than 0.5%."""
    path = tmp_path / "small.py"
    path.write_text(SMALL_CLASSIFIER)
    study, lines = run_grid_search(
        tmp_path,
        path,
        "micro_batch_size: [32, 64, 128]\ngradient_accumulation_steps: [1, 2]\n",
        n_trials=6,
        train_samples=1024,
    )
    records = [TrialRecord.of(t) for t in study.get_trials()]
    judged = {r.get("global_batch_size"): r for r in records if r.status == "ok"}
    skipped = [r for r in records if r.reason.startswith("the same numerics")]
    assert sorted(judged) == [32, 64, 128], lines  # one run per global batch, no more
    for record in skipped:
        earlier = judged[record.get("global_batch_size")]
        assert earlier.accuracy_loss is not None and earlier.accuracy_loss > 0.005
        assert record.status == "infeasible" and record.get("launched") is None
        assert f"in trial {earlier.number}, over the 0.50% budget" in record.reason
    # Both layouts of global batch 64 and of 128 were proposed; one of each ran.
    assert len(skipped) == 2, lines
