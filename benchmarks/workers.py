"""Worker processes of ``python -m benchmarks logs``: spawned processes that report
on one multiprocessing queue ("ready", "result", "error" and scenario events), and
two events (``go``, ``stop``) they wait on."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventT
from typing import Any, Final

from benchmarks.perf.common import run_async

# How often the parent looks at the event queue and for dead workers.
POLL_S: Final = 0.05


def run_worker(
    name: str,
    events: mp.Queue[tuple[Any, ...]],
    body: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
) -> None:
    """A worker process's main: run ``body`` and report its result (or error) as ``name``."""
    try:
        res = run_async(body())
    except BaseException as exc:  # report anything, including KeyboardInterrupt
        events.put(("error", name, f"{exc!r}\n{traceback.format_exc()}"))
        raise
    events.put(("result", name, res))


async def wait_event(event: EventT) -> None:
    """Wait for a multiprocessing event without blocking the event loop."""
    await asyncio.to_thread(event.wait)


class Workers:
    """Spawned worker processes and the one queue of events they report on."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.events: mp.Queue[tuple[Any, ...]] = self.ctx.Queue()
        self.go = self.ctx.Event()
        self.stop = self.ctx.Event()
        self.procs: dict[str, BaseProcess] = {}
        self.killed: set[str] = set()

    def start(self, name: str, target: Callable[..., None], *args: Any) -> None:
        proc = self.ctx.Process(target=target, args=(name, *args), name=f"bench-{name}")
        proc.start()
        self.procs[name] = proc

    def kill(self, name: str) -> None:
        pid = self.procs[name].pid
        assert pid is not None
        self.killed.add(name)
        os.kill(pid, signal.SIGKILL)

    def next(self, timeout_s: float) -> tuple[Any, ...] | None:
        """The next event (None after ``timeout_s``); a worker's error is raised here."""
        try:
            event = self.events.get(timeout=timeout_s)
        except queue_mod.Empty:
            dead = [
                n
                for n, p in self.procs.items()
                if n not in self.killed and p.exitcode not in (None, 0)
            ]
            if dead:
                raise RuntimeError(f"worker(s) died: {dead}") from None
            return None
        if event[0] == "error":
            raise RuntimeError(f"{event[1]} failed: {event[2]}")
        return event

    def wait_for(
        self,
        kind: str,
        names: set[str],
        timeout_s: float,
        other: Callable[[tuple[Any, ...]], None] | None = None,
    ) -> dict[str, Any]:
        """Wait until every worker in ``names`` reported ``kind``; their payloads.
        Other events go to ``other`` (or are dropped)."""
        got: dict[str, Any] = {}
        deadline = time.monotonic() + timeout_s
        while set(got) != names:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sorted(names - set(got))} did not report {kind!r}")
            event = self.next(POLL_S)
            if event is None:
                continue
            if event[0] == kind and event[1] in names:
                got[event[1]] = event[2] if len(event) > 2 else None
            elif other is not None:
                other(event)
        return got

    def close(self) -> None:
        self.stop.set()
        self.go.set()
        for proc in self.procs.values():
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


@contextlib.contextmanager
def workers() -> Iterator[Workers]:
    w = Workers()
    try:
        yield w
    finally:
        w.close()
