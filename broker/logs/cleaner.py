"""The log cleaner: compacts the partitions of topics whose cleanup_policy has "compact".

As Kafka's log cleaner.  Every ``log_cleaner_interval_ms`` the cleaner looks at each
partition of the compacted topics and cleans at most one: the one with the highest
*dirty ratio* (bytes of closed segments not yet covered by a pass / bytes of closed
segments) above the topic's ``min_cleanable_dirty_ratio``, or else one that holds a
tombstone whose delete horizon has passed.  The active segment never takes part.

A pass (compaction.py has the rules for records and batches):

1. worker thread: build the offset map, write ``<segment>.log.cleaned`` for every
   closed segment that changes, scan each one to build its index and write
   ``<segment>.index.cleaned`` / ``.timeindex.cleaned``, all fsynced;
2. event loop, in one step (so no fetch sees half of it): check that the partition
   still has those segments unchanged (retention or a topic deletion meanwhile
   abandons the pass); then for each segment, oldest first, delete the old index
   files, rename the cleaned log over the segment, rename the cleaned index files
   into place, and point the in-memory segment at the new file and index.  A merged
   segment (compaction.py, step 3) is renamed to ``<first>.log.swap-<end>`` first,
   then the segments it replaces are deleted, then it is renamed to ``<first>.log``;
   start-up completes a swap a crash interrupted (``complete_swaps``).  Readers that
   hold a pinned handle of a replaced file keep reading it (handles.py);
3. worker thread: fsync the directory, then write the new checkpoint.

A crash at any point leaves each segment either old or cleaned, both valid: a
tombstone is never removed in the pass that removes the values it deletes (that pass
stamps its delete horizon), and segments are swapped oldest first.  Index files are
deleted before their log is replaced, so a crash leaves them missing (rebuilt at
start) rather than describing the other version.  ``.cleaned`` files of an
interrupted pass are deleted the first time the cleaner looks at the partition.

Checkpoint file ``<partition dir>/cleaner-checkpoint`` (JSON, written atomically)::

    {"dirty_offset": <first offset no pass has covered>,
     "tombstone_horizon": <earliest delete horizon of a tombstone still kept, or -1>}
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

from ..store.fsio import FAULTS, fsync, fsync_dir, record_synced_many, write_all, write_atomically
from .compaction import (
    CLEANED_SUFFIX,
    OFFSET_MAP_BUDGET_BYTES,
    Aborted,
    CleanAborted,
    CleanResult,
    CorruptSegment,
    SegmentFile,
    clean_partition,
    dirty_ratio,
    discard,
    segment_ends,
    swap_path,
)
from .index import SegmentIndex, index_paths, scan_log
from .txnindex import txn_index_path

if TYPE_CHECKING:
    from .partition import Partition
    from .segment import Segment
    from .topics import TopicRegistry

log = logging.getLogger("wharf.topics.cleaner")

_T = TypeVar("_T")

CHECKPOINT_FILE: Final = "cleaner-checkpoint"
# How long broker shutdown waits for a pass's worker thread to notice the abort.
CLOSE_TIMEOUT_S: Final = 5.0


@dataclass(slots=True, frozen=True)
class Checkpoint:
    dirty_offset: int = 0
    tombstone_horizon: int = -1


class _Plan(NamedTuple):
    partition: Partition
    segments: list[SegmentFile]
    limit_offset: int  # where the cleanable range ends: the first segment left out
    checkpoint: Checkpoint
    ratio: float


class _Prepared(NamedTuple):
    result: CleanResult
    indexes: dict[int, SegmentIndex]  # base offset -> index of the cleaned segment


class LogCleaner:
    """Schedules compaction passes, one partition at a time, and swaps their output in."""

    def __init__(
        self,
        registry: TopicRegistry,
        interval_ms: int,
        *,
        budget_bytes: int = OFFSET_MAP_BUDGET_BYTES,
    ) -> None:
        self.registry = registry
        self.interval_s = interval_ms / 1000
        self.budget_bytes = budget_bytes
        # Counters for /metrics.
        self.runs = 0
        self.bytes_removed = 0
        # Per live partition: its checkpoint, and the partitions a pass found corrupt
        # (left alone until a restart).  Weak: a deleted topic's partitions drop out.
        self._checkpoints: weakref.WeakKeyDictionary[Partition, Checkpoint] = (
            weakref.WeakKeyDictionary()
        )
        self._broken: weakref.WeakSet[Partition] = weakref.WeakSet()
        self._abort = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._worker: asyncio.Future[Any] | None = None  # the running thread's future
        self._sync_log = FAULTS.sync_log  # fsio's sync log (tests), passed to finish_pass

    # -- scheduling ----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="log-cleaner")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.clean_once()
            except Exception:
                log.exception("log cleaner pass failed")

    async def close(self) -> None:
        """Stop: abandon a running pass (its worker stops at the next batch)."""
        self._abort.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        worker = self._worker
        if worker is not None and not worker.done():
            await asyncio.wait([worker], timeout=CLOSE_TIMEOUT_S)

    async def clean_once(self, now_ms: int | None = None) -> bool:
        """Clean the partition that needs it most, if any; True when one was cleaned."""
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        plan = self._choose(now_ms)
        if plan is None:
            return False
        return await self._clean(plan, now_ms)

    def _choose(self, now_ms: int) -> _Plan | None:
        """The filthiest partition over its threshold, else one with a tombstone past
        its horizon.  Ranked from in-memory sizes; only the one picked is checked for
        closed segments whose index files are still being written after a roll."""
        filthy: list[_Plan] = []
        expired: list[_Plan] = []
        for topic in list(self.registry.topics.values()):
            if not topic.config.compacts:
                continue
            for part in topic.partitions:
                if part.closed or part.failed is not None or part in self._broken:
                    continue
                plan = self._plan(part, check_indexes=False)
                if plan is None:
                    continue
                if plan.ratio > part.config.min_cleanable_dirty_ratio:
                    filthy.append(plan)
                elif 0 <= plan.checkpoint.tombstone_horizon <= now_ms:
                    expired.append(plan)
        filthy.sort(key=lambda p: p.ratio, reverse=True)
        for rough in filthy + expired:
            part = rough.partition
            plan = self._plan(part, check_indexes=True)
            if plan is not None and (
                plan.ratio > part.config.min_cleanable_dirty_ratio
                or 0 <= plan.checkpoint.tombstone_horizon <= now_ms
            ):
                return plan
        return None

    def _plan(self, part: Partition, *, check_indexes: bool) -> _Plan | None:
        checkpoint = self._checkpoint(part)
        closed: list[SegmentFile] = []
        limit = part.segments[-1].base_offset
        stable = part.last_stable_offset
        for seg in part.segments[:-1]:
            if seg.next_offset > stable:
                # An open transaction's batches may be in it: their fate is unknown.
                limit = seg.base_offset
                break
            if check_indexes and not _index_written(seg):
                # Still being finished after its roll (index files not yet written):
                # cleaning stops before it this time.
                limit = seg.base_offset
                break
            closed.append(SegmentFile(seg.base_offset, seg.path, seg.size))
        if not closed:
            return None
        dirty = checkpoint.dirty_offset
        if dirty < part.earliest or dirty > part.latest:
            dirty = part.earliest  # retention moved the log start, or data was lost
            checkpoint = Checkpoint(dirty, checkpoint.tombstone_horizon)
        ratio = dirty_ratio(closed, dirty, limit)
        return _Plan(part, closed, limit, checkpoint, ratio)

    def _checkpoint(self, part: Partition) -> Checkpoint:
        cp = self._checkpoints.get(part)
        if cp is None:
            removed = remove_leftovers(part.path)
            if removed:
                log.info("%s: removed %d files of an interrupted clean", part.path, removed)
            cp = read_checkpoint(part.path, part.earliest)
            self._checkpoints[part] = cp
        return cp

    # -- one pass ------------------------------------------------------------------

    async def _clean(self, plan: _Plan, now_ms: int) -> bool:
        part = plan.partition
        keep = frozenset(
            entry.batches[-1][2] for entry in part.producers.producers.values() if entry.batches
        )
        job = functools.partial(
            prepare,
            plan.segments,
            dirty_offset=plan.checkpoint.dirty_offset,
            limit_offset=plan.limit_offset,
            now_ms=now_ms,
            delete_retention_ms=part.config.delete_retention_ms,
            keep_batches=keep,
            budget_bytes=self.budget_bytes,
            abort=self._abort,
            merge_bytes=part.config.segment_bytes,
            # Aborted transactions below the limit all have their markers already:
            # a copy is complete for the pass (the table changes on the loop).
            aborted=part.aborted.copy().aborted if part.aborted else None,
        )
        try:
            prepared = await self._in_worker(job)
        except CleanAborted:
            return False
        except CorruptSegment as exc:
            log.error(
                "topic %s partition %d: not compacting it until a restart: %s",
                part.topic,
                part.number,
                exc,
            )
            self._broken.add(part)
            return False
        except OSError as exc:
            if part.closed or any(not s.path.exists() for s in plan.segments):
                log.info("%s: clean abandoned, its segments changed (%s)", part.path, exc)
            else:
                log.error("%s: clean failed: %s", part.path, exc)
            return False
        result = prepared.result
        sizes = {s.base_offset: s.size for s in plan.segments}
        swapped = swap_in(part, prepared, sizes)
        if swapped is None:
            discard_all(result)
            log.info("%s: clean abandoned, its segments changed meanwhile", part.path)
            return False
        if len(swapped) < len(result.segments):
            discard_all(result)  # a rename failed: what was swapped stays, the rest goes
            self._broken.add(part)
            return False
        checkpoint = Checkpoint(result.end_offset, result.stats.tombstone_horizon)
        self._checkpoints[part] = checkpoint
        self.runs += 1
        self.bytes_removed += result.stats.bytes_removed
        stats = result.stats
        log.info(
            "topic %s partition %d: compacted offsets %d..%d (dirty ratio %.2f): "
            "%d segments rewritten, %d records and %d bytes removed",
            part.topic,
            part.number,
            part.earliest,
            result.end_offset - 1,
            plan.ratio,
            len(swapped),
            stats.records_removed,
            stats.bytes_removed,
        )
        finish = functools.partial(
            finish_pass, part.path, [(s.path, s.size) for s in swapped], checkpoint, self._sync_log
        )
        try:
            await self._in_worker(finish)
        except OSError as exc:
            log.error("%s: storing the cleaner checkpoint failed: %s", part.path, exc)
        return True

    async def _in_worker(self, job: Callable[[], _T]) -> _T:
        """Run ``job`` in a worker thread; a cancelled caller does not cancel it (close()
        waits for it instead)."""
        fut = asyncio.get_running_loop().run_in_executor(None, job)
        fut.add_done_callback(self._worker_done)
        self._worker = fut
        return await asyncio.shield(fut)

    def _worker_done(self, fut: asyncio.Future[Any]) -> None:
        if self._worker is fut:
            self._worker = None
        if not fut.cancelled():
            fut.exception()  # retrieved even when the caller was cancelled


# -- worker-thread steps ---------------------------------------------------------------


def prepare(
    segments: list[SegmentFile],
    *,
    dirty_offset: int,
    limit_offset: int,
    now_ms: int,
    delete_retention_ms: int,
    keep_batches: Collection[int],
    budget_bytes: int,
    abort: threading.Event | None = None,
    merge_bytes: int = 0,
    aborted: Aborted = None,
) -> _Prepared:
    """Step 1 of a pass: cleaned (and merged) logs and their index files, all fsynced."""
    result = clean_partition(
        segments,
        dirty_offset=dirty_offset,
        limit_offset=limit_offset,
        now_ms=now_ms,
        delete_retention_ms=delete_retention_ms,
        keep_batches=keep_batches,
        budget_bytes=budget_bytes,
        abort=abort,
        merge_bytes=merge_bytes,
        aborted=aborted,
    )
    ends = dict(
        zip((s.base_offset for s in segments), segment_ends(segments, limit_offset), strict=True)
    )
    indexes: dict[int, SegmentIndex] = {}
    try:
        for c in result.segments:
            end = c.end_offset if c.merged else ends[c.base_offset]
            scan = scan_log(c.cleaned, c.base_offset, end)
            if scan.problem is not None or scan.valid_bytes != c.size:
                raise CorruptSegment(
                    f"the cleaned copy of {c.source} does not scan: {scan.problem}"
                )
            scan.segment_index.finish()
            for path, data in zip(
                index_paths(c.source),
                (scan.segment_index.offset_bytes(), scan.segment_index.time_bytes()),
                strict=True,
            ):
                _write_synced(_cleaned(path), data)
            indexes[c.base_offset] = scan.segment_index
    except BaseException:
        discard_all(result)
        raise
    return _Prepared(result, indexes)


def finish_pass(
    partition_dir: Path,
    swapped: list[tuple[Path, int]],
    checkpoint: Checkpoint,
    sync_log: str | None,
) -> None:
    """Step 3 of a pass: make the renames durable, then store the checkpoint."""
    fsync_dir(partition_dir)
    if sync_log:
        entries: list[tuple[Path, int]] = []
        for path, size in swapped:
            entries.append((path, size))
            entries.extend((p, p.stat().st_size) for p in index_paths(path) if p.exists())
        record_synced_many(entries)
    write_checkpoint(partition_dir, checkpoint)


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data, path)
        fsync(fd, path)
    finally:
        os.close(fd)


def _cleaned(path: Path) -> Path:
    return path.with_name(path.name + CLEANED_SUFFIX)


def discard_all(result: CleanResult) -> None:
    """Remove every ``.cleaned`` file of a pass that is not (fully) swapped in."""
    discard(result.segments)
    for c in result.segments:
        for p in index_paths(c.source):
            with contextlib.suppress(FileNotFoundError):
                _cleaned(p).unlink()


# -- event-loop step -------------------------------------------------------------------


def swap_in(part: Partition, prepared: _Prepared, sizes: dict[int, int]) -> list[Segment] | None:
    """Step 2 of a pass, synchronous on the loop: put the cleaned segments in place.
    None when the partition changed since the pass was planned (nothing done); else
    the segments swapped, fewer than planned only when a rename failed."""
    if part.closed or part.failed is not None:
        return None
    by_base = {s.base_offset: s for s in part.segments[:-1]}
    by_path = {s.path: s for s in part.segments[:-1]}
    cleaned = prepared.result.segments
    for c in cleaned:
        seg = by_base.get(c.base_offset)
        if seg is None or seg.path != c.source or seg.size != sizes[c.base_offset]:
            return None
        for m in c.merged:
            member = by_path.get(m)
            if member is None or member.size != sizes[member.base_offset]:
                return None
    swapped: list[Segment] = []
    for c in cleaned:
        seg = by_base[c.base_offset]
        off_path, time_path = index_paths(seg.path)
        members = [by_path[m] for m in c.merged]
        try:
            if members:
                # A merge replaces several files: through a swap file, so that a crash
                # leaves either the old segments or the merged one (complete_swaps).
                swap = swap_path(seg.path, c.end_offset)
                os.rename(c.cleaned, swap)
                for old in (seg, *members):
                    # The merged segment's .txnindex is rebuilt from its markers at
                    # the next start (load_txn_index finds none).
                    for p in (old.path, *index_paths(old.path), txn_index_path(old.path)):
                        with contextlib.suppress(FileNotFoundError):
                            p.unlink()
                os.rename(swap, seg.path)
            else:
                for p in (off_path, time_path):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                os.rename(c.cleaned, seg.path)
        except OSError as exc:
            log.error(
                "%s: swapping in the cleaned segment failed (%s); not compacting this "
                "partition until a restart",
                seg.path,
                exc,
            )
            return swapped
        # Pooled read handles of the old files go (a pinned one at its last release).
        seg.replaced()
        seg.size = seg.synced_size = c.size
        seg.index = prepared.indexes[c.base_offset]
        if members:
            part.absorb(seg, members)
        swapped.append(seg)
        try:
            os.rename(_cleaned(off_path), off_path)
            os.rename(_cleaned(time_path), time_path)
        except OSError as exc:
            # The log is in place; missing index files are rebuilt at the next start.
            log.warning("%s: installing the rebuilt index failed: %s", seg.path, exc)
    return swapped


def _index_written(seg: Segment) -> bool:
    """Whether a closed segment's roll job is done (log fsynced, index files written)."""
    return seg.finished and all(p.exists() for p in index_paths(seg.path))


# -- checkpoint files ------------------------------------------------------------------


def read_checkpoint(partition_dir: Path, log_start: int = 0) -> Checkpoint:
    """The stored checkpoint; missing or unreadable means "nothing cleaned yet"."""
    path = partition_dir / CHECKPOINT_FILE
    try:
        data = json.loads(path.read_bytes())
        dirty, horizon = data["dirty_offset"], data["tombstone_horizon"]
    except FileNotFoundError:
        return Checkpoint(log_start)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%s); cleaning restarts from the log start", path, exc)
        return Checkpoint(log_start)
    if type(dirty) is not int or type(horizon) is not int or dirty < 0:
        log.warning("%s holds bad values; cleaning restarts from the log start", path)
        return Checkpoint(log_start)
    return Checkpoint(dirty, horizon)


def write_checkpoint(partition_dir: Path, checkpoint: Checkpoint) -> None:
    """Atomically replace the checkpoint file (blocking: a worker thread)."""
    data = {
        "dirty_offset": checkpoint.dirty_offset,
        "tombstone_horizon": checkpoint.tombstone_horizon,
    }
    write_atomically(partition_dir / CHECKPOINT_FILE, json.dumps(data).encode())


def remove_leftovers(partition_dir: Path) -> int:
    """Delete the ``.cleaned`` files of a pass that a crash interrupted before its
    swap (a swap renames them away).  Returns how many were removed."""
    removed = 0
    for p in partition_dir.glob(f"*{CLEANED_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed += 1
    return removed
