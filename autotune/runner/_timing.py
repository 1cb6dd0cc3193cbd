"""Timing a trial inside its ranks: when the step-time estimate is stable enough to stop, and
what each pipeline stage spends computing and communicating."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from autotune.runner._rank import synchronize

STABILITY_CHECK_EVERY = 8
"""Steps between checks of whether the step-time estimate is stable (a collective on >1 rank)."""
_T_975 = (
    12.71,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
"""Student's t 97.5% quantiles for 1..30 degrees of freedom (1.96 beyond)."""


def _mean_and_halfwidth(times: list[float]) -> tuple[float, float]:
    """The mean step time and the half-width of its 95% confidence interval (n >= 2)."""
    n = len(times)
    t = _T_975[n - 2] if n - 1 <= len(_T_975) else 1.96
    return statistics.fmean(times), t * statistics.stdev(times) / math.sqrt(n)


def step_time_is_stable(times: list[float], rel_halfwidth: float, min_steps: int) -> bool:
    """Whether the 95% confidence interval of the mean step time is within +-``rel_halfwidth``
    of the mean (so the throughput estimate is within about the same)."""
    if len(times) < max(2, min_steps):
        return False
    mean, halfwidth = _mean_and_halfwidth(times)
    return mean > 0 and halfwidth <= rel_halfwidth * mean


def throughput_upper_bound(times: list[float], samples_per_step: int) -> float | None:
    """The most samples/s these step times allow at 95% confidence: the batch over the lower
    end of the mean step time's interval (None with fewer than 2 steps, or an interval that
    reaches zero)."""
    if len(times) < 2:
        return None
    mean, halfwidth = _mean_and_halfwidth(times)
    fastest = mean - halfwidth
    return samples_per_step / fastest if fastest > 0 else None


class StageClock:
    """Times what each pipeline rank spends computing (forward, backward, optimizer step) and
    communicating (sending and receiving activations and gradients), per instruction of
    DeepSpeed's pipeline schedule, so a trial shows how balanced its stages were."""

    _COMPUTE = ("ForwardPass", "BackwardPass", "OptimizerStep")
    _COMM = ("SendActivation", "RecvActivation", "SendGrad", "RecvGrad")

    def __init__(self, engine: Any, accelerator: Any) -> None:
        self.engine = engine
        self.busy = {"compute": 0.0, "comm": 0.0}
        timed = dict(type(engine)._INSTRUCTION_MAP)
        for instruction, method in list(timed.items()):
            kind = (
                "compute"
                if instruction.__name__ in self._COMPUTE
                else "comm"
                if instruction.__name__ in self._COMM
                else None
            )
            if kind is not None:
                timed[instruction] = self._timed(method, kind, accelerator)
        # The engine looks the map up on itself, so an instance attribute takes precedence.
        engine._INSTRUCTION_MAP = timed

    def _timed(self, method: Any, kind: str, accelerator: Any) -> Any:
        def run(engine: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = method(engine, *args, **kwargs)
            synchronize(accelerator)
            self.busy[kind] += time.perf_counter() - start
            return out

        return run

    def reset(self) -> None:
        self.busy = {"compute": 0.0, "comm": 0.0}

    def gather(self, measured_steps: int) -> dict[str, list[float]]:
        """Seconds per optimizer step for each stage, averaged over its data-parallel ranks."""
        import torch.distributed as dist

        mine = (self.engine.stage_id, self.busy["compute"], self.busy["comm"])
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        stages = self.engine.num_stages
        out: dict[str, list[float]] = {"compute": [0.0] * stages, "comm": [0.0] * stages}
        counts = [0] * stages
        for stage, compute, comm in everyone:
            out["compute"][stage] += compute / max(1, measured_steps)
            out["comm"][stage] += comm / max(1, measured_steps)
            counts[stage] += 1
        for kind in out:
            out[kind] = [value / max(1, n) for value, n in zip(out[kind], counts, strict=True)]
        return out
