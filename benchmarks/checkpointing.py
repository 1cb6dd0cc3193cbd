"""Activation checkpointing: the memory it saves, the time it costs, and the micro-batch it
makes feasible under a tight memory limit (issue 19).

For each micro-batch it runs the model file's reference configuration with checkpointing off
and on, side by side (one fresh DeepSpeed launch each, the whole sample budget), and prints
each run's peak memory per rank (resident memory on CPU), samples/s and metric, with the
activations the memory estimate predicts for both. Then, for limits taken from the measured
peaks without checkpointing, the largest micro-batch whose measured peak fits each way, and
its throughput: what a search under that `--max-memory` could pick.

    python benchmarks/checkpointing.py                       # examples/embedding_heavy.py
    python benchmarks/checkpointing.py --batches 256 1024 --train-samples 16384
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune import TrialConfig, detect_machine, run_trial  # noqa: E402
from autotune._memory import estimate_rank_bytes, format_bytes, measure_footprint  # noqa: E402
from autotune._records import METRIC, PEAK_MEMORY_BYTES, THROUGHPUT  # noqa: E402
from autotune._task import load_model_file, reference_settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "examples" / "embedding_heavy.py")
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--train-samples", type=int, default=16384)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    args = parser.parse_args()
    machine = detect_machine()
    model_file = load_model_file(args.model)
    footprint = measure_footprint(model_file)
    reference = reference_settings(model_file.batch_size)
    print(f"machine: {machine.describe()}; model {args.model.name}, {args.train_samples} samples")
    print("  mbs  ckpt  predicted activations  peak memory  samples/s  metric")
    runs: dict[tuple[int, bool], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="autotune-checkpointing-") as tmp:
        for batch in args.batches:
            for checkpointing in (False, True):
                settings = {
                    **reference,
                    "micro_batch_size": batch,
                    "activation_checkpointing": checkpointing,
                }
                config = TrialConfig.from_settings(
                    settings, model_file.optimizer, model_file.batch_size, "none"
                )
                folder = Path(tmp) / f"{batch}-{checkpointing}"
                result = run_trial(
                    config, machine, args.model, args.train_samples, [0], folder, args.timeout
                )
                if result.measurements is None:
                    raise SystemExit(f"run failed: {result.failure_reason} ({folder})")
                measured = result.measurements
                peak = float(measured[PEAK_MEMORY_BYTES])
                runs[batch, checkpointing] = (peak, float(measured[THROUGHPUT]))
                predicted = estimate_rank_bytes(footprint, config, machine.accelerator).activations
                print(
                    f"{batch:5d}  {'on ' if checkpointing else 'off'}  "
                    f"{format_bytes(predicted):>21}  {format_bytes(peak):>11}  "
                    f"{measured[THROUGHPUT]:9.1f}  {measured[METRIC]:.4f}"
                )
    print("\nunder a memory limit (each limit: a peak measured without checkpointing):")
    for limit_batch in args.batches[:-1]:
        limit = runs[limit_batch, False][0]
        line = [f"  limit {format_bytes(limit):>10}:"]
        for checkpointing in (False, True):
            fits = [b for b in args.batches if runs[b, checkpointing][0] <= limit]
            label = "checkpointing" if checkpointing else "without"
            if fits:
                best = max(fits)
                line.append(f"{label} mbs {best} ({runs[best, checkpointing][1]:.0f} samples/s)")
            else:
                line.append(f"{label}: none fits")
        print(" ".join(line[:1]) + " " + "; ".join(line[1:]))


if __name__ == "__main__":
    main()
