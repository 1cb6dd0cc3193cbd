"""Warm against fresh: does a trial run in a warm process group measure what a fresh DeepSpeed
launch of the same configuration measures?

Each round runs the model file's reference configuration three times: twice through one warm
group (the first launches it, the second reuses it, as every later trial of a search does),
then as a fresh launch. It prints each run's samples/s, the warm runs' ratio to the fresh one,
and whether the metric agrees (the same seeded training, so it should to the last bit on
CPU); then the median ratios over the rounds.

    python benchmarks/warm_vs_fresh.py                        # examples/digits_mlp.py, 3 rounds
    python benchmarks/warm_vs_fresh.py --model examples/embedding_heavy.py --rounds 5

On a shared machine single windows swing (see README, "How fast a search"); the median over
rounds is the figure to compare, and a ratio near 1 is what warm workers promise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune import RunResult, TrialConfig, detect_machine, run_trial  # noqa: E402
from autotune._records import METRIC, THROUGHPUT  # noqa: E402
from autotune._task import load_model_file, reference_settings  # noqa: E402
from autotune.runner import WarmWorkers  # noqa: E402
from autotune.study import DEFAULT_TRAIN_SAMPLES  # noqa: E402


def _throughput(result: RunResult, name: str) -> float:
    if not result.ok or result.measurements is None:
        raise SystemExit(f"{name} run failed: {result.failure_reason} (log: {result.directory})")
    return float(result.measurements[THROUGHPUT])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "examples" / "digits_mlp.py")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=DEFAULT_TRAIN_SAMPLES)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    args = parser.parse_args()
    model_file = load_model_file(args.model)
    config = TrialConfig.from_settings(
        reference_settings(model_file.batch_size),
        model_file.optimizer,
        model_file.batch_size,
        "sqrt",
    )
    machine = detect_machine()
    print(f"machine: {machine.describe()}; model {args.model.name}, {args.train_samples} samples")
    launched_ratios, reused_ratios = [], []
    with tempfile.TemporaryDirectory(prefix="autotune-warm-vs-fresh-") as tmp:
        work = Path(tmp)

        def run(name: str, workers: WarmWorkers | None = None) -> RunResult:
            return run_trial(
                config,
                machine,
                args.model,
                args.train_samples,
                [0],
                work / name,
                args.timeout,
                workers=workers,
            )

        for index in range(args.rounds):
            with WarmWorkers(work / f"workers_{index}") as workers:
                launched = run(f"warm_launched_{index}", workers)
                reused = run(f"warm_reused_{index}", workers)
            fresh = run(f"fresh_{index}")
            fresh_value = _throughput(fresh, "fresh")
            launched_ratios.append(_throughput(launched, "warm") / fresh_value)
            reused_ratios.append(_throughput(reused, "warm") / fresh_value)
            metrics = {(r.measurements or {}).get(METRIC) for r in (launched, reused, fresh)}
            same = len(metrics) == 1
            print(
                f"round {index + 1}: fresh {fresh_value:.1f} samples/s; warm (launched) "
                f"{launched_ratios[-1]:.3f}x, warm (reused) {reused_ratios[-1]:.3f}x; "
                f"same metric: {'yes' if same else 'NO'}"
            )
    print(
        f"median warm/fresh over {args.rounds} rounds: launched "
        f"{statistics.median(launched_ratios):.3f}x, reused {statistics.median(reused_ratios):.3f}x"
    )


if __name__ == "__main__":
    main()
