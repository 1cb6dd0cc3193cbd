"""The search space: which training settings are tuned, their allowed values, and how to read
a space file.

This module is the one source of truth for parameter names: the YAML validator, the sampler,
the CLI help and the report all read :data:`PARAMETERS`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from autotune._errors import UserError
from autotune._setting_values import (
    check_batching,
    check_bool,
    check_nonnegative_int,
    check_offload,
    check_optimizer_impl,
    check_partition_method,
    check_positive_int,
    check_precision,
    check_zero_stage,
)
from autotune._space_files import resolve_space


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One tunable setting.

    Attributes:
        name: The Optuna parameter name, also used in reports and exports.
        check: Returns None for a valid value, else a phrase naming what is expected.
        help: One line for the CLI help and the README.
        label: Its name in the report's tables and plots.
        short: Its abbreviation in a trial's one-line description and the trials table.
        integer: True when the value is an integer, so a ``{low, high}`` range is allowed.
        active_when: For conditional settings, a predicate over the settings chosen so far;
            when it is false the setting takes its reference value and is not sampled.
    """

    name: str
    check: Callable[[Any], str | None]
    help: str
    label: str
    short: str
    integer: bool = False
    active_when: Callable[[dict[str, Any]], bool] | None = None


PARAMETERS: dict[str, Parameter] = {
    p.name: p
    for p in (
        Parameter(
            "micro_batch_size",
            check_positive_int,
            "samples per rank per step",
            "micro batch",
            "mbs",
            integer=True,
        ),
        Parameter(
            "gradient_accumulation_steps",
            check_positive_int,
            "micro-batches per optimizer step",
            "grad accum",
            "gas",
            integer=True,
        ),
        Parameter(
            "precision",
            check_precision,
            "fp32, bf16 or fp16 (fp16 with loss scaling)",
            "precision",
            "precision",
        ),
        Parameter(
            "zero_stage",
            check_zero_stage,
            "DeepSpeed ZeRO stage 0-3",
            "ZeRO",
            "zero",
            integer=True,
        ),
        Parameter(
            "processes",
            check_positive_int,
            "ranks in all: data-parallel x pipeline",
            "processes",
            "procs",
            integer=True,
        ),
        Parameter(
            "pipeline_stages",
            check_positive_int,
            "pipeline stages (1: no pipeline)",
            "pipeline stages",
            "pp",
            integer=True,
        ),
        Parameter(
            "partition_method",
            check_partition_method,
            "how layers are split over stages: parameters, uniform, profile, type:REGEX",
            "partition",
            "partition",
            active_when=lambda chosen: chosen.get("pipeline_stages", 1) > 1,
        ),
        Parameter(
            "num_workers",
            check_nonnegative_int,
            "DataLoader worker processes",
            "workers",
            "workers",
            integer=True,
        ),
        Parameter(
            "pin_memory",
            check_bool,
            "DataLoader pin_memory (accelerators only)",
            "pin memory",
            "pin",
        ),
        Parameter(
            "prefetch_factor",
            check_positive_int,
            "batches each worker loads ahead",
            "prefetch",
            "prefetch",
            integer=True,
            active_when=lambda chosen: chosen.get("num_workers", 0) > 0,
        ),
        Parameter(
            "threads",
            check_nonnegative_int,
            "intra-op threads per rank (0: the cores a rank's share leaves after its workers)",
            "threads",
            "threads",
            integer=True,
        ),
        Parameter(
            "activation_checkpointing",
            check_bool,
            "recompute each layer's activations in the backward pass (needs layers())",
            "activation checkpointing",
            "ckpt",
        ),
        Parameter(
            "compile",
            check_bool,
            "torch.compile through DeepSpeed's engine.compile() (inductor; no pipeline)",
            "compile",
            "compile",
        ),
        Parameter(
            "offload",
            check_offload,
            "ZeRO offload to CPU memory: none, optimizer (ZeRO 1-3), all (+ parameters, ZeRO 3)",
            "offload",
            "offload",
        ),
        Parameter(
            "optimizer_impl",
            check_optimizer_impl,
            "Adam's kernel: deepspeed (its FusedAdam op), torch, torch_fused",
            "optimizer kernel",
            "opt",
        ),
        Parameter(
            "cache_data",
            check_bool,
            "keep training items in memory after their first load (no workers)",
            "cache data",
            "cache",
        ),
        Parameter(
            "batching",
            check_batching,
            "micro-batches of a fixed item count, or packed to micro_batch_size x the mean "
            "length in tokens (variable-length input_ids; no pipeline)",
            "batching",
            "batch",
        ),
    )
}

DERIVED_SETTINGS: dict[str, tuple[str, str]] = {
    "global_batch_size": ("global batch", "samples per optimizer step over all ranks"),
    "learning_rate": ("learning rate", "learning rate used by the trial"),
}
"""Settings that follow from the tuned ones, shown beside them: name -> (label, help)."""


def setting_label(name: str) -> str:
    """The report's label of a tuned or derived setting (the name itself for anything else)."""
    if name in PARAMETERS:
        return PARAMETERS[name].label
    return DERIVED_SETTINGS[name][0] if name in DERIVED_SETTINGS else name


def setting_help(name: str) -> str | None:
    """One line on a tuned or derived setting, or None for anything else."""
    if name in PARAMETERS:
        return PARAMETERS[name].help
    return DERIVED_SETTINGS[name][1] if name in DERIVED_SETTINGS else None


def describe_settings(settings: dict[str, Any]) -> str:
    """A trial's settings on one line: ``mbs=32 gas=1 fp32 zero=0 procs=1 workers=0``."""
    short = {name: parameter.short for name, parameter in PARAMETERS.items()}
    parts = [
        f"{short['micro_batch_size']}={settings['micro_batch_size']}",
        f"{short['gradient_accumulation_steps']}={settings['gradient_accumulation_steps']}",
        str(settings["precision"]),
        f"{short['zero_stage']}={settings['zero_stage']}",
        f"{short['processes']}={settings['processes']}",
    ]
    if settings["pipeline_stages"] > 1:
        parts.append(
            f"{short['pipeline_stages']}={settings['pipeline_stages']}:{settings['partition_method']}"
        )
    parts.append(f"{short['num_workers']}={settings['num_workers']}")
    if settings["num_workers"]:
        parts.append(f"{short['prefetch_factor']}={settings['prefetch_factor']}")
    if settings.get("threads"):  # absent from studies older than the setting
        parts.append(f"{short['threads']}={settings['threads']}")
    usual_values = (("offload", "none"), ("optimizer_impl", "deepspeed"), ("batching", "items"))
    for name, usual in usual_values:
        if settings.get(name, usual) != usual:
            parts.append(f"{short[name]}={settings[name]}")
    flags = ("pin_memory", "activation_checkpointing", "compile", "cache_data")
    return " ".join(parts + [short[name] for name in flags if settings.get(name)])


@dataclasses.dataclass(frozen=True)
class IntRange:
    """An integer range ``{low, high, log}``, both ends included."""

    low: int
    high: int
    log: bool = False


Choices = tuple[Any, ...]
"""A list of allowed values; a single value pins the setting."""


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The validated contents of a space file.

    Attributes:
        domains: For each parameter named in the file, its choices or its range. Parameters
            left out take the reference value.
        source: Where the space came from, for messages and the report.
    """

    domains: dict[str, Choices | IntRange]
    source: str = "<dict>"

    def __post_init__(self) -> None:
        for name, domain in self.domains.items():
            _validate_domain(name, domain, self.source)

    def describe(self) -> dict[str, Any]:
        """A plain, JSON-ready form of the space for storing with the study."""
        out: dict[str, Any] = {}
        for name, domain in self.domains.items():
            if isinstance(domain, IntRange):
                out[name] = {"low": domain.low, "high": domain.high, "log": domain.log}
            else:
                out[name] = list(domain)
        return out

    def size(self) -> int | None:
        """How many distinct configurations the space holds (ignoring conditions)."""
        total = 1
        for domain in self.domains.values():
            if isinstance(domain, IntRange):
                total *= domain.high - domain.low + 1
            else:
                total *= len(domain)
        return total

    def grid(self) -> dict[str, list[Any]]:
        """Every parameter's values as a list, for Optuna's GridSampler."""
        grid: dict[str, list[Any]] = {}
        for name, domain in self.domains.items():
            if isinstance(domain, IntRange):
                grid[name] = list(range(domain.low, domain.high + 1))
            else:
                grid[name] = list(domain)
        return grid


def _validate_domain(name: str, domain: Choices | IntRange, source: str) -> None:
    if name not in PARAMETERS:
        known = ", ".join(PARAMETERS)
        raise UserError(f"{source}: unknown setting '{name}'. Known settings: {known}.")
    parameter = PARAMETERS[name]
    if isinstance(domain, IntRange):
        if not parameter.integer:
            raise UserError(f"{source}: '{name}' takes a list of values, not a range.")
        for end in (domain.low, domain.high):
            problem = parameter.check(end)
            if problem:
                raise UserError(f"{source}: '{name}' range ends must be {problem}, got {end!r}.")
        if domain.low > domain.high:
            raise UserError(f"{source}: '{name}' has low {domain.low} above high {domain.high}.")
        if domain.log and domain.low < 1:
            raise UserError(
                f"{source}: '{name}' range with log: true must start at 1 or more, "
                f"got low {domain.low}."
            )
        return
    if len(domain) == 0:
        raise UserError(f"{source}: '{name}' has an empty list; give at least one value.")
    for value in domain:
        problem = parameter.check(value)
        if problem:
            raise UserError(f"{source}: '{name}' must be {problem}, got {value!r}.")
    if len(set(map(repr, domain))) != len(domain):
        raise UserError(f"{source}: '{name}' lists a value twice.")


def _parse_domain(name: str, raw: Any, source: str) -> Choices | IntRange:
    if isinstance(raw, dict):
        unknown = set(raw) - {"low", "high", "log"}
        if unknown or not {"low", "high"} <= set(raw):
            raise UserError(
                f"{source}: '{name}' range must be {{low: N, high: M}} with an optional "
                f"'log: true', got {raw!r}."
            )
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise UserError(f"{source}: '{name}' range 'log' must be true or false.")
        return IntRange(raw["low"], raw["high"], log)
    if isinstance(raw, list):
        return tuple(raw)
    return (raw,)


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file.

    Args:
        path: A YAML file mapping setting names to a list of choices, a single pinned value,
            or an integer range ``{low, high, log}``; or the name of a shipped space.

    Raises:
        UserError: The file is missing, not YAML, or names an unknown setting or value.
    """
    path = resolve_space(path)
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"Space file {source} is not valid YAML{where}: fix its syntax.") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"Space file {source} must map setting names to values.")
    domains = {str(name): _parse_domain(str(name), value, source) for name, value in raw.items()}
    return SearchSpace(domains, source)


def suggest(trial: Any, space: SearchSpace, reference: dict[str, Any]) -> dict[str, Any]:
    """Ask an Optuna trial for one value of each setting.

    Settings left out of the space, and conditional settings whose condition does not hold,
    take their reference value and are not sampled, so the sampler never sees a parameter that
    does not change the run.
    """
    return fill_settings(space, reference, lambda name, domain: _suggest_one(trial, name, domain))


def fill_settings(
    space: SearchSpace,
    reference: dict[str, Any],
    pick: Callable[[str, Choices | IntRange], Any],
) -> dict[str, Any]:
    """Every setting, in `PARAMETERS` order: ``pick(name, domain)`` for those the space holds
    and whose condition holds for the settings chosen before them, the reference value for
    the rest."""
    chosen: dict[str, Any] = {}
    for name, parameter in PARAMETERS.items():
        domain = space.domains.get(name)
        active = parameter.active_when is None or parameter.active_when(chosen)
        chosen[name] = reference[name] if domain is None or not active else pick(name, domain)
    return chosen


def every_settings(
    space: SearchSpace, reference: dict[str, Any], limit: int
) -> list[dict[str, Any]] | None:
    """Every distinct settings the space yields, conditions applied as `fill_settings` applies
    them (a setting whose condition does not hold takes its reference value); None when there
    are more than ``limit``."""
    partial: list[dict[str, Any]] = [{}]
    for name, parameter in PARAMETERS.items():
        domain = space.domains.get(name)
        grown: list[dict[str, Any]] = []
        for chosen in partial:
            active = parameter.active_when is None or parameter.active_when(chosen)
            if domain is None or not active:
                values = [reference[name]]
            elif isinstance(domain, IntRange):
                values = list(range(domain.low, domain.high + 1))
            else:
                values = list(domain)
            grown.extend({**chosen, name: value} for value in values)
            if len(grown) > limit:
                return None
        partial = grown
    return partial


def _suggest_one(trial: Any, name: str, domain: Choices | IntRange) -> Any:
    if isinstance(domain, IntRange):
        return trial.suggest_int(name, domain.low, domain.high, log=domain.log)
    if len(domain) == 1:
        return domain[0]
    return trial.suggest_categorical(name, list(domain))


def record_reference(trial: Any, space: SearchSpace, reference: dict[str, Any]) -> dict[str, Any]:
    """For the reference trial: let the sampler see the reference values the space can express
    (they were enqueued) and return the reference settings unchanged."""
    for name in sampled_params(space, reference):
        _suggest_one(trial, name, space.domains[name])
    return dict(reference)


def sampled_params(space: SearchSpace, settings: dict[str, Any]) -> dict[str, Any]:
    """The values of ``settings`` that the space samples, to enqueue them as a trial (the
    reference as trial 0, the start-up draws after it)."""
    params: dict[str, Any] = {}
    for name, domain in space.domains.items():
        condition = PARAMETERS[name].active_when
        if condition is not None and not condition(settings):
            continue  # suggest() would not sample it for these settings either
        value = settings[name]
        if isinstance(domain, IntRange):
            if domain.low <= value <= domain.high:
                params[name] = value
        elif len(domain) > 1 and value in domain:
            params[name] = value
    return params


def reference_with(
    space: SearchSpace,
    reference: dict[str, Any],
    name: str,
    values: Sequence[Any],
    runnable: Callable[[dict[str, Any]], bool],
) -> list[dict[str, Any]]:
    """The reference with setting ``name`` changed to each of ``values`` in turn, for those
    that the space lists, that ``runnable`` accepts, and whose every sampled setting the space
    can express (so the study records them as they are)."""
    domain = space.domains.get(name)
    if domain is None or isinstance(domain, IntRange):
        return []
    found = []
    for value in values:
        if value == reference[name] or value not in domain:
            continue
        settings = {**reference, name: value}
        if expressible(space, settings) and runnable(settings):
            found.append(settings)
    return found


def expressible(space: SearchSpace, settings: dict[str, Any]) -> bool:
    """Whether the space holds every value of ``settings`` that it samples."""
    params = sampled_params(space, settings)
    for name, domain in space.domains.items():
        condition = PARAMETERS[name].active_when
        active = condition is None or condition(settings)
        sampled = isinstance(domain, IntRange) or len(domain) > 1
        if active and sampled and name not in params:
            return False
    return True


def random_runnable_settings(
    space: SearchSpace,
    reference: dict[str, Any],
    runnable: Callable[[dict[str, Any]], bool],
    count: int,
    seed: int,
    taken: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Up to ``count`` distinct settings drawn at random from ``space``, each one that
    ``runnable`` accepts and that is neither the reference nor one of ``taken``, spread over
    each setting's values.

    A listed setting takes its values in turn, in random order, the reference's value last
    (a Latin-hypercube-like design: with as many draws as a list has values, each value comes
    up once); a range is drawn as Optuna's RandomSampler draws it (uniform, or log-uniform);
    inactive conditional settings take the reference value. A draw that cannot run, or that
    came up before, is drawn again, each listed setting from its whole list with a chance that
    grows by 5% with every such draw in a row (the values due may not combine into anything
    that runs: 2 processes with a DataLoader worker on 2 cores). Fewer come back when the space
    holds fewer such settings than ``count`` (or rejection stops finding them: after 200 draws
    per wanted one).
    """
    rng = random.Random(seed)
    lists = {
        name: list(domain)
        for name, domain in space.domains.items()
        if not isinstance(domain, IntRange) and len(domain) > 1
    }
    unused = {name: [v for v in values if v != reference[name]] for name, values in lists.items()}
    seen = {json.dumps(settings, sort_keys=True) for settings in (reference, *taken)}
    found: list[dict[str, Any]] = []
    misses = 0
    for _ in range(200 * count):
        if len(found) >= count:
            break
        listed: dict[str, Any] = {}  # the listed settings this draw picked, and their values

        # Called by fill_settings within this iteration only, so the loop variables are current.
        def pick(name: str, domain: Choices | IntRange) -> Any:
            if name not in lists:
                return _draw(rng, domain)
            # After draws that could not run, more settings are drawn from their whole list:
            # the values still due may not combine into anything this machine can run.
            free = rng.random() < misses / 20  # noqa: B023
            listed[name] = rng.choice(lists[name] if free else unused[name])  # noqa: B023
            return listed[name]  # noqa: B023

        chosen = fill_settings(space, reference, pick)
        key = json.dumps(chosen, sort_keys=True)
        fresh = key not in seen
        seen.add(key)
        if not fresh or not runnable(chosen):
            misses += 1
            continue
        found.append(chosen)
        misses = 0
        for name, value in listed.items():
            if value in unused[name]:
                unused[name].remove(value)
            if not unused[name]:
                unused[name].extend(lists[name])
    return found


def _draw(rng: random.Random, domain: Choices | IntRange) -> Any:
    if isinstance(domain, IntRange):
        if not domain.log:
            return rng.randint(domain.low, domain.high)
        # As Optuna draws a log int: uniform in log space over the rounding cells of the ends.
        low, high = math.log(domain.low - 0.5), math.log(domain.high + 0.5)
        value = round(math.exp(rng.uniform(low, high)))
        return min(max(value, domain.low), domain.high)
    return rng.choice(domain)
