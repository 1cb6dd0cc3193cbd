"""A study written before the package move is read by today's code as it was then: the same
`autotune trials` table, the same exports and the same report sections (see
tests/data/study_before_move/README.md for how the files were made)."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest

from autotune.cli import main

STORED = Path(__file__).parent / "data" / "study_before_move"

RENAMED_HEADERS = {"processes": "procs"}
"""Headers of the trials table renamed since the study was written: every setting's column is
its abbreviation (`Parameter.short`) now."""


@pytest.fixture
def storage(tmp_path: Path) -> str:
    copy = tmp_path / "study.db"
    shutil.copy(STORED / "study.db", copy)
    return f"sqlite:///{copy}"


def _tokens(table: str) -> list[list[str]]:
    """The table's cells, line by line (column widths follow the headers' lengths)."""
    return [line.split() for line in table.strip().splitlines()]


def test_trials_table_is_unchanged(storage: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trials", "--storage", storage]) == 0
    printed = _tokens(capsys.readouterr().out)
    expected = _tokens((STORED / "trials.txt").read_text())
    expected[0] = [RENAMED_HEADERS.get(cell, cell) for cell in expected[0]]
    assert printed == expected


@pytest.mark.parametrize(
    ("folder", "trial_flags"), [("export_best", []), ("export_trial_2", ["--trial", "2"])]
)
def test_export_is_unchanged(
    storage: str, tmp_path: Path, folder: str, trial_flags: list[str]
) -> None:
    out = tmp_path / folder
    assert main(["export", "--storage", storage, "-o", str(out), *trial_flags]) == 0
    for name in ("ds_config.json", "launch.json"):
        exported = json.loads((out / name).read_text())
        if name == "launch.json":
            # Added since: tokens/s, which a study of (input, target) pairs never measured.
            measured = exported["measured"]
            assert measured.pop("tokens_per_s") is None
            assert measured.pop("tokens_per_s_runs") == []
        assert exported == json.loads((STORED / folder / name).read_text())


def test_report_has_the_same_sections(storage: str, tmp_path: Path) -> None:
    path = tmp_path / "golden.html"
    assert main(["report", "--storage", storage, "-o", str(path)]) == 0
    headings = [
        html.unescape(re.sub(r"<[^>]+>", "", match))
        for match in re.findall(r"<h2[^>]*>.*?</h2>", path.read_text(), flags=re.S)
    ]
    assert headings == (STORED / "report_sections.txt").read_text().splitlines()
