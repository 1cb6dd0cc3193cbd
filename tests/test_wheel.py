"""A wheel built by `pip wheel .` carries the search spaces: installed (not editable) into a
fresh virtual environment, `autotune search` finds the default space and `--space cpu_small`
from an empty folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.e2e, pytest.mark.subprocess]

# The venv must import the installed wheel, not a checkout a PYTHONPATH points at.
CLEAN_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; torch, DeepSpeed and the rest come from this
    interpreter's site-packages (installing them again would take minutes)."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(root), str(REPO)],
        check=True,
    )
    (wheel,) = root.glob("autotune-*.whl")
    env = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env)], check=True)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps"]
    subprocess.run([*pip, str(wheel)], check=True)
    return env


def _search(venv: Path, folder: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    folder.mkdir()
    shutil.copy(REPO / "examples" / "digits_mlp.py", folder)
    return subprocess.run(
        [
            str(venv / "bin" / "autotune"),
            "search",
            "digits_mlp.py",
            "--n-trials",
            "1",
            "--confirm",
            "0",
            "--train-samples",
            "1024",
            "--min-measure-seconds",
            "0",
            *flags,
        ],
        cwd=folder,
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_installed_package_is_the_wheel(venv: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import autotune; print(autotune.__file__)"],
        cwd=tmp_path,
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(venv) in where


@pytest.mark.parametrize("space", [None, "cpu_small"])
def test_search_from_an_empty_folder(venv: Path, tmp_path: Path, space: str | None) -> None:
    flags = [] if space is None else ["--space", space]
    done = _search(venv, tmp_path / "run", *flags)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "best: trial 0" in done.stdout
    assert (tmp_path / "run" / "trials" / "digits_mlp" / "best" / "ds_config.json").is_file()
