"""Robustness of a search to a busy machine (issue 17): the same search run twice, quietly and
with a CPU hog running for the middle third of it, then the two bests timed side by side.

The hog is one busy-looping process per core, started a third of the quiet search's wall time
into the second search and stopped a third later. Both searches use the same seed, so they
propose the same configurations for as long as their results agree. Their bests are then
trained in alternation (ABBA) by the plain DeepSpeed script (`benchmarks/replay_export.py`,
each over at least ``--min-seconds``): the hogged search's best over the quiet one's, the median
of ``--pairs`` pairs, says what the load cost. The same configuration costs nothing.

    python benchmarks/robustness.py                                  # digits_mlp, default search
    python benchmarks/robustness.py --sampler tpe                    # TPE, 12 runs
    python benchmarks/robustness.py --model examples/embedding_heavy.py --pairs 4

Target (issue 17): the hogged search's best is the quiet one's configuration, or within 5% of
it side by side. Run it with nothing else on the machine: the quiet search must be quiet.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune import SearchOptions, export, load_study, search  # noqa: E402
from autotune._records import TrialRecord  # noqa: E402
from autotune._space import describe_settings  # noqa: E402
from benchmarks.fidelity import replay  # noqa: E402

TARGET = 0.95
"""The hogged search's best must reach this fraction of the quiet one's, side by side."""
SPIN = "while True:\n    pass\n"


class Hog:
    """One busy-looping process per core, between ``start`` and ``start + duration`` seconds
    after `begin` (a thread starts and stops them)."""

    def __init__(self, start: float, duration: float) -> None:
        self.start, self.duration = start, duration
        self.processes: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def begin(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        if self._stop.wait(self.start):
            return
        cores = os.cpu_count() or 1
        self.processes = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(cores)]
        print(f"[hog] {cores} busy processes for {self.duration:.0f} s", flush=True)
        self._stop.wait(self.duration)
        self.end()

    def end(self) -> None:
        self._stop.set()
        for process in self.processes:
            process.kill()
            process.wait()
        if self.processes:
            print("[hog] stopped", flush=True)
        self.processes = []


def _search(
    model: Path, work: Path, name: str, n_trials: int | None, seed: int, sampler: str
) -> tuple[float, Path, str, str]:
    """Run one search; (its wall seconds, its export folder, its best's key and settings)."""
    options = SearchOptions(
        model=model,
        n_trials=n_trials,
        sampler=sampler,
        seed=seed,
        study=name,
        storage=f"sqlite:///{work}/study.db",
        trials_dir=work / "trials",
        reports_dir=work / "reports",
    )
    started = time.perf_counter()
    summary = search(options, print_line=lambda line: print(f"[{name}] {line}", flush=True))
    wall = time.perf_counter() - started
    if summary.chosen is None or summary.export_dir is None:
        raise SystemExit(f"the {name} search found no feasible configuration")
    record = TrialRecord.of(summary.chosen)
    folder = work / f"{name}_export"
    export(load_study(options.study_name, options.storage), folder, summary.chosen.number)
    return wall, folder, str(record.config_key), describe_settings(record.settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "examples" / "digits_mlp.py")
    parser.add_argument(
        "--n-trials", type=int, help="runs (default: none for probe, 12 for the others)"
    )
    parser.add_argument("--sampler", default="probe", help="the search's --sampler")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=3, help="ABBA pairs side by side")
    parser.add_argument("--min-seconds", type=float, default=10.0, help="each replay's window")
    parser.add_argument("--train-samples", type=int, default=4096, help="each replay's samples")
    args = parser.parse_args()
    if args.n_trials is None and args.sampler != "probe":
        args.n_trials = 12
    with tempfile.TemporaryDirectory(prefix="robustness_") as tmp:
        work = Path(tmp)
        quiet_wall, quiet_dir, quiet_key, quiet_text = _search(
            args.model, work, "quiet", args.n_trials, args.seed, args.sampler
        )
        hog = Hog(start=quiet_wall / 3, duration=quiet_wall / 3)
        hog.begin()
        try:
            hog_wall, hog_dir, hog_key, hog_text = _search(
                args.model, work, "hogged", args.n_trials, args.seed, args.sampler
            )
        finally:
            hog.end()
        print(f"\nquiet search:  {quiet_wall:.0f} s, recommends [{quiet_text}]")
        print(f"hogged search: {hog_wall:.0f} s, recommends [{hog_text}]")
        if hog_key == quiet_key:
            print("robustness: the same configuration (target met)")
            return
        ratios = []
        for index in range(args.pairs):
            order = [("quiet", quiet_dir), ("hogged", hog_dir)]
            if index % 2:
                order.reverse()
            got = {
                name: replay(args.model, folder, args.train_samples, args.min_seconds)
                for name, folder in order
            }
            ratios.append(got["hogged"] / got["quiet"])
            print(
                f"  pair {index + 1}: quiet {got['quiet']:.1f}, hogged {got['hogged']:.1f} "
                f"samples/s ({ratios[-1]:.3f}x)",
                flush=True,
            )
        median = statistics.median(ratios)
        verdict = "target met" if median >= TARGET else f"short of {TARGET:.0%}"
        print(
            f"robustness: the hogged search's best is {median:.3f}x the quiet one's side by "
            f"side (median of {len(ratios)} pairs; {verdict})"
        )


if __name__ == "__main__":
    main()
