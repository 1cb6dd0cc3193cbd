"""The training harness that runs inside every DeepSpeed rank of a trial.

Launched by DeepSpeed's launcher, by path, either for one trial (``_harness.py --plan
PLAN.json``) or as a warm group that serves trial after trial (``_harness.py --serve INBOX``:
rank 0 waits for a ``*.request`` file naming a plan and broadcasts it; every rank then runs it
and goes back to waiting). For each plan it trains every seed (``train_and_measure``: engine,
loader, timed loop, eval, memory) and rank 0 writes ``result.json`` beside the plan. A rank that
fails writes ``failure.rank<R>.json`` with a one-line reason and exits, which ends its group.
It talks to the orchestrator only through these files (``autotune.runner._protocol``), and
watches it: a rank whose search is gone frees its group's shared memory and kills its group
(``autotune.runner._owner.watch_owner``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run by path: the package this file belongs to is importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from autotune._records import (  # noqa: E402
    CANNOT_WIN,
    EVAL_LOSS,
    METRIC,
    SEED_EVAL_LOSSES,
    SEED_METRICS,
    THROUGHPUT,
)
from autotune.runner._owner import watch_owner  # noqa: E402
from autotune.runner._protocol import (  # noqa: E402
    LOG_FILE,
    RESULT_FILE,
    STOP,
    TrialPlan,
    failure_file,
)
from autotune.runner._rank import failure_reason, log, restart_clock  # noqa: E402
from autotune.runner._train import train_and_measure  # noqa: E402

_DEFAULT_THREADS = torch.get_num_threads()
"""The framework's own intra-op thread count, as this rank started."""


def run(plan_path: Path) -> dict[str, Any]:
    """Train every seed of the plan; the first seed's run is the trial's measurement."""
    import deepspeed

    from autotune._task import load_model_file

    plan = TrialPlan.read(plan_path)
    # A warm rank keeps its thread count from plan to plan: each sets its own, or the default.
    torch.set_num_threads(plan.threads_per_rank or _DEFAULT_THREADS)
    log(f"imports done; {torch.get_num_threads()} intra-op threads")
    deepspeed.init_distributed()
    _log_place()
    model_file = load_model_file(plan.model_path)
    runs = []
    for index, seed in enumerate(plan.seeds):
        seed_plan = plan if index == 0 else plan.for_later_seed()
        runs.append(train_and_measure(seed_plan, seed, model_file))
        metric = runs[-1][METRIC]
        log(
            f"seed {seed}: {runs[-1][THROUGHPUT]:.1f} samples/s, metric "
            + ("not measured" if metric is None else f"{metric:.4f}")
        )
        if runs[-1].get(CANNOT_WIN):
            break  # stopped early: slower than the best, no seed's metric can matter
    result = dict(runs[0])
    result[SEED_METRICS] = [r[METRIC] for r in runs]
    result[SEED_EVAL_LOSSES] = [r.get(EVAL_LOSS) for r in runs]
    return result


def _log_place() -> None:
    """Where this rank runs: its rank in the world, and its node's share of the world."""
    import socket

    env = os.environ
    cpus = sorted(os.sched_getaffinity(0))
    log(
        f"rank {env.get('RANK', '0')} of a world of {env.get('WORLD_SIZE', '1')}: local rank "
        f"{env.get('LOCAL_RANK', '0')} of {env.get('LOCAL_SIZE', '1')} on {socket.gethostname()}"
        f" (cpus {','.join(map(str, cpus))}; CUDA_VISIBLE_DEVICES "
        f"{env.get('CUDA_VISIBLE_DEVICES', 'unset')})"
    )


def _run_and_report(plan_path: Path, rank: int) -> int:
    """Run one plan; rank 0 writes result.json, a failing rank its failure file."""
    try:
        result = run(plan_path)
    except BaseException as exc:
        traceback.print_exc()
        failure = {"rank": rank, "reason": failure_reason(exc)}
        (plan_path.parent / failure_file(rank)).write_text(json.dumps(failure))
        return 1
    if rank == 0:
        tmp = plan_path.parent / (RESULT_FILE + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(plan_path.parent / RESULT_FILE)
    return 0


def _write_output_to(log: Path) -> None:
    """Send this rank's stdout and stderr (DeepSpeed's lines included) to a trial's log."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _next_request(inbox: Path) -> str:
    """Rank 0: wait for the orchestrator's next request (a plan path, or STOP). Should the
    orchestrator die meanwhile, ``watch_owner`` ends the group."""
    idle_since = time.monotonic()
    while True:
        requests = sorted(inbox.glob("*.request"))
        if requests:
            text = requests[0].read_text().strip()
            requests[0].unlink()
            return text
        # Every 2 ms while the search is busy with this group; every 20 ms once it has been
        # idle a second (another layout's group is timing: its ranks need the cores).
        time.sleep(0.002 if time.monotonic() - idle_since < 1.0 else 0.02)


def serve(inbox: Path, rank: int) -> int:
    """A warm group: run plan after plan in this process group until told to stop."""
    import deepspeed
    import torch.distributed as dist

    deepspeed.init_distributed()
    while True:
        box = [_next_request(inbox) if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        request = str(box[0])
        if request == STOP:
            return 0
        plan_path = Path(request)
        _write_output_to(plan_path.parent / LOG_FILE)
        restart_clock()
        code = _run_and_report(plan_path, rank)
        sys.stdout.flush()
        sys.stderr.flush()
        if code != 0:
            return code  # other ranks may be stuck in a collective: the group ends here
        gc.collect()
        _release_cached_memory()


def _release_cached_memory() -> None:
    """Give the accelerator's cached blocks back: an idle warm group must not hold memory that
    another layout's group (on the same devices) needs."""
    from deepspeed.accelerator import get_accelerator

    get_accelerator().empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="autotune's in-rank training harness")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--plan", type=Path, help="run this one plan and exit")
    mode.add_argument("--serve", type=Path, help="a warm group: run plans requested in this folder")
    parser.add_argument("--local_rank", type=int, default=0)  # passed by DeepSpeed's launcher
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", args.local_rank))
    # Before anything can block (a build lock, a collective): no rank outlives its search.
    watch_owner()
    if args.serve is not None:
        return serve(args.serve, rank)
    return _run_and_report(args.plan, rank)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The result is on disk. Skip interpreter teardown: native threads of the communication
    # backend sometimes abort there ("terminate called without an active exception", exit 250),
    # which would throw away a finished measurement. The orchestrator kills the process group.
    os._exit(code)
