"""The search loop: check the inputs, open (or resume) the study, run the reference as trial 0,
let the sampler propose configurations until the study holds --n-trials runs, then time the
fastest again beside the reference (`autotune.study._confirm`).

Many workers may run this loop on one study (`autotune.study._sharing`): what must happen once
(the storage's schema, the study, its reference and start-up) happens under the storage's lock,
whoever comes first, and the last worker to leave confirms the fastest."""

from __future__ import annotations

import contextlib
import hashlib
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from autotune._errors import UserError
from autotune._machine import Machine, detect_machine, with_devices
from autotune._records import (
    STUDY_CHOSEN,
    STUDY_EVAL_SOURCE,
    STUDY_FIXED,
    STUDY_FIXED_DEFAULTS,
    STUDY_LR_SCALING,
    STUDY_MACHINE,
    STUDY_MAX_ACCURACY_LOSS,
    STUDY_METRIC_NAME,
    STUDY_MODEL,
    STUDY_MODEL_SHA256,
    STUDY_OBJECTIVE,
    STUDY_SCORING,
    STUDY_SEED,
    STUDY_SPACE,
    STUDY_TRAIN_SAMPLES,
    TrialRecord,
)
from autotune._space import SearchSpace, load_space
from autotune._task import Task, load_task
from autotune.runner import (
    WarmWorkers,
    check_nodes,
    prepare_deepspeed_ops,
    remove_orphaned_buffers,
    with_nodes,
)
from autotune.study._confirm import CONFIRM_ROUNDS, confirm, settle
from autotune.study._dashboard import name_objective
from autotune.study._live import LiveLine
from autotune.study._objective import Objective
from autotune.study._options import SearchOptions
from autotune.study._probe_search import probe_search
from autotune.study._ranking import reference_trial, runs_of
from autotune.study._retry import retry_orphaned_trials, run_queued_reference
from autotune.study._samplers import (
    ASKS_PER_RUN,
    enqueue_reference,
    enqueue_startup,
    make_sampler,
    sampler_seed,
)
from autotune.study._sharing import (
    StorageLock,
    Worker,
    join,
    leave,
    report_in,
    sharing_devices,
)
from autotune.study._storage import has_tables, open_storage, redact

PrintLine = Callable[[str], None]


def run_study(options: SearchOptions, print_line: PrintLine = print) -> tuple[optuna.Study, bool]:
    """Run or resume a study, and its confirmation rounds when this worker is the last of the
    study's to finish; see the module docstring.

    Returns:
        The study, and whether this worker was its last (and so confirmed the fastest; the
        others leave that, the export and the report to it).

    Raises:
        UserError: Bad input (model file, space, storage, flags, a machine unlike the study's),
            caught before any trial runs, or a reference configuration that does not train.
    """
    live = LiveLine(sys.stdout if options.live else None)
    print_line = live.around(print_line)
    task = load_task(options.model)
    if options.objective == "tokens" and not task.token_batches:
        raise UserError(
            f"{task.model_file.path}: --objective tokens counts the input_ids of dict batches, "
            "and these batches have none; use the default --objective samples."
        )
    space = load_space(options.space)
    machine = detect_machine()
    if options.devices is not None:
        machine = with_devices(machine, options.devices)
    if options.hostfile is not None:
        machine = with_nodes(machine, options.hostfile, options.launcher)
        _check_nodes(machine, print_line)
    lock = StorageLock(options.storage)
    storage = _open_shared_storage(options.storage, lock)
    remove_orphaned_buffers()  # shared memory of killed searches; a live one's stays
    print_line(
        f"model {task.model_file.path.name}: {task.train_size} training items, "
        f"{task.eval_size} eval items ({task.model_file.eval_source}), metric: "
        f"{task.metric_name}"
    )
    _prepare_machine(task, machine, print_line)
    with lock:
        study, worker = _open_study(options, task, machine, space, storage)
        for line in retry_orphaned_trials(study):
            print_line(line)
        shared = sharing_devices(study, worker)
    if shared:
        print_line(
            f"warning: worker {', '.join(map(str, shared))} of this study runs on this host "
            "with devices this one uses too; their trials will slow each other down. Give each "
            "worker on one machine its own --devices."
        )
    left = False
    try:
        objective = Objective(options, task, machine, space, study, print_line, worker)
        objective.live = live
        with lock:
            _queue_first_trials(study, objective, options, space, task, print_line)
        with contextlib.ExitStack() as stack:
            if options.warm_workers:
                folder = options.trials_dir / options.study_name / "workers" / worker.folder_name
                objective.workers = stack.enter_context(WarmWorkers(folder))
            _search(study, objective, options, print_line)
            with lock:
                last, left = leave(study, worker), True
            if last:
                # Stored confirmation runs count: a study confirmed before runs nothing here.
                confirm(
                    study,
                    objective.remeasure,
                    options.confirm,
                    CONFIRM_ROUNDS,
                    options.seed,
                    print_line,
                )
                if options.confirm:
                    settle(study, objective.remeasure, options.seed, print_line)
    finally:
        if not left:
            # On the way out of an error: another one here must not hide it.
            with contextlib.suppress(Exception), lock:
                leave(study, worker)
    return study, last


def _open_shared_storage(url: str, lock: StorageLock) -> optuna.storages.BaseStorage:
    """The storage, its tables created under ``lock`` by the first worker on an empty database
    (optuna#1092); once they exist it is opened without the lock, whose connection would be
    one more beside the storage's own. The lock then borrows the storage's connections."""
    storage = None
    if not has_tables(url):
        with lock:
            if not has_tables(url):
                storage = open_storage(url)
    if storage is None:
        storage = open_storage(url)
    lock.share(storage)
    return storage


def _check_nodes(machine: Machine, print_line: PrintLine) -> None:
    """Say which nodes trials may span, and check that each other node can start a trial's
    ranks (before the study is opened: a node that cannot is bad input)."""
    if len(machine.nodes) > 1:
        print_line(
            f"nodes: {', '.join(f'{n.host} ({n.slots} slots)' for n in machine.nodes)}; trials "
            f"of more than {machine.nodes[0].slots} processes span nodes, started by "
            f"{machine.launcher}; checking that each node can start them"
        )
        check_nodes(machine)


def _prepare_machine(task: Task, machine: Machine, print_line: PrintLine) -> None:
    """Build DeepSpeed's ops for the model's optimizer here."""
    print_line(f"machine: {machine.describe()}; checking DeepSpeed's ops (built once per machine)")
    built = prepare_deepspeed_ops(machine, task.model_file.optimizer)
    if built:
        print_line(f"built {', '.join(built)}")


def _open_study(
    options: SearchOptions,
    task: Task,
    machine: Machine,
    space: SearchSpace,
    storage: optuna.storages.BaseStorage,
) -> tuple[optuna.Study, Worker]:
    """The study, created or resumed (after checking it is the same experiment on the same kind
    of machine), with the trials of a dead process failed, and this worker registered in it
    with its own sampler seed. Call under the storage's lock."""
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
    _check_machine(study, options, machine)
    name_objective(study)  # what optuna-dashboard calls the value
    study.set_user_attr(STUDY_SPACE, space.describe())
    optuna.storages.fail_stale_trials(study)
    worker = join(study, machine.device_ids)
    if worker.number:
        seed = sampler_seed(options.seed, worker.number)
        study.sampler = make_sampler(options.sampler, seed, space.grid())
    return study, worker


def model_sha256(path: Path) -> str:
    """The sha256 of a model file's content, which ties a study to it (`STUDY_MODEL_SHA256`)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_resume(study: optuna.Study, options: SearchOptions, task: Task) -> None:
    """Record what a new study is run with, or refuse to resume one run with other settings or
    another model file's content (the path may differ: every worker has its own copy)."""
    path = str(task.model_file.path)
    wanted: dict[str, Any] = {
        STUDY_MODEL_SHA256: model_sha256(task.model_file.path),
        STUDY_TRAIN_SAMPLES: options.train_samples,
        STUDY_MAX_ACCURACY_LOSS: options.max_accuracy_loss,
        STUDY_LR_SCALING: options.lr_rule,
        STUDY_SEED: options.seed,
        STUDY_OBJECTIVE: options.objective,
        STUDY_SCORING: options.scoring,
    }
    stored = dict(study.user_attrs)
    if not stored.get(STUDY_MODEL):
        # First, so optuna-dashboard lists it on its first page, beside its own "Best Trial".
        study.set_user_attr(STUDY_CHOSEN, None)
        study.set_user_attr(STUDY_MODEL, path)
        for name, value in wanted.items():
            study.set_user_attr(name, value)
        study.set_user_attr(STUDY_METRIC_NAME, task.metric_name)
        study.set_user_attr(STUDY_EVAL_SOURCE, task.model_file.eval_source)
        return
    problem = resume_problem(options.study_name, stored, wanted, path)
    if problem:
        raise UserError(problem)
    if STUDY_MODEL_SHA256 not in stored:  # written before studies kept the content's hash
        study.set_user_attr(STUDY_MODEL_SHA256, wanted[STUDY_MODEL_SHA256])


def resume_problem(
    study_name: str, stored: dict[str, Any], wanted: dict[str, Any], model_path: str
) -> str | None:
    """Why a study with attributes ``stored`` cannot be resumed with the settings ``wanted``
    (keyed by `STUDY_FIXED`) and the model file at ``model_path``, or None. A study written
    before it kept the model file's hash is tied to its path instead."""
    if STUDY_MODEL_SHA256 not in stored and stored.get(STUDY_MODEL) != model_path:
        return (
            f"Study '{study_name}' was run with model file {stored.get(STUDY_MODEL)}, not "
            f"{model_path}; its trials are only comparable under the same setting. Use the "
            "same model file to resume, or a new --study name."
        )
    for name in STUDY_FIXED:
        have = stored.get(name, STUDY_FIXED_DEFAULTS.get(name))
        if name not in stored and name == STUDY_MODEL_SHA256:
            continue
        if have == wanted[name]:
            continue
        if name == STUDY_MODEL_SHA256:
            return (
                f"Study '{study_name}' was run with a model file whose content differs from "
                f"{model_path} (sha256 {str(have)[:12]}, this file {wanted[name][:12]}); its "
                "trials are only comparable with the same model. Use a copy of the study's "
                "model file, or a new --study name."
            )
        flag = "--" + name.replace("_", "-")
        return (
            f"Study '{study_name}' was run with {flag} {stored.get(name)}, not {wanted[name]}; "
            f"its trials are only comparable under the same setting. Use the same {flag} to "
            "resume, or a new --study name."
        )
    return None


_CPU_CORES = re.compile(r", \d+ cpu cores$")


def _check_machine(study: optuna.Study, options: SearchOptions, machine: Machine) -> None:
    """Record the machine a new study runs on; refuse a worker on another kind of machine."""
    stored = study.user_attrs.get(STUDY_MACHINE)
    mine = machine.describe()
    if stored is None:
        study.set_user_attr(STUDY_MACHINE, mine)
    elif not same_machine(str(stored), mine):
        raise UserError(
            f"Study '{options.study_name}' runs on {stored}, and this machine is {mine}; "
            "throughputs from different machines are not comparable. Run this worker on a "
            "machine like the study's, or use a new --study name."
        )


def same_machine(stored: str, mine: str) -> bool:
    """Whether two `Machine.describe()` texts name the same kind of machine: CPU model and
    cores on CPU; accelerator model and count with an accelerator (host cores aside)."""
    if stored.startswith("cpu") or mine.startswith("cpu"):
        return stored == mine
    return _CPU_CORES.sub("", stored) == _CPU_CORES.sub("", mine)


def _queue_first_trials(
    study: optuna.Study,
    objective: Objective,
    options: SearchOptions,
    space: SearchSpace,
    task: Task,
    print_line: PrintLine,
) -> None:
    """Queue the reference unless it ran, runs (on another worker) or waits already; a new
    study also gets its start-up (TPE and GP; `enqueue_startup`). Call under the storage's
    lock."""
    new_study = not study.get_trials(deepcopy=False)
    if reference_trial(study) is None:
        pending = study.get_trials(
            deepcopy=False,
            states=(optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING),
        )
        if not any(TrialRecord.of(t).is_reference for t in pending):
            enqueue_reference(study, space, task.reference_settings())
    if not new_study:
        return
    halves, drawn = enqueue_startup(
        study,
        space,
        task.reference_settings(),
        objective.can_run,
        options.sampler,
        options.seed,
        options.run_limit,
        objective.machine.native_half,
    )
    if halves or drawn:
        steps = ["the reference"]
        if halves:
            precisions = " and ".join(settings["precision"] for settings in halves)
            steps.append(f"the reference in {precisions} (native on this machine)")
        if drawn:
            steps.append(
                f"{len(drawn)} configurations drawn at random among those this machine can run"
            )
        print_line(
            f"start-up: {', '.join(steps[:-1])}, then {steps[-1]}; "
            f"{options.sampler.upper()} proposes from then on"
        )


def _exhausted(
    study: optuna.Study, objective: Objective, options: SearchOptions, print_line: PrintLine
) -> bool:
    """Whether every configuration of the space has been tried (run, failed, or found unable
    to run here): the sampler could only propose repeats, so the search ends, and says so."""
    untried = objective.untried()
    if untried is None or untried[0] > 0:
        return False
    tried = (
        "its one configuration" if untried[1] == 1 else f"each of its {untried[1]} configurations"
    )
    print_line(
        f"the space is exhausted: {tried} has been tried; "
        f"the search ends with {len(runs_of(study))}"
        + ("" if options.n_trials is None else f" of --n-trials {options.n_trials}")
        + " runs"
    )
    return True


def _search(
    study: optuna.Study, objective: Objective, options: SearchOptions, print_line: PrintLine
) -> None:
    """Let the sampler propose until the study holds ``options.n_trials`` runs (repeats and
    configurations that cannot run cost no run), --timeout passes, or the space is
    exhausted."""
    already = len(runs_of(study))
    if already >= options.run_limit:
        print_line(
            f"study '{options.study_name}' already holds {already} runs "
            f"(--n-trials {options.n_trials})."
        )
        return
    searching = (
        f"searching until {options.n_trials}"
        if options.timeout is None and options.n_trials is not None
        else f"searching {'' if options.n_trials is None and options.timeout is None else 'for '}"
        f"{options.budget()}"
    )
    print_line(
        f"study '{options.study_name}' in {redact(options.storage)}: {already} runs so "
        f"far, {searching}; budget {options.max_accuracy_loss:.2%} accuracy loss"
    )

    run_queued_reference(study, objective)
    if options.sampler == "probe":
        probe_search(study, objective, options, print_line)
        return
    if _exhausted(study, objective, options, print_line):
        return

    def stop_when_enough(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        with objective.lock:
            report_in(study, objective.worker)
            for line in retry_orphaned_trials(study):  # another worker's, cut short
                print_line(line)
        if len(runs_of(study)) >= options.run_limit:
            study.stop()
        elif _exhausted(study, objective, options, print_line):
            study.stop()

    study.optimize(
        objective,
        n_trials=(options.run_limit - already) * ASKS_PER_RUN,
        timeout=options.timeout,
        callbacks=[stop_when_enough],
        catch=(),
    )
