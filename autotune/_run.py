"""Run one trial: write its plan, launch DeepSpeed's launcher in its own process group, wait,
kill it on timeout, and read back the result or a one-line failure reason."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autotune._errors import UserError
from autotune._plan import WARMUP_STEPS, Machine, TrialConfig
from autotune._workers import (
    Outcome,
    WarmWorkers,
    _kill_group,
    launch_command,
    remove_shm_buffers,
)

LOG_TAIL_LINES = 5


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What a trial's run produced.

    Attributes:
        measurements: The harness's result (throughput, metric, memory, ...) or None on failure.
        failure_reason: One line (oom, timeout, diverged, error ...) when the run failed.
        wall_seconds: The whole run, launch included.
        directory: Where its ds_config, plan, result and log lie.
        launched: Whether a process group was launched for it (always, without warm
            workers; with them, only when the layout changed or a group had to restart).
    """

    measurements: dict[str, Any] | None
    failure_reason: str | None
    wall_seconds: float
    directory: Path
    launched: bool = True

    @property
    def ok(self) -> bool:
        return self.measurements is not None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(line.strip()[:200] for line in lines[-LOG_TAIL_LINES:])


def _read_failure(directory: Path, returncode: int, log: Path) -> str:
    reasons = sorted(directory.glob("failure.rank*.json"))
    if reasons:
        reason = json.loads(reasons[0].read_text())["reason"]
        return reason if not reason.startswith("error") else f"{reason} (log: {log})"
    if returncode in (-signal.SIGKILL, 128 + signal.SIGKILL, 137):
        return "oom: a rank was killed by the system (SIGKILL), most likely out of memory"
    return f"error: exit status {returncode}: {_log_tail(log)}"


def run_trial(
    config: TrialConfig,
    machine: Machine,
    model_path: Path,
    train_samples: int,
    seeds: list[int],
    directory: Path,
    timeout: float,
    partition_bounds: Sequence[int] | None = None,
    workers: WarmWorkers | None = None,
    need_metric: bool = True,
    adaptive: dict[str, Any] | None = None,
) -> RunResult:
    """Run one real DeepSpeed training of ``config`` and wait for it.

    Args:
        config: What to run.
        machine: Where (decides the accelerator and the threads each rank gets).
        model_path: The user's model file.
        train_samples: The fixed sample budget.
        seeds: Training seeds; the first seed's run is measured, later ones give the metric's
            seed-to-seed noise (used for the reference).
        directory: A fresh folder for this trial's files.
        timeout: Seconds before the whole process group is killed.
        partition_bounds: Pipeline stage boundaries to build instead of DeepSpeed's
            ``partition_method`` (autotune's ``profile`` method computes them).
        workers: A warm group to run in; None launches a fresh process group for this run.
        need_metric: False when the metric for these numerics is already known: training
            may stop once throughput is measured (see ``adaptive``) and nothing is evaluated.
        adaptive: ``{"rel_halfwidth": 0.02, "min_steps": 5}`` to record when the step-time
            estimate became stable (95% interval within +-2%), and, without ``need_metric``,
            stop there; None measures every step of the budget.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in [*directory.glob("failure.rank*.json"), directory / "result.json"]:
        stale.unlink(missing_ok=True)
    ds_config = config.ds_config()
    (directory / "ds_config.json").write_text(json.dumps(ds_config, indent=2))
    threads = config.threads_per_process(machine)
    plan = {
        "model_path": str(model_path),
        "package_root": str(Path(__file__).resolve().parent.parent),
        "settings": config.settings(),
        "ds_config": ds_config,
        "train_samples": train_samples,
        "seeds": seeds,
        "warmup_steps": WARMUP_STEPS,
        "threads_per_rank": threads,
        "partition_bounds": list(partition_bounds) if partition_bounds else None,
        "need_metric": need_metric,
        "adaptive": adaptive,
    }
    plan_path = directory / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=2))
    env = dict(os.environ, PYTHONUNBUFFERED="1", **machine.environment)
    if machine.accelerator == "cpu":
        # A warm group serves trials with different worker counts; each trial sets its own
        # thread count, so the group starts with the most a rank of this layout may use.
        most = threads if workers is None else max(1, machine.cores // config.processes)
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS=str(most))
    log = directory / "log.txt"
    log.unlink(missing_ok=True)
    start = time.perf_counter()
    if workers is None:
        outcome = _launch_fresh(plan_path, config.processes, env, log, timeout)
    else:
        outcome = workers.run(plan_path, config.processes, _free_port(), timeout, env)
    wall = time.perf_counter() - start
    if outcome.timed_out:
        return RunResult(
            None, f"timeout: still running after {timeout:g} s", wall, directory, outcome.launched
        )
    result_path = directory / "result.json"
    if outcome.returncode == 0 and result_path.exists():
        return RunResult(
            json.loads(result_path.read_text()), None, wall, directory, outcome.launched
        )
    if not log.exists():
        log.write_text("")
    reason = _read_failure(directory, outcome.returncode, log)
    return RunResult(None, reason, wall, directory, outcome.launched)


def _launch_fresh(
    plan_path: Path, processes: int, env: dict[str, str], log: Path, timeout: float
) -> Outcome:
    """One launch of DeepSpeed's launcher for this plan alone, in its own process group."""
    port = _free_port()
    command = launch_command(processes, port, ["--plan", str(plan_path)])
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        try:
            return Outcome(process.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return Outcome(-signal.SIGKILL, timed_out=True)
        except BaseException:  # Ctrl-C: leave no rank behind
            _kill_group(process)
            raise
        finally:
            # Ranks or DataLoader workers may outlive the launcher; the group goes with it.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            remove_shm_buffers(port)


_STALE_LOCK_SECONDS = 15 * 60


def _op_builders(machine: Machine, optimizer: dict[str, Any]) -> list[str]:
    names = ["ShareMemCommBuilder"] if machine.accelerator == "cpu" else []
    params = optimizer.get("params", {})
    if str(optimizer.get("type", "")).lower() in ("adam", "adamw") and not params.get("torch_adam"):
        names.append("FusedAdamBuilder")
    return names


def prepare_deepspeed_ops(machine: Machine, optimizer: dict[str, Any]) -> list[str]:
    """Build the DeepSpeed ops every trial loads, once, before any trial is timed.

    DeepSpeed compiles them just in time on first use (about a minute each on a small CPU);
    done inside a trial that would blow its timeout and leave a build lock that hangs every
    later trial. Returns the ops it had to build now.
    """
    from deepspeed.accelerator import get_accelerator
    from torch.utils import cpp_extension

    os.environ.update(machine.environment)  # DeepSpeed's builders read it in this process
    built = []
    for name in _op_builders(machine, optimizer):
        builder = get_accelerator().create_op_builder(name)
        if builder is None or not builder.is_compatible(verbose=False):
            continue
        build_dir = Path(cpp_extension._get_build_directory(builder.name, verbose=False))
        lock = build_dir / "lock"
        if lock.exists() and time.time() - lock.stat().st_mtime > _STALE_LOCK_SECONDS:
            lock.unlink()  # left by a build that was killed; torch would wait on it forever
        fresh = not any(build_dir.glob("*.so"))
        try:
            builder.load(verbose=False)
        except BaseException as exc:
            lock.unlink(missing_ok=True)
            if not isinstance(exc, Exception):  # KeyboardInterrupt and the like
                raise
            hint = (
                ' Setting "torch_adam": true in OPTIMIZER["params"] avoids this build.'
                if name == "FusedAdamBuilder"
                else ""
            )
            lines = str(exc).strip().splitlines()
            detail = f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__
            raise UserError(
                f"DeepSpeed could not build its {builder.absolute_name()} op on this machine "
                f"({detail}); no trial can run without it.{hint}"
            ) from exc
        if fresh:
            built.append(builder.absolute_name())
    return built
