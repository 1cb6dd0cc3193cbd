"""Pipeline partitioning: split n layers into contiguous stages so the slowest stage is fastest.

DeepSpeed's own ``partition_method`` options balance parameter counts or layer counts, which is
the wrong target when one layer (an embedding, say) holds most of the bytes but little of the
time. This module balances measured seconds instead, exactly, by dynamic programming, while
respecting a per-stage memory cap and charging the stages on both sides of a boundary for
sending its activation forward and its gradient back.

Objective, in order:

1. minimise the bottleneck, the largest stage cost (costs within ``REL_TOL`` relative /
   ``ABS_TOL`` absolute of the optimum count as optimal, so float noise cannot decide);
2. among those, minimise the sum of stage costs, i.e. communicate less (same tolerance);
3. among those, return the lexicographically smallest bounds, so the answer is deterministic.

The work is O(num_stages * n^2), vectorised with numpy over the split point; n=1000 layers into
16 stages takes well under a second.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "ABS_TOL",
    "REL_TOL",
    "Partition",
    "PartitionError",
    "partition_layers",
    "stage_costs",
]

FloatArray = npt.NDArray[np.float64]

REL_TOL = 1e-9
"""Relative tolerance under which two bottlenecks (or two cost sums) count as equal."""

ABS_TOL = 1e-12
"""Absolute tolerance in seconds (a picosecond) so that an optimum of exactly 0 still has ties."""

# Elements per temporary (split point x stage end) block: bounds memory at ~8 MiB per array, so
# thousands of layers do not need an n^2 matrix at once.
BLOCK_ELEMENTS = 1 << 20
# Largest full stage-value matrix kept for reuse (32 MiB of float64, about 2000 layers).
CACHE_ELEMENTS = 1 << 22


class PartitionError(ValueError):
    """No partition satisfies the request (more stages than layers, or nothing fits the memory cap)."""


@dataclasses.dataclass(frozen=True)
class Partition:
    """A split of n layers into contiguous stages.

    Attributes:
        bounds: DeepSpeed's ``parts`` format, ``(0, b1, ..., n)``; stage s holds layers
            ``bounds[s]:bounds[s+1]``.
        stage_seconds: Each stage's compute plus the messages of the boundaries on either side
            of it.
        stage_bytes: Each stage's summed layer bytes.
    """

    bounds: tuple[int, ...]
    stage_seconds: tuple[float, ...]
    stage_bytes: tuple[float, ...]

    @property
    def bottleneck(self) -> float:
        """The slowest stage's cost, which sets the pipeline's throughput."""
        return max(self.stage_seconds)

    @property
    def num_stages(self) -> int:
        return len(self.bounds) - 1


@dataclasses.dataclass(frozen=True)
class _Prefix:
    """Prefix sums shared by the DP and :func:`stage_costs`, so both compute identical floats."""

    seconds: FloatArray  # seconds[b] = sum(layer_seconds[:b]), length n + 1
    bytes: FloatArray  # bytes[b] = sum(layer_bytes[:b]), length n + 1
    send_cut: FloatArray  # send_cut[b] = send paid by a stage ending at b (0 for b = 0 and n)

    @property
    def n(self) -> int:
        return len(self.seconds) - 1

    def stage_seconds(self, a: int, b: int) -> float:
        # Both sides of a boundary wait on its messages: the stage before sends the activation
        # and receives its gradient, the stage after receives and sends them.
        return float((self.seconds[b] - self.seconds[a]) + self.send_cut[b] + self.send_cut[a])

    def stage_bytes(self, a: int, b: int) -> float:
        return float(self.bytes[b] - self.bytes[a])


def _as_vector(name: str, values: Sequence[float]) -> FloatArray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of numbers: {exc}") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array) | (array < 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] = {array[i]!r}; every value must be finite and >= 0")
    return array


def _prefix(
    layer_seconds: Sequence[float], send_seconds: Sequence[float], layer_bytes: Sequence[float]
) -> _Prefix:
    seconds = _as_vector("layer_seconds", layer_seconds)
    send = _as_vector("send_seconds", send_seconds)
    nbytes = _as_vector("layer_bytes", layer_bytes)
    n = len(seconds)
    if len(send) != n or len(nbytes) != n:
        raise ValueError(
            "layer_seconds, send_seconds and layer_bytes must have the same length; got "
            f"{n}, {len(send)} and {len(nbytes)}"
        )
    if n == 0:
        raise ValueError("need at least one layer to partition")
    send_cut = np.zeros(n + 1)
    # The final stage sends nothing: its output is the loss.
    send_cut[1:n] = send[: n - 1]
    return _Prefix(
        seconds=np.concatenate(([0.0], np.cumsum(seconds))),
        bytes=np.concatenate(([0.0], np.cumsum(nbytes))),
        send_cut=send_cut,
    )


def _check_bounds(bounds: Sequence[int], n: int) -> tuple[int, ...]:
    parts = tuple(int(b) for b in bounds)
    if len(parts) < 2 or parts[0] != 0 or parts[-1] != n:
        raise ValueError(f"bounds must run from 0 to {n} (the number of layers); got {parts}")
    if any(b <= a for a, b in itertools.pairwise(parts)):
        raise ValueError(f"bounds must be strictly increasing (no empty stage); got {parts}")
    return parts


def stage_costs(
    layer_seconds: Sequence[float],
    send_seconds: Sequence[float],
    layer_bytes: Sequence[float],
    bounds: Sequence[int],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (stage_seconds, stage_bytes) of a given partition.

    Also used to evaluate partitions that DeepSpeed chose itself, with the same arithmetic as
    :func:`partition_layers`, so the two are directly comparable.

    Args:
        layer_seconds: Time each layer costs its stage per micro-batch.
        send_seconds: Time to send each layer's output to the next stage (and its gradient back).
        layer_bytes: Memory each layer needs on its stage.
        bounds: ``(0, b1, ..., n)``; stage s holds layers ``bounds[s]:bounds[s+1]``.

    Returns:
        Per-stage seconds (compute plus the boundary messages on either side) and per-stage
        bytes.

    Raises:
        ValueError: On malformed inputs or bounds.
    """
    prefix = _prefix(layer_seconds, send_seconds, layer_bytes)
    parts = _check_bounds(bounds, prefix.n)
    return _costs_of(prefix, parts)


def _costs_of(
    prefix: _Prefix, parts: tuple[int, ...]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pairs = list(itertools.pairwise(parts))
    return (
        tuple(prefix.stage_seconds(a, b) for a, b in pairs),
        tuple(prefix.stage_bytes(a, b) for a, b in pairs),
    )


# A block function returns the (a1 - a0) x (b1 - b0) matrix of a stage's value for a stage of
# layers a..b-1, with +inf where the stage is empty or not allowed.
_Block = Callable[[int, int, int, int], FloatArray]


def _seconds_block(prefix: _Prefix, memory_cap: float | None) -> _Block:
    def block(a0: int, a1: int, b0: int, b1: int) -> FloatArray:
        a = np.arange(a0, a1)[:, None]
        b = np.arange(b0, b1)[None, :]
        cost = (prefix.seconds[b] - prefix.seconds[a]) + prefix.send_cut[b] + prefix.send_cut[a]
        forbidden = b <= a
        if memory_cap is not None:
            forbidden = forbidden | (prefix.bytes[b] - prefix.bytes[a] > memory_cap)
        cost[forbidden] = np.inf
        return cost

    return block


def _bytes_block(prefix: _Prefix) -> _Block:
    def block(a0: int, a1: int, b0: int, b1: int) -> FloatArray:
        a = np.arange(a0, a1)[:, None]
        b = np.arange(b0, b1)[None, :]
        used = prefix.bytes[b] - prefix.bytes[a]
        used[b <= a] = np.inf
        return used

    return block


def _cached(block: _Block, n: int, cache_elements: int) -> _Block:
    """The same block function, served from one full matrix when that is small enough.

    Both DPs ask for the same stage values once per stage count; computing them once instead of
    num_stages times makes the whole search several times faster whenever the matrix fits.
    """
    if (n + 1) ** 2 > cache_elements:
        return block
    full = block(0, n + 1, 0, n + 1)

    def cached(a0: int, a1: int, b0: int, b1: int) -> FloatArray:
        return full[a0:a1, b0:b1]

    return cached


def _chunk(n: int, block_elements: int) -> int:
    return max(1, block_elements // (n + 1))


def _min_bottleneck(block: _Block, n: int, num_stages: int, step: int) -> float:
    """Smallest achievable largest stage value over all splits into ``num_stages`` stages.

    best[b] holds the optimum for layers 0..b-1 in k stages; each round extends by one stage,
    taking, for every stage end b at once, the best split point a.
    """
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    for k in range(1, num_stages + 1):
        new = np.full(n + 1, np.inf)
        # Stage k ends at b >= k and must leave a layer for each of the stages after it.
        first_end, last_end = k, n - (num_stages - k)
        for b0 in range(first_end, last_end + 1, step):
            b1 = min(b0 + step, last_end + 1)
            a0 = k - 1
            values = np.maximum(best[a0:b1, None], block(a0, b1, b0, b1))
            new[b0:b1] = values.min(axis=0)
        best = new
    return float(best[n])


def _min_cut_sends(
    prefix: _Prefix, block: _Block, num_stages: int, limit: float, step: int
) -> list[FloatArray]:
    """Suffix DP: rest[k][a] = least summed send cost to split layers a..n-1 into k stages,
    every stage cost <= ``limit`` (and within the memory cap, via ``block``).

    Minimising the cut sends minimises the sum of stage costs, since the compute part of that
    sum is the same for every partition. Working from the back lets the forward walk in
    :func:`_walk` pick the smallest next bound first, which yields the lexicographic tie-break.
    """
    n = prefix.n
    rest = np.full(n + 1, np.inf)
    rest[n] = 0.0
    tables = [rest]
    for k in range(1, num_stages + 1):
        new = np.full(n + 1, np.inf)
        # A stage starting at a needs k layers behind it, and num_stages - k stages before it.
        first_start, last_start = num_stages - k, n - k
        through = prefix.send_cut + rest  # pay the cut at b, then finish from b
        for a0 in range(first_start, last_start + 1, step):
            a1 = min(a0 + step, last_start + 1)
            b0 = a0 + 1
            allowed = block(a0, a1, b0, n + 1) <= limit
            values = np.where(allowed, through[None, b0:], np.inf)
            new[a0:a1] = values.min(axis=1)
        rest = new
        tables.append(rest)
    return tables


def _walk(
    prefix: _Prefix,
    block: _Block,
    tables: list[FloatArray],
    limit: float,
    budget: float,
) -> tuple[int, ...]:
    """Lexicographically smallest bounds whose summed cut sends stay within ``budget``."""
    n = prefix.n
    bounds = [0]
    a = 0
    for k in range(len(tables) - 1, 0, -1):
        allowed = block(a, a + 1, a + 1, n + 1)[0] <= limit
        through = np.where(allowed, prefix.send_cut[a + 1 :] + tables[k - 1][a + 1 :], np.inf)
        fits = np.flatnonzero(through <= budget)
        # Rounding in `budget -= ...` could in principle leave no candidate by an ulp; the
        # optimal continuation always exists, so fall back to it.
        offset = int(fits[0]) if fits.size else int(np.argmin(through))
        b = a + 1 + offset
        budget -= float(prefix.send_cut[b])
        bounds.append(b)
        a = b
    return tuple(bounds)


def _checked_request(num_stages: int, n: int, memory_cap: float | None) -> tuple[int, float | None]:
    """``num_stages`` as an int and ``memory_cap`` as a float, or the error they deserve."""
    if isinstance(num_stages, bool) or not isinstance(num_stages, int | np.integer):
        raise ValueError(f"num_stages must be an integer, got {num_stages!r}")
    num_stages = int(num_stages)
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    if num_stages > n:
        raise PartitionError(
            f"{num_stages} stages but only {n} layers: every stage needs at least one layer"
        )
    if memory_cap is not None:
        memory_cap = float(memory_cap)
        if math.isnan(memory_cap) or memory_cap < 0:
            raise ValueError(f"memory_cap must be >= 0 (or None for no cap), got {memory_cap}")
    return num_stages, memory_cap


def partition_layers(
    layer_seconds: Sequence[float],
    send_seconds: Sequence[float],
    layer_bytes: Sequence[float],
    num_stages: int,
    memory_cap: float | None = None,
    bottleneck_tolerance: float = REL_TOL,
    *,
    block_elements: int = BLOCK_ELEMENTS,
    cache_elements: int = CACHE_ELEMENTS,
) -> Partition:
    """Split layers into ``num_stages`` contiguous, non-empty stages with the fastest bottleneck.

    A stage holding layers a..b-1 costs ``sum(layer_seconds[a:b])``, plus ``send_seconds[b-1]``
    unless it is the final stage, plus ``send_seconds[a-1]`` unless it is the first (both sides
    of a boundary wait on its messages), and needs ``sum(layer_bytes[a:b])`` <= ``memory_cap``.
    Among bottleneck-optimal partitions (within ``REL_TOL``/``ABS_TOL``) the one with the
    smallest sum of stage costs wins, i.e. the least communication; remaining ties go to the
    lexicographically smallest bounds. The result is deterministic.

    Args:
        layer_seconds: Time each layer costs its stage per micro-batch (>= 0).
        send_seconds: Time to send layer i's output activation to the next stage and its
            gradient back (>= 0); paid by the stage whose last layer is i and by the next one.
        layer_bytes: Memory each layer needs on its stage (>= 0).
        num_stages: Number of pipeline stages (>= 1, at most the number of layers).
        memory_cap: Largest allowed per-stage memory, in the units of ``layer_bytes``; None for
            no cap.
        bottleneck_tolerance: Partitions whose bottleneck is within this fraction of the best
            count as equally fast, and the one with the least communication among them wins.
            The default only absorbs float rounding; measured costs carry a few percent of
            noise, and a wider tolerance stops that noise from choosing a boundary that sends
            more.
        block_elements: Elements of the DP's temporary blocks; cache_elements: of the largest
            stage-value matrix kept whole (tests shrink both to reach the blocked path).

    Returns:
        The optimal :class:`Partition`.

    Raises:
        ValueError: On malformed inputs (mismatched lengths, negative or non-finite values,
            ``num_stages`` < 1, a negative or NaN cap).
        PartitionError: With more stages than layers, or when no partition fits the cap.
    """
    prefix = _prefix(layer_seconds, send_seconds, layer_bytes)
    n = prefix.n
    num_stages, memory_cap = _checked_request(num_stages, n, memory_cap)
    step = _chunk(n, block_elements)
    block = _cached(_seconds_block(prefix, memory_cap), n, cache_elements)
    bottleneck = _min_bottleneck(block, n, num_stages, step)
    if not math.isfinite(bottleneck):
        least = _min_bottleneck(_bytes_block(prefix), n, num_stages, step)
        raise PartitionError(
            f"no split of {n} layers into {num_stages} stages fits memory_cap={memory_cap:g}: "
            f"the smallest achievable largest-stage memory is {least:g}; raise the cap to at "
            "least that, or use more stages"
        )

    if not (math.isfinite(bottleneck_tolerance) and bottleneck_tolerance >= 0):
        raise ValueError(f"bottleneck_tolerance must be >= 0, got {bottleneck_tolerance!r}")
    limit = bottleneck * (1.0 + max(bottleneck_tolerance, REL_TOL)) + ABS_TOL
    tables = _min_cut_sends(prefix, block, num_stages, limit, step)
    least_sends = float(tables[num_stages][0])
    # The tolerance is relative to the whole sum of stage costs (compute + sends), matching how
    # the bottleneck tolerance is relative to the bottleneck.
    total = float(prefix.seconds[n]) + 2 * least_sends
    budget = least_sends + total * REL_TOL + ABS_TOL
    bounds = _walk(prefix, block, tables, limit, budget)
    seconds, nbytes = _costs_of(prefix, bounds)
    return Partition(bounds=bounds, stage_seconds=seconds, stage_bytes=nbytes)
