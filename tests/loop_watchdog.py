"""A hung asyncio test fails alone, with its tasks' stacks, instead of ending the run.

pytest-timeout is the backstop (``timeout_method = "thread"`` in pyproject.toml): at the
limit it prints the threads' stacks and ends the whole pytest process.  Its "signal"
method, which would fail just the one test, does not work here: under uvloop a test that
awaits a future nobody resolves runs on past the limit, SIGALRM or not (with or without
a periodic callback such as the broker's tick on the loop).  And a thread dump is little
help: it shows the main thread inside ``run_until_complete``, not the coroutine that
waits.

So, shortly before pytest-timeout's limit, this watchdog reaches into the test's event
loop from a timer thread (``call_soon_threadsafe``): on the loop's own thread it prints
the node id, the stack of every task of that loop and of every thread, then cancels the
future the loop is running (the test, or the async fixture being set up or torn down).
That test fails with the reason, its teardown runs, and the run goes on.  A loop blocked
in C code (or a test that swallows the cancellation) never gets there: pytest-timeout
then ends the run as before.  pytest-timeout stops its timer once a test has errored,
so a teardown that hangs after an error would run forever: shortly after the limit the
watchdog ends the run itself, with every thread's stack.  Tests that run their own
loops in threads are covered by the backstops only.

The loop is uvloop's (as in production), subclassed to remember the future its
``run_until_complete`` waits for; ``pytest_asyncio_loop_factories`` hands it to
pytest-asyncio.  conftest.py imports the hooks below; ``tests/integration/
test_test_watchdog.py`` loads this file as a plugin (``-p loop_watchdog``).
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Generator
from types import FrameType
from typing import Any, Final

import pytest
import uvloop

# The watchdog fires this long before pytest-timeout's limit, or a quarter of the limit
# before it when that is shorter: the cancelled test's teardown (a broker's stop) runs
# in that margin.
WATCHDOG_MARGIN_S: Final = 20.0
# A test that catches the cancellation and waits on is cancelled again this often, until
# pytest-timeout's backstop ends the run.
RECANCEL_INTERVAL_S: Final = 5.0
# pytest-timeout cancels a test's timer as soon as the test has errored
# (pytest_exception_interact), so a teardown that then hangs has no backstop: the
# watchdog ends the run itself this long after pytest-timeout's limit (or a quarter of
# the limit after it when that is shorter), with every thread's stack.
BACKSTOP_GRACE_S: Final = 30.0


class WatchedLoop(uvloop.Loop):  # type: ignore[misc]
    """uvloop's event loop, remembering the future ``run_until_complete`` waits for."""

    running_future: asyncio.Future[Any] | None = None

    def run_until_complete(self, future: Any) -> Any:
        fut = asyncio.ensure_future(future, loop=self)
        outer, self.running_future = self.running_future, fut
        try:
            return super().run_until_complete(fut)
        finally:
            self.running_future = outer


# Every loop made for a test; the one running when the watchdog fires is the test's.
LOOPS: Final[weakref.WeakSet[WatchedLoop]] = weakref.WeakSet()


def new_watched_loop() -> WatchedLoop:
    loop = WatchedLoop()
    LOOPS.add(loop)
    return loop


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    # The broker runs on uvloop in production; test it on the same loop.
    return {"uvloop": new_watched_loop}


def item_timeout(item: pytest.Item) -> float:
    """pytest-timeout's limit for ``item`` in seconds (0: none), as it reads it."""
    marker = item.get_closest_marker("timeout")
    value: Any = None
    if marker is not None:
        value = marker.args[0] if marker.args else marker.kwargs.get("timeout")
    if value is None:
        value = item.config.getoption("timeout", None)
    if value is None:
        value = os.environ.get("PYTEST_TIMEOUT") or item.config.getini("timeout")
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def await_chain(task: asyncio.Task[Any]) -> traceback.StackSummary:
    """Where ``task`` waits, outermost first: each coroutine of its ``await`` chain.
    (``Task.print_stack`` shows only the outermost coroutine's frame of a waiting task.)"""
    frames: list[tuple[FrameType, int]] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            frame = getattr(awaited, "ag_frame", None)
        if frame is not None:
            frames.append((frame, frame.f_lineno))
        awaited = (
            getattr(awaited, "cr_await", None)
            or getattr(awaited, "gi_yieldfrom", None)
            or getattr(awaited, "ag_await", None)
        )
    return traceback.StackSummary.extract(frames, capture_locals=False)


class Watchdog:
    """One test's timer: fires WATCHDOG_MARGIN_S (at most a quarter of the limit) before
    pytest-timeout's ``timeout_s``, then every RECANCEL_INTERVAL_S until the test ends."""

    def __init__(self, item: pytest.Item, timeout_s: float) -> None:
        self.item = item
        self.timeout_s = timeout_s
        self.after_s = timeout_s - min(WATCHDOG_MARGIN_S, timeout_s / 4)
        self.backstop_s = timeout_s + min(BACKSTOP_GRACE_S, timeout_s / 4)
        self.started = time.monotonic()
        self.done = threading.Event()
        self.cancelled: asyncio.Future[Any] | None = None
        self.thread = threading.Thread(target=self.run, name="test-watchdog", daemon=True)

    def run(self) -> None:
        if self.done.wait(self.after_s):
            return
        while True:
            for loop in list(LOOPS):
                if loop.is_running() and not loop.is_closed():
                    try:
                        loop.call_soon_threadsafe(self.cancel_test, loop)
                    except RuntimeError:
                        pass  # closed in between: the test is over
            if time.monotonic() - self.started > self.backstop_s:
                self.end_run()
            if self.done.wait(RECANCEL_INTERVAL_S):
                return

    def end_run(self) -> None:
        """The backstop's own: print why and every thread's stack, end the process."""
        elapsed = time.monotonic() - self.started
        capman: Any = self.item.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:  # the real stderr, not the capture os._exit would lose
            capman.suspend_global_capture(in_=True)
        sys.stderr.write(
            f"\n+++ test watchdog: {self.item.nodeid} still running after {elapsed:.0f} s, "
            f"past pytest-timeout's limit of {self.timeout_s:g} s, which did not end it "
            "(its timer stops once a test has errored); ending the run +++\n"
        )
        faulthandler.dump_traceback(sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(1)

    def cancel_test(self, loop: WatchedLoop) -> None:
        """On the loop's thread: print the tasks' stacks, cancel what the loop runs.
        Later calls only cancel that same future again (the teardown that follows the
        cancellation gets the rest of pytest-timeout's margin)."""
        fut = loop.running_future
        if self.done.is_set() or fut is None or fut.done():
            return
        elapsed = time.monotonic() - self.started
        reason = (
            f"test watchdog: {self.item.nodeid} still running after {elapsed:.0f} s "
            f"(pytest-timeout's limit is {self.timeout_s:g} s); cancelled"
        )
        if self.cancelled is None:
            self.cancelled = fut
            self.dump_tasks(loop, reason)
        if fut is self.cancelled:
            fut.cancel(msg=reason)

    def dump_tasks(self, loop: WatchedLoop, reason: str) -> None:
        config = self.item.config
        capman: Any = config.pluginmanager.getplugin("capturemanager")
        terminal = config.get_terminal_writer()

        def write() -> None:
            terminal.line()
            terminal.sep("+", title="Test watchdog")
            terminal.line(reason)
            for task in sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name()):
                terminal.sep("~", title=task.get_name())
                terminal.line(repr(task))
                terminal.write("".join(await_chain(task).format()))
            # A task waiting on to_thread waits on that thread: the threads' stacks too.
            terminal.sep("~", title="threads")
            terminal.flush()
            faulthandler.dump_traceback(sys.stderr, all_threads=True)
            sys.stderr.flush()
            terminal.sep("+", title="Test watchdog")
            terminal.flush()

        # Straight to the terminal: if the test still hangs, the backstop ends the run
        # and captured output is lost.
        if capman is not None:
            with capman.global_and_fixture_disabled():
                write()
        else:
            write()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    timeout = item_timeout(item)
    watchdog: Watchdog | None = None
    if timeout > 0:
        watchdog = Watchdog(item, timeout)
        watchdog.thread.start()
    try:
        yield
    finally:
        if watchdog is not None:
            watchdog.done.set()
