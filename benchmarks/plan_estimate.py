"""`autotune plan` against the search it plans: its time estimate and its refusals.

Runs ``plan`` (one timed run of the reference) for a search of ``--n-trials`` runs, then that
search itself in a fresh study (the same options, so the same space, sampler, confirmation
rounds and warm workers), and prints the estimate, the search's wall time and their ratio
(issue 20's bar: within a factor of 2 either way), and whether every reason the search recorded
for a refused configuration is one the plan listed (numbers aside).

    python benchmarks/plan_estimate.py                                   # digits_mlp, 12 runs
    python benchmarks/plan_estimate.py --model examples/hf_classifier.py --sampler tpe
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune import SearchOptions, describe_plan, load_study, plan, search  # noqa: E402
from autotune._planning import reason_kind  # noqa: E402
from autotune._records import INFEASIBLE, REASON, TrialRecord  # noqa: E402
from autotune.study import DEFAULT_SPACE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "examples" / "digits_mlp.py")
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE)
    parser.add_argument("--n-trials", type=int, default=12)
    parser.add_argument("--sampler", default="tpe")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="autotune-plan-") as tmp:
        folder = Path(tmp)
        options = SearchOptions(
            model=args.model,
            space=args.space,
            n_trials=args.n_trials,
            sampler=args.sampler,
            storage=f"sqlite:///{folder}/study.db",
            trials_dir=folder / "trials",
            reports_dir=folder / "reports",
        )
        found = plan(options, print_line=print)
        for line in describe_plan(found, options.confirm, options.warm_workers):
            print(line)
        estimate = found.search_seconds(options.confirm, options.warm_workers) or 0.0
        start = time.perf_counter()
        summary = search(options, print_line=lambda line: None)
        took = time.perf_counter() - start
        records = [TrialRecord.of(trial) for trial in load_study(None, options.storage).trials]
    planned = {reason_kind(v.reason) for v in found.refused_values}
    planned |= {other for v in found.refused_values for other in v.others}
    planned |= {kind for kind, _, _ in found.reasons}
    refused = [str(record.get(REASON)) for record in records if record.status == INFEASIBLE]
    unplanned = sorted({reason_kind(r) for r in refused} - planned)
    print(
        f"\nsearch of {args.n_trials} runs ({summary.runs} in the study): estimated "
        f"{estimate:.0f} s, took {took:.0f} s, estimate / real {estimate / took:.2f}"
    )
    print(
        f"refused proposals: {len(refused)}, of {len({reason_kind(r) for r in refused})} "
        f"reasons; not in the plan: {unplanned or 'none'}"
    )


if __name__ == "__main__":
    main()
