"""A proposal is claimed before it launches (autotune.study._objective with _sharing): the real
objective on a real SQLite study, with another worker's trial of the same configuration
running; nothing is launched, so it runs in seconds."""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from autotune._errors import UserError
from autotune._machine import Machine
from autotune._plan import TrialConfig, fitted_zero_bucket
from autotune._records import (
    CONFIG_KEY,
    REFERENCE,
    REPEAT,
    REPEAT_OF,
    RETRY_OF,
    ROLE,
    RUN_SLOT,
    STATUS,
    THROUGHPUT,
)
from autotune._space import SearchSpace, load_space, sampled_params
from autotune._task import Task, load_task
from autotune.study import SearchOptions, open_storage
from autotune.study._objective import Objective
from autotune.study._sharing import Worker

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    # The trials are asked and told by hand here, as two workers would.
    pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning"),
]
MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    BATCH_SIZE = 32

    def model():
        return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))

    def train_data():
        x = torch.randn(1200, 16, generator=torch.Generator().manual_seed(1))
        return TensorDataset(x, x[:, :4].argmax(1))
    """
)


def _empty_study(
    write_model: Callable[[str, str], Path], tmp_path: Path, n_trials: int
) -> tuple[SearchOptions, Task, SearchSpace, optuna.Study]:
    """The options, task and space of a search of MODEL over two micro-batches, and its new
    study in the storage a search opens (SQLite, heartbeats on)."""
    model = write_model(MODEL, "tiny.py")
    space_file = tmp_path / "space.yaml"
    space_file.write_text("micro_batch_size: [16, 32]\n")
    options = SearchOptions(
        model=model,
        space=space_file,
        storage=f"sqlite:///{tmp_path}/study.db",
        trials_dir=tmp_path / "trials",
        n_trials=n_trials,
    )
    study = optuna.create_study(
        study_name="s", storage=open_storage(options.storage), direction="maximize"
    )
    return options, load_task(model), load_space(space_file), study


def test_a_proposal_running_on_another_worker_is_waited_for_and_repeated(
    write_model: Callable[[str, str], Path], tmp_path: Path
) -> None:
    options, task, space, study = _empty_study(write_model, tmp_path, n_trials=4)
    settings = {**task.reference_settings(), "micro_batch_size": 16}
    key = TrialConfig.from_settings(
        settings, task.model_file.optimizer, task.model_file.batch_size, options.lr_rule
    ).key()
    for _ in range(2):
        study.enqueue_trial(sampled_params(space, settings))
    elsewhere = study.ask()  # worker 1's run of the configuration, claimed and running
    elsewhere.set_user_attr(CONFIG_KEY, key)
    elsewhere.set_user_attr(RUN_SLOT, 1)

    def finish_elsewhere() -> None:
        time.sleep(1.5)
        elsewhere.set_user_attr(STATUS, "ok")
        elsewhere.set_user_attr(THROUGHPUT, 123.0)
        study.tell(elsewhere, 123.0)

    lines: list[str] = []
    machine = Machine("cpu", 2, 2, fp16=False, bf16=True)
    objective = Objective(options, task, machine, space, study, lines.append, Worker.here(0))
    finisher = threading.Thread(target=finish_elsewhere)
    finisher.start()
    value = objective(study.ask())
    finisher.join()
    assert value == 123.0
    mine = study.get_trials()[1]
    assert (mine.user_attrs[STATUS], mine.user_attrs[REPEAT_OF]) == (REPEAT, 0)
    assert RUN_SLOT not in mine.user_attrs  # a repeat claims no run
    assert [line.split("] ", 1)[1] for line in lines] == [
        "waiting for trial 0, the same configuration running on another worker",
        "repeat of trial 0: stored result reused",
    ]
    assert not (tmp_path / "trials" / "s").exists()  # nothing was launched


def test_the_last_runs_are_kept_for_a_queued_retry(
    write_model: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """A run cut short is queued again; when the study has no more runs than that retry needs,
    another proposal is not run (and its worker goes on, to take the retry), not stopped."""
    options, task, space, study = _empty_study(write_model, tmp_path, n_trials=2)
    reference = {**task.reference_settings(), "micro_batch_size": 16}
    params = sampled_params(space, reference)
    distributions = {"micro_batch_size": optuna.distributions.CategoricalDistribution([16, 32])}
    study.add_trial(  # run 1 of 2, done
        optuna.trial.create_trial(
            params=params,
            distributions=distributions,
            value=1.0,
            user_attrs={STATUS: "ok", CONFIG_KEY: "done", RUN_SLOT: 1, THROUGHPUT: 1.0},
        )
    )
    study.enqueue_trial(sampled_params(space, {**reference, "micro_batch_size": 32}))
    study.enqueue_trial(params, user_attrs={RETRY_OF: 0})  # as retry_trial queues it
    lines: list[str] = []
    machine = Machine("cpu", 2, 2, fp16=False, bf16=True)
    objective = Objective(options, task, machine, space, study, lines.append, Worker.here(0))
    with pytest.raises(optuna.TrialPruned):
        objective(study.ask())
    assert lines[-1].endswith(
        "not run: the study's last runs are kept for the retries of runs cut short"
    )
    assert not study._stop_flag  # the worker goes on: its next trial is the retry
    assert study.ask().user_attrs[RETRY_OF] == 0


def test_a_reference_that_failed_on_another_worker_stops_this_one_with_one_line(
    write_model: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """A worker whose run ended before the reference's result waits for it; when the reference
    failed on its worker (nothing running or queued), it stops with one line, not a wait."""
    options, task, space, study = _empty_study(write_model, tmp_path, n_trials=4)
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL, user_attrs={ROLE: REFERENCE, RUN_SLOT: 1}
        )
    )
    machine = Machine("cpu", 2, 2, fp16=False, bf16=True)
    objective = Objective(options, task, machine, space, study, print, Worker.here(1))
    started = time.monotonic()
    with pytest.raises(UserError, match="^The reference configuration failed on another worker"):
        objective._reference_metric()
    assert time.monotonic() - started < 30


def test_the_objective_fits_the_zero_bucket_to_the_model(
    write_model: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """The configurations the objective builds carry ZeRO's bucket fitted to the model file's
    measured parameters, so the stored and exported ds_config do (nothing runs)."""
    options, task, space, study = _empty_study(write_model, tmp_path, n_trials=1)
    machine = Machine("cpu", 2, 2, fp16=False, bf16=True)
    objective = Objective(options, task, machine, space, study, print, Worker.here(0))
    zero2 = objective.config_of({**task.reference_settings(), "zero_stage": 2})
    assert zero2.zero_bucket_elements == fitted_zero_bucket(16 * 8 + 8 + 8 * 4 + 4) == 2**20
    assert zero2.ds_config()["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 2**20}
    assert objective.config_of(task.reference_settings()).zero_bucket_elements is None  # ZeRO 0
