"""Read handles of closed log segments: a broker-wide LRU with a maximum.

As Kafka bounds its file handles, a log partition keeps only its active segment open
(for appends).  A closed segment is opened read-only on demand, through one pool
shared by every partition of the broker (``log_max_open_segments``), and closed
again when it is the least recently used and the pool is full.  So the log layer
holds one fd per partition plus at most ``max_open`` read fds, plus a few short-lived
ones in worker threads (one at a time per fsync job, see partition.py), whatever the
number of segments on disk.  Index files hold no fd: they are read once into memory
(index.py).

A reader *pins* a handle for the time it uses it (``acquire`` / ``release``); a pinned
handle is never closed by eviction.  ``discard`` (retention deleted the segment,
compaction swapped a new file in under its name) drops the handle from the pool at
once, but a pinned one is closed only at its last ``release``: a reader that had it
keeps reading the file it opened (unlinked files stay readable through an open fd),
never EBADF and never another file that reused the number.  When every handle is
pinned the pool goes over its maximum for a moment rather than fail the read.

EMFILE/ENFILE when opening: the pool closes its idle handles and tries once more;
if that fails too the caller gets ``ResourceError`` (506), not an internal error.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Final

from wharf.protocol.errors import ResourceError, WharfError

log = logging.getLogger("wharf.topics")

DEFAULT_MAX_OPEN_SEGMENTS: Final = 256
# errno values that mean "out of file descriptors" (process or system-wide).
FD_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE})


def out_of_fds(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FD_EXHAUSTED


def fd_error(what: str, exc: OSError) -> WharfError:
    """The client-facing error for a file-descriptor shortage."""
    return ResourceError(
        f"{what}: the broker is out of file descriptors ({exc.strerror}); retry later, "
        "and raise the broker's open-file limit (ulimit -n / LimitNOFILE) or lower "
        "log_max_open_segments",
        details={"errno": exc.errno},
    )


class Handle:
    """One open read fd of a segment file."""

    __slots__ = ("fd", "pins", "dropped")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pins = 0
        self.dropped = False  # no longer in the pool: closed at the last release


class SegmentHandles:
    """The pool.  Keys are whatever identifies one segment file's current version
    (the ``Segment`` object); single-threaded (event loop, or start-up)."""

    def __init__(self, max_open: int = DEFAULT_MAX_OPEN_SEGMENTS) -> None:
        if max_open < 1:
            raise ValueError("max_open must be >= 1")
        self.max_open = max_open
        self._open: OrderedDict[object, Handle] = OrderedDict()
        self.opened_total = 0  # for /metrics and tests
        self.fd_errors_total = 0

    def __len__(self) -> int:
        return len(self._open)

    @property
    def idle(self) -> int:
        """Open handles nobody is reading through (closable on demand)."""
        return sum(1 for h in self._open.values() if not h.pins)

    @property
    def pinned(self) -> int:
        return sum(1 for h in self._open.values() if h.pins)

    def acquire(self, key: object, path: Path) -> Handle:
        """A pinned read handle of ``path``; call ``release`` when done.  Raises
        ResourceError when no fd can be had, FileNotFoundError when it is gone."""
        h = self._open.get(key)
        if h is not None:
            self._open.move_to_end(key)
            h.pins += 1
            return h
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if not out_of_fds(exc):
                raise
            self.fd_errors_total += 1
            freed = self.close_idle()
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as again:
                if out_of_fds(again):
                    log.warning(
                        "out of file descriptors opening log segment %s (%d idle read "
                        "handles closed first): %s",
                        path,
                        freed,
                        again,
                    )
                    raise fd_error("reading a log segment", again) from again
                raise
        self.opened_total += 1
        h = Handle(fd)
        h.pins = 1
        self._open[key] = h
        self._evict()
        return h

    def release(self, h: Handle) -> None:
        h.pins -= 1
        if h.pins == 0 and h.dropped:
            _close(h)
        elif len(self._open) > self.max_open:
            self._evict()

    def discard(self, key: object) -> None:
        """The segment is deleted or replaced: forget its handle (closed now, or at
        the last release when pinned)."""
        h = self._open.pop(key, None)
        if h is None:
            return
        h.dropped = True
        if h.pins == 0:
            _close(h)

    def close_idle(self) -> int:
        """Close every unpinned handle (EMFILE relief, shutdown); how many."""
        idle = [k for k, h in self._open.items() if not h.pins]
        for k in idle:
            _close(self._open.pop(k))
        return len(idle)

    def _evict(self) -> None:
        if len(self._open) <= self.max_open:
            return
        for k in [k for k, h in self._open.items() if not h.pins]:
            _close(self._open.pop(k))
            if len(self._open) <= self.max_open:
                return


def _close(h: Handle) -> None:
    if h.fd >= 0:
        os.close(h.fd)
        h.fd = -1


# The pool of partitions made without one (tools, unit tests); the broker makes its own.
SHARED: Final = SegmentHandles()
