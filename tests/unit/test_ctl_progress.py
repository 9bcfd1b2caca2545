"""The terminal progress line of ``wharf ctl queues replay`` and ``wharf bench``."""

from __future__ import annotations

import io

from wharf.broker.cli.ctl_progress import TerminalProgress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_draws_on_a_terminal_and_erases_the_line() -> None:
    term = FakeTerminal()
    progress = TerminalProgress("replaying dlq", 200, term)
    progress.update(50)
    assert term.getvalue() == "\rreplaying dlq: 50/200 (25%)"
    progress.finish()
    assert term.getvalue().endswith("\r" + " " * len("replaying dlq: 50/200 (25%)") + "\r")


def test_silent_when_not_a_terminal() -> None:
    pipe = io.StringIO()
    progress = TerminalProgress("[bench] consumed", 10, pipe)
    progress.update(5)
    progress.finish()
    assert not progress.enabled and pipe.getvalue() == ""
