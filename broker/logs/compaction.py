"""Log compaction over segment files: keep the latest record per key (no asyncio).

The pure part of Kafka's log cleaner; cleaner.py decides when a partition is cleaned
and swaps the results in.  A pass over the closed segments of one partition, split at
the cleaner checkpoint (the first offset no pass has covered yet, ``dirty_offset``):

1. builds an *offset map*, key -> latest offset, over the dirty records (keys of 16
   bytes or more are stored as a 16-byte BLAKE2b digest, and the map stops at a batch
   boundary once it holds ``OFFSET_MAP_BUDGET_BYTES``, leaving the rest dirty for the
   next pass);
2. rewrites every closed segment up to where the map ends into
   ``<segment>.log.cleaned`` (fsynced), dropping a record when the map holds a later
   offset for its key, dropping records without a key (they cannot be compacted, as
   in Kafka), and dropping a tombstone (nil value) once its batch's delete horizon
   has passed.  A batch that keeps every record is copied byte for byte; a batch that
   loses some is rebuilt with the same base offset, last offset delta (so the
   producer's sequence numbers still add up), producer fields, codec and delete
   horizon; a batch that loses all is left out, except the last batch of an
   idempotent producer, which is kept whole.  The first pass that keeps a tombstone
   stamps its batch's delete horizon (now + ``delete_retention_ms``; KIP-534).
   Segments in which nothing changes are not rewritten.
3. merges neighbouring small segments of the covered range (as Kafka's cleaner groups
   segments): consecutive closed segments whose cleaned sizes add up to at most
   ``merge_bytes`` (the topic's segment_bytes) are concatenated into one
   ``<first segment>.log.cleaned``, so compacted topics do not pile up tiny segments
   (nor fds or index memory per segment).  The merged segment keeps the first one's
   name; cleaner.py swaps it in through ``<first>.log.swap-<end offset>`` (see
   ``complete_swaps`` for the crash rule).

Transactions: control batches (COMMIT/ABORT markers) are never part of the offset map
and are always kept (a marker costs one small record, and keeping every one keeps the
aborted-transaction index valid); the batches of aborted transactions (``aborted``,
the partition's table of them) are left out of the offset map, so an aborted record
never replaces a committed one, and are removed (except the last batch of an idempotent
producer, kept whole as above).  cleaner.py never cleans past the last stable offset,
so no batch of an open transaction is looked at.

Offsets never change: the cleaned log has gaps, a segment keeps its name (its base
offset) even when it ends up empty.  Everything here is blocking file I/O meant for a
worker thread; ``abort`` (a threading.Event) stops a pass between two batches.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, NamedTuple

import msgpack

from wharf.protocol.errors import InvalidArgument
from wharf.protocol.records import (
    CONTROL,
    HEADER_BYTES,
    LENGTH_BYTES,
    MAX_BATCH_BYTES,
    TRANSACTIONAL,
    BatchHeader,
    build_batch,
    check_batch,
    compress,
    decompress,
    read_header,
    with_delete_horizon,
)

from ..store.fsio import fsync
from .index import MAX_RELATIVE

CLEANED_SUFFIX: Final = ".cleaned"
# Soft bound on the offset map of one pass; what does not fit waits for the next pass.
OFFSET_MAP_BUDGET_BYTES: Final = 64 * 1024 * 1024
# What one map entry costs in CPython beyond its key bytes (dict slot, bytes and int
# objects), for the budget above.
_MAP_ENTRY_OVERHEAD_BYTES: Final = 110
# Keys shorter than this are map keys as they are; longer ones become a digest of
# exactly this length, so the two kinds never collide.
_MAP_KEY_BYTES: Final = 16
_READ_BUFFER_BYTES: Final = 1024 * 1024
_COPY_CHUNK_BYTES: Final = 1024 * 1024


class CorruptSegment(Exception):
    """A closed segment does not read back as whole batches; the clean is abandoned."""


class CleanAborted(Exception):
    """The broker is stopping: the pass was abandoned between two batches."""


class SegmentFile(NamedTuple):
    """A closed segment as the cleaner sees it."""

    base_offset: int
    path: Path
    size: int  # bytes to read; a closed segment no longer grows


class CleanedSegment(NamedTuple):
    base_offset: int
    source: Path  # the segment file it replaces
    cleaned: Path  # ``<segment>.log.cleaned``, fsynced
    size: int
    # A merge: the later segments folded into this one (their files go at the swap),
    # and the first offset after the last of them.  Empty / -1 for a plain clean.
    merged: tuple[Path, ...] = ()
    end_offset: int = -1


@dataclass(slots=True)
class CleanStats:
    bytes_read: int = 0
    bytes_removed: int = 0
    records_removed: int = 0
    tombstones_removed: int = 0
    batches_rebuilt: int = 0
    batches_dropped: int = 0
    # Earliest delete horizon among the tombstones still in the cleaned range, or -1.
    tombstone_horizon: int = -1

    def note_horizon(self, horizon: int) -> None:
        if self.tombstone_horizon < 0 or horizon < self.tombstone_horizon:
            self.tombstone_horizon = horizon


class CleanResult(NamedTuple):
    segments: list[CleanedSegment]  # only those whose bytes changed, oldest first
    end_offset: int  # the new checkpoint: first offset the offset map did not cover
    stats: CleanStats


# -- reading segments ------------------------------------------------------------------


# Whether the transactional batch of (producer id, base offset) belongs to an aborted
# transaction; None: the partition has none.
Aborted = Callable[[int, int], bool] | None


def _skipped(h: BatchHeader, aborted: Aborted) -> bool:
    """A batch whose records never count as a key's latest value."""
    if not h.attributes & (CONTROL | TRANSACTIONAL):
        return False
    if h.attributes & CONTROL:
        return True
    return aborted is not None and aborted(h.producer_id, h.base_offset)


def map_key(key: bytes) -> bytes:
    """The offset-map key for a record key (bounded size)."""
    if len(key) < _MAP_KEY_BYTES:
        return key
    return hashlib.blake2b(key, digest_size=_MAP_KEY_BYTES).digest()


def iter_batches(
    f: IO[bytes], seg: SegmentFile, abort: threading.Event | None = None
) -> Iterator[tuple[int, BatchHeader, bytes]]:
    """``(position, header, batch bytes)`` for each batch of a closed segment; raises
    CorruptSegment rather than skip anything."""
    pos = 0
    while pos < seg.size:
        if abort is not None and abort.is_set():
            raise CleanAborted
        head = f.read(HEADER_BYTES)
        if len(head) < HEADER_BYTES:
            raise CorruptSegment(f"{seg.path}: short batch header at byte {pos}")
        h = read_header(head)
        if h.length < HEADER_BYTES - LENGTH_BYTES or h.length > MAX_BATCH_BYTES:
            raise CorruptSegment(f"{seg.path}: bad batch length {h.length} at byte {pos}")
        if pos + h.size > seg.size:
            raise CorruptSegment(f"{seg.path}: batch at byte {pos} runs past the segment end")
        batch = head + f.read(h.size - HEADER_BYTES)
        problem = check_batch(batch)
        if problem is not None:
            raise CorruptSegment(f"{seg.path}: {problem} at byte {pos}")
        yield pos, h, batch
        pos += h.size


def decode_batch(batch: bytes, h: BatchHeader) -> tuple[Any, ...]:
    """The stored records ``[offset_delta, timestamp, key, value, headers, ...]``."""
    try:
        raw = decompress(memoryview(batch)[HEADER_BYTES:], h.codec)
        records = msgpack.unpackb(raw, raw=False, use_list=False)
    except (InvalidArgument, ValueError) as exc:
        raise CorruptSegment(f"batch at offset {h.base_offset} does not decode: {exc}") from None
    if type(records) is not tuple:
        raise CorruptSegment(f"batch at offset {h.base_offset} is not an array of records")
    return records


# -- the offset map --------------------------------------------------------------------


def segment_ends(segments: list[SegmentFile], limit_offset: int) -> list[int]:
    """The first offset after each segment: the next one's base, or ``limit_offset``
    (the active segment's base) for the last."""
    if not segments:
        return []
    return [s.base_offset for s in segments[1:]] + [limit_offset]


def build_offset_map(
    segments: list[SegmentFile],
    dirty_offset: int,
    limit_offset: int,
    budget_bytes: int = OFFSET_MAP_BUDGET_BYTES,
    abort: threading.Event | None = None,
    aborted: Aborted = None,
) -> tuple[dict[bytes, int], int]:
    """Latest offset per key over the records from ``dirty_offset`` to
    ``limit_offset``; returns ``(map, end)`` where ``end`` is the first offset the map
    does not cover (a batch boundary; ``limit_offset`` unless the budget ran out)."""
    offsets: dict[bytes, int] = {}
    used = 0
    for seg, seg_end in zip(segments, segment_ends(segments, limit_offset), strict=True):
        if seg_end <= dirty_offset:
            continue
        with open(seg.path, "rb", buffering=_READ_BUFFER_BYTES) as f:
            for _, h, batch in iter_batches(f, seg, abort):
                if h.next_offset <= dirty_offset:
                    continue
                if used >= budget_bytes and offsets:
                    return offsets, max(h.base_offset, dirty_offset)
                if _skipped(h, aborted):
                    continue
                base = h.base_offset
                for rec in decode_batch(batch, h):
                    key = rec[2]
                    offset = base + rec[0]
                    if key is None or offset < dirty_offset:
                        continue
                    mk = map_key(key)
                    if mk not in offsets:
                        used += len(mk) + _MAP_ENTRY_OVERHEAD_BYTES
                    offsets[mk] = offset
    return offsets, max(limit_offset, dirty_offset)


# -- cleaning --------------------------------------------------------------------------


def clean_batch(
    batch: bytes,
    h: BatchHeader,
    offsets: dict[bytes, int],
    *,
    now_ms: int,
    delete_retention_ms: int,
    keep_whole: bool,
    stats: CleanStats,
    aborted: Aborted = None,
) -> bytes | None:
    """The batch as it should be after cleaning: the same object when nothing changes,
    a new batch when records go or a delete horizon is stamped, None when it goes."""
    if _skipped(h, aborted):
        if h.attributes & CONTROL or keep_whole:
            return batch  # a marker; or an aborted batch holding producer state
        stats.records_removed += h.record_count
        stats.batches_dropped += 1
        return None
    records = decode_batch(batch, h)
    base = h.base_offset
    horizon_passed = 0 <= h.delete_horizon <= now_ms
    kept: list[Any] = []
    tombstones = False
    tombstones_removed = 0
    for rec in records:
        key = rec[2]
        if key is None:
            continue
        offset = base + rec[0]
        if offsets.get(map_key(key), offset) > offset:
            continue
        if rec[3] is None:
            if horizon_passed:
                tombstones_removed += 1
                continue
            tombstones = True
        kept.append(rec)
    if not kept and keep_whole:
        # The last batch of an idempotent producer: its sequence numbers are what a
        # restarted broker recovers the producer's state from.  Its tombstones wait
        # for a later pass, after the producer has written again.
        return batch
    removed = len(records) - len(kept)
    horizon = h.delete_horizon
    if tombstones and horizon < 0:
        horizon = now_ms + delete_retention_ms
    if tombstones:
        stats.note_horizon(horizon)
    if removed == 0:
        return batch if horizon == h.delete_horizon else with_delete_horizon(batch, horizon)
    stats.records_removed += removed
    stats.tombstones_removed += tombstones_removed
    if not kept:
        stats.batches_dropped += 1
        return None
    stats.batches_rebuilt += 1
    if h.log_append_time:
        first_ts, max_ts = h.first_timestamp, h.max_timestamp
    else:
        stamps = [rec[1] for rec in kept]
        first_ts, max_ts = min(stamps), max(stamps)
    payload = compress(msgpack.packb(kept, use_bin_type=True), h.codec)
    return build_batch(
        base,
        payload,
        record_count=len(kept),
        last_offset_delta=h.last_offset_delta,
        attributes=h.attributes,
        first_timestamp=first_ts,
        max_timestamp=max_ts,
        producer_id=h.producer_id,
        producer_epoch=h.producer_epoch,
        base_sequence=h.base_sequence,
        delete_horizon=horizon,
    )


def cleaned_path(segment: Path) -> Path:
    return segment.with_name(segment.name + CLEANED_SUFFIX)


def clean_segment(
    seg: SegmentFile,
    offsets: dict[bytes, int],
    end_offset: int,
    *,
    now_ms: int,
    delete_retention_ms: int,
    keep_batches: Collection[int],
    stats: CleanStats,
    abort: threading.Event | None = None,
    aborted: Aborted = None,
) -> CleanedSegment | None:
    """Write the cleaned copy of one segment to ``<segment>.cleaned`` and fsync it;
    None (and no file) when cleaning changes nothing in it.  Batches at or after
    ``end_offset`` are copied as they are."""
    dest = cleaned_path(seg.path)
    out: IO[bytes] | None = None
    written = 0
    try:
        with open(seg.path, "rb", buffering=_READ_BUFFER_BYTES) as f:
            for pos, h, batch in iter_batches(f, seg, abort):
                stats.bytes_read += h.size
                if h.base_offset >= end_offset:
                    new: bytes | None = batch
                else:
                    new = clean_batch(
                        batch,
                        h,
                        offsets,
                        now_ms=now_ms,
                        delete_retention_ms=delete_retention_ms,
                        keep_whole=h.base_offset in keep_batches,
                        aborted=aborted,
                        stats=stats,
                    )
                if out is None and new is not batch:
                    out = open(dest, "wb")  # noqa: SIM115 - closed below, on every path
                    written = _copy_prefix(f.fileno(), out, pos)
                if out is not None and new is not None:
                    out.write(new)
                    written += len(new)
        if out is None:
            return None
        out.flush()
        fsync(out.fileno(), dest)
        out.close()
        out = None
    except BaseException:
        if out is not None:
            out.close()
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        raise
    stats.bytes_removed += seg.size - written
    return CleanedSegment(seg.base_offset, seg.path, dest, written)


def _copy_prefix(fd: int, out: IO[bytes], length: int) -> int:
    """Copy the first ``length`` bytes of ``fd`` (unchanged batches) into ``out``."""
    pos = 0
    while pos < length:
        chunk = os.pread(fd, min(_COPY_CHUNK_BYTES, length - pos), pos)
        if not chunk:
            raise CorruptSegment(f"segment shrank while being cleaned (at byte {pos})")
        out.write(chunk)
        pos += len(chunk)
    return pos


def clean_partition(
    segments: list[SegmentFile],
    *,
    dirty_offset: int,
    limit_offset: int,
    now_ms: int,
    delete_retention_ms: int,
    keep_batches: Collection[int] = (),
    budget_bytes: int = OFFSET_MAP_BUDGET_BYTES,
    abort: threading.Event | None = None,
    merge_bytes: int = 0,
    aborted: Aborted = None,
) -> CleanResult:
    """One cleaning pass over the closed ``segments`` (oldest first, ending where the
    active segment ``limit_offset`` begins), merging small neighbours up to
    ``merge_bytes`` (0: no merging).  Blocking file I/O: run it in a worker thread.
    On error no ``.cleaned`` file is left behind."""
    offsets, end = build_offset_map(
        segments, dirty_offset, limit_offset, budget_bytes, abort, aborted
    )
    stats = CleanStats()
    cleaned: list[CleanedSegment] = []
    try:
        for seg in segments:
            if seg.base_offset >= end:
                break
            done = clean_segment(
                seg,
                offsets,
                end,
                now_ms=now_ms,
                delete_retention_ms=delete_retention_ms,
                keep_batches=keep_batches,
                stats=stats,
                abort=abort,
                aborted=aborted,
            )
            if done is not None:
                cleaned.append(done)
        if merge_bytes > 0:
            cleaned = merge_small(segments, cleaned, end, limit_offset, merge_bytes, abort)
    except BaseException:
        discard(cleaned)
        raise
    return CleanResult(cleaned, end, stats)


def merge_small(
    segments: list[SegmentFile],
    cleaned: list[CleanedSegment],
    end: int,
    limit_offset: int,
    merge_bytes: int,
    abort: threading.Event | None = None,
) -> list[CleanedSegment]:
    """Group consecutive segments below ``end`` (as cleaned, or as they are) while
    their sizes add up to at most ``merge_bytes`` and offsets stay within a
    segment's u32 range; write each group of two or more as one fsynced
    ``<first>.log.cleaned``.  Returns the new list of outputs, oldest first (groups
    replace the plain cleans of their members, whose files are removed)."""
    by_base = {c.base_offset: c for c in cleaned}
    ends = segment_ends(segments, limit_offset)
    groups: list[list[int]] = []  # indexes into segments
    group_bytes = 0
    for i, seg in enumerate(segments):
        if seg.base_offset >= end:
            break
        c = by_base.get(seg.base_offset)
        size = c.size if c is not None else seg.size
        if (
            groups
            and group_bytes + size <= merge_bytes
            and ends[i] - segments[groups[-1][0]].base_offset <= MAX_RELATIVE
        ):
            groups[-1].append(i)
            group_bytes += size
        else:
            groups.append([i])
            group_bytes = size
    out: list[CleanedSegment] = []
    try:
        for group in groups:
            first = segments[group[0]]
            if len(group) == 1:
                c = by_base.pop(first.base_offset, None)
                if c is not None:
                    out.append(c)
                continue
            if abort is not None and abort.is_set():
                raise CleanAborted
            tmp = first.path.with_name(first.path.name + ".merging" + CLEANED_SUFFIX)
            written = 0
            with open(tmp, "wb") as dest:
                for i in group:
                    seg = segments[i]
                    c = by_base.get(seg.base_offset)
                    src, size = (c.cleaned, c.size) if c is not None else (seg.path, seg.size)
                    with open(src, "rb") as f:
                        written += _copy_prefix(f.fileno(), dest, size)
                dest.flush()
                fsync(dest.fileno(), tmp)
            for i in group:
                c = by_base.pop(segments[i].base_offset, None)
                if c is not None:
                    c.cleaned.unlink()
            final = cleaned_path(first.path)
            os.rename(tmp, final)
            out.append(
                CleanedSegment(
                    first.base_offset,
                    first.path,
                    final,
                    written,
                    tuple(segments[i].path for i in group[1:]),
                    ends[group[-1]],
                )
            )
    except BaseException:
        discard(out + list(by_base.values()))
        raise
    return out


SWAP_MARK: Final = ".swap-"


def swap_path(segment: Path, end_offset: int) -> Path:
    """Where a merged segment waits between the removal of the segments it replaces
    and its rename to ``segment`` (cleaner.py, ``swap_in``)."""
    return segment.with_name(f"{segment.name}{SWAP_MARK}{end_offset}")


def complete_swaps(partition_dir: Path, log_suffix: str, index_suffixes: Collection[str]) -> int:
    """At start-up, finish merges a crash interrupted.  A ``<base>.log.swap-<end>``
    file is a whole, fsynced merged segment (it is renamed to that name only once
    written): every segment with a base in [base, end) and its index files are
    removed, then it takes the name ``<base>.log`` (its index is rebuilt from it).
    Returns how many were completed."""
    done = 0
    for swap in sorted(partition_dir.glob(f"*{log_suffix}{SWAP_MARK}*")):
        name, _, end_text = swap.name.rpartition(SWAP_MARK)
        stem = name[: -len(log_suffix)]
        if not (stem.isdigit() and end_text.isdigit() and name.endswith(log_suffix)):
            continue
        base, end = int(stem), int(end_text)
        for seg in partition_dir.glob(f"*{log_suffix}"):
            seg_stem = seg.name[: -len(log_suffix)]
            if seg_stem.isdigit() and base <= int(seg_stem) < end:
                for suffix in index_suffixes:
                    with contextlib.suppress(FileNotFoundError):
                        seg.with_name(seg_stem + suffix).unlink()
                seg.unlink()
        os.rename(swap, partition_dir / name)
        done += 1
    return done


def discard(cleaned: list[CleanedSegment]) -> None:
    """Remove the ``.cleaned`` files of a pass that will not be swapped in."""
    for c in cleaned:
        with contextlib.suppress(FileNotFoundError):
            c.cleaned.unlink()


def dirty_ratio(segments: list[SegmentFile], dirty_offset: int, limit_offset: int) -> float:
    """Bytes of closed segments not yet covered by a clean / bytes of closed segments.
    The segment holding ``dirty_offset`` counts as dirty."""
    total = dirty = 0
    for seg, seg_end in zip(segments, segment_ends(segments, limit_offset), strict=True):
        total += seg.size
        if seg_end > dirty_offset:
            dirty += seg.size
    return dirty / total if total else 0.0
