"""Accuracy verdicts against full-length training (issue 18's first bar).

For each example, a grid of configurations that change the numerics (global batch and
precision; the reference among them) is searched three times, every run trained for real:
- **short**: `--scoring throughput`, every run trains the search's `--train-samples` N (today's
  verdict, the baseline);
- **goodput**: `--scoring goodput`, each global batch trains the samples the reference's gradient
  noise scale predicts it needs to reach the reference's loss (a batch predicted to need more
  than 8x is skipped: an infeasible verdict);
- **long**: `--scoring throughput` with 8N samples for every run, the reference included, each
  run trained on 3 seeds (`--verdict-seeds 3`, the mean judged against the reference's mean of
  3): the verdict that full-length training gives, which the others are judged against.
Every study trains the same configurations: a global batch's learning rate is the one the
large-batch model finds best for it (`--lr-scaling noise`, what goodput scoring uses), for the
noise scale the goodput study's reference measures (that study runs first; the others pin it).
A configuration's verdict is feasible (its metric within `--max-accuracy-loss` of the
reference's, trained as long) or not; a run that failed in any of the three is left out and
listed. Beside them, the **seed-0** verdict: the short study's first seed against the
reference's first seed, each trained once (the verdict before issue 18's first item; the
short and goodput verdicts now read the reference's 3 seeds and train a verdict within the
noise of the budget on 3 seeds too). Prints each configuration's accuracy losses and verdicts,
then how many of the seed-0, short and goodput verdicts agree with the long ones.

    python benchmarks/verdicts.py                       # digits_mlp, embedding_heavy, synthetic_tokens,
                                                        # hf_classifier (needs transformers)
    python benchmarks/verdicts.py --only digits --long-factor 8

Target (issue 18): the search's verdicts (short, the default scoring; and goodput) agree with
the long runs' for at least 90% of at least 12 configurations on each of two examples. Every run trains its whole budget; throughput is
not the point here (0.5 s windows).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune import SearchOptions, load_study, search  # noqa: E402
from autotune._records import (  # noqa: E402
    ACCURACY_LOSS,
    INFEASIBLE,
    REFERENCE,
    REPEAT,
    SAMPLES_TRAINED,
    SEED_METRICS,
    STUDY_NOISE_SCALE,
    STUDY_REFERENCE_NOISE,
    STUDY_REFERENCE_SEED_METRICS,
    VERDICT_SEEDS,
    TrialRecord,
)
from autotune._score import accuracy_loss, constraints_for_run, is_feasible  # noqa: E402
from autotune._space import describe_settings  # noqa: E402

TARGET = 0.90
EXAMPLES = {
    # name: (model file, its space of numerics: global batches around the reference's, two
    # precisions; the reference, mbs 32 fp32 unless noted, is one of them)
    "digits": (
        "digits_mlp.py",
        "micro_batch_size: [8, 16, 32, 64, 128, 256, 512]\nprecision: [fp32, bf16]\n",
    ),
    "embedding": (
        "embedding_heavy.py",
        "micro_batch_size: [8, 16, 32, 64, 128, 256, 512]\nprecision: [fp32, bf16]\n",
    ),
    "tokens": (  # its reference is mbs 64 fp32
        "synthetic_tokens.py",
        "micro_batch_size: [8, 16, 32, 64, 128, 256, 512]\nprecision: [fp32, bf16]\n",
    ),
    "hf": (  # a small BERT (needs transformers); its reference is mbs 8 fp32
        "hf_classifier.py",
        "micro_batch_size: [8, 16, 32, 64, 128, 256, 512]\nprecision: [fp32, bf16]\n",
    ),
}
TRAIN_SAMPLES = {"hf": 4096}
"""The search's N where not 8,192 (without --train-samples): the BERT trains about 700 samples/s
at its reference's mbs 8, so its long runs at 8N take 20 min as it is."""
KINDS = ("short", "goodput", "long")
LONG_SEEDS = 3


def _verdicts(
    name: str, kind: str, work: Path, train_samples: int, budget: float, noise: float | None
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Run one grid search; (config key -> its verdict and figures, the study's attributes).
    Every study trains the same configurations: the learning rate of each global batch is the
    ``noise`` rule's (the one goodput scoring uses) for the goodput study's noise scale
    (``noise``; the goodput study itself measures it)."""
    model_name, space_text = EXAMPLES[name]
    space = work / "space.yaml"
    space.write_text(space_text)
    configurations = 14
    options = SearchOptions(
        model=ROOT / "examples" / model_name,
        space=space,
        storage=f"sqlite:///{work}/study.db",
        trials_dir=work / "trials",
        reports_dir=work / "reports",
        study=f"{name}_{kind}",
        sampler="grid",
        n_trials=configurations,
        train_samples=train_samples,
        max_accuracy_loss=budget,
        scoring="goodput" if kind == "goodput" else "throughput",
        lr_scaling="noise",
        lr_noise_scale=noise,
        early_stop=False,
        reuse_accuracy=False,
        min_measure_seconds=0.5,
        confirm=0,
        trial_timeout=900,
        verdict_seeds=LONG_SEEDS if kind == "long" else 1,
    )
    started = time.perf_counter()
    search(options, print_line=lambda line: print(f"[{name} {kind}] {line}", flush=True))
    print(f"[{name} {kind}] {time.perf_counter() - started:.0f} s", flush=True)
    study = load_study(options.study_name, options.storage)
    found: dict[str, dict[str, Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        record = TrialRecord.of(trial)
        if record.config_key is None or record.status == REPEAT:
            continue
        entry: dict[str, Any] = {
            "settings": describe_settings(record.settings),
            "reference": record.role == REFERENCE,
        }
        if record.is_ok:
            entry["feasible"] = is_feasible(trial.constraints)
            entry["loss"] = record.get(ACCURACY_LOSS)
            entry["samples"] = record.get(SAMPLES_TRAINED)
            entry["seeds"] = record.get(VERDICT_SEEDS)
            entry["seed0"] = (record.get(SEED_METRICS) or [None])[0]
        elif record.status == INFEASIBLE and "predicted to need" in str(record.reason):
            entry["feasible"], entry["loss"], entry["samples"] = False, None, None
        else:
            entry["failed"] = record.reason or record.status
        found[str(record.config_key)] = entry
    return found, dict(study.user_attrs)


def _loss(entry: dict[str, Any]) -> str:
    if "failed" in entry:
        return "failed"
    verdict = "ok" if entry["feasible"] else "over"
    if entry["loss"] is None:
        return "skipped (too large)"
    seeds = entry.get("seeds") or 1
    return f"{entry['loss'] * 100:+6.2f}% {verdict} ({entry['samples']:,}{'' if seeds == 1 else f' x{seeds}'})"


def _seed0(entry: dict[str, Any], reference_seed0: float, budget: float) -> dict[str, Any]:
    """The verdict before issue 18's first item: the run's first seed against the reference's
    first seed."""
    if "failed" in entry or entry.get("seed0") is None:
        return {"failed": entry.get("failed", "no metric")}
    loss = accuracy_loss(reference_seed0, entry["seed0"])
    feasible = is_feasible(constraints_for_run(loss, budget))
    return {**entry, "loss": loss, "feasible": feasible, "seeds": 1}


def bench(name: str, work: Path, train_samples: int, factor: int, budget: float) -> dict[str, int]:
    results = {}
    attrs = {}
    noise = None
    for kind in ("goodput", "short", "long"):  # goodput first: it measures the noise scale
        folder = work / kind
        folder.mkdir()
        samples = train_samples * factor if kind == "long" else train_samples
        results[kind], attrs[kind] = _verdicts(name, kind, folder, samples, budget, noise)
        noise = noise or attrs[kind].get(STUDY_NOISE_SCALE)
    long = results["long"]
    reference_seed0 = attrs["short"][STUDY_REFERENCE_SEED_METRICS][0]
    results["seed-0"] = {
        key: _seed0(entry, reference_seed0, budget) for key, entry in results["short"].items()
    }
    shown = ("seed-0", *KINDS)
    print(
        f"\n{name}: budget {budget:.2%}; N = {train_samples:,} samples, long = {factor}N; "
        f"gradient noise scale (goodput's reference) {attrs['goodput'].get(STUDY_NOISE_SCALE)}"
    )
    for kind in KINDS:
        noise = attrs[kind].get(STUDY_REFERENCE_NOISE)
        spread = "?" if noise is None else f"{noise:.2%}"
        print(f"  the reference's metric across seeds, {kind}: {spread}")
    print(f"  {'configuration':<40} " + " ".join(f"{kind:>26}" for kind in shown))
    agree = {"seed-0": 0, "short": 0, "goodput": 0, "compared": 0}
    for key, truth in long.items():
        row = [results[kind].get(key, {"failed": "not run"}) for kind in shown]
        print(f"  {truth['settings']:<40} " + " ".join(f"{_loss(e):>26}" for e in row))
        if any("failed" in e for e in row) or truth["reference"]:
            continue  # a failure, or the reference itself (its loss is 0 by definition)
        agree["compared"] += 1
        for kind, entry in zip(shown[:3], row[:3], strict=True):
            agree[kind] += entry["feasible"] == truth["feasible"]
    compared = agree["compared"]
    for kind in shown[:3]:
        share = agree[kind] / compared if compared else 0.0
        print(
            f"  {name}: {kind} verdicts agree with the long runs' for {agree[kind]} of "
            f"{compared} ({share:.0%})"
        )
    return agree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(EXAMPLES), nargs="+")
    parser.add_argument("--train-samples", type=int, help="the search's N (8,192; 4,096 for hf)")
    parser.add_argument("--long-factor", type=int, default=8, help="the long runs train this x N")
    parser.add_argument("--max-accuracy-loss", type=float, default=0.005)
    args = parser.parse_args()
    totals = {}
    with tempfile.TemporaryDirectory(prefix="verdicts_") as tmp:
        for name in args.only or list(EXAMPLES):
            folder = Path(tmp) / name
            folder.mkdir()
            totals[name] = bench(
                name,
                folder,
                args.train_samples or TRAIN_SAMPLES.get(name, 8192),
                args.long_factor,
                args.max_accuracy_loss,
            )
    print()
    for name, agree in totals.items():
        compared = agree["compared"] or 1
        met = {
            kind: "met" if agree[kind] / compared >= TARGET else "short of 90%"
            for kind in ("short", "goodput")
        }
        print(
            f"{name}: seed-0 {agree['seed-0']}/{agree['compared']}, short "
            f"{agree['short']}/{agree['compared']} ({met['short']}), goodput "
            f"{agree['goodput']}/{agree['compared']} ({met['goodput']})"
        )


if __name__ == "__main__":
    main()
