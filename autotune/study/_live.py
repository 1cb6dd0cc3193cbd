"""The live line: on a terminal, while a run is in progress, one line rewritten in place about
once a second with its phase, its number, how long it has run and about how long the search
has left. It is never written where stdout is not a terminal (a log, CI, a pipe), and never
stored: the study and the report hold only what the runs' own lines say."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from autotune.study._progress import Progress, duration

LIVE_INTERVAL = 1.0
"""Seconds between two updates of the live line."""
_CLEAR = "\r\x1b[2K"
"""Back to the start of the line and erase it (ANSI: every terminal autotune runs in)."""
_DEFAULT_WIDTH = 80


def live_text(progress: Progress, seconds: float) -> str:
    """What the live line says ``seconds`` into the run ``progress`` describes: ``run 6 of 12,
    search: this run 14 s, about 1 min 10 s left``. The search's time left counts down from
    the estimate made when the run started; a run that outlasts its share of it holds the
    count at what the runs after it take."""
    text = f"{progress.heading()}: this run {duration(seconds)}"
    if progress.left is None:
        return text
    left = max(0.0, progress.left - seconds)
    if progress.rest is not None:
        left = max(left, progress.rest)
    return f"{text}, {progress.left_text(left)}"


class LiveLine:
    """The live line on ``stream``, or nothing when ``stream`` is None or not a terminal.

    Use `showing` around a wait for a run, and `around` on the search's ``print_line``, so that
    a line printed while the live line shows replaces it instead of running into it.
    """

    def __init__(self, stream: TextIO | None, interval: float = LIVE_INTERVAL) -> None:
        self.stream = stream if stream is not None and _is_terminal(stream) else None
        self.interval = interval
        self._lock = threading.Lock()
        self._shown = False

    @property
    def enabled(self) -> bool:
        return self.stream is not None

    def around(self, print_line: Callable[[str], None]) -> Callable[[str], None]:
        """``print_line``, clearing the live line first when it shows."""
        if not self.enabled:
            return print_line

        def cleared_first(line: str) -> None:
            with self._lock:
                self._clear()
                print_line(line)

        return cleared_first

    @contextlib.contextmanager
    def showing(self, text: Callable[[float], str]) -> Iterator[None]:
        """Show ``text(seconds since entering)``, updated every ``interval`` seconds by a
        background thread, until the block ends; then clear it."""
        if not self.enabled:
            yield
            return
        stop, start = threading.Event(), time.monotonic()

        def update() -> None:
            while True:
                self.write(text(time.monotonic() - start))
                if stop.wait(self.interval):
                    return

        thread = threading.Thread(target=update, name="autotune-live-line", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            with self._lock:
                self._clear()

    def write(self, text: str) -> None:
        """Replace the live line with ``text``, cut to the terminal's width (a line that wraps
        could not be rewritten in place)."""
        if self.stream is None:
            return
        width = _width(self.stream)
        if len(text) >= width:
            text = text[: max(0, width - 4)] + "..."
        with self._lock:
            self.stream.write(_CLEAR + text)
            self.stream.flush()
            self._shown = True

    def _clear(self) -> None:
        """Erase the live line (call under the lock)."""
        if self.stream is not None and self._shown:
            self.stream.write(_CLEAR)
            self.stream.flush()
            self._shown = False


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or stand-in stream
        return False


def _width(stream: TextIO) -> int:
    """The terminal's columns, or 80 where the stream has no terminal size to give."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or _DEFAULT_WIDTH
    except (AttributeError, OSError, ValueError):
        return _DEFAULT_WIDTH
