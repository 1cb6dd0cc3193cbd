"""Pipeline partitioning: autotune's ``profile`` method against DeepSpeed's built-in methods.

For every example with ``layers()``, compares the same 2-process, 2-stage pipeline under each
partition method (real DeepSpeed pipeline engines, end to end, data loading included).

By default all methods' engines are built in one launch and trained in alternation: rounds of
about ``--round-seconds`` of steps per method in a fresh random order, so a busy spell on this
shared machine slows all of them alike, and each round gives a paired ratio profile / method.
Methods whose boundaries coincide share one engine. Two engines of the same pipeline in one
process still differ by a few percent (where their memory lands), so this is repeated in
``--launches`` launches, each building the engines in its own order; the table gives the mean
of the launches' median paired ratios, and each launch's.

``--separate`` instead runs each method as a trial is run (one launch per run, several runs in
turn), after one uncounted calibration run that sets the sample budget to about ``--seconds``
of training. Either way the table shows the boundaries each method produced, measured throughput (median, min, max over
the repeats), the profile's predicted per-stage time for those boundaries, and the ratios
profile / parameters and profile / best built-in method. Then it times the partitioner alone on
1000 layers into 16 stages.

    python benchmarks/partition_methods.py                   # all examples with layers()
    python benchmarks/partition_methods.py --repeats 3 --examples examples/embedding_heavy.py

Targets (issue 4): profile >= 1.10x parameters on the embedding-heavy example, and >= 0.98x the
best built-in method on every example.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune._machine import detect_machine  # noqa: E402
from autotune._memory import memory_limit_bytes  # noqa: E402
from autotune._plan import TrialConfig  # noqa: E402
from autotune._task import load_model_file  # noqa: E402
from autotune.pipeline import (  # noqa: E402
    partition_layers,
    predicted_stage_seconds,
    profiled_partition,
)
from autotune.runner import (  # noqa: E402
    ProfileCache,
    prepare_deepspeed_ops,
    remove_shm_buffers,
    run_trial,
)

BUILT_IN = ("parameters", "uniform")
METHODS = (*BUILT_IN, "profile")


def _config(model_file: object, method: str, mbs: int, gas: int) -> TrialConfig:
    settings = {
        "micro_batch_size": mbs,
        "gradient_accumulation_steps": gas,
        "precision": "fp32",
        "zero_stage": 0,
        "processes": 2,
        "pipeline_stages": 2,
        "partition_method": method,
        "num_workers": 0,
        "pin_memory": False,
        "prefetch_factor": 2,
    }
    return TrialConfig.from_settings(
        settings,
        model_file.optimizer,  # type: ignore[attr-defined]
        model_file.batch_size,  # type: ignore[attr-defined]
        "none",
    )


def _fmt_ms(seconds: list[float] | tuple[float, ...] | None) -> str:
    return "/".join(f"{s * 1000:.1f}" for s in seconds) if seconds else "-"


def bench_example(
    path: Path, mbs: int, gas: int, repeats: int, seconds: float, work: Path
) -> dict[str, object]:
    machine = detect_machine()
    model_file = load_model_file(path)
    cache = ProfileCache(work / "profiles", machine)
    configs = {method: _config(model_file, method, mbs, gas) for method in METHODS}
    profile = cache.profile(model_file, configs["profile"])
    bounds = profiled_partition(
        profile, configs["profile"], memory_limit_bytes(machine, 2, None)
    ).bounds
    calibration = run_trial(
        configs["parameters"],
        machine,
        model_file.path,
        8192,
        [0],
        work / path.stem / "calibrate",
        600,
    )
    if not calibration.ok:
        raise SystemExit(f"{path.stem} calibration: {calibration.failure_reason}")
    batch = configs["parameters"].global_batch_size
    rate = float((calibration.measurements or {})["throughput"])
    train_samples = max(8192, math.ceil(seconds * rate / batch) * batch)
    print(f"  {path.stem}: {train_samples} samples per run (about {seconds:g} s)", flush=True)
    runs: dict[str, list[float]] = {method: [] for method in METHODS}
    used: dict[str, list[int] | None] = {}
    measured_stages: dict[str, list[float] | None] = {}
    for repeat in range(repeats):
        # Methods in turn, each repeat in a different order, so drift on a shared machine
        # spreads over all of them.
        order = list(METHODS)
        random.Random(repeat).shuffle(order)
        for method in order:
            result = run_trial(
                configs[method],
                machine,
                model_file.path,
                train_samples,
                [0],
                work / path.stem / f"{method}_{repeat}",
                600,
                partition_bounds=bounds if method == "profile" else None,
            )
            if not result.ok:
                raise SystemExit(f"{path.stem} {method}: {result.failure_reason}")
            measured = result.measurements or {}
            runs[method].append(float(measured["throughput"]))
            used[method] = measured.get("partition")
            measured_stages[method] = measured.get("stage_compute_seconds")
            print(
                f"  {path.stem:<18} {method:<10} run {repeat + 1}/{repeats}: "
                f"{measured['throughput']:8.1f} samples/s, bounds {used[method]}",
                flush=True,
            )
    medians = {method: statistics.median(values) for method, values in runs.items()}
    best_builtin = max(BUILT_IN, key=lambda m: medians[m])
    return {
        "example": path.stem,
        "train_samples": train_samples,
        "runs": runs,
        "medians": medians,
        "bounds": used,
        "predicted": {
            m: predicted_stage_seconds(profile, configs[m], used[m] or []) for m in METHODS
        },
        "measured_stages": measured_stages,
        "vs_parameters": medians["profile"] / medians["parameters"],
        "best_builtin": best_builtin,
        "vs_best": medians["profile"] / medians[best_builtin],
    }


def bench_interleaved(
    path: Path, mbs: int, gas: int, rounds: int, round_seconds: float, launches: int, work: Path
) -> dict[str, object]:
    """All methods' pipelines in one 2-rank launch, trained in alternating rounds; repeated in
    ``launches`` launches, each building the engines in a different order."""
    machine = detect_machine()
    model_file = load_model_file(path)
    config = _config(model_file, "profile", mbs, gas)
    profile = ProfileCache(work / "profiles", machine).profile(model_file, config)
    bounds = profiled_partition(profile, config, memory_limit_bytes(machine, 2, None)).bounds
    methods = {"parameters": None, "uniform": None, "profile": list(bounds)}
    runs: dict[str, list[float]] = {m: [] for m in METHODS}
    per_launch: dict[str, list[float]] = {m: [] for m in BUILT_IN}
    used: dict[str, list[int]] = {}
    for launch in range(launches):
        out = work / f"{path.stem}-interleaved-{launch}.json"
        port = 29300 + (os.getpid() + launch) % 500
        command = [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            "--num_gpus",
            "2",
            "--master_port",
            str(port),
            str(ROOT / "benchmarks" / "interleaved_pipelines.py"),
            "--model",
            str(path),
            "--methods",
            json.dumps(methods),
            "--micro-batch-size",
            str(mbs),
            "--gradient-accumulation-steps",
            str(gas),
            "--rounds",
            str(rounds),
            "--round-seconds",
            str(round_seconds),
            "--seed",
            str(launch),
            "--out",
            str(out),
        ]
        env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        remove_shm_buffers(port)
        if not out.exists():
            raise SystemExit(f"{path.stem}: interleaved run failed:\n{done.stdout[-3000:]}")
        measured = json.loads(out.read_text())
        used = {m: measured[m]["bounds"] for m in METHODS}
        for method in METHODS:
            runs[method].extend(measured[method]["rounds"])
        ratios = {
            m: statistics.median(
                p / o
                for p, o in zip(measured["profile"]["rounds"], measured[m]["rounds"], strict=True)
            )
            for m in BUILT_IN
        }
        for m in BUILT_IN:
            per_launch[m].append(ratios[m])
        twins = {m: measured[m]["same_as"] for m in METHODS if measured[m]["same_as"]}
        print(
            f"  {path.stem:<18} launch {launch + 1}/{launches}: {rounds} rounds of "
            f"{measured['steps_per_round']} steps, engines built in the order "
            f"{', '.join(measured['build_order'])}; profile {used['profile']} against "
            + ", ".join(f"{m} {used[m]}: {ratios[m]:.3f}x" for m in BUILT_IN)
            + (f" (same pipeline: {twins})" if twins else ""),
            flush=True,
        )
    medians = {method: statistics.median(values) for method, values in runs.items()}
    vs = {m: statistics.fmean(per_launch[m]) for m in BUILT_IN}
    best_builtin = min(BUILT_IN, key=lambda m: vs[m])
    return {
        "example": path.stem,
        "runs": runs,
        "medians": medians,
        "bounds": used,
        "predicted": {m: predicted_stage_seconds(profile, config, used[m]) for m in METHODS},
        "measured_stages": {m: None for m in METHODS},
        "per_launch": per_launch,
        "vs_parameters": vs["parameters"],
        "best_builtin": best_builtin,
        "vs_best": vs[best_builtin],
    }


def time_partitioner(layers: int = 1000, stages: int = 16) -> float:
    rng = random.Random(0)
    seconds = [rng.uniform(0.1, 10.0) for _ in range(layers)]
    send = [rng.uniform(0.0, 1.0) for _ in range(layers)]
    nbytes = [rng.uniform(1.0, 100.0) for _ in range(layers)]
    start = time.perf_counter()
    partition_layers(seconds, send, nbytes, stages)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--examples",
        nargs="*",
        type=Path,
        default=sorted(
            p for p in (ROOT / "examples").glob("*.py") if "def layers(" in p.read_text()
        ),
    )
    parser.add_argument("--micro-batch-size", type=int, default=32)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=8)
    parser.add_argument(
        "--separate",
        action="store_true",
        help="one launch per run, as trials are measured (noisier than the default, which "
        "trains all methods' pipelines in alternating rounds within one launch)",
    )
    parser.add_argument("--rounds", type=int, default=32, help="rounds per launch, interleaved")
    parser.add_argument(
        "--launches", type=int, default=3, help="launches per example, interleaved mode"
    )
    parser.add_argument(
        "--round-seconds",
        type=float,
        default=0.3,
        help="training time per method per round, interleaved mode",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="training time per run")
    args = parser.parse_args()

    machine = detect_machine()
    print(f"machine: {machine.describe()}", flush=True)
    prepare_deepspeed_ops(machine, {"type": "AdamW", "params": {"lr": 1e-3}})
    mbs, gas = args.micro_batch_size, args.gradient_accumulation_steps
    layout = f"2 processes, 2 pipeline stages, micro-batch {mbs}, {gas} micro-batches per step"
    if args.separate:
        print(
            f"{layout}, fp32, about {args.seconds:g} s of training per run, {args.repeats} "
            "separate launches per method",
            flush=True,
        )
    else:
        print(
            f"{layout}, fp32; all methods in one launch, {args.rounds} rounds of about "
            f"{args.round_seconds:g} s each in shuffled order, ratios paired per round; "
            f"{args.launches} launches per example, the ratio is the mean of their medians",
            flush=True,
        )
    with tempfile.TemporaryDirectory(prefix="autotune-partition-") as tmp:
        rows = [
            bench_example(path, mbs, gas, args.repeats, args.seconds, Path(tmp))
            if args.separate
            else bench_interleaved(
                path, mbs, gas, args.rounds, args.round_seconds, args.launches, Path(tmp)
            )
            for path in args.examples
        ]

    print()
    print(
        f"{'example':<18} {'method':<10} {'bounds':<14} {'samples/s median (min-max)':<30} "
        f"{'predicted ms/stage':<20} {'measured compute ms/stage/step':<32} same bounds as"
    )
    for row in rows:
        bounds = row["bounds"]
        for method in METHODS:
            values = row["runs"][method]  # type: ignore[index]
            twins = [
                other
                for other in METHODS
                if other != method and bounds[other] == bounds[method]  # type: ignore[index]
            ]
            print(
                f"{row['example']:<18} {method:<10} {str(bounds[method]):<14} "  # type: ignore[index]
                f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f}){'':<8} "
                f"{_fmt_ms(row['predicted'][method]):<20} "  # type: ignore[index]
                f"{_fmt_ms(row['measured_stages'][method]):<32} "  # type: ignore[index]
                f"{', '.join(twins) or '-'}"
            )
    print()
    print(f"{'example':<18} {'profile/parameters':>19} {'profile/best built-in':>22}")
    for row in rows:
        spread = ""
        if "per_launch" in row:
            spread = "   each launch's median paired ratio: " + "; ".join(
                f"{m} " + ", ".join(f"{r:.3f}" for r in ratios)
                for m, ratios in row["per_launch"].items()  # type: ignore[attr-defined]
            )
        print(
            f"{row['example']:<18} {row['vs_parameters']:>18.3f}x "
            f"{row['vs_best']:>15.3f}x ({row['best_builtin']}){spread}"
        )
    print()
    print(f"partitioner: 1000 layers into 16 stages in {time_partitioner() * 1000:.0f} ms")


if __name__ == "__main__":
    main()
