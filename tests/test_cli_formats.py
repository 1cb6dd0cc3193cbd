"""What the CLI prints for scripts: `trials --format json|csv`, `export --json` and `--version`.

The study is the stored one of tests/data/study_before_move (eight trials, one infeasible), with
a failed trial added whose reason is long, spans lines and holds commas and quotes, so nothing
is cut and the CSV quoting is exercised.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest

from autotune import PARAMETERS, load_study, trials_frame
from autotune._records import (
    FAILED,
    GLOBAL_BATCH_SIZE,
    LEARNING_RATE,
    REASON,
    ROLE,
    SEARCH,
    SETTINGS,
    STATUS,
    TrialRecord,
)
from autotune._score import is_feasible
from autotune.cli import main, version
from autotune.report import trial_records
from autotune.report._common import COLUMNS, FEASIBLE, MEASUREMENTS, NUMBER

STORED = Path(__file__).parent / "data" / "study_before_move"

LONG_REASON = (
    'rank 0 failed: RuntimeError: "shape mismatch", expected [32, 64], got [64, 32]\n'
    + "see the log, line after line; " * 20
)
"""Longer than the table's 60-character column, over two lines, with commas and quotes."""


def _copy(tmp_path: Path) -> str:
    copy = tmp_path / "study.db"
    shutil.copy(STORED / "study.db", copy)
    return f"sqlite:///{copy}"


@pytest.fixture
def stored(tmp_path: Path) -> str:
    """A copy of the stored study, as written."""
    return _copy(tmp_path)


@pytest.fixture
def with_failure(tmp_path: Path) -> str:
    """A copy of the stored study with a failed trial added (settings, no measurements)."""
    storage = _copy(tmp_path)
    study = load_study(None, storage)
    settings = TrialRecord.of(study.trials[0]).settings
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL,
            user_attrs={STATUS: FAILED, REASON: LONG_REASON, ROLE: SEARCH, SETTINGS: settings},
        )
    )
    return storage


def _printed(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def _assert_figure(printed: Any, stored: Any) -> None:
    """A stored figure as printed: equal, with None for a missing one."""
    if stored is None or (isinstance(stored, float) and math.isnan(stored)):
        assert printed is None
    else:
        assert printed == pytest.approx(stored)


def _assert_matches_trial(row: dict[str, Any], trial: optuna.trial.FrozenTrial) -> None:
    """A printed trial's settings, status, role, reason and figures are its record's."""
    record = TrialRecord.of(trial)
    assert row[NUMBER] == trial.number
    assert row[ROLE] == record.role
    assert row[STATUS] == (record.status or trial.state.name.lower())
    assert row[REASON] == record.reason
    for name in PARAMETERS:
        assert row[name] == record.settings.get(name), name
    for name in (*MEASUREMENTS, GLOBAL_BATCH_SIZE, LEARNING_RATE):
        _assert_figure(row[name], record.get(name))
    assert row[FEASIBLE] is (record.is_measured and is_feasible(trial.constraints))


def test_trials_json_carries_every_trial_in_full(
    with_failure: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = json.loads(_printed(capsys, "trials", "--storage", with_failure, "--format", "json"))

    study = load_study(None, with_failure)
    assert [row[NUMBER] for row in rows] == [trial.number for trial in study.trials]
    for row, trial in zip(rows, study.trials, strict=True):
        assert set(COLUMNS) <= set(row)
        _assert_matches_trial(row, trial)
    assert rows[-1][REASON] == LONG_REASON
    assert rows[6][STATUS] == "infeasible" and rows[6][REASON].endswith("this machine has 2")
    assert rows[7]["throughput_runs"] == pytest.approx(
        [6076.387140015672, 5247.706884084789, 6645.147008488414]
    )
    assert rows == trial_records(trials_frame(study))


def test_trials_csv_reads_back_with_pandas(
    with_failure: str, capsys: pytest.CaptureFixture[str]
) -> None:
    printed = _printed(capsys, "trials", "--storage", with_failure, "--format", "csv")
    as_json = json.loads(_printed(capsys, "trials", "--storage", with_failure, "--format", "json"))

    frame = pd.read_csv(io.StringIO(printed), keep_default_na=False, na_values=[""])
    assert list(frame.columns) == list(as_json[0])
    assert len(frame) == len(as_json) == 9
    study = load_study(None, with_failure)
    for (_, cells), trial, row in zip(frame.iterrows(), study.trials, as_json, strict=True):
        read = {
            name: None if isinstance(value, float) and math.isnan(value) else value
            for name, value in cells.items()
        }
        read[REASON] = read[REASON] or ""  # an empty cell reads back as missing
        read[FEASIBLE] = bool(read[FEASIBLE])
        _assert_matches_trial(read, trial)
        runs = read["throughput_runs"]
        assert (None if runs is None else json.loads(runs)) == row["throughput_runs"]


def test_trials_table_stays_the_default(stored: str, capsys: pytest.CaptureFixture[str]) -> None:
    default = _printed(capsys, "trials", "--storage", stored)
    assert _printed(capsys, "trials", "--storage", stored, "--format", "table") == default
    assert default.split()[:2] == ["number", "status"]


def test_trials_of_an_empty_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.create_study(study_name="empty", storage=storage)
    assert json.loads(_printed(capsys, "trials", "--storage", storage, "--format", "json")) == []
    header = _printed(capsys, "trials", "--storage", storage, "--format", "csv")
    assert header.strip().split(",") == list(COLUMNS)


def test_unknown_format_is_one_clear_error(stored: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["trials", "--storage", stored, "--format", "xml"])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (error,) = [line for line in captured.err.splitlines() if "error" in line]
    assert error.startswith("autotune trials: error: argument --format: invalid choice: 'xml'")
    assert all(name in error for name in ("table", "json", "csv"))


def test_trial_records_are_json_native() -> None:
    frame = pd.DataFrame(
        {
            NUMBER: np.array([1, 0], dtype=np.int64),
            "throughput": [math.nan, math.inf],
            "processes": np.array([2, 1], dtype=np.int64),
            FEASIBLE: np.array([True, False]),
            "datetime_start": [pd.Timestamp("2026-12-01T10:00:00"), pd.NaT],
            "seed_metrics": [[0.5, math.nan], None],
        }
    )
    records = trial_records(frame)
    first, second = records
    assert [first[NUMBER], second[NUMBER]] == [0, 1]  # sorted by trial number
    assert first["throughput"] is None and second["throughput"] is None
    assert type(first["processes"]) is int and type(first[FEASIBLE]) is bool
    assert second["datetime_start"] == "2026-12-01T10:00:00" and first["datetime_start"] is None
    assert second["seed_metrics"] == [0.5, None]
    assert set(COLUMNS) <= set(first)
    json.dumps(records, allow_nan=False)


# --- export --json -------------------------------------------------------------------------


def _expected_launch(folder: str) -> dict[str, Any]:
    """The stored launch.json, with what was added since (tokens/s, never measured there)."""
    launch = json.loads((STORED / folder / "launch.json").read_text())
    launch["measured"].update({"tokens_per_s": None, "tokens_per_s_runs": []})
    return launch


def test_export_json_without_output_prints_and_writes_nothing(
    stored: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    assert json.loads(_printed(capsys, "export", "--storage", stored, "--json")) == (
        _expected_launch("export_best")
    )
    printed = _printed(capsys, "export", "--storage", stored, "--json", "--trial", "2")
    assert json.loads(printed) == _expected_launch("export_trial_2")
    assert list(folder.iterdir()) == []


def test_export_json_with_output_prints_what_it_writes(
    stored: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    printed = _printed(capsys, "export", "--storage", stored, "--json", "-o", str(out))
    assert json.loads(printed) == json.loads((out / "launch.json").read_text())
    assert (out / "ds_config.json").exists()


def test_export_needs_output_or_json(stored: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--storage", stored]) == 2
    assert "-o DIR" in capsys.readouterr().err


# --- --version -----------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"autotune {importlib.metadata.version('autotune')}\n"


def test_version_of_a_folder_never_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert version() == "unknown"


@pytest.mark.subprocess
def test_the_command_prints_only_json_on_stdout(stored: str, tmp_path: Path) -> None:
    """Nothing but the JSON reaches stdout (no library's log line), so scripts can pipe it."""
    command = [sys.executable, "-m", "autotune.cli"]
    for argv in (["trials", "--format", "json"], ["export", "--json"]):
        done = subprocess.run(
            [*command, *argv, "--storage", stored],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        json.loads(done.stdout)
