"""The values each tuned setting accepts: one check per kind of value, returning None for a
valid value or a phrase naming what is expected (read by `autotune._space.PARAMETERS`)."""

from __future__ import annotations

import re
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
PARTITION_METHODS = ("parameters", "uniform", "profile")
OFFLOADS = ("none", "optimizer", "all")
"""What ZeRO keeps in CPU memory: nothing, the optimizer state, or that and the parameters."""
OPTIMIZER_IMPLS = ("deepspeed", "torch", "torch_fused")
"""Adam's kernels: DeepSpeed's FusedAdam op, torch's (foreach where supported), torch's fused."""
BATCHINGS = ("items", "tokens")
"""How micro-batches are cut: a fixed item count, or a budget of padded token positions."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 1 else "a whole number >= 1"


def check_nonnegative_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 0 else "a whole number >= 0"


def check_precision(value: Any) -> str | None:
    return None if value in PRECISIONS else "one of " + ", ".join(PRECISIONS)


def check_zero_stage(value: Any) -> str | None:
    return None if _is_int(value) and 0 <= value <= 3 else "0, 1, 2 or 3"


def check_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def check_offload(value: Any) -> str | None:
    return None if value in OFFLOADS else "one of " + ", ".join(OFFLOADS)


def check_batching(value: Any) -> str | None:
    return None if value in BATCHINGS else "one of " + ", ".join(BATCHINGS)


def check_optimizer_impl(value: Any) -> str | None:
    return None if value in OPTIMIZER_IMPLS else "one of " + ", ".join(OPTIMIZER_IMPLS)


def check_partition_method(value: Any) -> str | None:
    expected = "'parameters', 'uniform', 'profile' or 'type:REGEX'"
    if not isinstance(value, str):
        return expected
    if value in PARTITION_METHODS:
        return None
    if value.startswith("type:") and len(value) > len("type:"):
        try:
            re.compile(value[len("type:") :])
        except re.error:
            return expected + " with a valid regular expression"
        return None
    return expected
