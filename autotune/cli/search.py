"""`autotune search MODEL.py`: run or resume a search."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from autotune import search
from autotune._cluster import LAUNCHERS
from autotune._errors import UserError
from autotune._machine import parse_devices
from autotune._memory import parse_memory
from autotune._plan import LR_SCALINGS
from autotune._score import DEFAULT_MAX_ACCURACY_LOSS
from autotune._space import PARAMETERS
from autotune._space_files import shipped_spaces
from autotune.cli._common import add_study_flags
from autotune.study import (
    CONFIRM_ROUNDS,
    DEFAULT_CONFIRM,
    DEFAULT_MIN_MEASURE_SECONDS,
    DEFAULT_SPACE,
    DEFAULT_TRAIN_SAMPLES,
    DEFAULT_TRIAL_TIMEOUT,
    OBJECTIVES,
    SAMPLERS,
    SCORINGS,
    SearchOptions,
)


def add_parser(subparsers: Any, name: str) -> None:
    settings = "; ".join(f"{p.name}: {p.help}" for p in PARAMETERS.values())
    parser = subparsers.add_parser(
        name,
        help="search training configurations for a model file",
        description=(
            "Run an Optuna study whose trials are short, real DeepSpeed runs of the model file, "
            "scored by end-to-end throughput within an accuracy-loss budget. Re-running the "
            "same command resumes the study. Tuned settings: " + settings + "."
        ),
    )
    parser.add_argument("model", type=Path, help="the model file (see the README's contract)")
    add_search_flags(parser)
    add_measurement_flags(parser)


def add_search_flags(parser: argparse.ArgumentParser) -> None:
    """What to search, for how long, and against which budget."""
    parser.add_argument(
        "--space",
        type=Path,
        default=DEFAULT_SPACE,
        help="search space: a YAML file, or the name of a shipped space "
        f"({', '.join(shipped_spaces())}; default: default)",
    )
    parser.add_argument(
        "--n-trials",
        type=int,
        help="runs the study should hold, probes included (default: the probe strategy runs "
        "until it is done; an Optuna --sampler runs 12, or with --timeout as many as it allows)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="stop starting trials after this many seconds (the probe strategy then probes "
        "past the incumbent's near neighbours while time is left)",
    )
    parser.add_argument(
        "--trial-timeout",
        type=float,
        default=DEFAULT_TRIAL_TIMEOUT,
        help="seconds before a trial is killed and recorded as failed (default: %(default)s)",
    )
    parser.add_argument(
        "--train-samples",
        type=int,
        default=DEFAULT_TRAIN_SAMPLES,
        help="samples every trial trains on (default: %(default)s)",
    )
    parser.add_argument(
        "--max-accuracy-loss",
        type=float,
        default=DEFAULT_MAX_ACCURACY_LOSS,
        help="largest relative metric loss vs the reference, as a fraction (default: %(default)s)",
    )
    parser.add_argument(
        "--lr-scaling",
        choices=("auto", *LR_SCALINGS),
        default="auto",
        help="learning-rate rule when the global batch differs from the reference (default: "
        "auto: noise under --scoring goodput, sqrt otherwise)",
    )
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="probe",
        help="probe: the probe-first strategy (default; see README); or an Optuna sampler",
    )
    add_study_flags(parser, "study name (default: the model file's name)")
    parser.add_argument("--seed", type=int, default=0, help="seed of training and sampler")
    parser.add_argument(
        "--verdict-seeds",
        type=int,
        default=1,
        metavar="N",
        help="training seeds of every run that measures its metric (default 1; a verdict "
        "within the reference's noise of the budget is retrained up to the reference's 3)",
    )
    parser.add_argument(
        "--no-live",
        action="store_true",
        help="no live line on a terminal while a run is in progress (it is never written "
        "where stdout is not a terminal)",
    )


def add_measurement_flags(parser: argparse.ArgumentParser) -> None:
    """How each trial is measured, and what runs around the search."""
    parser.add_argument(
        "--min-measure-seconds",
        type=float,
        default=DEFAULT_MIN_MEASURE_SECONDS,
        help="time every trial's throughput over at least this much training; steps past "
        "--train-samples run after the metric is taken (default: %(default)s)",
    )
    parser.add_argument(
        "--confirm",
        type=int,
        default=DEFAULT_CONFIRM,
        metavar="N",
        help=f"after the search, time the N fastest feasible configurations {CONFIRM_ROUNDS} more "
        "times each, in rounds that time the reference too, and pick the best by the median of "
        "its speed-ups over the reference in the same rounds; 0 turns this off "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-memory",
        help="skip configurations predicted to need more than this per rank, e.g. 8GiB "
        "(default: the accelerator's memory, or on CPU the RAM's share per rank)",
    )
    parser.add_argument(
        "--devices",
        help="the accelerators (CUDA indices) or, on CPU, the cores this search's trials use, "
        "such as 0,1 or 4-7, so several workers share one machine without sharing devices "
        "(default: all)",
    )
    parser.add_argument(
        "--hostfile",
        type=Path,
        help="a DeepSpeed hostfile ('HOST slots=N' per line, this machine first): trials with "
        "more processes than this machine's slots span the next nodes, started there by "
        "--launcher (see docs/many-workers.md)",
    )
    parser.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="ssh",
        help="how trials start on the hostfile's other nodes: ssh, or srun inside a Slurm "
        "allocation (default: %(default)s)",
    )
    parser.add_argument(
        "--fresh-launches",
        action="store_true",
        help="launch every trial as a new process group instead of reusing warm workers",
    )
    parser.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="samples",
        help="what to maximise: samples/s, or real (non-padding) tokens/s of batches with "
        "input_ids, steadier when sequence lengths vary (default: %(default)s)",
    )
    parser.add_argument(
        "--scoring",
        choices=SCORINGS,
        default="throughput",
        help="throughput: every run trains --train-samples and scores its samples/s; goodput "
        "(experimental): each global batch trains the samples the reference's gradient noise "
        "scale predicts it needs to reach the reference's loss, and scores its samples/s times "
        "its statistical efficiency (default: %(default)s)",
    )
    parser.add_argument(
        "--no-accuracy-reuse",
        action="store_true",
        help="measure the metric in every trial, even when an earlier trial trained the same "
        "numerics (same global batch, precision and learning rate)",
    )
    parser.add_argument(
        "--no-early-stop",
        action="store_true",
        help="train every run's whole sample budget, even one whose throughput already shows it "
        "cannot beat the best feasible run",
    )


T = TypeVar("T")


def _parsed(flag: str, parse: Callable[[str], T], text: str | None) -> T | None:
    """``text`` of ``flag`` read by ``parse``; None when the flag was not given."""
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None


def _n_trials(args: argparse.Namespace) -> int | None:
    """--n-trials, or its default: none for the probe strategy and with --timeout (they end
    the search), else 12."""
    if args.n_trials is not None or args.timeout or args.sampler == "probe":
        return args.n_trials
    return 12


def options_from(args: argparse.Namespace) -> SearchOptions:
    """The search's options from the flags `add_search_flags` and `add_measurement_flags`
    added (`autotune plan` reads the same)."""
    max_memory = _parsed("--max-memory", parse_memory, args.max_memory)
    devices = _parsed("--devices", parse_devices, args.devices)
    return SearchOptions(
        model=args.model,
        space=args.space,
        n_trials=_n_trials(args),
        timeout=args.timeout,
        trial_timeout=args.trial_timeout,
        train_samples=args.train_samples,
        max_accuracy_loss=args.max_accuracy_loss,
        lr_scaling=args.lr_scaling,
        sampler=args.sampler,
        study=args.study,
        storage=args.storage,
        seed=args.seed,
        verdict_seeds=args.verdict_seeds,
        max_memory=max_memory,
        warm_workers=not args.fresh_launches,
        reuse_accuracy=not args.no_accuracy_reuse,
        early_stop=not args.no_early_stop,
        min_measure_seconds=args.min_measure_seconds,
        confirm=args.confirm,
        objective=args.objective,
        scoring=args.scoring,
        devices=devices,
        hostfile=args.hostfile,
        launcher=args.launcher,
        live=not args.no_live,
    )


def run(args: argparse.Namespace) -> int:
    search(options_from(args), print_line=lambda line: print(line, flush=True))
    return 0
