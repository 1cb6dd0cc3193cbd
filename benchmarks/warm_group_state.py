"""Does a trial leave its warm group changed for the next one? Probes of the model file's
reference configuration (throughput only, as the probe search times them) before and after
one trial of another configuration in the same warm group, and the median of each side.

A ZeRO-3 engine replaces torch's linear for the rest of its process; before its group was
closed after such a trial, the reference's probes after it ran 47% slower on the 2-core CPU
machine (digits_mlp). ``--keep-group`` runs the other trial as if it were reusable, to show what
the group would measure without the rule.

    python benchmarks/warm_group_state.py                         # ZeRO 3, digits_mlp
    python benchmarks/warm_group_state.py --keep-group            # the same, group kept
    python benchmarks/warm_group_state.py --other processes=2     # another layout in between

Target: the probes after are within the machine's noise of those before (a ratio near 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune import TrialConfig, detect_machine, run_trial  # noqa: E402
from autotune._records import THROUGHPUT  # noqa: E402
from autotune._task import load_model_file, reference_settings  # noqa: E402
from autotune.runner import WarmWorkers  # noqa: E402
from autotune.study import DEFAULT_TRAIN_SAMPLES  # noqa: E402
from autotune.study._probing import PROBE_MAX_SECONDS, PROBE_SECONDS  # noqa: E402

PROBE = {
    "rel_halfwidth": 0.02,
    "min_steps": 5,
    "min_seconds": PROBE_SECONDS,
    "max_seconds": PROBE_MAX_SECONDS,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "examples" / "digits_mlp.py")
    parser.add_argument("--other", default="zero_stage=3", help="the trial in between: NAME=VALUE")
    parser.add_argument("--probes", type=int, default=4, help="probes on each side")
    parser.add_argument("--keep-group", action="store_true", help="reuse the group after it")
    args = parser.parse_args()
    model_file = load_model_file(args.model)
    name, value = args.other.split("=", 1)

    def config(**values: object) -> TrialConfig:
        settings = {**reference_settings(model_file.batch_size), **values}
        return TrialConfig.from_settings(
            settings, model_file.optimizer, model_file.batch_size, "sqrt"
        )

    machine = detect_machine()
    if args.keep_group:  # every trial reusable, as before the rule
        plain_run = WarmWorkers.run
        WarmWorkers.run = lambda self, *a, **k: plain_run(self, *a, **{**k, "reusable": True})  # type: ignore[method-assign]
    with (
        tempfile.TemporaryDirectory(prefix="warm_state_") as tmp,
        WarmWorkers(Path(tmp) / "workers") as workers,
    ):
        count = 0

        def probe(trial: TrialConfig) -> float:
            nonlocal count
            count += 1
            result = run_trial(
                trial,
                machine,
                args.model,
                DEFAULT_TRAIN_SAMPLES,
                [0],
                Path(tmp) / f"trial_{count}",
                300,
                workers=workers,
                need_metric=False,
                adaptive=PROBE,
            )
            if not result.ok or result.measurements is None:
                raise SystemExit(f"a run failed: {result.failure_reason}")
            return float(result.measurements[THROUGHPUT])

        before = [probe(config()) for _ in range(args.probes)]
        between = probe(config(**{name: int(value)}))
        after = [probe(config()) for _ in range(args.probes)]
        launches = workers.launches
    ratio = statistics.median(after) / statistics.median(before)
    print(f"model {args.model.name}; in between: {args.other} ({between:.0f} samples/s)")
    print(f"  reference probes before: {', '.join(f'{r:.0f}' for r in before)}")
    print(f"  reference probes after:  {', '.join(f'{r:.0f}' for r in after)}")
    print(
        f"  after / before: {ratio:.3f} (medians); groups launched: {launches}"
        + (" (the group kept after it)" if args.keep_group else "")
    )


if __name__ == "__main__":
    main()
