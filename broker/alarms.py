"""Resource alarms: memory high watermark and free-disk limit.

Checked once per broker tick (about a second), never per message.  While an alarm
is raised, the broker blocks publishing connections (BLOCKED frame, then it stops
reading a connection once it publishes) until every alarm clears, as RabbitMQ does.
"""

from __future__ import annotations

import logging
import os
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


class ResourceMonitor:
    def __init__(
        self, data_dir: str, memory_high_watermark: float, disk_free_limit_bytes: int
    ) -> None:
        self.data_dir = data_dir
        self.memory_limit_bytes = int(total_memory_bytes() * memory_high_watermark)
        self.disk_free_limit_bytes = disk_free_limit_bytes
        self.alarms: set[str] = set()
        self.rss_bytes = 0
        self.disk_free_bytes = 0

    def check(self) -> bool:
        """Re-measure; True if the set of raised alarms changed."""
        before = set(self.alarms)
        self.rss_bytes = rss_bytes()
        try:
            self.disk_free_bytes = free_disk_bytes(self.data_dir)
        except OSError:
            self.disk_free_bytes = 0
        self._set(
            MEMORY,
            self.rss_bytes > self.memory_limit_bytes,
            f"memory use {self.rss_bytes} bytes above the high watermark "
            f"{self.memory_limit_bytes} bytes",
        )
        self._set(
            DISK,
            self.disk_free_bytes < self.disk_free_limit_bytes,
            f"free disk {self.disk_free_bytes} bytes below the limit "
            f"{self.disk_free_limit_bytes} bytes",
        )
        return self.alarms != before

    def _set(self, name: str, raised: bool, why: str) -> None:
        if raised and name not in self.alarms:
            self.alarms.add(name)
            log.warning("%s alarm raised: %s; publishers are blocked", name, why)
        elif not raised and name in self.alarms:
            self.alarms.discard(name)
            log.warning("%s alarm cleared", name)
