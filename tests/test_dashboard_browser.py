"""optuna-dashboard's pages in a real browser: headless Chromium opens the study's page, served
by the dashboard's own app on a loopback port, and finds autotune's chosen trial beside the
dashboard's own "Best Trial", in the study's note and in the chosen trial's, and the
timeline marks the infeasible trials.

``--dump-dom`` prints the DOM once the page's scripts ran (the dashboard fetches the study from
its API first; ``--virtual-time-budget`` waits for it). Skipped when ``chromium`` is not on
PATH (CI installs it: see .ci/run)."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _dashboard import served_dashboard, study_id
from test_dashboard import autotune_study

CHROMIUM = shutil.which("chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed (apt-get install -y chromium): the dashboard is not "
        "checked in a real browser",
    ),
]


def _rendered(url: str, tmp_path: Path, name: str) -> str:
    """The page's DOM after its scripts ran, as text: tags dropped, entities decoded, runs of
    white space made one space."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / f'profile-{name}'}",
        "--window-size=1400,2000",
        "--virtual-time-budget=15000",
        "--dump-dom",
        url,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within 120 s: {' '.join(command)}")
    assert done.returncode == 0, done.stderr[-2000:]
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", done.stdout)).split())


def test_the_study_pages_show_feasibility_and_autotunes_choice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    autotune_study(url)
    with served_dashboard(url) as base:
        study = f"{base}/dashboard/studies/{study_id(base, 'tiny')}"
        top = _rendered(study, tmp_path, "top")
        note = _rendered(f"{study}/note", tmp_path, "note")
        chosen = _rendered(f"{study}/trials?numbers=2", tmp_path, "trial")
    # The top page: the dashboard's own best is the fastest trial, over the accuracy budget;
    # autotune's choice heads the study's attributes beside it; the timeline greys the
    # infeasible trials.
    assert "Best Trial (number=1) 300 " in top, top[-3000:]
    assert re.search(r"Study User Attributes .* chosen_trial 2 .* Rows per page", top), top[-3000:]
    assert "Complete Infeasible" in top, top[-3000:]
    # The study's note, and the chosen trial's, say which trial autotune chose and why.
    says = "autotune's choice: trial 2 : mbs=64 gas=1 fp32"
    assert f"Note {says}" in note, note[-3000:]
    assert "The dashboard's own Best Trial is the highest samples/s of any trial" in note
    assert re.search(rf"Trial 2 \(trial_id=\d+\) Complete Note {says}", chosen), chosen[-3000:]
