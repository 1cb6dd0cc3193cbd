"""ZeRO's gradient bucket, DeepSpeed's default against the one fitted to the model: for ZeRO 1,
2 and 3 on a small example model, the bucket each run was configured with (read back from the
ds_config.json it launched with) and its peak memory per rank, side by side. Every run is a
fresh launch, throughput only, so each peak is its own.

    python benchmarks/zero_buckets.py                                   # digits_mlp, fp32
    python benchmarks/zero_buckets.py --precision bf16 --processes 2

The peak is what a trial records: on a GPU the allocator's ``max_memory_allocated``, which
holds the whole bucket; on CPU the resident memory, where the pages of the bucket that no
gradient touched never count (`autotune._memory.estimate_rank_bytes`), so the two columns may
not differ there. "bucket on a GPU" is what the memory estimate counts for it on an
accelerator. Speed is not timed here: each run trains a few seconds, throughput only, for its
memory.

Target (GPU): each fitted run's peak is lower than its default run's by about that column's
difference (1.9 GiB in fp32, 0.9 GiB in bf16/fp16, for a model far under 500M parameters).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune import TrialConfig, detect_machine, run_trial  # noqa: E402
from autotune._memory import estimate_rank_bytes, format_bytes, measure_footprint  # noqa: E402
from autotune._records import PEAK_MEMORY_BYTES  # noqa: E402
from autotune._task import load_model_file, reference_settings  # noqa: E402

WINDOW = {"rel_halfwidth": 0.02, "min_steps": 5, "min_seconds": 1.0, "max_seconds": 3.0}
"""A short window, throughput only: the runs are here for their memory."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "examples" / "digits_mlp.py")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--train-samples", type=int, default=8192)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    args = parser.parse_args()
    model_file = load_model_file(args.model)
    footprint = measure_footprint(model_file)
    machine = detect_machine()
    print(
        f"model {args.model.name} ({footprint.parameters:,} parameters), {args.precision}, "
        f"{args.processes} process(es); {machine.describe()}"
    )
    print(
        f"{'zero':>4}  {'bucket':<8} {'reduce_bucket_size':>18}  {'bucket on a GPU':>15}  "
        f"{'peak memory':>11}"
    )
    settings = {
        **reference_settings(model_file.batch_size),
        "precision": args.precision,
        "processes": args.processes,
    }
    with tempfile.TemporaryDirectory(prefix="zero_buckets_") as tmp:
        for stage in (1, 2, 3):
            peaks = {}
            for label, parameters in (("default", None), ("fitted", footprint.parameters)):
                config = TrialConfig.from_settings(
                    {**settings, "zero_stage": stage},
                    model_file.optimizer,
                    model_file.batch_size,
                    "sqrt",
                    parameters=parameters,
                )
                result = run_trial(
                    config,
                    machine,
                    args.model,
                    args.train_samples,
                    [0],
                    Path(tmp) / f"zero{stage}_{label}",
                    args.timeout,
                    need_metric=False,
                    adaptive=WINDOW,
                )
                if not result.ok or result.measurements is None:
                    raise SystemExit(f"ZeRO {stage} {label}: {result.failure_reason}")
                launched = json.loads((result.directory / "ds_config.json").read_text())
                configured = launched["zero_optimization"].get("reduce_bucket_size")
                on_gpu = estimate_rank_bytes(footprint, config, "cuda").buffers
                peaks[label] = peak = float(result.measurements[PEAK_MEMORY_BYTES])
                values = f"{configured:,}" if configured else "unset (5e8)"
                print(
                    f"{stage:>4}  {label:<8} {values:>18}  {format_bytes(on_gpu):>15}  "
                    f"{format_bytes(peak):>11}"
                )
            print(
                f"      fitted - default peak: {format_bytes(peaks['fitted'] - peaks['default'])}"
            )


if __name__ == "__main__":
    main()
