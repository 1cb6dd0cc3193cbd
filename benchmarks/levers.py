"""The levers beside batch and layout, each timed side by side with itself off (issue 19).

For each lever it runs the model file's reference configuration with the lever off and on, in
ABBA order over ``--rounds`` rounds (off, on, on, off, ...), each a fresh DeepSpeed launch of
the whole sample budget, and prints every run's samples/s and metric, the median of the on/off
ratios of each round, and whether the metric stayed the same. Levers:

- ``cache_data``: items kept in memory after their first load (digits_mlp's ``__getitem__``
  augments each image; the budget is several epochs, so later epochs read the cache);
- ``threads``: one intra-op thread per rank against the automatic count (the rank's share of
  the cores);
- ``compile``: torch.compile through DeepSpeed's ``engine.compile()`` (its compile seconds
  printed apart; they are outside the timed window);
- ``torch_adam``, ``torch_fused_adam``: torch's Adam kernels (foreach, fused) against
  DeepSpeed's FusedAdam op;
- ``batching``: micro-batches packed to a token budget against a fixed item count, for
  variable-length items (each run's padding share and tokens/s printed too).

    python benchmarks/levers.py                              # examples/digits_mlp.py, 4 rounds
    python benchmarks/levers.py --model examples/embedding_heavy.py --levers threads
    python benchmarks/levers.py --model examples/hf_classifier.py --levers batching \
        --micro-batch 32

On a shared machine single windows swing; the median ratio over rounds is the figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune import TrialConfig, detect_machine, run_trial  # noqa: E402
from autotune._records import (  # noqa: E402
    COMPILE_SECONDS,
    METRIC,
    PADDING,
    SAMPLES_TRAINED,
    THROUGHPUT,
    TOKENS_PER_SECOND,
)
from autotune._task import load_model_file, reference_settings  # noqa: E402
from autotune.study import DEFAULT_TRAIN_SAMPLES  # noqa: E402

LEVERS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "cache_data": ({"cache_data": False}, {"cache_data": True}),
    "threads": ({"threads": 0}, {"threads": 1}),
    "compile": ({"compile": False}, {"compile": True}),
    "torch_adam": ({"optimizer_impl": "deepspeed"}, {"optimizer_impl": "torch"}),
    "torch_fused_adam": ({"optimizer_impl": "deepspeed"}, {"optimizer_impl": "torch_fused"}),
    "batching": ({"batching": "items"}, {"batching": "tokens"}),
}
"""Each lever's settings off and on, over the reference's."""


def _run(config: TrialConfig, args: argparse.Namespace, folder: Path) -> tuple[float, float, str]:
    """One fresh run of the whole budget: its samples/s, metric, and a note of its compile
    seconds, or its tokens/s, padding and samples trained, where it has them."""
    result = run_trial(
        config, detect_machine(), args.model, args.train_samples, [0], folder, args.timeout
    )
    if not result.ok or result.measurements is None:
        raise SystemExit(f"run failed: {result.failure_reason} (log: {folder / 'log.txt'})")
    measured = result.measurements
    compiled = measured.get(COMPILE_SECONDS)
    note = "" if compiled is None else f", compiled in {compiled:.1f} s"
    if measured.get(PADDING) is not None:
        note += (
            f", {measured[TOKENS_PER_SECOND]:9.1f} tokens/s, {measured[PADDING]:.1%} padding, "
            f"{measured[SAMPLES_TRAINED]} samples trained"
        )
    return float(result.measurements[THROUGHPUT]), float(result.measurements[METRIC]), note


def measure_lever(name: str, args: argparse.Namespace, work: Path) -> None:
    model_file = load_model_file(args.model)
    reference = reference_settings(model_file.batch_size)
    reference["micro_batch_size"] = args.micro_batch or model_file.batch_size
    configs = [
        TrialConfig.from_settings(
            {**reference, **settings}, model_file.optimizer, model_file.batch_size, "sqrt"
        )
        for settings in LEVERS[name]
    ]
    print(f"\n{name}: off {LEVERS[name][0]}, on {LEVERS[name][1]}")
    ratios, metrics = [], set()
    for round_number in range(args.rounds):
        order = (0, 1) if round_number % 2 == 0 else (1, 0)
        speeds: dict[int, float] = {}
        for which in order:
            folder = work / f"{name}-{round_number}-{which}"
            speeds[which], metric, note = _run(configs[which], args, folder)
            metrics.add(round(metric, 6))
            state = "on " if which else "off"
            print(
                f"  round {round_number + 1} {state}: {speeds[which]:9.1f} samples/s, metric {metric:.4f}{note}"
            )
        ratios.append(speeds[1] / speeds[0])
    print(
        f"  {name} on/off: median {statistics.median(ratios):.2f}x over {args.rounds} rounds "
        f"({', '.join(f'{r:.2f}' for r in ratios)}); metric "
        + ("the same in every run" if len(metrics) == 1 else f"differs: {sorted(metrics)}")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "examples" / "digits_mlp.py")
    parser.add_argument("--levers", nargs="+", choices=sorted(LEVERS), default=sorted(LEVERS))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--micro-batch", type=int, default=None, help="instead of the model file's BATCH_SIZE"
    )
    parser.add_argument("--train-samples", type=int, default=DEFAULT_TRAIN_SAMPLES)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    args = parser.parse_args()
    machine = detect_machine()
    print(f"machine: {machine.describe()}; model {args.model.name}, {args.train_samples} samples")
    with tempfile.TemporaryDirectory(prefix="autotune-levers-") as tmp:
        for name in args.levers:
            measure_lever(name, args, Path(tmp))


if __name__ == "__main__":
    main()
