"""Time to quality (issue 18's second bar): the configuration a search picks, against the
reference, each trained by the plain DeepSpeed script (`benchmarks/replay_export.py --eval`) for
as long as the search trained it for its verdict: the reference for the search's
``--train-samples`` N; the pick for N under the default scoring, or under ``--scoring goodput``
for the samples the reference's gradient noise scale predicts its global batch needs
(`launch.json`'s ``goodput`` section). Each run's wall time covers its whole training (launch
and evaluation excluded); the two alternate (ABBA) in fresh launches.

For each example and each scoring: the default search (the probe-first strategy) of its model
over its recorded landscape's space with ``--timeout``; then ``--pairs`` pairs. Prints each
pair's seconds, metrics and eval losses, the median of the reference's time over the pick's
(above 1: the pick reaches the quality sooner), the median of the pick's accuracy loss against
the reference in the same pair, and whether the pick's eval loss reached the reference's.

    python benchmarks/time_to_quality.py                  # digits_mlp, embedding_heavy, synthetic_tokens,
                                                          # hf_classifier (needs transformers)
    python benchmarks/time_to_quality.py --only digits --pairs 6 --scoring goodput

Target (issue 18): the pick reaches the reference's quality in less wall time (ratio above 1)
with its accuracy loss within the budget, on both examples. Run it with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune import SearchOptions, export, load_study, search  # noqa: E402
from autotune._records import REFERENCE, TrialRecord  # noqa: E402
from autotune._score import accuracy_loss  # noqa: E402
from autotune._space import describe_settings  # noqa: E402
from benchmarks.fidelity import replay_eval  # noqa: E402

EXAMPLES = {
    "digits": ("digits_mlp.py", "landscape.yaml"),
    "embedding": ("embedding_heavy.py", "landscape_embedding.yaml"),
    "tokens": ("synthetic_tokens.py", "landscape.yaml"),  # its reference, mbs 64, is in it
    "hf": ("hf_classifier.py", "landscape.yaml"),  # a small BERT; its reference is mbs 8
}


def bench(
    name: str, work: Path, pairs: int, timeout: float, budget: float, scoring: str
) -> tuple[float, float]:
    """(the median time ratio, reference over pick; the median accuracy loss of the pick)."""
    model_name, space_name = EXAMPLES[name]
    model = ROOT / "examples" / model_name
    options = SearchOptions(
        model=model,
        space=ROOT / "search_spaces" / space_name,
        storage=f"sqlite:///{work}/study.db",
        trials_dir=work / "trials",
        reports_dir=work / "reports",
        study=f"{name}_{scoring}",
        timeout=timeout,
        max_accuracy_loss=budget,
        scoring=scoring,
    )
    started = time.perf_counter()
    summary = search(options, print_line=lambda line: print(f"[{name}] {line}", flush=True))
    print(f"[{name}] search: {time.perf_counter() - started:.0f} s", flush=True)
    study = load_study(options.study_name, options.storage)
    reference = next(t for t in study.trials if TrialRecord.of(t).role == REFERENCE)
    if summary.chosen is None or summary.chosen.number == reference.number:
        print(f"  {name}: the search keeps the reference: no pick to time (ratio 1.000)")
        return 1.0, 0.0
    picked_dir, reference_dir = work / "pick", work / "reference"
    export(study, picked_dir, summary.chosen.number)
    export(study, reference_dir, reference.number)
    goodput = json.loads((picked_dir / "launch.json").read_text()).get("goodput")
    # Without a noise scale the study scored plain throughput: the pick trains as many samples.
    pick_samples = goodput["samples_to_reference_loss"] if goodput else options.train_samples
    samples = {"pick": pick_samples, "reference": options.train_samples}
    folders = {"pick": picked_dir, "reference": reference_dir}
    why = (
        f"efficiency {goodput['efficiency']:.3f}, noise scale "
        f"{goodput['gradient_noise_scale']:,.0f}"
        if goodput
        else "no noise scale measured: scored by plain throughput"
    )
    print(
        f"\n{name}: pick [{describe_settings(TrialRecord.of(summary.chosen).settings)}] trains "
        f"{samples['pick']:,} samples ({why}); reference "
        f"[{describe_settings(TrialRecord.of(reference).settings)}] {samples['reference']:,}"
    )
    ratios, losses, eval_losses = [], [], []
    for index in range(pairs):
        order = ["reference", "pick"] if index % 2 == 0 else ["pick", "reference"]
        got = {label: replay_eval(model, folders[label], samples[label]) for label in order}
        ratios.append(got["reference"][0] / got["pick"][0])
        losses.append(accuracy_loss(got["reference"][1], got["pick"][1]))
        eval_losses.append((got["reference"][2], got["pick"][2]))
        print(
            f"  pair {index + 1}: reference {got['reference'][0]:.2f} s (metric "
            f"{got['reference'][1]:.4f}, eval loss {got['reference'][2]}), pick "
            f"{got['pick'][0]:.2f} s (metric {got['pick'][1]:.4f}, eval loss {got['pick'][2]}):"
            f" {ratios[-1]:.3f}x sooner, accuracy loss {losses[-1]:+.2%}",
            flush=True,
        )
    ratio, loss = statistics.median(ratios), statistics.median(losses)
    held = ratio > 1.0 and loss <= budget
    check = summary.chosen.user_attrs
    print(
        f"  {name} ({scoring}): the pick reaches the reference's quality {ratio:.3f}x sooner "
        f"(median of {pairs}), accuracy loss {loss:+.2%} (median; the search's verdict "
        f"{check.get('accuracy_loss', float('nan')):+.2%} over {check.get('verdict_seeds')} "
        f"seed(s)); {'target met' if held else 'short'}"
    )
    return ratio, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(EXAMPLES), nargs="+")
    parser.add_argument("--pairs", type=int, default=4, help="ABBA pairs side by side")
    parser.add_argument("--timeout", type=float, default=120.0, help="each search's --timeout")
    parser.add_argument("--max-accuracy-loss", type=float, default=0.005)
    parser.add_argument(
        "--scoring", choices=("throughput", "goodput"), nargs="+", default=["throughput", "goodput"]
    )
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="time_to_quality_") as tmp:
        for name in args.only or list(EXAMPLES):
            for scoring in args.scoring:
                folder = Path(tmp) / f"{name}_{scoring}"
                folder.mkdir()
                results[name, scoring] = bench(
                    name, folder, args.pairs, args.timeout, args.max_accuracy_loss, scoring
                )
    print()
    for (name, scoring), (ratio, loss) in results.items():
        print(f"{name} ({scoring}): {ratio:.3f}x sooner, accuracy loss {loss:+.2%}")


if __name__ == "__main__":
    main()
