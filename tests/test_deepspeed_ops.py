"""Preparing DeepSpeed's ops: the CUDA architecture list DeepSpeed can parse (autotune/_plan.py)."""

from __future__ import annotations

import pytest

from autotune._plan import arch_list_deepspeed_can_parse, deepspeed_environment


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("9.0a", "9.0"),  # what the H100 image sets; DeepSpeed 0.19.8 fails on it
        ("8.0;9.0;9.0a", "8.0;9.0"),
        ("9.0a+PTX", "9.0+PTX"),
        ("8.0 8.6+PTX", "8.0;8.6+PTX"),
        ("10.0a;12.0a", "10.0;12.0"),
        ("7.5", "7.5"),
    ],
)
def test_variant_suffixes_are_stripped(given: str, expected: str) -> None:
    assert arch_list_deepspeed_can_parse(given) == expected


def test_environment_changes_only_what_deepspeed_cannot_parse() -> None:
    assert deepspeed_environment("cuda", {"TORCH_CUDA_ARCH_LIST": "9.0a"}) == {
        "TORCH_CUDA_ARCH_LIST": "9.0"
    }
    assert deepspeed_environment("cuda", {"TORCH_CUDA_ARCH_LIST": "8.0;9.0"}) == {}
    assert deepspeed_environment("cuda", {}) == {}
    assert deepspeed_environment("cpu", {"TORCH_CUDA_ARCH_LIST": "9.0a"}) == {}
