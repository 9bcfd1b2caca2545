"""A stream's fetcher: one FETCH_MANY in flight at a time, refilled from callbacks.

The request covers every partition of the record buffer's fetch positions except
paused and failed ones, each at its fetch position, and long-polls up to
``fetch_max_wait``.  The next request goes out as soon as an answer is in while the
buffer holds less than ``fetch_max_bytes`` of not-yet-handed-out batches, so records
arrive while the application handles earlier ones (the stream lets the event loop
run once per decoded piece while a request is in flight, so that an answer is read
when it comes, not when the buffer runs dry).  No task: the connection calls back
with the answer as soon as it is read.  A request made stale by a seek, pause or
rebalance is abandoned (its answer is dropped) and a new one is sent at once.
"""

from __future__ import annotations

from typing import Protocol

from wharf.protocol import frames as F
from wharf.protocol.errors import ConnectionLost, OffsetOutOfRange, WharfError, error_from_code

from .core import NEW_REQUEST, ConnectionCore, Reply, clone_error, result_of
from .stream_buffer import RecordBuffer, TopicPartition

# A request in flight: (request id, the connection it went out on, {tp: offset asked}).
_Inflight = tuple[int, ConnectionCore, dict[TopicPartition, int]]


class FetchListener(Protocol):
    """What the fetcher tells its stream."""

    def records_arrived(self) -> None: ...

    def out_of_range(self, tp: TopicPartition) -> None:
        """The fetch position of ``tp`` is outside the log (it was dropped from the
        fetch positions: fetching ``tp`` stops until a new position is set)."""

    def partition_failed(self, tp: TopicPartition, error: WharfError) -> None:
        """Fetching ``tp`` failed (it is in ``failed`` now)."""

    def fetch_failed(self, error: WharfError) -> None:
        """The whole request failed (e.g. the connection is gone)."""


class Fetcher:
    __slots__ = (
        "core",
        "buf",
        "listener",
        "fetch_max_bytes",
        "max_partition_fetch_bytes",
        "max_wait_ms",
        "enabled",
        "paused",
        "failed",
        "high_watermarks",
        "isolation_level",
        "_inflight",
    )

    def __init__(
        self,
        buf: RecordBuffer,
        listener: FetchListener,
        *,
        fetch_max_bytes: int,
        max_partition_fetch_bytes: int,
        fetch_max_wait_s: float,
        isolation_level: int = F.READ_UNCOMMITTED,
    ) -> None:
        # The connection to fetch on; the stream sets it (again after a reconnect).
        self.core: ConnectionCore | None = None
        self.buf = buf
        self.listener = listener
        self.fetch_max_bytes = fetch_max_bytes
        self.max_partition_fetch_bytes = max_partition_fetch_bytes
        self.max_wait_ms = int(fetch_max_wait_s * 1000)
        self.enabled = False
        self.paused: set[TopicPartition] = set()
        # Not fetched until a new position is set (an error was reported for them).
        self.failed: set[TopicPartition] = set()
        # With READ_COMMITTED the broker answers last stable offsets as high watermarks.
        self.high_watermarks: dict[TopicPartition, int] = {}
        self.isolation_level = isolation_level
        self._inflight: _Inflight | None = None

    def maybe_fetch(self) -> None:
        """Send the next request unless one is in flight or the buffer is full."""
        if self._inflight is not None or not self.enabled:
            return
        buf = self.buf
        room = self.fetch_max_bytes - buf.nbytes
        core = self.core
        if room <= 0 or core is None:
            return
        if core.ended:
            self.enabled = False
            assert core.closed_error is not None
            self.listener.fetch_failed(clone_error(core.closed_error))
            return
        paused = self.paused
        failed = self.failed
        per_partition = self.max_partition_fetch_bytes
        asked: dict[TopicPartition, int] = {}
        wire = []
        for tp, offset in buf.fetch_positions.items():
            if (paused or failed) and (tp in paused or tp in failed):
                continue
            asked[tp] = offset
            wire.append([tp[0], tp[1], offset, per_partition])
        if not wire:
            return
        # At least one partition's worth, so a nearly full buffer still makes progress.
        max_bytes = min(max(room, per_partition), self.fetch_max_bytes)

        def answered(reply: Reply | None, error: WharfError | None) -> None:
            self._answered(inflight, reply, error)

        rid = core.start_request_cb(
            F.FetchMany(NEW_REQUEST, wire, self.max_wait_ms, max_bytes, self.isolation_level),
            callback=answered,
        )
        # Written now, not at the end of this loop iteration: the application may go
        # through a whole piece before it yields to the loop, and the broker should
        # be reading the next records meanwhile.
        core.flush()
        inflight = self._inflight = (rid, core, asked)

    @property
    def in_flight(self) -> bool:
        return self._inflight is not None

    def abandon(self) -> None:
        """Forget the request in flight: its answer will be dropped."""
        inflight = self._inflight
        if inflight is not None:
            self._inflight = None
            inflight[1].abandon_request(inflight[0])

    def refetch(self) -> None:
        """Positions changed: fetch from the new ones now, not after the long poll."""
        self.abandon()
        self.maybe_fetch()

    def _answered(self, inflight: _Inflight, reply: Reply | None, error: WharfError | None) -> None:
        if self._inflight is not inflight:
            return  # abandoned
        self._inflight = None
        if error is not None or reply is None:
            self.listener.fetch_failed(error or ConnectionLost("the fetch got no answer"))
            return
        result = result_of(reply)
        asked = inflight[2]
        buf = self.buf
        fetch_positions = buf.fetch_positions
        paused = self.paused
        listener = self.listener
        added = False
        for entry in result.get("results", ()):
            topic, partition, code = entry[0], entry[1], entry[2]
            tp = (topic, partition)
            requested = asked.get(tp)
            if requested is None or tp in paused or fetch_positions.get(tp) != requested:
                continue  # a seek, pause or revocation made this answer stale
            self.high_watermarks[tp] = entry[3]
            if code == 0:
                if buf.add(tp, requested, entry[5]):
                    added = True
            elif code == OffsetOutOfRange.code:
                del fetch_positions[tp]
                listener.out_of_range(tp)
            else:
                self.failed.add(tp)
                message = f"fetching partition {partition} of topic '{topic}': {entry[5]}"
                listener.partition_failed(
                    tp, error_from_code(code, message, {"topic": topic, "partition": partition})
                )
        if added:
            listener.records_arrived()
        self.maybe_fetch()
