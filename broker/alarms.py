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

``MemoryTrimmer`` gives freed heap memory back to the system (glibc ``malloc_trim``)
after large releases, rate limited, in a worker thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

log = logging.getLogger("wharf.alarms")

MEMORY: Final = "memory"
DISK: Final = "disk"
_CGROUP_LIMIT_FILES: Final = (
    "/sys/fs/cgroup/memory.max",
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",
)
_PAGE_BYTES: Final = os.sysconf("SC_PAGE_SIZE")
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
    ) -> None:
        self.data_dir = data_dir
        self.memory_limit_bytes = int(total_memory_bytes() * memory_high_watermark)
        self.disk_free_limit_bytes = disk_free_limit_bytes
        self.alarms: set[str] = set()
        self.rss_bytes = 0
        self.accounted_bytes = 0
        self.disk_free_bytes = 0
        self._accounted = accounted_memory if accounted_memory is not None else (lambda: 0)
        self._trimmer = trimmer

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
        return self.alarms != before

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
