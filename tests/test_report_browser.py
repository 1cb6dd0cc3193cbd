"""The report in a real browser: headless Chromium renders every figure with no page error,
and user text (a reason, the model name, a log line) stays text.

Chromium runs without DevTools: ``--dump-dom`` prints the DOM after the page's scripts ran,
``--screenshot`` writes a PNG, and ``--enable-logging=stderr`` prints the page's console
messages and uncaught errors as ``CONSOLE`` lines on stderr. Skipped when ``chromium`` is not
on PATH (CI installs it: see .ci/run).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from test_report import _info, _trial

from autotune import report

CHROMIUM = shutil.which("chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed (apt-get install -y chromium): the report is not "
        "checked in a real browser",
    ),
]

INJECTED = "<script>alert(1)</script>"
INJECTED_IMG = "<img src=x onerror=\"console.error('xss')\">"

# Messages Chromium's software GPU forwards to the page console; they are not page errors.
_GPU_NOISE = re.compile(r"GL Driver Message|WebGL|GPU stall|swiftshader", re.IGNORECASE)


def _chromium(page: Path, tmp_path: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    """Runs headless Chromium on ``page`` with the given output flags; fails on a hang."""
    assert CHROMIUM is not None
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        # Parallel coordinates draw with WebGL; without a GPU Chromium needs this to use its
        # software renderer. The page is our own file, so the lower isolation is harmless.
        "--enable-unsafe-swiftshader",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,3000",
        "--virtual-time-budget=5000",
        *mode,
        page.resolve().as_uri(),
    ]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within 120 s: {' '.join(command)}")


def _page_errors(stderr: str) -> list[str]:
    """The page's console messages and uncaught errors in Chromium's log, GPU noise left out."""
    lines = [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return [line for line in lines if not _GPU_NOISE.search(line)]


def _figure_ids(page_html: str) -> list[str]:
    return re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', page_html)


def _figure_markup(dom: str, ids: list[str], div_id: str) -> str:
    """The DOM from the figure's div up to the next figure's (or the end)."""
    starts = sorted(dom.index(f'id="{other}"') for other in ids)
    start = dom.index(f'id="{div_id}"')
    end = next((position for position in starts if position > start), len(dom))
    return dom[start:end]


def _frame() -> pd.DataFrame:
    """Enough trials for every part, a reason and a log holding markup."""
    rows = [
        _trial(0, role="reference", throughput=100.0, accuracy_loss=0.0),
        _trial(1, throughput=300.0, accuracy_loss=0.05, precision="fp16"),
        _trial(2, "infeasible", reason="pipeline_stages 4 needs <= 2 processes"),
        _trial(3, throughput=250.0, accuracy_loss=0.003, precision="bf16", micro_batch_size=32),
        _trial(4, "failed", reason=f"error: {INJECTED}", micro_batch_size=64),
        _trial(5, throughput=120.0, accuracy_loss=-0.001, zero_stage=2, micro_batch_size=16),
        _trial(6, "repeat", throughput=250.0, accuracy_loss=0.003, precision="bf16"),
        _trial(7, throughput=180.0, accuracy_loss=0.002, zero_stage=1, micro_batch_size=4),
        _trial(
            8,
            throughput=150.0,
            accuracy_loss=0.001,
            processes=2,
            pipeline_stages=2,
            partition_method="profile",
            partition=[0, 4, 9],
            stage_compute_seconds=[0.145, 0.150],
            stage_comm_seconds=[0.02, 0.03],
            stage_predicted_seconds=[0.0145, 0.0117],
        ),
    ]
    for row in rows:
        row.update(train_seconds=15.0, eval_seconds=3.0)
    rows[4].update(train_seconds=math.nan, eval_seconds=math.nan)
    rows[4]["log_tail"] = f"Traceback (most recent call last):\n{INJECTED_IMG}\nRuntimeError: x"
    return pd.DataFrame(rows)


def _report_info() -> dict[str, object]:
    return _info(
        model=f"examples/{INJECTED}.py",
        best_number=3,
        versions={"autotune": "0.1.0", "torch": "2.13.0", "deepspeed": "0.19.8", "optuna": "5"},
        best_ds_config={"train_batch_size": 32, "zero_optimization": {"stage": 0}},
        best_launch={"processes": 1, "command": "deepspeed --num_gpus 1 train.py"},
        importances={"micro_batch_size": 0.6, "precision": 0.3, "zero_stage": 0.1},
        noise_scale=64.0,  # the per-batch figure draws its second axis too
        reference_batch=8,
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of :func:`_frame`, written once for the module."""
    folder = tmp_path_factory.mktemp("report")
    return report.write_report(_frame(), _report_info(), folder / "report.html")


@pytest.fixture(scope="module")
def dumped(
    page: Path, tmp_path_factory: pytest.TempPathFactory
) -> subprocess.CompletedProcess[str]:
    """Chromium's DOM dump of the page, run once for the module."""
    return _chromium(page, tmp_path_factory.mktemp("chromium"), "--dump-dom")


def test_every_figure_renders_without_page_errors(
    page: Path, dumped: subprocess.CompletedProcess[str]
) -> None:
    ids = _figure_ids(page.read_text(encoding="utf-8"))
    result = dumped

    assert result.returncode == 0, result.stderr[-3000:]
    dom = result.stdout
    assert len(ids) == 9, ids
    for div_id in ids:
        assert "main-svg" in _figure_markup(dom, ids, div_id), f"plotly did not draw {div_id}"
    assert _page_errors(result.stderr) == []


def test_user_text_stays_text(dumped: subprocess.CompletedProcess[str]) -> None:
    result = dumped

    dom = result.stdout
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # the reason and the model name
    assert "<script>alert(1)" not in dom
    assert "&lt;img src=x onerror=" in dom  # the log tail
    assert "<img src=" not in dom
    assert _page_errors(result.stderr) == []  # an executed onerror would log 'xss'


def test_screenshot_is_not_blank(tmp_path: Path, page: Path) -> None:
    shot = tmp_path / "r.png"

    result = _chromium(page, tmp_path, f"--screenshot={shot}")

    assert result.returncode == 0, result.stderr[-3000:]
    assert shot.exists(), result.stderr[-3000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG")
    # A blank 1280x3000 page compresses to a few kB; drawn plots and tables take far more.
    assert len(data) > 50_000
    assert _page_errors(result.stderr) == []


def test_an_empty_study_renders(tmp_path: Path) -> None:
    page = report.write_report(pd.DataFrame(), _info(), tmp_path / "empty.html")
    ids = _figure_ids(page.read_text(encoding="utf-8"))

    result = _chromium(page, tmp_path, "--dump-dom")

    assert ids and all("main-svg" in _figure_markup(result.stdout, ids, i) for i in ids)
    assert "No feasible trial yet: no trial has run." in result.stdout
    assert _page_errors(result.stderr) == []
