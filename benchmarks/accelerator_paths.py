"""Every precision on every ZeRO stage, on this machine's accelerator: what each trial measured.

Runs a grid search of precision (fp32, bf16, fp16) x ZeRO stage (0-3) x micro-batch sizes on one
model and prints one row per trial: samples/s, metric and accuracy loss against the reference,
peak accelerator memory against the memory model's prediction, and for fp16 the optimizer steps
that dynamic loss scaling skipped and the loss scale it ended on. Configurations the machine
cannot run (fp16 on DeepSpeed's CPU accelerator) show the reason they were skipped.

    python benchmarks/accelerator_paths.py                          # digits_mlp, mbs 64 and 256
    python benchmarks/accelerator_paths.py --model examples/embedding_heavy.py --mbs 128

On a CUDA machine this is the check of the paths a CPU machine cannot take: fp16 with loss
scaling, bf16, ZeRO stages 0-3 on the device, and accelerator memory.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune import SearchOptions, load_study, search, trials_frame  # noqa: E402
from autotune._machine import detect_machine  # noqa: E402

MIB = 1024 * 1024


def _cell(value: object, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def _mib(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value / MIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "examples" / "digits_mlp.py")
    parser.add_argument("--mbs", type=int, nargs="+", default=[64, 256], help="micro-batch sizes")
    parser.add_argument("--train-samples", type=int, default=8192)
    parser.add_argument("--min-measure-seconds", type=float, default=3.0)
    parser.add_argument("--trial-timeout", type=float, default=300.0)
    args = parser.parse_args()
    machine = detect_machine()
    print(f"machine: {machine.describe()}", flush=True)
    space_text = (
        f"micro_batch_size: {args.mbs}\n"
        "precision: [fp32, bf16, fp16]\n"
        "zero_stage: [0, 1, 2, 3]\n"
        "processes: [1]\n"
    )
    grid = len(args.mbs) * 3 * 4
    with tempfile.TemporaryDirectory(prefix="autotune-accel-") as tmp:
        work = Path(tmp)
        space = work / "space.yaml"
        space.write_text(space_text)
        storage = f"sqlite:///{work}/study.db"
        start = time.perf_counter()
        summary = search(
            SearchOptions(
                model=args.model,
                space=space,
                n_trials=grid + 1,  # the grid and the reference
                train_samples=args.train_samples,
                sampler="grid",
                study="paths",
                storage=storage,
                trials_dir=work / "trials",
                reports_dir=work / "reports",
                min_measure_seconds=args.min_measure_seconds,
                trial_timeout=args.trial_timeout,
                confirm=0,
                early_stop=False,  # every path's metric and whole budget are what is measured
            ),
            print_line=lambda line: print(line, flush=True),
        )
        wall = time.perf_counter() - start
        frame = trials_frame(load_study("paths", storage))
    print()
    print(f"{args.model.name}: {len(frame)} runs in {wall:.0f} s on {machine.describe()}")
    header = (
        "| run | role | precision | ZeRO | mbs | status | samples/s | metric | loss | "
        "peak MiB | predicted MiB | skipped steps | loss scale | reason |"
    )
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for row in frame.itertuples():
        print(
            f"| {row.number} | {row.role} | {row.precision} | {row.zero_stage} | "
            f"{row.micro_batch_size} | {row.status} | {_cell(row.throughput, '.0f')} | "
            f"{_cell(row.metric, '.4f')} | {_cell(row.accuracy_loss, '+.2%')} | "
            f"{_cell(_mib(row.peak_memory_bytes), '.1f')} | "
            f"{_cell(_mib(row.memory_predicted_bytes), '.1f')} | "
            f"{_cell(row.skipped_steps, '.0f')} | {_cell(row.loss_scale, 'g')} | {row.reason} |"
        )
    if summary.best is not None:
        print(f"best: run {summary.best.number}, {summary.speedup or 0:.2f}x the reference")


if __name__ == "__main__":
    main()
