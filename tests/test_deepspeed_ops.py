"""Preparing DeepSpeed's ops: the CUDA architecture list DeepSpeed can parse (autotune/_plan.py),
the extensions folder of this environment's own, and build locks that never hang a trial
(autotune/runner/_ops.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autotune._machine import Machine, arch_list_deepspeed_can_parse, deepspeed_environment
from autotune._plan import TrialConfig
from autotune._task import reference_settings
from autotune.runner import (
    STALE_LOCK_SECONDS,
    build_locks,
    clear_stale_lock,
    extensions_directory,
    lock_holders,
    ops_environment,
    run_trial,
)
from autotune.runner._ops import BuildInProgressError, wait_for_other_build


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


# --- build locks: a real torch FileBaton-style lock, held by a real process ------------------

HOLD_LOCK = (
    "import os, sys, time\n"
    "os.open(sys.argv[1], os.O_CREAT | os.O_EXCL)  # what torch's FileBaton does\n"
    "print('held', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
)


def _hold(lock: Path, seconds: float) -> subprocess.Popen[str]:
    """A child process that creates ``lock`` as torch does and keeps it open for ``seconds``."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


@pytest.fixture
def live_holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    lock = tmp_path / "extensions" / "fused_adam" / "lock"
    child = _hold(lock, 120)
    yield lock, child
    child.kill()
    child.wait()


def test_a_lock_whose_owner_died_is_removed(tmp_path: Path) -> None:
    lock = tmp_path / "extensions" / "fused_adam" / "lock"
    child = _hold(lock, 0)
    child.wait()  # the builder was killed: its lock stays behind
    assert lock.exists() and lock_holders(lock) == []
    assert clear_stale_lock(lock) is None
    assert not lock.exists()
    assert clear_stale_lock(lock) is None  # no lock: nothing to do


def test_a_live_build_keeps_its_lock_and_names_its_pid(
    live_holder: tuple[Path, subprocess.Popen[str]],
) -> None:
    lock, child = live_holder
    assert lock_holders(lock) == [child.pid]
    assert clear_stale_lock(lock) == child.pid
    assert lock.exists()


def test_a_lock_older_than_the_stale_limit_is_removed_even_if_held(
    live_holder: tuple[Path, subprocess.Popen[str]],
) -> None:
    lock, _ = live_holder
    old = time.time() - STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    assert clear_stale_lock(lock) is None
    assert not lock.exists()


def test_extensions_directory_is_the_users_when_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extensions_directory() == tmp_path
    assert ops_environment() == {"TORCH_EXTENSIONS_DIR": str(tmp_path)}
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    own = extensions_directory()
    assert own != tmp_path and sys.prefix not in str(own)  # keyed by a digest of the prefix
    assert own == extensions_directory()  # the same for every process of this environment


def test_a_trial_waits_for_another_process_building_the_ops_up_to_its_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    machine = Machine(accelerator="cpu", devices=1, cores=2, fp16=False, bf16=True)
    optimizer = {"type": "Adam", "params": {"lr": 1e-3}}
    config = TrialConfig.from_settings(reference_settings(8), optimizer, 8, "none")
    locks = build_locks(machine, config.optimizer)
    if not locks:
        pytest.skip("DeepSpeed builds no op for this machine here")
    child = _hold(locks[0], 120)
    started = time.monotonic()
    try:
        result = run_trial(
            config, machine, tmp_path / "model.py", 64, [0], tmp_path / "trial", timeout=3
        )
    finally:
        child.kill()
        child.wait()
    assert time.monotonic() - started >= 3  # it waited its timeout for the build
    assert not result.ok and not result.launched
    assert result.failure_reason is not None
    assert result.failure_reason.startswith(
        f"DeepSpeed is building its ops in another process (lock {locks[0]}, pid {child.pid});"
    )


def test_a_lock_held_for_a_moment_is_waited_out(tmp_path: Path) -> None:
    """torch takes the lock on every load of a built op; another worker's load must not fail
    this one's trial (it did, in a 4-worker search on a fresh machine)."""
    lock = tmp_path / "extensions" / "fused_adam" / "lock"
    child = _hold(lock, 2)
    try:
        with pytest.raises(BuildInProgressError, match=f"pid {child.pid}"):
            wait_for_other_build(lock, until=time.monotonic() + 0.5)
        wait_for_other_build(lock, until=time.monotonic() + 60)
        assert child.poll() is not None and not lock.exists()
    finally:
        child.kill()
        child.wait()
