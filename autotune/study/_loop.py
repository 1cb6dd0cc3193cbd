"""The search loop: check the inputs, open (or resume) the study, run the reference as trial 0,
let the sampler propose configurations until the study holds --n-trials runs, then time the
fastest again beside the reference (`autotune.study._confirm`)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from autotune._errors import UserError
from autotune._plan import Machine, detect_machine
from autotune._records import (
    STUDY_EVAL_SOURCE,
    STUDY_FIXED,
    STUDY_FIXED_DEFAULTS,
    STUDY_LR_SCALING,
    STUDY_MACHINE,
    STUDY_MAX_ACCURACY_LOSS,
    STUDY_METRIC_NAME,
    STUDY_MODEL,
    STUDY_OBJECTIVE,
    STUDY_SEED,
    STUDY_SPACE,
    STUDY_TRAIN_SAMPLES,
    TrialRecord,
)
from autotune._space import SearchSpace, load_space
from autotune._task import Task, load_task
from autotune.runner import WarmWorkers, prepare_deepspeed_ops, remove_orphaned_buffers
from autotune.study._confirm import CONFIRM_ROUNDS, confirm
from autotune.study._objective import Objective
from autotune.study._options import SearchOptions
from autotune.study._ranking import reference_trial, runs_of
from autotune.study._retry import retry_orphaned_trials, run_queued_reference
from autotune.study._samplers import (
    ASKS_PER_RUN,
    enqueue_reference,
    enqueue_startup,
    make_sampler,
)
from autotune.study._storage import open_storage, redact

PrintLine = Callable[[str], None]


def run_study(options: SearchOptions, print_line: PrintLine = print) -> optuna.Study:
    """Run or resume a study and its confirmation rounds; see the module docstring.

    Raises:
        UserError: Bad input (model file, space, storage, flags), caught before any trial runs,
            or a reference configuration that does not train.
    """
    task = load_task(options.model)
    if options.objective == "tokens" and not task.token_batches:
        raise UserError(
            f"{task.model_file.path}: --objective tokens counts the input_ids of dict batches, "
            "and these batches have none; use the default --objective samples."
        )
    space = load_space(options.space)
    storage = open_storage(options.storage)
    remove_orphaned_buffers()  # shared memory of killed searches; a live one's stays
    print_line(
        f"model {task.model_file.path.name}: {task.train_size} training items, "
        f"{task.eval_size} eval items ({task.model_file.eval_source}), metric: "
        f"{task.metric_name}"
    )
    machine = _prepare_machine(task, print_line)
    study = _open_study(options, task, machine, space, storage)
    for line in retry_orphaned_trials(study):
        print_line(line)
    objective = Objective(options, task, machine, space, study, print_line)
    _queue_first_trials(study, objective, options, space, task, print_line)
    with contextlib.ExitStack() as stack:
        if options.warm_workers:
            objective.workers = stack.enter_context(
                WarmWorkers(options.trials_dir / options.study_name / "workers")
            )
        _search(study, objective, options, print_line)
        # Stored confirmation runs count: a finished study confirmed before runs nothing here.
        confirm(
            study, objective.remeasure, options.confirm, CONFIRM_ROUNDS, options.seed, print_line
        )
    return study


def _prepare_machine(task: Task, print_line: PrintLine) -> Machine:
    """This machine, with DeepSpeed's ops for the model's optimizer built."""
    machine = detect_machine()
    print_line(f"machine: {machine.describe()}; checking DeepSpeed's ops (built once per machine)")
    built = prepare_deepspeed_ops(machine, task.model_file.optimizer)
    if built:
        print_line(f"built {', '.join(built)}")
    return machine


def _open_study(
    options: SearchOptions,
    task: Task,
    machine: Machine,
    space: SearchSpace,
    storage: optuna.storages.BaseStorage,
) -> optuna.Study:
    """The study, created or resumed (after checking it is the same experiment), with the
    trials of a dead process failed."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines report each trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.create_study(
        study_name=options.study_name,
        storage=storage,
        sampler=make_sampler(options.sampler, options.seed, space.grid()),
        direction="maximize",
        load_if_exists=True,
    )
    _check_resume(study, options, task)
    study.set_user_attr(STUDY_MACHINE, machine.describe())
    study.set_user_attr(STUDY_SPACE, space.describe())
    optuna.storages.fail_stale_trials(study)
    return study


def _check_resume(study: optuna.Study, options: SearchOptions, task: Task) -> None:
    """Record what a new study is run with, or refuse to resume one run with other settings."""
    wanted: dict[str, Any] = {
        STUDY_MODEL: str(task.model_file.path),
        STUDY_TRAIN_SAMPLES: options.train_samples,
        STUDY_MAX_ACCURACY_LOSS: options.max_accuracy_loss,
        STUDY_LR_SCALING: options.lr_scaling,
        STUDY_SEED: options.seed,
        STUDY_OBJECTIVE: options.objective,
    }
    stored = study.user_attrs
    if not stored.get(STUDY_MODEL):
        for name, value in wanted.items():
            study.set_user_attr(name, value)
        study.set_user_attr(STUDY_METRIC_NAME, task.metric_name)
        study.set_user_attr(STUDY_EVAL_SOURCE, task.model_file.eval_source)
        return
    for name in STUDY_FIXED:
        if stored.get(name, STUDY_FIXED_DEFAULTS.get(name)) != wanted[name]:
            flag = "model file" if name == STUDY_MODEL else "--" + name.replace("_", "-")
            raise UserError(
                f"Study '{options.study_name}' was run with {flag} {stored.get(name)}, not "
                f"{wanted[name]}; its trials are only comparable under the same setting. Use "
                f"the same {flag} to resume, or a new --study name."
            )


def _queue_first_trials(
    study: optuna.Study,
    objective: Objective,
    options: SearchOptions,
    space: SearchSpace,
    task: Task,
    print_line: PrintLine,
) -> None:
    """Queue the reference unless it ran or waits already; a new study also gets its random
    start-up (TPE and GP)."""
    new_study = not study.get_trials(deepcopy=False)
    if reference_trial(study) is None:
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if not any(TrialRecord.of(t).is_reference for t in waiting):
            enqueue_reference(study, space, task.reference_settings())
    if not new_study:
        return
    queued = enqueue_startup(
        study,
        space,
        task.reference_settings(),
        objective.can_run,
        options.sampler,
        options.seed,
        options.n_trials,
    )
    if queued:
        print_line(
            f"start-up: the reference, then {queued} configurations drawn at random among "
            f"those this machine can run; {options.sampler.upper()} proposes from then on"
        )


def _search(
    study: optuna.Study, objective: Objective, options: SearchOptions, print_line: PrintLine
) -> None:
    """Let the sampler propose until the study holds ``options.n_trials`` runs (repeats and
    configurations that cannot run cost no run)."""
    already = len(runs_of(study))
    if already >= options.n_trials:
        print_line(
            f"study '{options.study_name}' already holds {already} runs "
            f"(--n-trials {options.n_trials})."
        )
        return
    print_line(
        f"study '{options.study_name}' in {redact(options.storage)}: {already} runs so "
        f"far, searching until {options.n_trials}; budget "
        f"{options.max_accuracy_loss:.2%} accuracy loss"
    )

    run_queued_reference(study, objective)

    def stop_when_enough(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if len(runs_of(study)) >= options.n_trials:
            study.stop()

    study.optimize(
        objective,
        n_trials=(options.n_trials - already) * ASKS_PER_RUN,
        timeout=options.timeout,
        callbacks=[stop_when_enough],
        catch=(),
    )
