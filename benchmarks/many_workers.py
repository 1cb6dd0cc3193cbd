"""Scaling of many workers on one study: the same number of runs searched by 1 worker, then by
N workers at once, each on its own empty PostgreSQL database of a private server
(tests/_postgres.py), with a model whose forward sleeps a fixed time per sample, so that real
DeepSpeed runs leave the CPU idle and the workers' runs can overlap even on 2 cores.

Prints both wall times, their ratio, and the most database connections each worker held at
once (sampled from pg_stat_activity, where each worker names itself with `application_name`).
The issue's bar: 48 runs, 4 workers at least 3.2x faster than 1, at most 2 connections each
(sampled every 0.2 s: the worker that creates the tables may hold a third for that moment).

    python benchmarks/many_workers.py                      # 48 runs, 1 vs 4 workers
    python benchmarks/many_workers.py --runs 16 --sleep-ms 1
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from _postgres import PostgresServer, find_binaries  # noqa: E402

MODEL = textwrap.dedent(
    """
    import time
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    BATCH_SIZE = 32
    SLEEP_PER_SAMPLE = {sleep}

    class Sleep(nn.Module):
        # Waiting, as a GPU's kernels make the host wait: the same time per sample whatever the
        # configuration, and an idle CPU meanwhile.
        def forward(self, x):
            time.sleep(SLEEP_PER_SAMPLE * x.shape[0])
            return x

    def model():
        return nn.Sequential(Sleep(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def train_data():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(1200, 16, generator=g)
        return TensorDataset(x, x[:, :4].argmax(1))
    """
)
SPACE = textwrap.dedent(
    """
    # 96 one-process configurations, 72 of which leave 8 steps in 1024 samples: more than the runs.
    micro_batch_size: [4, 8, 16, 32, 64, 128]
    gradient_accumulation_steps: [1, 2, 4, 8]
    zero_stage: [0, 1, 2, 3]
    precision: [fp32]
    processes: [1]
    """
)


def _search(
    server: PostgresServer, database: str, workers: int, args: argparse.Namespace, root: Path
) -> tuple[float, dict[str, int], list[int]]:
    """Run ``workers`` workers on a new database; (wall seconds, the most connections each
    held at once, each worker's exit status)."""
    server.create_database(database)
    processes = []
    started = time.monotonic()
    for number in range(workers):
        folder = root / database / f"worker{number}"
        folder.mkdir(parents=True)
        (folder / "model.py").write_text(MODEL.format(sleep=args.sleep_ms / 1000))
        (folder / "space.yaml").write_text(SPACE)
        url = server.url(database) + f"?application_name=worker{number}"
        command = [sys.executable, "-m", "autotune.cli", "search", "model.py", "--space"]
        command += ["space.yaml", "--study", "scaling", "--storage", url, "--confirm", "0"]
        command += ["--sampler", "tpe", "--n-trials", str(args.runs)]
        command += ["--train-samples", str(args.train_samples)]
        command += ["--min-measure-seconds", "0", "--no-early-stop"]  # the same work either way
        log = (folder / "search.log").open("w")
        env = dict(os.environ, PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu")
        processes.append(
            subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        )
    most: dict[str, int] = collections.defaultdict(int)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            counts = collections.Counter(name for name, _ in server.connections(database))
            for name, count in counts.items():
                most[name] = max(most[name], count)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    codes = [process.wait() for process in processes]
    wall = time.monotonic() - started
    done.set()
    sampler.join()
    return wall, dict(most), codes


def _study_shape(url: str) -> dict[str, object]:
    """What the many workers' study holds: runs, distinct configurations, repeats, runs per
    worker, and each worker's first proposal after the queued start-up (differing draws)."""
    from autotune import load_study
    from autotune._records import REPEAT, SEARCH, TrialRecord
    from autotune.study import runs_of

    study = load_study("scaling", url)
    runs = runs_of(study)
    keys = [TrialRecord.of(t).config_key for t in runs]
    per_worker = collections.Counter(TrialRecord.of(t).worker for t in runs)
    first: dict[int, str] = {}
    for trial in study.get_trials(deepcopy=False):
        record = TrialRecord.of(trial)
        if record.role == SEARCH and record.worker is not None:
            settings = record.settings
            first.setdefault(
                record.worker,
                "mbs={micro_batch_size} gas={gradient_accumulation_steps} zero={zero_stage}".format(
                    **settings
                ),
            )
    return {
        "runs": len(runs),
        "configurations": len(set(keys)),
        "twice": len(keys) - len(set(keys)),
        "repeats": sum(TrialRecord.of(t).status == REPEAT for t in study.get_trials()),
        "per_worker": dict(sorted(per_worker.items())),
        "first_draws": dict(sorted(first.items())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=48)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--sleep-ms", type=float, default=2.0, help="per sample, in forward")
    parser.add_argument("--train-samples", type=int, default=1024)
    args = parser.parse_args()
    binaries = find_binaries()
    if binaries is None:
        print("needs PostgreSQL (apt-get install postgresql)", file=sys.stderr)
        return 2
    server = PostgresServer(binaries)
    root = Path(tempfile.mkdtemp(prefix="many-workers-"))
    try:
        one, _, codes_one = _search(server, "one_worker", 1, args, root)
        many, connections, codes_many = _search(server, "many_workers", args.workers, args, root)
        shape = _study_shape(server.url("many_workers"))
    finally:
        server.stop()
    print(
        f"{args.runs} runs, {args.sleep_ms} ms per sample asleep in forward, CPU cores: "
        f"{len(os.sched_getaffinity(0))}"
    )
    print(f"1 worker: {one:.1f} s (exit {codes_one})")
    print(f"{args.workers} workers: {many:.1f} s (exit {codes_many})")
    print(f"speed-up: {one / many:.2f}x")
    per_worker = {name: connections[name] for name in sorted(connections) if name}
    print(f"most connections at once, per worker: {per_worker}")
    print(
        f"the {args.workers} workers' study: {shape['runs']} runs, {shape['configurations']} "
        f"configurations, {shape['twice']} launched twice, {shape['repeats']} proposals "
        f"recorded as repeats, runs per worker {shape['per_worker']}; each worker's first "
        f"proposal after the start-up: {shape['first_draws']}"
    )
    if any(codes_one + codes_many):
        print(f"a worker failed: logs in {root}", file=sys.stderr)
        return 1
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
