"""Segment lifetime in the message store, stepped by hand.

The store's worker thread is replaced by an executor that runs a job only when the test
says so, so the interleavings that used to race (a roll while a batch is in flight, an
ack of everything in a segment whose last bytes are not written yet, an interval fsync
due while a write is in flight) happen on every run, in the order the test chooses.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import pytest

from wharf.broker.store.records import DELAYS, scan
from wharf.broker.store.segments import MAX_READ_FDS, MessageStore, Segment
from wharf.protocol.errors import ResourceError

BODY = b"x" * 100
# A MSGS record of one BODY is ~130 bytes: two fit in a segment, the third rolls.
SEGMENT_BYTES = 200
UID = 7


class ManualExecutor(Executor):
    """Runs submitted jobs one at a time, in order, when ``run_next`` is called."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        self.jobs.append((fut, fn, args))
        return fut

    def run_next(self) -> None:
        fut, fn, args = self.jobs.pop(0)
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # handed to the store's done callback
            fut.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        while self.jobs:
            self.run_next()


async def loop_turns() -> None:
    """Let the loop run the done callbacks of a finished job (no wall-clock wait)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def step(ex: ManualExecutor) -> None:
    ex.run_next()
    await loop_turns()


def open_store(tmp_path: Path, ex: ManualExecutor, **kwargs: Any) -> MessageStore:
    store = MessageStore(tmp_path, segment_bytes=SEGMENT_BYTES, executor=ex, **kwargs)
    store.open_for_append([])
    return store


def append(store: MessageStore, position: int) -> Segment:
    seg, _ = store.append_messages(UID, position, "", "q", None, [BODY])
    return seg


async def test_segment_acked_while_its_last_bytes_are_pending_is_deleted_after_them(
    tmp_path: Path,
) -> None:
    ex = ManualExecutor()
    store = open_store(tmp_path, ex)
    first = append(store, 0)
    await loop_turns()
    assert len(ex.jobs) == 1  # batch 1 (message 0) is in flight
    assert append(store, 1) is first  # waits for batch 2
    second = append(store, 2)
    assert second is not first and store.active is second  # rolled
    # Everything in the first segment is acked while its last bytes are not written.
    store.settle(UID, 0, first)
    store.settle(UID, 1, first)
    await step(ex)  # batch 1 done
    assert store.failed is None
    assert first.path.exists() and first.fd >= 0, "deleted with bytes still to write"
    await step(ex)  # batch 2: message 1, message 2, the acks
    assert store.failed is None
    assert store.durable_batch == 2
    assert not first.path.exists()
    assert first.fd == -1
    assert [s.number for s in store.segments] == [second.number]
    store.close()


async def test_finished_segments_hold_no_write_fd(tmp_path: Path) -> None:
    ex = ManualExecutor()
    store = open_store(tmp_path, ex)
    for pos in range(40):
        append(store, pos)  # a roll every second message; nothing is acked
        await loop_turns()
        while ex.jobs:
            await step(ex)
    assert store.failed is None
    assert len(store.segments) == 20
    assert [s for s in store.segments if s.fd >= 0] == [store.active]
    assert store.open_fds() == 2  # the active segment's and the directory's
    # Paging reads use a bounded set of read fds.
    for seg in store.segments:
        store.read_record(seg.number, 0)
    assert store.open_fds() == 2 + MAX_READ_FDS
    store.close()
    assert store.open_fds() == 0


async def test_interval_fsync_runs_while_a_write_is_in_flight(tmp_path: Path) -> None:
    ex = ManualExecutor()
    store = open_store(tmp_path, ex, fsync_interval_ms=60_000)  # ticks driven by hand
    append(store, 0)
    await loop_turns()
    await step(ex)  # batch 1 written, not fsynced
    assert store.durable_batch == 1 and store.synced_batch == 0
    append(store, 1)
    await loop_turns()
    assert len(ex.jobs) == 1  # batch 2 in flight
    store._fsync_tick()  # the interval came due now
    assert len(ex.jobs) == 2, "the interval fsync was skipped because a write was in flight"
    await step(ex)  # batch 2 written
    await step(ex)  # the fsync, queued behind it, covers both batches
    assert store.synced_batch == 2
    assert store.fsyncs >= 1
    store.close()


async def test_compacted_segment_waits_for_the_copies_fsync(tmp_path: Path) -> None:
    """fsync_interval_ms: a written-but-unsynced copy does not let the original go."""
    ex = ManualExecutor()
    store = open_store(tmp_path, ex, fsync_interval_ms=60_000)
    old = append(store, 0)
    append(store, 1)
    await loop_turns()
    while ex.jobs:
        await step(ex)
    store._fsync_tick()
    await step(ex)
    store.settle(UID, 1, old)
    append(store, 2)  # rolls: the old segment is no longer active
    # Compaction copies message 0 forward.
    store.append_messages(UID, 0, "", "q", None, [BODY])
    store.moved(old, 1)
    await loop_turns()
    while ex.jobs:
        await step(ex)
    assert store.durable_batch >= 2 and store.synced_batch < store.durable_batch
    assert old.path.exists(), "deleted before the copy was fsynced"
    store._fsync_tick()
    await step(ex)
    assert store.synced_batch == store.durable_batch
    assert not old.path.exists()
    store.close()


async def test_delays_many_writes_one_record(tmp_path: Path) -> None:
    ex = ManualExecutor()
    store = open_store(tmp_path, ex)
    store.delays_many(UID, [[3, 1000], [4, 2000]])
    await loop_turns()
    while ex.jobs:
        await step(ex)
    active = store.active
    assert active is not None
    with active.path.open("rb") as f:
        recs = scan(f).records
    assert [(r.rtype, r.payload) for r in recs] == [(DELAYS, [UID, [[3, 1000], [4, 2000]]])]
    store.close()


async def run_all(ex: ManualExecutor) -> None:
    """Run every job the store submits until it is idle."""
    await loop_turns()
    while ex.jobs:
        await step(ex)


def _no_fd_for(monkeypatch: pytest.MonkeyPatch, refuse: Callable[[Path], bool]) -> None:
    """From now on ``os.open`` of a path ``refuse`` picks fails as with no free fd."""
    real_open = os.open

    def open_(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        if refuse(Path(path)):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", open_)


async def test_a_roll_out_of_fds_refuses_the_publish_and_the_store_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first write into a new segment fsyncs the directory: that took a new fd, and
    with none free the batch failed, and with it the store for good.  A roll that finds
    no fd refuses the publish asking for it (ResourceError) and changes nothing; other
    records go to the full segment until an fd is free."""
    ex = ManualExecutor()
    store = open_store(tmp_path, ex)
    first = append(store, 0)
    append(store, 1)  # the segment is full now
    await run_all(ex)
    # The directory can no longer be opened: the roll must not need it.
    _no_fd_for(monkeypatch, lambda p: p.is_dir())
    second = append(store, 2)  # rolls
    assert second is not first
    await run_all(ex)
    assert store.failed is None, store.failed
    assert store.durable_batch == store.batch - 1  # everything appended is on disk
    # Now no segment can be opened either.
    _no_fd_for(monkeypatch, lambda p: p.suffix == ".seg")
    append(store, 3)  # full again
    with pytest.raises(ResourceError, match="out of file descriptors"):
        store.ensure_room()
    assert store.active is second and store.fd_errors == 1
    store.delivered(UID, 3)  # a watermark: appended to the full segment
    await run_all(ex)
    assert store.failed is None and store.active is second
    monkeypatch.undo()  # fds are free again
    store.ensure_room()
    third = append(store, 4)
    assert third is not second
    await run_all(ex)
    assert store.failed is None and store.durable_batch == store.batch - 1
    store.close()
