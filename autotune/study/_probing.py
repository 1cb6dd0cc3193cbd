"""The probe-first strategy (`--sampler probe`, the default): what to time next, from what the
study has timed so far. Pure logic: the search loop (`autotune.study._loop`) turns each step
into a trial, and the landscape replays (`benchmarks/`) into a recorded outcome.

Why this shape. A configuration's accuracy depends only on its numerics (`numerics key`: global
batch, precision, learning-rate rule), which a handful of full runs settle, while its speed needs
no full run at all: a warm process group times it in about a second. And the machine's speed
drifts with time, not with the configuration, so a window is judged by its ratio to the
reference's window timed close to it. So the strategy:

1. **probes** (`PROBE`): times a configuration for `PROBE_SECONDS`, throughput only, and keeps
   its ratio to the reference's windows timed just before and just after it (the reference is
   probed again after every `REFERENCE_EVERY` timings);
2. climbs from the reference: every configuration one setting away from the best feasible one
   so far (the incumbent) is probed first; the fastest that beats the incumbent by more than
   `IMPROVEMENT` is probed a second time (one window is not believed) and then **run**
   (`RUN`): a full run where its numerics were never judged (which judges them for every
   configuration sharing them), a throughput-only run where they were; it becomes the
   incumbent when it keeps within the accuracy budget, and numerics over the budget rule out
   every configuration that shares them without a run;
3. re-times a probe whose two reference windows disagree by more than `DRIFT_LIMIT` (the machine
   changed speed while it ran) when it could matter;
4. when no neighbour beats the incumbent, probes farther configurations, nearest first (up to
   `NEAR` settings away without --timeout; the whole space with it), and climbs again from any
   that beats it;
5. ends when none is left: the search then confirms its leaders side by side
   (`autotune.study._confirm`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

PROBE = "probe"
"""A step that times a configuration briefly, throughput only."""
RUN = "run"
"""A step that runs a configuration as a search run: trains its budget and is scored, or, where
its numerics were judged before, times it and reuses their verdict."""

PROBE_SECONDS = 1.0
"""A probe times this much training (after the steps that settle): on a warm group a
configuration's step time is stable after tens of steps."""
PROBE_MAX_SECONDS = 3.0
"""A probe whose step time is not stable yet after this long stops anyway: its window is as
noisy as it is, and a configuration in doubt is timed again (a probe of a DataLoader worker
configuration ran its whole budget, 8-16 s, before this)."""
REFERENCE_EVERY = 4
"""Timings between two probes of the reference: each probe's ratio is to the reference's
windows just before and just after it. (The warm groups of two layouts are kept alive, so going
back to the reference's layout for it launches nothing.)"""
IMPROVEMENT = 0.02
"""A probe beats the incumbent when its ratio is more than this above the incumbent's: a
window counts as timed once its mean step time is known to +-2%."""
DRIFT_LIMIT = 0.25
"""A probe whose reference windows before and after differ by more than this fraction was
timed while the machine changed speed; it is timed again before it is believed."""
MAX_WINDOWS = 4
"""Probes of one configuration at most while it is in doubt against the incumbent."""
DEFAULT_NOISE = 0.05
"""The noise of one window (the standard deviation of its log) assumed until the reference has
been timed three times: what the recorded landscapes measured on the 2-core CPU machine."""
NEAR = 2
"""Without --timeout, configurations at most this many settings away from the incumbent are
probed; with --timeout, farther ones while time is left."""

# What a timing was (`ProbeTiming.kind`).
PROBED = "probed"
SCORED = "scored"
STOPPED = "stopped"
FAILED = "failed"
SKIPPED = "skipped"
BUSY = "busy"
"""A configuration another worker times now (a RUNNING trial): not chosen again meanwhile."""


@dataclasses.dataclass(frozen=True)
class ProbeOption:
    """A configuration the strategy may time.

    Attributes:
        key: Its configuration key (`TrialConfig.key()`): one per distinct configuration.
        numerics: Its numerics key (`TrialConfig.numerics_key`): one accuracy verdict each.
        settings: Its settings by parameter name (how far apart two options are).
    """

    key: str
    numerics: str
    settings: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class ProbeTiming:
    """What the study holds of one trial, in the order the trials ran.

    Attributes:
        key: The configuration's key.
        numerics: Its numerics key.
        kind: `PROBED`, `SCORED` (ran and was scored against the budget), `STOPPED` (stopped
            early: cannot win), `FAILED`, `SKIPPED` (no run: it cannot run here, or its
            memory or numerics rule it out) or `BUSY`.
        rate: What it measured (samples/s or tokens/s), when it was timed.
        feasible: For `SCORED`: whether it kept within the accuracy budget.
        settings: Its settings by parameter name.
    """

    key: str
    numerics: str
    kind: str
    rate: float | None = None
    feasible: bool | None = None
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ProbeStep:
    """What to do next: `PROBE` or `RUN` the option, and why (a phrase for the progress line)."""

    kind: str
    option: ProbeOption
    why: str


Neighbours = Callable[[Mapping[str, Any], int], Sequence[ProbeOption]]
"""The options this machine can run that differ from the given settings in exactly that many
settings (`options_at_distance`)."""


def reference_windows(timings: Sequence[ProbeTiming], reference_key: str) -> list[int]:
    """Where the reference's windows are in ``timings``: its probes, once it has been probed
    (its full run is a longer window from a freshly launched group, and read 1-30% apart from
    its probes on the 2-core CPU machine); its full run before that."""
    timed = [i for i, t in enumerate(timings) if t.key == reference_key and t.rate]
    probed = [i for i in timed if timings[i].kind == PROBED]
    return probed or timed


def ratios(timings: Sequence[ProbeTiming], reference_key: str) -> list[float | None]:
    """Each timing's rate over the reference's, timed close to it: the mean of the reference's
    windows (`reference_windows`) just before and just after it (the nearest one at either
    end); None for timings without a rate, and before the reference was timed."""
    marks = reference_windows(timings, reference_key)
    found: list[float | None] = []
    for i, timing in enumerate(timings):
        if not timing.rate or not marks:
            found.append(None)
            continue
        if timing.key == reference_key:
            found.append(1.0)
            continue
        before = [m for m in marks if m < i]
        after = [m for m in marks if m > i]
        near = [before[-1]] if before else []
        near += [after[0]] if after else []
        reference = statistics.fmean(float(timings[m].rate or 0.0) for m in near)
        found.append(timing.rate / reference if reference else None)
    return found


def drifted(timings: Sequence[ProbeTiming], reference_key: str, index: int) -> bool:
    """Whether the reference's windows just before and just after timing ``index`` differ by
    more than `DRIFT_LIMIT` (the machine changed speed meanwhile)."""
    rates = [(i, float(timings[i].rate or 0.0)) for i in reference_windows(timings, reference_key)]
    before = [rate for i, rate in rates if i < index]
    after = [rate for i, rate in rates if i > index]
    if not before or not after:
        return False
    low, high = sorted((before[-1], after[0]))
    return high > low * (1 + DRIFT_LIMIT)


@dataclasses.dataclass
class _Known:
    """What the timings say of one configuration."""

    option: ProbeOption
    ratios: list[float] = dataclasses.field(default_factory=list)
    drifted: list[bool] = dataclasses.field(default_factory=list)
    scored: bool = False
    feasible: bool = False
    out: bool = False  # failed, stopped, skipped, or busy: not timed again

    @property
    def estimate(self) -> float | None:
        return float(statistics.median(self.ratios)) if self.ratios else None


class ProbePlan:
    """Chooses each next step of the probe-first strategy (see the module docstring).

    Args:
        reference: The reference configuration (the study's trial 0 runs it in full).
        neighbours: The runnable options at a given distance from given settings.
        everywhere: Whether to go past `NEAR` settings from the incumbent (a search with
            --timeout: time ends it).
    """

    def __init__(self, reference: ProbeOption, neighbours: Neighbours, everywhere: bool) -> None:
        self.reference, self.neighbours, self.everywhere = reference, neighbours, everywhere
        self._options: dict[str, ProbeOption] = {reference.key: reference}
        self._rings: dict[tuple[str, int], list[ProbeOption]] = {}

    def next_step(self, timings: Sequence[ProbeTiming]) -> ProbeStep | None:
        """The next step after ``timings`` (the study's trials in order, the reference's full
        run first), or None when nothing is left that could change the answer."""
        known = self._known(timings)
        reference = known.get(self.reference.key)
        if reference is None or not reference.scored:
            return ProbeStep(RUN, self.reference, "the reference")
        if self._reference_due(timings):
            return ProbeStep(PROBE, self.reference, "the reference again, beside the probes")
        over = {k.option.numerics for k in known.values() if k.scored and not k.feasible}
        incumbent = self._incumbent(known)
        best = known[incumbent.key].estimate or 1.0
        ring = self._untimed(incumbent, 1, known, over)
        if ring:
            return ProbeStep(PROBE, ring[0], "one setting away from the incumbent")
        step = self._candidate_step(
            known, over, incumbent, window_noise(timings, self.reference.key)
        )
        if step is not None:
            return step
        for entry in known.values():
            retime = len(entry.ratios) == 1 and entry.drifted[0] and not entry.scored
            if retime and not entry.out and entry.option.numerics not in over:
                if (entry.estimate or 0.0) * (1 + DRIFT_LIMIT) > best:
                    return ProbeStep(
                        PROBE, entry.option, "timed again: the machine drifted meanwhile"
                    )
        farthest = len(incumbent.settings) if self.everywhere else NEAR
        for distance in range(2, farthest + 1):
            ring = self._untimed(incumbent, distance, known, over)
            if ring:
                return ProbeStep(PROBE, ring[0], f"{distance} settings away from the incumbent")
        return None

    def _known(self, timings: Sequence[ProbeTiming]) -> dict[str, _Known]:
        found: dict[str, _Known] = {}
        for index, (timing, ratio) in enumerate(
            zip(timings, ratios(timings, self.reference.key), strict=True)
        ):
            option = self._options.setdefault(
                timing.key, ProbeOption(timing.key, timing.numerics, timing.settings)
            )
            entry = found.setdefault(timing.key, _Known(option))
            if timing.kind in (STOPPED, FAILED, SKIPPED, BUSY):
                entry.out = True
            if ratio is not None and timing.kind in (PROBED, SCORED):
                entry.ratios.append(ratio)
                entry.drifted.append(drifted(timings, self.reference.key, index))
            if timing.kind == SCORED:
                entry.scored = True
                entry.feasible = entry.feasible or bool(timing.feasible)
        return found

    def _reference_due(self, timings: Sequence[ProbeTiming]) -> bool:
        """Whether `REFERENCE_EVERY` timings ran since the reference's last."""
        since = 0
        for timing in reversed(timings):
            if timing.key == self.reference.key and timing.rate:
                return since >= REFERENCE_EVERY
            since += timing.rate is not None
        return False

    def _incumbent(self, known: Mapping[str, _Known]) -> ProbeOption:
        """The fastest configuration scored within the budget (the reference at first)."""
        feasible = [k for k in known.values() if k.scored and k.feasible and k.ratios]
        if not feasible:
            return self.reference
        return max(
            feasible, key=lambda k: (k.estimate or 0.0, k.option.key == self.reference.key)
        ).option

    def _untimed(
        self, centre: ProbeOption, distance: int, known: Mapping[str, _Known], over: set[str]
    ) -> list[ProbeOption]:
        """The options ``distance`` settings from ``centre`` not timed yet, whose numerics are
        not known to be over the budget."""
        ring_key = (centre.key, distance)
        if ring_key not in self._rings:
            ring = list(self.neighbours(centre.settings, distance))
            for option in ring:
                self._options.setdefault(option.key, option)
            self._rings[ring_key] = ring
        return [o for o in self._rings[ring_key] if o.key not in known and o.numerics not in over]

    def _candidate_step(
        self,
        known: Mapping[str, _Known],
        over: set[str],
        incumbent: ProbeOption,
        noise: float,
    ) -> ProbeStep | None:
        """Run the fastest configuration not run yet once its windows put it ahead of the
        incumbent; before that, time again whichever of the contenders (and the incumbent)
        the noise leaves in doubt."""
        best = known[incumbent.key].estimate or 1.0
        bar = best * (1 + IMPROVEMENT)
        contenders = [
            k
            for k in known.values()
            if k.ratios
            and not k.out
            and k.option.numerics not in over
            and k.option.key != incumbent.key
            and (k.feasible or not k.scored)
        ]
        waiting = [k for k in contenders if not k.scored]
        leader = max(waiting, key=lambda k: k.estimate or 0.0, default=None)
        if leader is not None and (leader.estimate or 0.0) > bar and len(leader.ratios) >= 2:
            return ProbeStep(RUN, leader.option, f"{leader.estimate:.2f}x the reference in probes")
        doubtful = [k for k in contenders if len(k.ratios) < MAX_WINDOWS and _upper(k, noise) > bar]
        if not doubtful:
            return None
        challenger = max(doubtful, key=lambda k: _upper(k, noise))
        held = known[incumbent.key]
        incumbent_doubtful = len(held.ratios) <= len(challenger.ratios) < MAX_WINDOWS + 1
        if (
            incumbent.key != self.reference.key
            and incumbent_doubtful
            and len(held.ratios) < MAX_WINDOWS
        ):
            return ProbeStep(PROBE, incumbent, "the incumbent timed again beside a contender")
        return ProbeStep(PROBE, challenger.option, "timed again: within the noise of the incumbent")


def _upper(known: _Known, noise: float) -> float:
    """How fast a configuration may be, given its windows: its estimate two standard errors
    up (a ratio carries its window's noise and half again for the reference's)."""
    error = noise * math.sqrt(1.5 / len(known.ratios))
    return (known.estimate or 0.0) * math.exp(2 * error)


def window_noise(timings: Sequence[ProbeTiming], reference_key: str) -> float:
    """The noise of one window (the standard deviation of its log): from the reference's
    windows (`reference_windows`) once there are three (drift included, so it errs high),
    `DEFAULT_NOISE` before; never below `IMPROVEMENT`."""
    rates = [math.log(timings[i].rate or 1.0) for i in reference_windows(timings, reference_key)]
    if len(rates) < 3:
        return DEFAULT_NOISE
    return max(IMPROVEMENT, statistics.stdev(rates))


def options_at_distance(
    grid: Mapping[str, Sequence[Any]],
    centre: Mapping[str, Any],
    distance: int,
    make: Callable[[dict[str, Any]], ProbeOption | None],
) -> list[ProbeOption]:
    """The options whose settings differ from ``centre`` in exactly ``distance`` of the
    settings ``grid`` lists (each over its values), as ``make`` builds them (None: it cannot
    run here, or the space cannot express it), each configuration once, in the grid's order."""
    seen: set[str] = set()
    found: list[ProbeOption] = []
    for settings in _settings_at(grid, centre, distance):
        option = make(settings)
        if option is not None and option.key not in seen:
            seen.add(option.key)
            found.append(option)
    return found


def _settings_at(
    grid: Mapping[str, Sequence[Any]], centre: Mapping[str, Any], distance: int
) -> Iterator[dict[str, Any]]:
    names = [name for name, values in grid.items() if len(values) > 1]
    for changed in itertools.combinations(names, distance):
        others = [[v for v in grid[name] if v != centre.get(name)] for name in changed]
        for values in itertools.product(*others):
            yield {**centre, **dict(zip(changed, values, strict=True))}
