"""Rebuild durable queues from the segment files at start-up.

Segments are replayed oldest first.  A torn or corrupt tail is cut off: the cut bytes
are kept beside the segment in ``<segment>.cut-<unix time>`` and the cut is logged;
nothing after a bad record is used silently.  Recovery reads only the segments that
still exist, which hold live messages plus at most a segment or two of settled
history, so its time grows with live data.

What recovery reads is made durable before anything acts on it: every segment is
fsynced once (and the directory), since after a kill -9 a segment may end in bytes that
were written but never fsynced (the page cache survives a killed process, not a power
loss).  Without that, a restarted broker would treat such a tail as settled state (an
atomic commit's ACKS records whose fsync the kill interrupted, say), complete the
transaction that held them, and never write that segment again: a power loss later
would then take the acks and bring the messages back, though their transaction had
committed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .fsio import fsync, fsync_dir, record_synced_many
from .records import ACKS, COUNTS, DEDUP, DELAYS, DELIVERED, FLAG_TRANSIENT, MSGS, TXEND, scan
from .segments import Segment, list_segments

log = logging.getLogger("wharf.store")


@dataclass
class RecoveredMessage:
    """Where a live message is; bodies are not kept (a backlog may exceed memory)."""

    __slots__ = ("segment", "offset", "index", "size", "delivery_count", "expires_at")
    segment: Segment
    offset: int  # of the MSGS record in the segment
    index: int  # of the body in the record
    size: int
    delivery_count: int
    expires_at: int


@dataclass
class Recovered:
    segments: list[Segment] = field(default_factory=list)
    # queue uid -> position -> message
    messages: dict[int, dict[int, RecoveredMessage]] = field(default_factory=dict)
    # queue uid -> every position <= this one was delivered before the restart
    delivered: dict[int, int] = field(default_factory=dict)
    # queue uid -> highest position any record names
    max_position: dict[int, int] = field(default_factory=dict)
    # queue uid -> position -> epoch ms when a delayed retry is due
    delayed: dict[int, dict[int, int]] = field(default_factory=dict)
    # queue uid -> message_id -> (accepted_ms, expires_ms) of its deduplication window
    # (every DEDUP entry found; the queue keeps those still inside its window)
    dedup: dict[int, dict[str, tuple[int, int]]] = field(default_factory=dict)
    records: int = 0
    # Records of atomic commits whose TXEND never reached the disk (skipped).
    uncommitted: int = 0
    cut_bytes: int = 0
    seconds: float = 0.0


def _cut_tail(path: Path, good: int, total: int, why: str) -> int:
    side = path.with_name(f"{path.name}.cut-{int(time.time())}")
    with open(path, "rb") as f:
        f.seek(good)
        tail = f.read()
    with open(side, "wb") as f:
        f.write(tail)
        f.flush()
        fsync(f.fileno(), side)
    with open(path, "r+b") as f:
        f.truncate(good)
        f.flush()
        fsync(f.fileno(), path)
    log.warning(
        "message store: %s in %s; truncated %d bytes (kept in %s)",
        why,
        path.name,
        total - good,
        side.name,
    )
    return total - good


def recover(directory: Path) -> Recovered:
    started = time.monotonic()
    out = Recovered()
    messages = out.messages
    max_pos = out.max_position
    synced: list[tuple[Path, int]] = []
    for number, path in list_segments(directory):
        seg = Segment(number, path)
        seg.new = False
        with open(path, "rb") as f:
            result = scan(f)
        if result.error is not None:
            out.cut_bytes += _cut_tail(path, result.good_bytes, result.total_bytes, result.error)
        else:
            _fsync_file(path)
        synced.append((path, result.good_bytes))
        seg.size = seg.written_size = seg.synced_size = result.good_bytes
        out.segments.append(seg)
        out.records += len(result.records)
        # Atomic commits whose TXEND record made it: their tagged records apply, the
        # records of any other (torn or lost tail) are skipped, all of them.
        committed = {rec.payload[0] for rec in result.records if rec.rtype == TXEND}
        for rec in result.records:
            p = rec.payload
            if rec.rtype == MSGS:
                uid, first, _exchange, _routing_key, _props, bodies, dc = p[:7]
                if len(p) > 7 and p[7] & FLAG_TRANSIENT:
                    continue  # a transient message paged to disk: gone after a restart
                if len(p) > 9 and p[9] and p[9] not in committed:
                    out.uncommitted += 1
                    continue
                expires_at = p[8] if len(p) > 8 else 0
                qmsgs = messages.get(uid)
                if qmsgs is None:
                    qmsgs = messages[uid] = {}
                for i, body in enumerate(bodies):
                    pos = first + i
                    old = qmsgs.get(pos)
                    if old is not None:
                        old.segment.live -= 1
                    qmsgs[pos] = RecoveredMessage(seg, rec.offset, i, len(body), dc, expires_at)
                    seg.live += 1
                    seg.total += 1
                last = first + len(bodies) - 1
                if last > max_pos.get(uid, -1):
                    max_pos[uid] = last
            elif rec.rtype == ACKS:
                uid, positions = p[:2]
                if len(p) > 2 and p[2] and p[2] not in committed:
                    out.uncommitted += 1
                    continue
                qmsgs = messages.get(uid)
                if qmsgs is not None:
                    for pos in positions:
                        m = qmsgs.pop(pos, None)
                        if m is not None:
                            m.segment.live -= 1
                if positions:
                    top = max(positions)
                    if top > max_pos.get(uid, -1):
                        max_pos[uid] = top
            elif rec.rtype == DELIVERED:
                uid, pos = p[:2]
                if pos > out.delivered.get(uid, -1):
                    out.delivered[uid] = pos
                if pos > max_pos.get(uid, -1):
                    max_pos[uid] = pos
            elif rec.rtype == DELAYS:
                uid, entries = p[:2]
                qdelays = out.delayed.setdefault(uid, {})
                for pos, due in entries:
                    qdelays[pos] = due
            elif rec.rtype == DEDUP:
                uid, entries = p[:2]
                if len(p) > 2 and p[2] and p[2] not in committed:
                    out.uncommitted += 1
                    continue
                qdedup = out.dedup.setdefault(uid, {})
                for message_id, accepted_ms, expires_ms in entries:
                    # A copy carried forward keeps the first acceptance time.
                    if message_id not in qdedup:
                        qdedup[message_id] = (accepted_ms, expires_ms)
                    if expires_ms > seg.dedup_until:
                        seg.dedup_until = expires_ms
                seg.dedup_offsets.append(rec.offset)
            elif rec.rtype == COUNTS:
                uid, counts = p[:2]
                qmsgs = messages.get(uid)
                if qmsgs is not None:
                    for pos, dc in counts:
                        m = qmsgs.get(pos)
                        if m is not None:
                            m.delivery_count = dc
    if synced:
        fsync_dir(directory)  # their names too (a segment rolled just before a kill)
        record_synced_many(synced)
    out.seconds = time.monotonic() - started
    return out


def _fsync_file(path: Path) -> None:
    """fsync a recovered segment: a leftover of a killed broker may still be only in
    the page cache (a clean file costs next to nothing)."""
    with open(path, "rb") as f:
        fsync(f.fileno(), path)


def drop_unknown_queues(rec: Recovered, known_uids: set[int]) -> int:
    """Messages of queues that no longer exist are settled (their segments can go)."""
    dropped = 0
    for uid in list(rec.messages):
        if uid not in known_uids:
            for m in rec.messages.pop(uid).values():
                m.segment.live -= 1
                dropped += 1
    return dropped
