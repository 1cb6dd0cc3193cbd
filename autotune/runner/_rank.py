"""What the harness's steps share inside a rank: its progress log, synchronising with the
accelerator and with the other ranks, peak memory, and the one-line reason a run failed."""

from __future__ import annotations

import os
import resource
import time
from typing import Any

import torch

_started = time.perf_counter()


def restart_clock() -> None:
    """Log times from now on (a warm rank starts each trial's log at zero)."""
    global _started
    _started = time.perf_counter()


def log(message: str) -> None:
    """A progress line in the trial's log, with seconds since this rank started."""
    rank = os.environ.get("RANK", "0")
    print(f"[autotune rank {rank} +{time.perf_counter() - _started:.1f}s] {message}", flush=True)


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception means the run ran out of (accelerator or host) memory."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def failure_reason(exc: BaseException) -> str:
    """One line: ``diverged: ...``, ``oom: ...`` or ``error: Type: message``."""
    if isinstance(exc, DivergedError):
        return f"diverged: {exc}"
    if is_out_of_memory(exc):
        return "oom: " + (str(exc).strip().splitlines() or [""])[0][:200]
    lines = str(exc).strip().splitlines()
    return f"error: {type(exc).__name__}: {lines[0][:300] if lines else ''}"


def synchronize(accelerator: Any) -> None:
    """Wait for the accelerator's queued work (nothing to wait for on CPU)."""
    if accelerator.device_name() != "cpu":
        accelerator.synchronize()


def agree(flag: bool, world_size: int) -> bool:
    """Rank 0's decision, on every rank (ranks must stop training at the same step)."""
    if world_size == 1:
        return flag
    import torch.distributed as dist

    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def reset_peak_memory(accelerator: Any) -> None:
    """Start a new peak: a warm rank runs many trials, and each reports its own peak."""
    if accelerator.device_name() != "cpu":
        accelerator.reset_peak_memory_stats()
        return
    try:
        # Linux: writing 5 resets the process's peak resident set size (VmHWM).
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def peak_memory_bytes(accelerator: Any) -> int:
    """This rank's peak: allocated device memory, or resident memory on CPU."""
    if accelerator.device_name() != "cpu":
        return int(accelerator.max_memory_allocated())
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux: the rank's peak resident memory over its whole life.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def gather_peak_memory(accelerator: Any) -> list[int]:
    """Every rank's peak memory, in rank order (a collective)."""
    import torch.distributed as dist

    peaks: list[int] = [0] * dist.get_world_size()
    dist.all_gather_object(peaks, peak_memory_bytes(accelerator))
    return peaks


def loss_scale(engine: Any) -> float | None:
    """fp16's current loss scale (every DeepSpeed fp16 and ZeRO optimizer has ``loss_scale``)."""
    scale = getattr(engine.optimizer, "loss_scale", None)
    return float(scale) if isinstance(scale, (int, float, torch.Tensor)) else None
