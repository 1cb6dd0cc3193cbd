"""Tuned against reference, and fidelity of the export, on every example.

For each example: a search (TPE, warm workers, accuracy reuse: the product's defaults) over a
CPU-sized space; then the exported best configuration is trained ``--replays`` times by
``benchmarks/replay_export.py``, a plain DeepSpeed script launched with DeepSpeed's launcher
(not autotune's harness), and its throughput is set against what the trial measured. Prints a
table: reference and best throughput (each the median of its windows: the trial's own and its
confirmation runs), speed-up (the median of the best's windows over the reference's in the same
confirmation rounds), accuracy loss, the best settings, the replays' median and their
ratio to the best's figure (what ``launch.json`` states). Each replay alternates with a run of
autotune's harness timing the same configuration in a fresh launch (throughput only):
``replay/beside`` is the replays' median over those runs' median, the plain script against the
harness with the machine's drift since the search taken out. The reference is replayed after
each replay of the best as well: ``replayed speed-up`` is the median of those pairs' ratios, the
speed-up a plain script sees when the two run in alternation.

    python benchmarks/tuned_vs_reference.py
    python benchmarks/tuned_vs_reference.py --examples examples/digits_mlp.py --n-trials 20

Targets (issue 5, this 2-core CPU machine): speed-up >= 2x at <= 0.5% accuracy loss on at
least one example; fidelity (replay / trial) within +-10%.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune import SearchOptions, export, load_study, search  # noqa: E402
from autotune._confirm import DEFAULT_CONFIRM  # noqa: E402
from autotune._plan import TrialConfig, detect_machine  # noqa: E402
from autotune._run import run_trial  # noqa: E402
from autotune._study import ADAPTIVE, DEFAULT_MIN_MEASURE_SECONDS, _describe  # noqa: E402
from autotune._task import load_model_file  # noqa: E402
from autotune._workers import remove_shm_buffers  # noqa: E402


def replay(model: Path, export_dir: Path, train_samples: int, min_seconds: float) -> float:
    launch = json.loads((export_dir / "launch.json").read_text())
    env = dict(os.environ, DS_ACCELERATOR="cpu") if launch["accelerator"] == "cpu" else None
    if launch.get("threads_per_process"):
        env = dict(env or os.environ, OMP_NUM_THREADS=str(launch["threads_per_process"]))
    port = 29400 + os.getpid() % 500
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            "--num_gpus",
            str(launch["processes"]),
            "--master_port",
            str(port),
            str(ROOT / "benchmarks" / "replay_export.py"),
            "--model",
            str(model),
            "--export",
            str(export_dir),
            "--train-samples",
            str(train_samples),
            "--min-seconds",
            str(min_seconds),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    remove_shm_buffers(port)
    found = re.search(r"replay: ([0-9.]+) samples/s", out.stdout)
    if not found:
        raise SystemExit(f"replay failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return float(found.group(1))


def harness(model: Path, best: Any, train_samples: int, min_seconds: float, out: Path) -> float:
    """The best configuration timed by autotune's own harness in a fresh launch, throughput
    only, as a confirmation run times it: the replay's partner, taken right beside it."""
    model_file = load_model_file(model)
    config = TrialConfig.from_settings(
        best.user_attrs["settings"], model_file.optimizer, model_file.batch_size, "sqrt"
    )
    result = run_trial(
        config,
        detect_machine(),
        model,
        train_samples,
        [0],
        out,
        600,
        partition_bounds=best.user_attrs.get("partition"),
        need_metric=False,
        adaptive={**ADAPTIVE, "min_seconds": min_seconds},
    )
    if result.measurements is None:
        raise SystemExit(f"harness run failed: {result.failure_reason}")
    return float(result.measurements["throughput"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--examples", nargs="*", type=Path, default=sorted((ROOT / "examples").glob("*.py"))
    )
    parser.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "cpu_small.yaml")
    parser.add_argument("--n-trials", type=int, default=16)
    parser.add_argument("--train-samples", type=int, default=8192)
    parser.add_argument("--replays", type=int, default=3)
    parser.add_argument(
        "--min-measure-seconds",
        type=float,
        default=DEFAULT_MIN_MEASURE_SECONDS,
        help="the search's and the replays' shortest timed window",
    )
    parser.add_argument(
        "--confirm",
        type=int,
        default=DEFAULT_CONFIRM,
        help="confirmation runs: the N fastest and the reference timed again (0: off)",
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="autotune-tuned-") as tmp:
        work = Path(tmp)
        for model in args.examples:
            start = time.perf_counter()
            summary = search(
                SearchOptions(
                    model=model,
                    space=args.space,
                    n_trials=args.n_trials,
                    train_samples=args.train_samples,
                    storage=f"sqlite:///{work}/study.db",
                    trials_dir=work / "trials",
                    reports_dir=work / "reports",
                    min_measure_seconds=args.min_measure_seconds,
                    confirm=args.confirm,
                ),
                print_line=lambda line, name=model.stem: print(f"[{name}] {line}", flush=True),
            )
            wall = time.perf_counter() - start
            best = summary.best
            if best is None or summary.export_dir is None:
                rows.append((model.stem, summary, wall, [], [], []))
                continue
            # Replays alternate with the harness timing the same configuration, so that the
            # pair shares the machine's state: the search's figure is minutes older.
            # The reference is replayed beside the best too: a speed-up measured in alternation
            # by the plain script, against the one the search reported.
            reference_dir = None
            if best.number != summary.reference.number:
                reference_dir = work / f"{model.stem}_reference"
                export(
                    load_study(model.stem, f"sqlite:///{work}/study.db"),
                    reference_dir,
                    summary.reference.number,
                )
            replays, partners, speedups = [], [], []
            for index in range(args.replays):
                replays.append(
                    replay(model, summary.export_dir, args.train_samples, args.min_measure_seconds)
                )
                if reference_dir is not None:
                    speedups.append(
                        replays[-1]
                        / replay(model, reference_dir, args.train_samples, args.min_measure_seconds)
                    )
                partners.append(
                    harness(
                        model,
                        best,
                        args.train_samples,
                        args.min_measure_seconds,
                        work / f"{model.stem}_harness_{index}",
                    )
                )
            print(f"[{model.stem}] replays: {', '.join(f'{r:.1f}' for r in replays)}", flush=True)
            print(f"[{model.stem}] harness: {', '.join(f'{r:.1f}' for r in partners)}", flush=True)
            if speedups:
                print(
                    f"[{model.stem}] replayed speed-ups: {', '.join(f'{r:.2f}' for r in speedups)}"
                )
            rows.append((model.stem, summary, wall, replays, partners, speedups))
    print()
    print(
        f"{args.n_trials} runs per search over {args.space.name}, "
        f"{args.train_samples} samples per trial, timed over at least "
        f"{args.min_measure_seconds:g} s (trials and replays); reference and best are the "
        f"medians of their windows, the speed-up the median of the best's windows over the "
        f"reference's in the same confirmation rounds (--confirm {args.confirm})"
    )
    print(
        f"{'example':<18} {'reference':>10} {'best':>10} {'speed-up':>9} {'acc. loss':>10} "
        f"{'search':>8} {'replay median':>14} {'replay/trial':>13} {'replay/beside':>14} "
        f"{'replayed speed-up':>18}  best settings"
    )
    for name, summary, wall, replays, partners, speedups in rows:
        reference = summary.reference_throughput or 0.0
        best = summary.best
        if best is None or summary.best_throughput is None:
            print(f"{name:<18} {reference:>10.1f}  no feasible configuration")
            continue
        median = statistics.median(replays)
        replayed = f"{statistics.median(speedups):.2f}x" if speedups else "-"
        print(
            f"{name:<18} {reference:>10.1f} {summary.best_throughput:>10.1f} "
            f"{summary.speedup:>8.2f}x {best.user_attrs['accuracy_loss']:>+10.2%} {wall:>6.0f} s "
            f"{median:>14.1f} {median / summary.best_throughput:>12.3f} "
            f"{median / statistics.median(partners):>14.3f} {replayed:>18}  "
            f"{_describe(best.user_attrs['settings'])}"
        )
        print(
            f"{'':<18} windows: reference {', '.join(f'{v:.0f}' for v in summary.reference_runs)}"
            f"; best (trial {best.number}) {', '.join(f'{v:.0f}' for v in summary.best_runs)}"
            f"; side by side {', '.join(f'{v:.2f}x' for v in summary.best_speedups) or '-'}"
        )


if __name__ == "__main__":
    main()
