"""Pipeline partitioning (autotune/pipeline/_partition.py): the DP against brute force, tie-breaking,
worked examples and input validation."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from autotune.pipeline import (
    ABS_TOL,
    REL_TOL,
    Partition,
    PartitionError,
    partition_layers,
    stage_costs,
)

# --- brute force -----------------------------------------------------------------------------


def _all_bounds(n: int, stages: int) -> Iterator[tuple[int, ...]]:
    """Every split of n layers into `stages` non-empty contiguous stages, in lexicographic order."""
    for cuts in itertools.combinations(range(1, n), stages - 1):
        yield (0, *cuts, n)


def _naive_costs(
    seconds: Sequence[float], send: Sequence[float], nbytes: Sequence[float], bounds: Sequence[int]
) -> tuple[list[float], list[float]]:
    # Independent of the module's prefix sums: plain sums over each stage's slice.
    n = len(seconds)
    stage_seconds, stage_bytes = [], []
    for a, b in itertools.pairwise(bounds):
        incoming = send[a - 1] if a > 0 else 0.0  # the receiving side waits on a boundary too
        outgoing = send[b - 1] if b < n else 0.0
        stage_seconds.append(math.fsum(seconds[a:b]) + outgoing + incoming)
        stage_bytes.append(math.fsum(nbytes[a:b]))
    return stage_seconds, stage_bytes


def _brute_force(
    seconds: Sequence[float],
    send: Sequence[float],
    nbytes: Sequence[float],
    stages: int,
    cap: float | None,
    tolerance: float = REL_TOL,
) -> tuple[float, float, tuple[int, ...]] | None:
    """(optimal bottleneck, least sum among partitions whose bottleneck is within ``tolerance``
    of it, lexicographically first bounds among those)."""
    feasible = []
    for bounds in _all_bounds(len(seconds), stages):
        stage_seconds, stage_bytes = _naive_costs(seconds, send, nbytes, bounds)
        if cap is None or max(stage_bytes) <= cap:
            feasible.append((bounds, max(stage_seconds), math.fsum(stage_seconds)))
    if not feasible:
        return None
    best = min(peak for _, peak, _ in feasible)
    optimal = [
        (b, total) for b, peak, total in feasible if peak <= best * (1 + tolerance) + ABS_TOL
    ]
    least = min(total for _, total in optimal)
    tied = [b for b, total in optimal if total <= least * (1 + REL_TOL) + ABS_TOL]
    return best, least, min(tied)


def _random_case(
    rng: random.Random, n: int
) -> tuple[list[float], list[float], list[float], float | None]:
    style = rng.choice(["float", "int", "zeros", "sparse"])
    if style == "float":
        seconds = [rng.uniform(0, 10) for _ in range(n)]
        send = [rng.uniform(0, 3) for _ in range(n)]
        nbytes = [rng.uniform(0, 100) for _ in range(n)]
    elif style == "int":
        # Small integers make exact ties in bottleneck and in sum common.
        seconds = [float(rng.randint(0, 4)) for _ in range(n)]
        send = [float(rng.randint(0, 2)) for _ in range(n)]
        nbytes = [float(rng.randint(0, 50)) for _ in range(n)]
    elif style == "zeros":
        seconds = [0.0] * n
        send = [float(rng.choice([0, 0, 1])) for _ in range(n)]
        nbytes = [float(rng.randint(0, 10)) for _ in range(n)]
    else:
        seconds = [rng.choice([0.0, 0.0, rng.uniform(0, 5)]) for _ in range(n)]
        send = [rng.choice([0.0, rng.uniform(0, 1)]) for _ in range(n)]
        nbytes = [float(rng.choice([0, 1, 30])) for _ in range(n)]
    cap_style = rng.choice(["none", "loose", "tight", "impossible"])
    total = sum(nbytes)
    if cap_style == "none":
        cap = None
    elif cap_style == "loose":
        # Not exactly `total`: float sums in another order may land an ulp either side of it.
        cap = total * 1.5 + 1.0
    elif cap_style == "tight":
        # Integer caps against integer bytes hit stage sizes exactly, testing `<=`.
        cap = float(rng.randint(0, int(total))) if style != "float" else rng.uniform(0, total)
    else:
        cap = max(nbytes) / 2 if max(nbytes) > 0 else -0.0
    return seconds, send, nbytes, cap


def test_matches_brute_force_on_random_small_cases() -> None:
    rng = random.Random(20240607)
    checked = infeasible = 0
    for _ in range(2000):
        n = rng.randint(1, 9)
        stages = rng.randint(1, min(n, 4))
        seconds, send, nbytes, cap = _random_case(rng, n)
        expected = _brute_force(seconds, send, nbytes, stages, cap)
        context = f"seconds={seconds} send={send} bytes={nbytes} stages={stages} cap={cap}"
        if expected is None:
            with pytest.raises(PartitionError, match="memory_cap"):
                partition_layers(seconds, send, nbytes, stages, cap)
            infeasible += 1
            continue
        best, least, bounds = expected
        got = partition_layers(seconds, send, nbytes, stages, cap)
        assert got.bottleneck == pytest.approx(best, rel=1e-12, abs=1e-12), context
        assert math.fsum(got.stage_seconds) == pytest.approx(least, rel=1e-12, abs=1e-12), context
        assert got.bounds == bounds, context
        assert (got.stage_seconds, got.stage_bytes) == stage_costs(
            seconds, send, nbytes, got.bounds
        )
        assert len(got.stage_seconds) == got.num_stages == stages
        if cap is not None:
            assert max(got.stage_bytes) <= cap, context
        checked += 1
    # The generator must exercise both outcomes, or the test proves little.
    assert checked > 1000 and infeasible > 150


def test_matches_brute_force_with_a_bottleneck_tolerance() -> None:
    """Within 3% of the best bottleneck, the partition that communicates least wins."""
    rng = random.Random(7)
    widened = 0
    for _ in range(600):
        n = rng.randint(2, 8)
        stages = rng.randint(2, min(n, 4))
        seconds, send, nbytes, _ = _random_case(rng, n)
        expected = _brute_force(seconds, send, nbytes, stages, None, tolerance=0.03)
        strict = _brute_force(seconds, send, nbytes, stages, None)
        assert expected is not None and strict is not None
        got = partition_layers(seconds, send, nbytes, stages, bottleneck_tolerance=0.03)
        context = f"seconds={seconds} send={send} stages={stages}"
        assert got.bottleneck <= expected[0] * 1.03 + 1e-12, context
        assert math.fsum(got.stage_seconds) == pytest.approx(expected[1], rel=1e-9, abs=1e-12)
        assert got.bounds == expected[2], context
        widened += expected[2] != strict[2]
    assert widened > 10  # the tolerance changed the answer often enough to be tested


def test_stage_costs_matches_plain_sums() -> None:
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 12)
        seconds, send, nbytes, _ = _random_case(rng, n)
        bounds = rng.choice(list(_all_bounds(n, rng.randint(1, n))))
        got_seconds, got_bytes = stage_costs(seconds, send, nbytes, bounds)
        want_seconds, want_bytes = _naive_costs(seconds, send, nbytes, bounds)
        assert got_seconds == pytest.approx(want_seconds, rel=1e-12, abs=1e-12)
        assert got_bytes == pytest.approx(want_bytes, rel=1e-12, abs=1e-12)


def test_stage_costs_rejects_malformed_bounds() -> None:
    ones = [1.0] * 4
    for bounds in [(0, 2), (1, 4), (0, 2, 2, 4), (0, 3, 2, 4), (0,)]:
        with pytest.raises(ValueError, match="bounds"):
            stage_costs(ones, ones, ones, bounds)


# --- behaviour -------------------------------------------------------------------------------


def test_is_deterministic() -> None:
    rng = np.random.default_rng(3)
    # Integer costs: many exact ties, so only the tie-break decides.
    seconds = rng.integers(0, 3, size=60).astype(float)
    send = rng.integers(0, 2, size=60).astype(float)
    nbytes = rng.integers(0, 9, size=60).astype(float)
    first = partition_layers(seconds, send, nbytes, 7, memory_cap=80.0)
    second = partition_layers(list(seconds), list(send), list(nbytes), 7, memory_cap=80.0)
    assert first == second


def test_all_zero_costs_give_the_lexicographically_smallest_bounds() -> None:
    got = partition_layers([0.0] * 6, [0.0] * 6, [0.0] * 6, 3)
    assert got.bounds == (0, 1, 2, 6)
    assert got.bottleneck == 0.0


def test_embedding_heavy_model_balances_seconds_not_bytes() -> None:
    # Layer 0 is an embedding: most of the memory, almost none of the time.
    seconds = [0.01] + [1.0] * 8
    send = [0.0] * 9
    nbytes = [1000.0] + [10.0] * 8
    got = partition_layers(seconds, send, nbytes, 2)
    # Balancing bytes would isolate the embedding (stage costs 0.01 and 8.0).
    assert got.bounds == (0, 5, 9)
    assert got.stage_seconds == pytest.approx((4.01, 4.0))
    assert got.bottleneck == pytest.approx(4.01)
    # With a cap that the embedding plus four layers would exceed, it gets less company.
    capped = partition_layers(seconds, send, nbytes, 2, memory_cap=1030.0)
    assert capped.bounds == (0, 4, 9)
    assert max(capped.stage_bytes) <= 1030.0


def test_avoids_cutting_after_an_expensive_send_when_an_equal_balance_exists() -> None:
    # Cutting after layer 1 or layer 3 both give bottleneck 2 + send; layer 1's output is huge.
    seconds = [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    send = [0.0, 0.5, 0.0, 0.1, 0.0, 0.0]
    nbytes = [1.0] * 6
    got = partition_layers(seconds, send, nbytes, 2)
    # (0, 2, 6) and (0, 3, 6) both split the compute 2 | 2, but only the latter sends for free.
    assert got.bounds == (0, 3, 6)
    assert got.stage_seconds == (2.0, 2.0)


def test_prefers_less_communication_among_equal_bottlenecks() -> None:
    # Bottleneck 10 is fixed by layer 0 alone, so every 3-stage split of the rest is optimal; the
    # sum of costs then decides, which means cutting where the sends are cheapest.
    seconds = [10.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    send = [0.0, 0.3, 0.2, 0.4, 0.1, 0.0]
    got = partition_layers(seconds, send, [1.0] * 6, 3)
    # Layer 0 must stand alone (cut after it is free); of the second cuts, after layer 4 (0.1)
    # is the cheapest.
    assert got.bounds == (0, 1, 5, 6)
    # 15 of compute plus the 0.1 boundary, paid by the stages on both sides of it.
    assert math.fsum(got.stage_seconds) == pytest.approx(15.2)


def test_memory_cap_error_names_the_cap_and_the_least_achievable() -> None:
    nbytes = [5.0, 3.0, 4.0, 6.0]
    with pytest.raises(PartitionError) as info:
        partition_layers([1.0] * 4, [0.0] * 4, nbytes, 2, memory_cap=7.0)
    message = str(info.value)
    assert "memory_cap=7" in message
    # Best 2-stage byte split: (5, 3 | 4, 6) -> 10 vs (5 | 3, 4, 6) -> 13 vs (5, 3, 4 | 6) -> 12.
    assert "largest-stage memory is 10" in message


def test_single_stage_takes_everything_and_pays_no_send() -> None:
    got = partition_layers([1.0, 2.0], [5.0, 5.0], [3.0, 4.0], 1)
    assert got == Partition(bounds=(0, 2), stage_seconds=(3.0,), stage_bytes=(7.0,))


def test_large_case_returns_a_valid_partition() -> None:
    rng = np.random.default_rng(11)
    n, stages = 500, 8
    seconds = rng.uniform(0.5, 2.0, size=n)
    send = rng.uniform(0.0, 0.2, size=n)
    nbytes = rng.uniform(1.0, 5.0, size=n)
    cap = float(nbytes.sum()) / stages * 1.5
    got = partition_layers(seconds, send, nbytes, stages, memory_cap=cap)
    assert got.bounds[0] == 0 and got.bounds[-1] == n and len(got.bounds) == stages + 1
    assert all(b > a for a, b in itertools.pairwise(got.bounds))
    assert max(got.stage_bytes) <= cap
    assert (got.stage_seconds, got.stage_bytes) == stage_costs(seconds, send, nbytes, got.bounds)
    # Sanity against the trivial lower bound: no stage can beat an even share of the compute.
    assert got.bottleneck >= seconds.sum() / stages
    assert got.bottleneck <= seconds.sum() / stages + seconds.max() + send.max()


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "send", "nbytes", "stages", "match"),
    [
        ([1.0, 1.0], [0.0], [1.0, 1.0], 1, "same length"),
        ([1.0, -1.0], [0.0, 0.0], [1.0, 1.0], 1, r"layer_seconds\[1\]"),
        ([1.0, 1.0], [0.0, math.nan], [1.0, 1.0], 1, r"send_seconds\[1\]"),
        ([1.0, 1.0], [0.0, 0.0], [math.inf, 1.0], 1, r"layer_bytes\[0\]"),
        ([], [], [], 1, "at least one layer"),
        ([1.0, 1.0], [0.0, 0.0], [1.0, 1.0], 0, "num_stages must be >= 1"),
        ([[1.0]], [[0.0]], [[1.0]], 1, "one-dimensional"),
    ],
)
def test_rejects_bad_input(
    seconds: list[float], send: list[float], nbytes: list[float], stages: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        partition_layers(seconds, send, nbytes, stages)


def test_more_stages_than_layers_is_a_partition_error() -> None:
    with pytest.raises(PartitionError, match="3 stages but only 2 layers"):
        partition_layers([1.0, 1.0], [0.0, 0.0], [1.0, 1.0], 3)


def test_rejects_a_negative_or_nan_memory_cap() -> None:
    for cap in (-1.0, math.nan):
        with pytest.raises(ValueError, match="memory_cap"):
            partition_layers([1.0], [0.0], [1.0], 1, memory_cap=cap)


def test_blocked_path_for_many_layers_gives_the_same_answer() -> None:
    # Past a few thousand layers the DP works in blocks instead of one cached matrix; force that
    # path on a small case (blocks of a few columns, no cache) and compare.
    rng = np.random.default_rng(5)
    n = 40
    seconds = rng.integers(0, 4, size=n).astype(float)
    send = rng.integers(0, 3, size=n).astype(float)
    nbytes = rng.integers(0, 9, size=n).astype(float)
    total = float(nbytes.sum())
    cases = [(stages, cap) for stages in (1, 3, 6) for cap in (None, 1.4 * total / stages)]
    expected = [partition_layers(seconds, send, nbytes, s, memory_cap=c) for s, c in cases]
    blocked = {"cache_elements": 0, "block_elements": 3 * (n + 1)}
    assert [
        partition_layers(seconds, send, nbytes, s, memory_cap=c, **blocked) for s, c in cases
    ] == expected
    with pytest.raises(PartitionError, match="memory_cap"):
        partition_layers(seconds, send, nbytes, 6, memory_cap=1.0, **blocked)
