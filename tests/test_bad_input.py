"""Bad input to the `autotune` CLI: a short message, exit status 2, no traceback, no study written.

Every case runs the CLI's entry point (`autotune.cli.main`) in its own folder, with
``--storage sqlite:///<folder>/db.sqlite3``; all of them must fail in the preflight, before any
trial. A few run the real command in a child process too (marked ``subprocess``), so the exit
status and the absence of a traceback are also checked where a user sees them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from autotune.cli import main

# ---------------------------------------------------------------------------------------------
# Model and space files

BASE_MODEL = """\
import torch
from torch import nn
from torch.utils.data import TensorDataset


def model():
    return nn.Linear(8, 3)


def train_data():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g))
"""

NAME_ERROR_MODEL = "import torch\n\nsize = undefined_size  # line 3\n" + BASE_MODEL

SYNTAX_ERROR_MODEL = "import torch\n\ndef model(:  # line 3\n    pass\n"

NO_MODEL_FN = """\
import torch
from torch.utils.data import TensorDataset


def train_data():
    return TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
"""

NO_TRAIN_DATA_FN = """\
from torch import nn


def model():
    return nn.Linear(8, 3)
"""

BARE_TENSOR_ITEMS = """\
import torch
from torch import nn


def model():
    return nn.Linear(8, 3)


def train_data():
    return [torch.randn(8) for _ in range(64)]
"""

TRIPLE_ITEMS = """\
import torch
from torch import nn
from torch.utils.data import TensorDataset


def model():
    return nn.Linear(8, 3)


def train_data():
    return TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)), torch.randn(64))
"""

MODEL_RAISES = """\
import torch
from torch.utils.data import TensorDataset


def model():
    raise RuntimeError("no weights for this model")  # line 6


def train_data():
    return TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
"""

EMPTY_TRAIN_DATA = """\
import torch
from torch import nn
from torch.utils.data import TensorDataset


def model():
    return nn.Linear(8, 3)


def train_data():
    return TensorDataset(torch.empty(0, 8), torch.empty(0, dtype=torch.long))
"""

# Dict items (model(**batch)): each model below breaks one part of that contract.
DICT_MODEL = """\
import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 3)

    def forward(self, features, labels):
        logits = self.linear(features)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def model():
    return Classifier()


def train_data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    return [{"features": x[i], "labels": y[i]} for i in range(64)]
"""

DICT_VALUES_LISTS = DICT_MODEL.replace('"features": x[i]', '"features": x[i].tolist()')

DICT_OUTPUT_WITHOUT_LOSS = DICT_MODEL.replace(
    'return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}',
    "return logits",
)

COLLATE_RAISES = (
    DICT_MODEL
    + """

def collate(items):
    raise ValueError("cannot pad these")  # line collate
"""
)

METRIC_NOT_A_NUMBER = (
    DICT_MODEL
    + """

def metric(output, batch):
    return "high"
"""
)

EVAL_FAILS = (
    DICT_MODEL
    + """

def eval_data():
    return [{"features": torch.randn(5), "labels": torch.tensor(0)} for _ in range(16)]
"""
)

EXITS_ON_IMPORT = "import sys\n\nsys.exit(3)  # line 3\n" + BASE_MODEL

PASSWORD = "s3cretpw"
POSTGRES_URL = f"postgresql://alice:{PASSWORD}@127.0.0.1:1/db"
INLINE_CLI = "import sys; from autotune.cli import main; sys.exit(main())"


def line_of(text: str, marker: str) -> int:
    """The 1-based line of ``text`` holding ``marker``."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if marker in line)


# ---------------------------------------------------------------------------------------------
# Cases and how they run


@dataclasses.dataclass(frozen=True)
class Case:
    """One CLI invocation.

    Attributes:
        id: The test id; also the name of the case's folder.
        argv: Arguments after ``autotune``; ``{db}`` becomes the case's SQLite URL.
        files: Files to write in the case's folder (name -> text); a name ending in "/" is a
            folder.
        expect: Phrases stderr must contain (case-insensitive).
        setup: Called with the case's folder and SQLite URL before the CLI runs.
        command: The interpreter command to run instead of the CLI's (for the -m check).
    """

    id: str
    argv: tuple[str, ...]
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    expect: tuple[str, ...] = ()
    setup: Callable[[Path, str], None] | None = None
    command: tuple[str, ...] | None = None

    def __str__(self) -> str:
        return self.id


@dataclasses.dataclass(frozen=True)
class Outcome:
    folder: Path
    db: Path
    returncode: int
    stdout: str
    stderr: str


def cli_command() -> list[str]:
    """``python -m autotune.cli`` where the package supports it, else the same entry point."""
    spec = importlib.util.find_spec("autotune")
    assert spec is not None and spec.origin is not None
    if (Path(spec.origin).parent / "cli" / "__main__.py").exists():
        return [sys.executable, "-m", "autotune.cli"]
    return [sys.executable, "-c", INLINE_CLI]


def _prepare(case: Case, folder: Path) -> list[str]:
    """Write the case's files, run its setup and return its arguments."""
    url = f"sqlite:///{folder / 'db.sqlite3'}"
    for name, text in case.files.items():
        path = folder / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if case.setup is not None:
        case.setup(folder, url)
    return [arg.replace("{db}", url) for arg in case.argv]


def run_in_process(case: Case, folder: Path) -> Outcome:
    """The case through `autotune.cli.main`, in ``folder``; a traceback shows in stderr."""
    argv = _prepare(case, folder)
    out, err = io.StringIO(), io.StringIO()
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                returncode = main(argv)
            except SystemExit as exc:  # argparse's own errors
                returncode = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                returncode = 1
    finally:
        os.chdir(cwd)
    return Outcome(folder, folder / "db.sqlite3", returncode, out.getvalue(), err.getvalue())


def run_in_subprocess(case: Case, folder: Path) -> Outcome:
    """The case as a user runs it: the command in a child process."""
    argv = _prepare(case, folder)
    command = list(case.command) if case.command else cli_command()
    done = subprocess.run(
        command + argv, cwd=folder, capture_output=True, text=True, timeout=180, check=False
    )
    return Outcome(folder, folder / "db.sqlite3", done.returncode, done.stdout, done.stderr)


@pytest.fixture
def outcome(case: Case, tmp_path: Path) -> Outcome:
    return run_in_process(case, tmp_path)


def assert_user_error(outcome: Outcome, expect: tuple[str, ...]) -> None:
    """Exit status 2, no traceback, a short `autotune: error:` message with every phrase."""
    shown = f"exit {outcome.returncode}\n--- stdout\n{outcome.stdout}\n--- stderr\n{outcome.stderr}"
    assert outcome.returncode == 2, shown
    assert "Traceback" not in outcome.stdout + outcome.stderr, shown
    assert "autotune: error:" in outcome.stderr, shown
    assert len(outcome.stderr.strip().splitlines()) <= 5, shown
    for phrase in expect:
        assert phrase.lower() in outcome.stderr.lower(), f"{phrase!r} not in stderr\n{shown}"


def assert_nothing_written(outcome: Outcome) -> None:
    assert not outcome.db.exists(), f"{outcome.db} was created"
    for folder in ("trials", "reports"):
        assert not (outcome.folder / folder).exists(), f"{folder}/ was created"


# ---------------------------------------------------------------------------------------------
# `autotune search` with bad input: fails in preflight, writes no study


def search(model: str, *flags: str) -> tuple[str, ...]:
    return ("search", model, "--storage", "{db}", *flags)


def space_case(case_id: str, space: str, *expect: str) -> Case:
    return Case(
        case_id,
        search("model.py", "--space", "space.yaml"),
        {"model.py": BASE_MODEL, "space.yaml": space},
        expect,
    )


SEARCH_CASES = [
    Case("missing-model", search("nope.py"), {}, ("nope.py", "does not exist")),
    Case("model-is-directory", search("models"), {"models/": ""}, ("models", "directory")),
    Case(
        "name-error-on-import",
        search("model.py"),
        {"model.py": NAME_ERROR_MODEL},
        (f"model.py:{line_of(NAME_ERROR_MODEL, 'line 3')}", "NameError", "undefined_size"),
    ),
    Case(
        "syntax-error",
        search("model.py"),
        {"model.py": SYNTAX_ERROR_MODEL},
        (f"model.py:{line_of(SYNTAX_ERROR_MODEL, 'line 3')}", "SyntaxError"),
    ),
    Case("no-model-fn", search("model.py"), {"model.py": NO_MODEL_FN}, ("model()", "no ")),
    Case(
        "objective-tokens-without-input-ids",
        search("model.py", "--objective", "tokens"),
        {"model.py": BASE_MODEL},
        ("--objective tokens", "input_ids", "--objective samples"),
    ),
    Case(
        "no-train-data-fn",
        search("model.py"),
        {"model.py": NO_TRAIN_DATA_FN},
        ("train_data()", "no "),
    ),
    Case(
        "items-bare-tensors",
        search("model.py"),
        {"model.py": BARE_TENSOR_ITEMS},
        ("train_data()", "(input, target) pairs"),
    ),
    Case(
        "items-triples",
        search("model.py"),
        {"model.py": TRIPLE_ITEMS},
        ("train_data()", "(input, target) pairs"),
    ),
    Case(
        "dict-values-not-tensors",
        search("model.py"),
        {"model.py": DICT_VALUES_LISTS},
        ("model.py", "train_data()", "'features' is a list", 'with_format("torch")'),
    ),
    Case(
        "dict-output-without-loss",
        search("model.py"),
        {"model.py": DICT_OUTPUT_WITHOUT_LOSS},
        ("model.py", "no loss", "loss(output, batch)"),
    ),
    Case(
        "collate-raises",
        search("model.py"),
        {"model.py": COLLATE_RAISES},
        (
            f"model.py:{line_of(COLLATE_RAISES, 'line collate')}",
            "collate()",
            "ValueError",
            "cannot pad these",
        ),
    ),
    Case(
        "metric-not-a-number",
        search("model.py"),
        {"model.py": METRIC_NOT_A_NUMBER},
        ("model.py", "metric()", "number", "str"),
    ),
    Case(
        "eval-step-fails",
        search("model.py"),
        {"model.py": EVAL_FAILS},
        ("model.py", "forward on an eval_data() batch", "RuntimeError"),
    ),
    Case(
        "model-fn-raises",
        search("model.py"),
        {"model.py": MODEL_RAISES},
        (
            f"model.py:{line_of(MODEL_RAISES, 'line 6')}",
            "model()",
            "RuntimeError",
            "no weights for this model",
        ),
    ),
    Case(
        "empty-train-data",
        search("model.py"),
        {"model.py": EMPTY_TRAIN_DATA},
        ("train_data()", "empty"),
    ),
    Case(
        "missing-space-file",
        search("model.py", "--space", "nope.yaml"),
        {"model.py": BASE_MODEL},
        ("nope.yaml", "does not exist"),
    ),
    space_case("broken-yaml", "precision: [fp32, bf16\nzero_stage: [0\n", "space.yaml", "YAML"),
    space_case("unknown-space-key", "micro_batch: [8, 16]\n", "unknown", "micro_batch"),
    space_case("empty-choice-list", "zero_stage: []\n", "zero_stage", "empty"),
    Case(
        "accuracy-loss-above-1",
        search("model.py", "--max-accuracy-loss", "1.5"),
        {"model.py": BASE_MODEL},
        ("--max-accuracy-loss", "1.5"),
    ),
    Case(
        "accuracy-loss-negative",
        search("model.py", "--max-accuracy-loss=-0.1"),
        {"model.py": BASE_MODEL},
        ("--max-accuracy-loss", "-0.1"),
    ),
    Case(
        "zero-trials",
        search("model.py", "--n-trials", "0"),
        {"model.py": BASE_MODEL},
        ("--n-trials", "at least 1"),
    ),
    Case(
        "max-memory-unknown-unit",
        search("model.py", "--max-memory", "8XB"),
        {"model.py": BASE_MODEL},
        ("--max-memory", "8XB", "GiB"),
    ),
    Case(
        "max-memory-zero",
        search("model.py", "--max-memory", "0"),
        {"model.py": BASE_MODEL},
        ("--max-memory",),
    ),
    Case(
        "min-measure-seconds-negative",
        search("model.py", "--min-measure-seconds=-1"),
        {"model.py": BASE_MODEL},
        ("--min-measure-seconds", "0 or more"),
    ),
    Case(
        "hostfile-missing",
        search("model.py", "--hostfile", "nodes.txt"),
        {"model.py": BASE_MODEL},
        ("--hostfile nodes.txt", "no such file"),
    ),
    Case(
        "hostfile-bad-line",
        search("model.py", "--hostfile", "nodes.txt"),
        {"model.py": BASE_MODEL, "nodes.txt": "# two nodes\n127.0.0.1 slots=1\nnode2 slots 4\n"},
        ("--hostfile nodes.txt, line 3", "HOST slots=N", "node2 slots 4"),
    ),
    Case(
        "hostfile-first-node-elsewhere",
        search("model.py", "--hostfile", "nodes.txt"),
        {"model.py": BASE_MODEL, "nodes.txt": "198.51.100.7 slots=1\n127.0.0.1 slots=1\n"},
        ("its first node, 198.51.100.7, is not an address of this machine",),
    ),
    Case(
        "hostfile-more-slots-than-devices",
        search("model.py", "--hostfile", "nodes.txt"),
        {"model.py": BASE_MODEL, "nodes.txt": "127.0.0.1 slots=4096\n"},
        ("gives this machine 4096 slots, but it has",),
    ),
    Case(
        "hostfile-node-unreachable",
        search("model.py", "--hostfile", "nodes.txt"),
        # Nothing answers ssh on 127.0.0.2 here (or, where sshd runs, it refuses the batch login).
        {"model.py": BASE_MODEL, "nodes.txt": "127.0.0.1 slots=1\n127.0.0.2 slots=1\n"},
        ("cannot start on 1 node(s)", "127.0.0.2"),
    ),
    Case(
        "launcher-slurm-outside-an-allocation",
        search("model.py", "--hostfile", "nodes.txt", "--launcher", "slurm"),
        {"model.py": BASE_MODEL, "nodes.txt": "127.0.0.1 slots=1\n"},
        ("--launcher slurm", "inside a Slurm allocation"),
    ),
    Case(
        "devices-not-a-list",
        search("model.py", "--devices", "gpu0"),
        {"model.py": BASE_MODEL},
        ("--devices", "such as 0,1 or 4-7"),
    ),
    Case(
        "devices-this-machine-lacks",
        search("model.py", "--devices", "4095"),
        {"model.py": BASE_MODEL},
        ("--devices 4095", "not 4095"),
    ),
    Case(
        "confirm-negative",
        search("model.py", "--confirm=-1"),
        {"model.py": BASE_MODEL},
        ("--confirm", "0 or more"),
    ),
]


@pytest.mark.parametrize("case", SEARCH_CASES, ids=str)
def test_search_rejects_bad_input(case: Case, outcome: Outcome) -> None:
    assert_user_error(outcome, case.expect)
    assert_nothing_written(outcome)


UNREACHABLE_STORAGE = Case(
    "unreachable-storage",
    ("search", "model.py", "--storage", POSTGRES_URL),
    {"model.py": BASE_MODEL},
    ("storage", "127.0.0.1"),
)


@pytest.mark.parametrize("case", [UNREACHABLE_STORAGE], ids=str)
def test_unreachable_storage_never_shows_the_password(case: Case, outcome: Outcome) -> None:
    # Without psycopg2 the message may say that the driver is missing instead.
    assert_user_error(outcome, case.expect)
    assert PASSWORD not in outcome.stdout + outcome.stderr
    assert_nothing_written(outcome)


def make_study_with_one_trial(folder: Path, url: str) -> None:
    import optuna

    study = optuna.create_study(study_name="m", storage=url)
    study.add_trial(optuna.trial.create_trial(value=1.0))


# Also the "unknown space value" case: fp8 is no precision autotune knows.
EXISTING_STUDY = Case(
    "unknown-space-value-existing-study",
    ("search", "model.py", "--study", "m", "--storage", "{db}", "--space", "space.yaml"),
    {"model.py": BASE_MODEL, "space.yaml": "precision: [fp32, fp8]\n"},
    ("precision", "fp8"),
    setup=make_study_with_one_trial,
)


@pytest.mark.parametrize("case", [EXISTING_STUDY], ids=str)
def test_failed_search_leaves_existing_study_untouched(case: Case, outcome: Outcome) -> None:
    import optuna

    assert_user_error(outcome, case.expect)
    study = optuna.load_study(study_name="m", storage=f"sqlite:///{outcome.db}")
    assert len(study.trials) == 1
    assert study.user_attrs == {}
    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{outcome.db}")] == [
        "m"
    ]


# ---------------------------------------------------------------------------------------------
# export / report / trials with a study that does not exist


def make_other_study(folder: Path, url: str) -> None:
    import optuna

    optuna.create_study(study_name="other", storage=url)


READ_CASES = [
    Case(
        f"{command}-unknown-study",
        (command, "--study", "nope", "--storage", "{db}", *extra),
        expect=("nope", "other", "--study"),
        setup=make_other_study,
    )
    for command, extra in (("export", ("-o", "out")), ("report", ()), ("trials", ()))
] + [
    Case(
        "trials-no-storage-file",
        ("trials", "--study", "nope", "--storage", "{db}"),
        expect=("db.sqlite3", "autotune search"),
    )
]


@pytest.mark.parametrize("case", READ_CASES, ids=str)
def test_read_commands_reject_missing_study(case: Case, outcome: Outcome) -> None:
    import optuna

    assert_user_error(outcome, case.expect)
    assert not (outcome.folder / "out").exists()
    assert not (outcome.folder / "reports").exists()
    if case.setup is None:
        assert not outcome.db.exists(), "reading a missing storage created it"
    else:
        names = [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{outcome.db}")]
        assert names == ["other"]


# ---------------------------------------------------------------------------------------------
# Bugs found while writing these tests, fixed since


FIXED_BUGS = [
    pytest.param(
        Case(
            "model-exits-on-import",
            search("model.py"),
            {"model.py": EXITS_ON_IMPORT},
            (f"model.py:{line_of(EXITS_ON_IMPORT, 'line 3')}",),
        ),
        id="model-exits-on-import",
    ),
    pytest.param(
        Case(
            "log-range-from-zero",
            search(
                "model.py",
                "--space",
                "space.yaml",
                "--n-trials",
                "1",
                "--trial-timeout",
                "20",
                "--train-samples",
                "64",
            ),
            {"model.py": BASE_MODEL, "space.yaml": "num_workers: {low: 0, high: 2, log: true}\n"},
            ("num_workers", "log"),
        ),
        id="log-range-from-zero",
    ),
]


@pytest.mark.parametrize("case", FIXED_BUGS)
def test_search_rejects_bad_input_fixed_bugs(case: Case, outcome: Outcome) -> None:
    assert_user_error(outcome, case.expect)
    assert_nothing_written(outcome)


MODULE_ENTRIES = [
    Case("python-m-autotune-cli", ("--help",), command=(sys.executable, "-m", "autotune.cli")),
    Case("python-m-autotune", ("--help",), command=(sys.executable, "-m", "autotune")),
]


@pytest.mark.subprocess
@pytest.mark.parametrize("case", MODULE_ENTRIES, ids=str)
def test_python_dash_m_runs_the_cli(case: Case, tmp_path: Path) -> None:
    outcome = run_in_subprocess(case, tmp_path)
    assert outcome.returncode == 0, outcome.stderr
    assert "usage: autotune" in outcome.stdout


@pytest.mark.subprocess
@pytest.mark.parametrize("case", [SEARCH_CASES[2], UNREACHABLE_STORAGE], ids=str)
def test_the_command_exits_2_without_a_traceback(case: Case, tmp_path: Path) -> None:
    outcome = run_in_subprocess(case, tmp_path)
    assert_user_error(outcome, case.expect)
    assert PASSWORD not in outcome.stdout + outcome.stderr
    assert_nothing_written(outcome)
