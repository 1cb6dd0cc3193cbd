"""The live line: what it says while a run is in progress, and that it is written on a
terminal only (pure logic, with a stand-in terminal)."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from autotune import SearchOptions
from autotune.cli import main
from autotune.cli import search as search_command
from autotune.study._live import LiveLine, live_text
from autotune.study._progress import progress_of

CLEAR = "\r\x1b[2K"


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal (and has no size: the live line assumes 80)."""

    def isatty(self) -> bool:
        return True


def test_the_live_line_says_the_phase_the_run_its_time_and_the_search_s_time_left() -> None:
    progress = progress_of(4, 12, "start-up", 20.0, [14.0, 3.0, 4.0])  # about 63 s left
    assert live_text(progress, 5.0) == "run 4 of 12, start-up: this run 5 s, about 58 s left"
    # A run that outlasts its share (the mean run, 7 s) holds the count at the 8 runs after
    # it: 56 s.
    assert live_text(progress, 30.0) == "run 4 of 12, start-up: this run 30 s, about 56 s left"


def test_the_first_run_has_no_time_left_to_show_and_timeout_counts_down_to_zero() -> None:
    first = progress_of(1, 12, "reference", 0.0, [])
    assert live_text(first, 3.2) == "run 1 of 12, the reference: this run 3 s"
    timed = progress_of(3, 12, "search", 50.0, [10.0, 10.0], timeout_left=70.0)
    assert live_text(timed, 20.0) == "run 3 of 12, search: this run 20 s, 50 s left of --timeout"
    assert live_text(timed, 80.0).endswith("this run 1 min 20 s, 0 s left of --timeout")


def test_a_line_printed_while_the_live_line_shows_replaces_it() -> None:
    terminal = FakeTerminal()
    live = LiveLine(terminal)
    assert live.enabled
    print_line = live.around(lambda line: terminal.write(line + "\n"))
    live.write("run 2 of 3, search: this run 1 s")
    print_line("trial   1 -> 812.0 samples/s")
    print_line("no live line to clear now")
    assert terminal.getvalue() == (
        f"{CLEAR}run 2 of 3, search: this run 1 s{CLEAR}trial   1 -> 812.0 samples/s\n"
        "no live line to clear now\n"
    )


def test_a_live_line_wider_than_the_terminal_is_cut_to_fit() -> None:
    terminal = FakeTerminal()
    LiveLine(terminal).write("x" * 200)
    written = terminal.getvalue().removeprefix(CLEAR)
    assert len(written) < 80 and written.endswith("...")


def test_showing_updates_the_line_while_the_block_runs_then_clears_it() -> None:
    terminal = FakeTerminal()
    live = LiveLine(terminal, interval=0.01)
    updates: list[float] = []
    twice = threading.Event()

    def text(seconds: float) -> str:
        updates.append(seconds)
        if len(updates) >= 2:
            twice.set()
        return f"run 1 of 2, the reference: update {len(updates)}"

    with live.showing(text):
        assert twice.wait(timeout=10)
    written = terminal.getvalue()
    assert f"{CLEAR}run 1 of 2, the reference: update 1" in written
    assert f"{CLEAR}run 1 of 2, the reference: update 2" in written
    assert written.endswith(CLEAR)  # cleared before the next normal line
    assert updates == sorted(updates)
    # Its thread has ended: nothing more is written after the block.
    assert not any(t.name == "autotune-live-line" for t in threading.enumerate())


def test_nothing_is_written_where_stdout_is_not_a_terminal() -> None:
    for stream in (io.StringIO(), None):
        live = LiveLine(stream, interval=0.01)
        assert not live.enabled
        printed: list[str] = []
        print_line = live.around(printed.append)
        with live.showing(lambda seconds: "never shown"):
            print_line("trial   0 running (run 1 of 2, the reference; 0 done, 2 to run)")
        live.write("never shown either")
        assert printed == ["trial   0 running (run 1 of 2, the reference; 0 done, 2 to run)"]
    plain = io.StringIO()
    with LiveLine(plain).showing(lambda seconds: "never shown"):
        pass
    assert plain.getvalue() == ""


def test_autotune_search_asks_for_the_live_line_unless_given_no_live(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The Python API leaves it off (its caller's ``print_line`` may not be stdout)."""
    asked: list[bool] = []
    monkeypatch.setattr(
        search_command, "search", lambda options, print_line: asked.append(options.live)
    )
    assert main(["search", str(tmp_path / "model.py")]) == 0
    assert main(["search", str(tmp_path / "model.py"), "--no-live"]) == 0
    assert asked == [True, False]
    assert not SearchOptions(model=Path("model.py")).live
