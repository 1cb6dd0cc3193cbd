"""Trial overhead: fresh launches against warm workers, on the same trials.

Runs the same grid search twice (a fresh DeepSpeed launch per trial, then warm workers) and
prints, per mode: the median and 90th-percentile share of a trial's wall time not spent in
measured steps or eval (launch, imports, engine setup, warm-up, result hand-off), the whole
search's wall time and runs per minute.

    python benchmarks/overhead.py                       # examples/digits_mlp.py, 8 runs
    python benchmarks/overhead.py --model examples/embedding_heavy.py --n-trials 6

Target (issue 5, this 2-core CPU machine): median trial overhead <= 15% with warm workers.
Accuracy reuse is off here so both modes run the same trials to the same budget; with it on, a
reused trial stops as soon as its throughput is stable, which is shorter still but measures
fewer steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune import SearchOptions, load_study, search  # noqa: E402
from autotune.study import DEFAULT_MIN_MEASURE_SECONDS  # noqa: E402

SPACE = """\
micro_batch_size: [32, 64, 128, 256]
gradient_accumulation_steps: [1, 2]
zero_stage: [0, 1]
"""


def _overheads(storage: str, study: str) -> tuple[list[float], list[float]]:
    """Each measured trial's overhead as a share of its wall time, and in seconds."""
    shares, seconds = [], []
    for trial in load_study(study, storage).get_trials():
        attrs = trial.user_attrs
        if attrs.get("status") != "ok" or not attrs.get("wall_seconds"):
            continue
        shares.append(1.0 - attrs["measured_seconds"] / attrs["wall_seconds"])
        seconds.append(attrs["wall_seconds"] - attrs["measured_seconds"])
    return shares, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "examples" / "digits_mlp.py")
    parser.add_argument("--n-trials", type=int, default=8)
    parser.add_argument("--train-samples", type=int, default=8192)
    parser.add_argument(
        "--min-measure-seconds",
        type=float,
        default=DEFAULT_MIN_MEASURE_SECONDS,
        help="as autotune search's flag (default: %(default)s)",
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="autotune-overhead-") as tmp:
        work = Path(tmp)
        space = work / "space.yaml"
        space.write_text(SPACE)
        storage = f"sqlite:///{work}/study.db"
        for mode, warm in (("fresh launches", False), ("warm workers", True)):
            study = "warm" if warm else "fresh"
            start = time.perf_counter()
            summary = search(
                SearchOptions(
                    model=args.model,
                    space=space,
                    n_trials=args.n_trials,
                    train_samples=args.train_samples,
                    sampler="grid",
                    study=study,
                    storage=storage,
                    trials_dir=work / "trials",
                    reports_dir=work / "reports",
                    warm_workers=warm,
                    reuse_accuracy=False,
                    early_stop=False,  # both modes train every run's whole budget
                    min_measure_seconds=args.min_measure_seconds,
                    confirm=0,  # trials' own overhead; confirmation runs are not trials
                ),
                print_line=lambda line, mode=mode: print(f"[{mode}] {line}", flush=True),
            )
            wall = time.perf_counter() - start
            shares, seconds = _overheads(storage, study)
            rows.append((mode, summary.runs, sorted(shares), sorted(seconds), wall))
    print()
    print(
        f"model {args.model.name}, {args.train_samples} samples per trial, timed over at least "
        f"{args.min_measure_seconds:g} s, grid over:"
    )
    print("  " + SPACE.strip().replace("\n", "\n  "))
    print(
        f"{'mode':<16} {'runs':>4} {'median overhead':>16} {'p90 overhead':>13} "
        f"{'median overhead s':>18} {'search wall':>12} {'runs/min':>9}"
    )
    for mode, runs, shares, seconds, wall in rows:
        p90 = shares[min(len(shares) - 1, int(0.9 * len(shares)))]
        print(
            f"{mode:<16} {runs:>4} {statistics.median(shares):>15.1%} {p90:>13.1%} "
            f"{statistics.median(seconds):>16.2f} s {wall:>10.1f} s {runs / wall * 60:>9.2f}"
        )


if __name__ == "__main__":
    main()
