"""Real searches with a quarter of the grid's time (issue 17): for each recorded landscape, the
default search (the probe-first strategy) of its model over its space, with --timeout a quarter
of the wall time the landscape's exhaustive grid of full runs took; then its recommendation and
the grid's best, trained in alternation (ABBA) by the plain DeepSpeed script
(`benchmarks/replay_export.py`, each over at least ``--min-seconds``).

The grid's best is exported by a two-run grid search over a space pinned to its settings (the
reference, then it). A search that recommends the grid's best configuration needs no pairs.

    python benchmarks/quarter_grid.py                      # the three landscapes of 2026-12-01
    python benchmarks/quarter_grid.py --only embedding --pairs 12
    python benchmarks/quarter_grid.py --only embedding --versus micro_batch_size=64

Target (issue 17): each search's recommendation is at least 0.95 of the grid's best, side by
side. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from landscape import Landscape  # noqa: E402

from autotune import SearchOptions, export, load_study, search  # noqa: E402
from autotune._records import TrialRecord  # noqa: E402
from autotune._space import describe_settings  # noqa: E402
from benchmarks.fidelity import replay  # noqa: E402

TARGET = 0.95
LANDSCAPES = {
    "digits": ("digits_mlp.py", "landscape.yaml", "digits_xeon_2026-12-01.json"),
    "digits_dp": ("digits_mlp.py", "landscape_dp.yaml", "digits_dp_xeon_2026-12-01.json"),
    "embedding": (
        "embedding_heavy.py",
        "landscape_embedding.yaml",
        "embedding_xeon_2026-12-01.json",
    ),
}


def _pinned_space(landscape: Landscape, out: Path, changes: dict[str, str] | None = None) -> Path:
    """A space holding only the grid's best settings (each of the landscape's settings pinned),
    with ``changes`` (setting: value) made to it."""
    best = landscape.best_feasible()
    assert best is not None
    pinned = {name: _yaml(best.settings[name]) for name in landscape.space.domains}
    unknown = set(changes or {}) - set(pinned)
    if unknown:
        raise SystemExit(f"--versus: no setting {sorted(unknown)} in {landscape.space.source}")
    pinned.update(changes or {})
    lines = [f"{name}: [{value}]" for name, value in pinned.items()]
    out.write_text("\n".join(lines) + "\n")
    return out


def _yaml(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _run(name: str, options: SearchOptions, key: str | None = None) -> tuple[float, Path, str, str]:
    """Run one search and export its recommendation (or its run of configuration ``key``):
    (its wall seconds, the export folder, the exported configuration's key and settings)."""
    started = time.perf_counter()
    summary = search(options, print_line=lambda line: print(f"[{name}] {line}", flush=True))
    wall = time.perf_counter() - started
    study = load_study(options.study_name, options.storage)
    chosen = summary.chosen
    if key is not None:
        chosen = next(
            (
                t
                for t in study.trials
                if TrialRecord.of(t).config_key == key and TrialRecord.of(t).is_ok
            ),
            None,
        )
    if chosen is None:
        raise SystemExit(f"the {name} search has nothing to export")
    folder = options.trials_dir.parent / f"{options.study_name}_export"
    export(study, folder, chosen.number)
    record = TrialRecord.of(chosen)
    return wall, folder, str(record.config_key), describe_settings(record.settings)


def bench(
    name: str,
    work: Path,
    pairs: int,
    min_seconds: float,
    train_samples: int,
    versus: dict[str, str] | None = None,
) -> float:
    model_name, space_name, landscape_name = LANDSCAPES[name]
    model = ROOT / "examples" / model_name
    landscape = Landscape.load(ROOT / "benchmarks" / "landscapes" / landscape_name)
    grid = landscape.grid_seconds()
    common = {
        "model": model,
        "storage": f"sqlite:///{work}/study.db",
        "trials_dir": work / "trials",
        "reports_dir": work / "reports",
    }
    best = landscape.best_feasible()
    assert best is not None
    if versus:  # no search: the named configuration against the grid's best
        changed = SearchOptions(
            space=_pinned_space(landscape, work / f"{name}_versus.yaml", versus),
            sampler="grid",
            n_trials=2,
            confirm=0,
            study=f"{name}_versus",
            **common,
        )
        wall, found_dir, found_key, found_text = _run(f"{name} versus", changed)
    else:
        quarter = SearchOptions(
            space=ROOT / "search_spaces" / space_name,
            timeout=grid / 4,
            study=f"{name}_quarter",
            **common,
        )
        wall, found_dir, found_key, found_text = _run(f"{name} quarter", quarter)
    pinned = SearchOptions(
        space=_pinned_space(landscape, work / f"{name}_pinned.yaml"),
        sampler="grid",
        n_trials=2,
        confirm=0,
        study=f"{name}_grid_best",
        **common,
    )
    _, best_dir, best_key, best_text = _run(f"{name} grid best", pinned, best.key)
    print(
        f"\n{name}: the grid took {grid:.0f} s; the search had --timeout {grid / 4:.0f} s and "
        f"took {wall:.0f} s in all (confirmation included)"
    )
    print(f"  search recommends [{found_text}]\n  grid's best        [{best_text}]")
    if found_key == best_key:
        print(f"  {name}: the grid's best configuration itself (target met)")
        return 1.0
    ratios = []
    for index in range(pairs):
        order = [("found", found_dir), ("best", best_dir)]
        if index % 2:
            order.reverse()
        got = {label: replay(model, folder, train_samples, min_seconds) for label, folder in order}
        ratios.append(got["found"] / got["best"])
        print(
            f"  pair {index + 1}: found {got['found']:.1f}, grid's best {got['best']:.1f} "
            f"samples/s ({ratios[-1]:.3f}x)",
            flush=True,
        )
    median = statistics.median(ratios)
    verdict = "target met" if median >= TARGET else f"short of {TARGET:.0%}"
    low, high, level = median_interval(ratios)
    print(
        f"  {name}: {median:.3f}x the grid's best side by side (median of {pairs}; {verdict}); "
        f"{level:.0%} interval for the median {low:.3f}-{high:.3f}"
    )
    return median


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """A distribution-free interval for the median (order statistics, binomial with p = 1/2):
    the narrowest symmetric pair of order statistics covering the median with at least 95%,
    or the whole range where there are too few values for that. (low, high, coverage)."""
    ordered = sorted(values)
    n = len(ordered)
    cdf = [sum(math.comb(n, i) for i in range(k + 1)) / 2**n for k in range(n + 1)]
    best = (ordered[0], ordered[-1], 1 - 2 * cdf[0] if n else 0.0)
    for k in range(1, n // 2):
        coverage = 1 - 2 * cdf[k]
        if coverage < 0.95:
            break
        best = (ordered[k], ordered[n - 1 - k], coverage)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(LANDSCAPES), nargs="+")
    parser.add_argument("--pairs", type=int, default=12, help="ABBA pairs side by side")
    parser.add_argument("--min-seconds", type=float, default=10.0, help="each replay's window")
    parser.add_argument("--train-samples", type=int, default=4096, help="each replay's samples")
    parser.add_argument(
        "--versus",
        nargs="+",
        metavar="SETTING=VALUE",
        help="no search: time the grid's best with these changes against it (with one --only)",
    )
    args = parser.parse_args()
    versus = dict(item.split("=", 1) for item in args.versus or [])
    if versus and len(args.only or []) != 1:
        parser.error("--versus needs exactly one --only landscape")
    results = {}
    with tempfile.TemporaryDirectory(prefix="quarter_grid_") as tmp:
        for name in args.only or list(LANDSCAPES):
            folder = Path(tmp) / name
            folder.mkdir()
            results[name] = bench(
                name, folder, args.pairs, args.min_seconds, args.train_samples, versus
            )
    print("\n" + ", ".join(f"{name} {ratio:.3f}x" for name, ratio in results.items()))


if __name__ == "__main__":
    main()
