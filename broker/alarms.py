"""Resource alarms: memory high watermark and free-disk limit; giving memory back.

Checked once per broker tick (about a second), never per message.  While an alarm
is raised, the broker blocks publishing connections (BLOCKED frame, then it stops
reading a connection once it publishes) until every alarm clears, as RabbitMQ does.

The memory alarm is driven by the memory the broker *accounts* for (message bodies
held in queues and unacked deliveries, partly received frames, unsent output; see
``Broker.memory_breakdown``), not by RSS: CPython and glibc keep freed pages, so RSS
after a purge can stay above the watermark for good, and an RSS alarm would then
never clear.  It has hysteresis: raised at the high watermark, cleared below
``MEMORY_CLEAR_FRACTION`` of it.  RSS is a backstop only: far above the watermark
(``RSS_BACKSTOP_FACTOR``) *and* with at least half the watermark accounted for, it
raises the alarm too, so memory the accounting misses still blocks publishers, but
unreclaimed free pages alone never do.

The file-descriptor alarm (``fd_alarm``) is raised when an open failed with
EMFILE/ENFILE since the last check, or when the fds in use (less the idle read
handles the log layer can close on demand) reach ``FD_ALARM_FRACTION`` of the
process's soft ``RLIMIT_NOFILE``; it clears below ``FD_CLEAR_FRACTION`` with no new
failure.  As in RabbitMQ, it does not block publishers (a publish needs no new fd): it
is reported in the log, in ``/readyz`` (503) and as ``wharf_alarm{resource="fds"}``, and
the operation that found no fd answers 506.

``MemoryTrimmer`` gives freed heap memory back to the system (glibc ``malloc_trim``)
after large releases, rate limited, in a worker thread.

``decide_readiness`` turns the broker's lifecycle, store and alarm state into one
``Readiness`` (``Broker.readiness()``); ``/readyz`` only renders it.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import platform
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

log = logging.getLogger("wharf.alarms")

MEMORY: Final = "memory"
DISK: Final = "disk"
FDS: Final = "fds"
# The fd alarm: raised at this fraction of RLIMIT_NOFILE in use, cleared below the other.
FD_ALARM_FRACTION: Final = 0.95
FD_CLEAR_FRACTION: Final = 0.85
_FD_DIR: Final = "/proc/self/fd"
_CGROUP_LIMIT_FILES: Final = (
    "/sys/fs/cgroup/memory.max",
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",
)
_PAGE_BYTES: Final = os.sysconf("SC_PAGE_SIZE")
ReadinessStatus = Literal["ready", "starting", "stopping", "failed", "blocked"]


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether the broker should get more clients and publishing load.

    ``status``: "ready"; "starting" (before the native port opens) or "stopping"
    (shutdown); "failed" (the message store stopped persistent writes until a restart;
    ``reason`` says why); "blocked" (a resource alarm is raised; ``alarms`` names them).
    """

    ready: bool
    status: ReadinessStatus
    reason: str | None = None
    alarms: tuple[str, ...] = ()


def decide_readiness(
    *,
    serving: bool,
    stopping: bool,
    store_failure: str | None,
    fd_alarm: bool,
    alarms: Iterable[str],
) -> Readiness:
    """The broker's readiness, most serious cause first.

    ``serving``: the listeners are open and shutdown has not begun; ``store_failure``:
    why the message store stopped, if it did; ``fd_alarm``: out of file descriptors;
    ``alarms``: the alarms that block publishers (memory, disk).
    """
    if not serving:
        return Readiness(False, "stopping" if stopping else "starting")
    if store_failure is not None:
        # Persistent publishing has stopped until a restart: an outage, not a blip.
        return Readiness(False, "failed", reason=f"message store: {store_failure}")
    if fd_alarm:
        # Out of file descriptors: new connections and log segments fail.
        return Readiness(False, "blocked", alarms=(FDS,))
    raised = tuple(sorted(alarms))
    if raised:
        # Serving, but publishers are blocked: not ready for more publishing load.
        return Readiness(False, "blocked", alarms=raised)
    return Readiness(True, "ready")


# The memory alarm clears once accounted memory is below this fraction of the limit.
MEMORY_CLEAR_FRACTION: Final = 0.9
# RSS backstop: RSS this many times the limit, with accounted memory at least
# RSS_BACKSTOP_ACCOUNTED_FRACTION of the limit, raises the memory alarm as well.
RSS_BACKSTOP_FACTOR: Final = 1.5
RSS_BACKSTOP_ACCOUNTED_FRACTION: Final = 0.5
# Accounted memory falling by this fraction of the limit (or by TRIM_RELEASE_BYTES)
# between checks is a large release: ask for a malloc_trim.
TRIM_RELEASE_FRACTION: Final = 0.25
TRIM_RELEASE_BYTES: Final = 64 * 1024 * 1024
# malloc_trim walks the whole heap: at most once per this many seconds.
TRIM_MIN_INTERVAL_S: Final = 5.0


def total_memory_bytes() -> int:
    """Physical RAM, or the cgroup's memory limit when that is lower."""
    total = os.sysconf("SC_PHYS_PAGES") * _PAGE_BYTES
    for path in _CGROUP_LIMIT_FILES:
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and 0 < int(raw) < total:
            total = int(raw)
    return total


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0


def free_disk_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def open_fds(limit: int) -> int:
    """File descriptors this process holds now: ``limit`` when not even one more can be
    opened to count them, 0 where /proc is missing."""
    try:
        return max(0, len(os.listdir(_FD_DIR)) - 1)  # less the one listdir opened
    except OSError as exc:
        return limit if exc.errno in (errno.EMFILE, errno.ENFILE) else 0


def fd_limit() -> int:
    """The soft RLIMIT_NOFILE, or 0 for none."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 0 if soft == resource.RLIM_INFINITY else int(soft)


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None on another C library (musl, macOS)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")  # CDLL releases the GIL during the call
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class MemoryTrimmer:
    """Gives freed heap pages back to the system after a large release.

    ``request()`` is cheap and may be called from hot paths (after a large frame, a
    purge); ``run_if_requested()`` is called on the broker tick and starts at most one
    ``malloc_trim(0)`` per ``TRIM_MIN_INTERVAL_S``, in a worker thread so the event loop
    never waits for it.  Without glibc it does nothing.
    """

    def __init__(self) -> None:
        self._trim = _load_malloc_trim()
        self._requested = False
        self._running = False
        self._last = -TRIM_MIN_INTERVAL_S
        self.trims = 0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def request(self) -> None:
        self._requested = True

    def run_if_requested(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Start a trim if one was asked for and the rate limit allows; True if started."""
        trim = self._trim
        if not self._requested or trim is None or self._running:
            return False
        now = time.monotonic()
        if now - self._last < TRIM_MIN_INTERVAL_S:
            return False
        self._requested = False
        self._running = True
        self._last = now
        fut = loop.run_in_executor(None, trim, 0)
        fut.add_done_callback(self._done)
        return True

    def _done(self, fut: asyncio.Future[int]) -> None:
        self._running = False
        if not fut.cancelled() and fut.exception() is None:
            self.trims += 1


class ResourceMonitor:
    def __init__(
        self,
        data_dir: str,
        memory_high_watermark: float,
        disk_free_limit_bytes: int,
        accounted_memory: Callable[[], int] | None = None,
        trimmer: MemoryTrimmer | None = None,
        fd_errors: Callable[[], int] | None = None,
        reclaimable_fds: Callable[[], int] | None = None,
    ) -> None:
        """``fd_errors``: EMFILE/ENFILE failures so far (a counter); ``reclaimable_fds``:
        open fds that can be closed on demand (idle pooled read handles)."""
        self.data_dir = data_dir
        self.memory_limit_bytes = int(total_memory_bytes() * memory_high_watermark)
        self.disk_free_limit_bytes = disk_free_limit_bytes
        self.alarms: set[str] = set()
        self.rss_bytes = 0
        self.accounted_bytes = 0
        self.disk_free_bytes = 0
        self._accounted = accounted_memory if accounted_memory is not None else (lambda: 0)
        self._trimmer = trimmer
        self._fd_errors = fd_errors if fd_errors is not None else (lambda: 0)
        self._reclaimable_fds = reclaimable_fds if reclaimable_fds is not None else (lambda: 0)
        self._fd_errors_seen = self._fd_errors()
        self.fd_alarm = False
        self.fds_open = 0
        self.fds_limit = 0

    @property
    def memory_clear_bytes(self) -> int:
        return int(self.memory_limit_bytes * MEMORY_CLEAR_FRACTION)

    def check(self) -> bool:
        """Re-measure; True if the set of raised alarms changed."""
        before = set(self.alarms)
        previous = self.accounted_bytes
        self.rss_bytes = rss_bytes()
        self.accounted_bytes = accounted = self._accounted()
        limit = self.memory_limit_bytes
        released = previous - accounted
        if self._trimmer is not None and (
            released >= TRIM_RELEASE_BYTES or released >= limit * TRIM_RELEASE_FRACTION > 0
        ):
            self._trimmer.request()
        try:
            self.disk_free_bytes = free_disk_bytes(self.data_dir)
        except OSError:
            self.disk_free_bytes = 0
        self._set(MEMORY, self._memory_alarm(MEMORY in self.alarms), self._memory_why())
        self._set(
            DISK,
            self.disk_free_bytes < self.disk_free_limit_bytes,
            f"free disk {self.disk_free_bytes} bytes below the limit "
            f"{self.disk_free_limit_bytes} bytes",
        )
        self._check_fds()
        return self.alarms != before

    def _check_fds(self) -> None:
        """Not a blocking alarm: see the module docstring."""
        self.fds_limit = limit = fd_limit()
        self.fds_open = open_fds(limit)
        errors = self._fd_errors()
        failed = errors > self._fd_errors_seen
        self._fd_errors_seen = errors
        in_use = self.fds_open - self._reclaimable_fds()
        fraction = FD_CLEAR_FRACTION if self.fd_alarm else FD_ALARM_FRACTION
        short = failed or (limit > 0 and in_use >= limit * fraction)
        why = (
            f"{self.fds_open} fds open ({in_use} not reclaimable) of a limit of {limit}, "
            f"{errors} EMFILE/ENFILE failures so far"
        )
        if short and not self.fd_alarm:
            log.warning("%s alarm raised: %s; raise the open-file limit (ulimit -n)", FDS, why)
        elif not short and self.fd_alarm:
            log.warning("%s alarm cleared: %s", FDS, why)
        self.fd_alarm = short

    def _memory_alarm(self, raised: bool) -> bool:
        limit = self.memory_limit_bytes
        accounted = self.accounted_bytes
        # Hysteresis: once raised, the thresholds drop to MEMORY_CLEAR_FRACTION of them.
        scale = MEMORY_CLEAR_FRACTION if raised else 1.0
        if accounted >= limit * scale:
            return True
        return (
            self.rss_bytes >= limit * RSS_BACKSTOP_FACTOR * scale
            and accounted >= limit * RSS_BACKSTOP_ACCOUNTED_FRACTION * scale
        )

    def _memory_why(self) -> str:
        return (
            f"accounted memory {self.accounted_bytes} bytes (RSS {self.rss_bytes} bytes), "
            f"high watermark {self.memory_limit_bytes} bytes"
        )

    def _set(self, name: str, raised: bool, why: str) -> None:
        if raised and name not in self.alarms:
            self.alarms.add(name)
            log.warning("%s alarm raised: %s; publishers are blocked", name, why)
        elif not raised and name in self.alarms:
            self.alarms.discard(name)
            log.warning("%s alarm cleared: %s", name, why)
