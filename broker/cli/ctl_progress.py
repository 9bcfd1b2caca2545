"""A one-line progress display on stderr, for long commands (``wharf ctl queues replay``,
``wharf bench``).

Shown only when stderr is a terminal, so scripts and pipes see nothing: stdout (tables or
JSON) is never touched.  The line is redrawn in place at most every
``REDRAW_INTERVAL_S`` and erased by ``finish()``.
"""

from __future__ import annotations

import sys
import time
from typing import Final, TextIO

REDRAW_INTERVAL_S: Final = 0.2


class TerminalProgress:
    def __init__(self, label: str, total: int | None, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream)
        self._last_draw = 0.0
        self._width = 0

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw < REDRAW_INTERVAL_S:
            return
        self._last_draw = now
        if self.total:
            text = f"{self.label}: {done}/{self.total} ({100 * done // self.total}%)"
        else:
            text = f"{self.label}: {done}"
        # \r back to the start; pad with spaces over a longer previous line.
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def finish(self) -> None:
        """Erase the line (the command prints its own result)."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False
