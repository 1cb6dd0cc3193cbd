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

from autotune._machine import Machine
from autotune._plan import WARMUP_STEPS, TrialConfig
from autotune.runner._nodes import launch_across
from autotune.runner._ops import ensure_deepspeed_ops, ops_environment
from autotune.runner._protocol import (
    FAILURE_GLOB,
    LOG_FILE,
    PLAN_FILE,
    RESULT_FILE,
    AdaptiveStop,
    TrialPlan,
)
from autotune.runner._workers import Outcome, WarmWorkers, end_group, launch_group

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


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(line.strip()[:200] for line in lines[-LOG_TAIL_LINES:])


def _read_failure(directory: Path, returncode: int, log: Path) -> str:
    reasons = sorted(directory.glob(FAILURE_GLOB))
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
    measure_noise: bool = False,
) -> RunResult:
    """Run one real DeepSpeed training of ``config`` and wait for it.

    DeepSpeed's ops are built first, outside the trial's time (once per process; the search
    has already built them). While another process holds an op's build lock (building it, or
    checking it for a moment as every load does), the trial waits, up to ``timeout``; then it
    fails with that reason, not launched.

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
        measure_noise: Measure the gradient noise after training (`GRADIENT_NOISE`).

    Raises:
        UserError: DeepSpeed cannot build an op the trial needs on this machine.
    """
    directory.mkdir(parents=True, exist_ok=True)
    offload = config.offload != "none"  # the kernel it runs: its optimizer section, offloaded?
    not_now = ensure_deepspeed_ops(machine, config.ds_config()["optimizer"], timeout, offload)
    if not_now is not None:
        return RunResult(None, not_now, 0.0, directory, launched=False)
    plan = TrialPlan(
        model_path=str(model_path),
        config=config,
        ds_config=config.ds_config(),
        train_samples=train_samples,
        seeds=tuple(seeds),
        warmup_steps=WARMUP_STEPS,
        threads_per_rank=config.threads_per_process(machine),
        partition_bounds=tuple(partition_bounds) if partition_bounds else None,
        need_metric=need_metric,
        adaptive=AdaptiveStop.from_dict(adaptive),
        measure_noise=measure_noise,
    )
    plan_path = _write_plan(directory, plan)
    across = machine.spans_nodes(config.processes)
    variables = _trial_variables(plan, machine, warm=workers is not None and not across)
    env = {**os.environ, **variables}
    log = directory / LOG_FILE
    log.unlink(missing_ok=True)
    start = time.perf_counter()
    if across:
        if workers is not None:
            workers.close()  # its ranks hold this node's devices
        outcome = launch_across(plan_path, plan, machine, env, variables, log, timeout)
    elif workers is None:
        outcome = _launch_fresh(plan_path, config.processes, env, log, timeout, machine.device_ids)
    else:
        devices, reusable = machine.device_ids, config.zero_stage < 3  # see WarmWorkers.run
        outcome = workers.run(
            plan_path, config.processes, free_port(), timeout, env, devices, reusable
        )
    return _result(directory, outcome, time.perf_counter() - start, timeout, log)


def _write_plan(directory: Path, plan: TrialPlan) -> Path:
    """The trial's folder with its ds_config and plan, and no result of an earlier run."""
    for stale in [*directory.glob(FAILURE_GLOB), directory / RESULT_FILE]:
        stale.unlink(missing_ok=True)
    (directory / "ds_config.json").write_text(json.dumps(plan.ds_config, indent=2))
    plan_path = directory / PLAN_FILE
    plan.write(plan_path)
    return plan_path


def _trial_variables(plan: TrialPlan, machine: Machine, warm: bool) -> dict[str, str]:
    """What the ranks' environment sets beyond this one's: unbuffered output, the machine's
    DeepSpeed variables, the ops folder, and on CPU the accelerator and its threads."""
    variables = {"PYTHONUNBUFFERED": "1", **machine.environment, **ops_environment()}
    if machine.accelerator == "cpu":
        # A warm group serves trials with different worker counts; each trial sets its own
        # thread count, so the group starts with the most a rank of this layout may use.
        threads = plan.threads_per_rank
        most = max(1, machine.cores // plan.config.processes) if warm else threads
        variables.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS=str(most))
    return variables


def _result(directory: Path, outcome: Outcome, wall: float, timeout: float, log: Path) -> RunResult:
    """The run's measurements from result.json, or the one-line reason it failed."""
    if outcome.timed_out:
        return RunResult(
            None, f"timeout: still running after {timeout:g} s", wall, directory, outcome.launched
        )
    result_path = directory / RESULT_FILE
    if outcome.returncode == 0 and result_path.exists():
        return RunResult(
            json.loads(result_path.read_text()), None, wall, directory, outcome.launched
        )
    if not log.exists():
        log.write_text("")
    reason = outcome.reason or _read_failure(directory, outcome.returncode, log)
    return RunResult(None, reason, wall, directory, outcome.launched)


def _launch_fresh(
    plan_path: Path,
    processes: int,
    env: dict[str, str],
    log: Path,
    timeout: float,
    device_ids: Sequence[int],
) -> Outcome:
    """One launch of DeepSpeed's launcher for this plan alone, in its own process group."""
    with log.open("wb") as log_file:
        args = ["--plan", str(plan_path)]
        group = launch_group(processes, free_port(), args, log_file, env, device_ids)
        try:
            return Outcome(group.process.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            return Outcome(-signal.SIGKILL, timed_out=True)
        finally:
            # Ctrl-C and SIGTERM too: leave no rank behind. Ranks or DataLoader workers may
            # outlive the launcher; the group goes with it.
            end_group(group)
