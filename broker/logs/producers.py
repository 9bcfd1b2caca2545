"""Idempotent producers: producer ids, per-partition sequence state and its snapshots.

A producer gets a producer id from INIT_PRODUCER (epoch 0) and numbers its records
per partition from 0.  Each partition remembers, per producer id, the epoch and the
last ``BATCHES_KEPT`` batches (first and last sequence, base and last offset), as
Kafka does.  An append from a producer is then:

- a retry of one of those batches (same first and last sequence): answered with the
  original base offset and ``duplicate=true``, not appended again;
- the next one (first sequence = last sequence + 1, or 0 for a producer id the
  partition has not seen or a newer epoch): appended;
- anything else: OutOfOrderSequence (412); an epoch older than the known one:
  ProducerFenced (413).

Sequences are 31-bit and wrap to 0 after 2**31 - 1.

The state is rebuilt at start from batch headers (every batch carries producer id,
epoch and base sequence): from the newest ``<offset>.snapshot`` file, which holds
the state of every batch below ``offset``, plus the batches after it.  A snapshot is
written when a segment rolls (named by the new segment's base) and at a clean close;
the last ``SNAPSHOTS_KEPT`` are kept.  Snapshot file: u32 CRC-32 of the rest, then a
msgpack array ``[offset, [[producer_id, epoch, last_timestamp, [[first_seq,
last_seq, base_offset, last_offset], ...], txn_first_offset], ...]]``.

Transactions: ``open_txns`` maps a producer id to the offset of its open transaction's
first batch in this partition (from its first transactional batch until the COMMIT or
ABORT marker); the partition's last stable offset is the smallest of them.  The
snapshot's ``txn_first_offset`` (-1: none; absent in snapshots of older versions)
keeps them across restarts.  A producer with an open transaction is never expired.

Producer ids never repeat, even across restarts: ``<logs dir>/.producer_ids`` holds
the first id not yet handed out in blocks of ``PRODUCER_ID_BLOCK``; a new block is
written (temp file, fsync, rename, fsync directory) before any id of it is used.
"""

from __future__ import annotations

import logging
import zlib
from collections import deque
from pathlib import Path
from typing import Final

import msgpack

from wharf.protocol.errors import OutOfOrderSequence, ProducerFenced

from ..store.fsio import write_atomically

log = logging.getLogger("wharf.topics")

BATCHES_KEPT: Final = 5
SNAPSHOTS_KEPT: Final = 2
SEQUENCE_MODULUS: Final = 2**31
# As Kafka's producer.id.expiration.ms: a producer silent this long is forgotten.
PRODUCER_EXPIRATION_MS: Final = 86_400_000
PRODUCER_ID_BLOCK: Final = 1000
PRODUCER_IDS_FILE: Final = ".producer_ids"
SNAPSHOT_SUFFIX: Final = ".snapshot"

# One remembered batch: (first sequence, last sequence, base offset, last offset).
BatchSeq = tuple[int, int, int, int]


class ProducerEntry:
    __slots__ = ("epoch", "batches", "last_timestamp")

    def __init__(self, epoch: int, last_timestamp: int) -> None:
        self.epoch = epoch
        self.batches: deque[BatchSeq] = deque(maxlen=BATCHES_KEPT)
        self.last_timestamp = last_timestamp


class ProducerStates:
    """Sequence state of the idempotent producers of one partition."""

    def __init__(self) -> None:
        self.producers: dict[int, ProducerEntry] = {}
        self.open_txns: dict[int, int] = {}  # producer id -> first offset of its transaction

    def check(self, pid: int, epoch: int, first_seq: int, count: int) -> int | None:
        """Before an append: the base offset of the batch it retries (a duplicate), or
        None when it is the next batch.  Raises when it is neither."""
        entry = self.producers.get(pid)
        if first_seq < 0 or first_seq >= SEQUENCE_MODULUS or epoch < 0:
            raise OutOfOrderSequence(
                f"producer {pid}: base_sequence must be 0..{SEQUENCE_MODULUS - 1} and "
                "producer_epoch >= 0"
            )
        if entry is None or epoch > entry.epoch:
            if first_seq != 0:
                raise OutOfOrderSequence(
                    f"producer {pid} epoch {epoch}: the first batch must have sequence 0, "
                    f"got {first_seq}",
                    details={"expected": 0, "sequence": first_seq},
                )
            return None
        if epoch < entry.epoch:
            raise ProducerFenced(
                f"producer {pid}: epoch {epoch} is older than the current epoch "
                f"{entry.epoch}; a newer producer took over",
                details={"epoch": entry.epoch},
            )
        last_seq = (first_seq + count - 1) % SEQUENCE_MODULUS
        for b_first, b_last, b_base, _b_lastoff in entry.batches:
            if b_first == first_seq and b_last == last_seq:
                return b_base
        expected = (entry.batches[-1][1] + 1) % SEQUENCE_MODULUS if entry.batches else 0
        if first_seq != expected:
            raise OutOfOrderSequence(
                f"producer {pid}: sequence {first_seq} is not the next one ({expected}); "
                "a batch before it was lost",
                details={"expected": expected, "sequence": first_seq},
            )
        return None

    def record(
        self, pid: int, epoch: int, first_seq: int, base: int, last: int, timestamp: int
    ) -> None:
        """After an append (or while replaying the log)."""
        entry = self.producers.get(pid)
        if entry is None or epoch > entry.epoch:
            entry = self.producers[pid] = ProducerEntry(epoch, timestamp)
        last_seq = (first_seq + last - base) % SEQUENCE_MODULUS
        entry.batches.append((first_seq, last_seq, base, last))
        if timestamp > entry.last_timestamp:
            entry.last_timestamp = timestamp

    def record_transactional(self, pid: int, base: int) -> None:
        """A transactional batch at ``base``: it opens the producer's transaction here
        unless one is open."""
        if pid not in self.open_txns:
            self.open_txns[pid] = base

    def record_marker(self, pid: int, epoch: int, timestamp: int) -> int:
        """A COMMIT/ABORT marker: closes the producer's transaction (returns the offset
        of its first batch, -1 when none was open).  A marker with a newer epoch (the
        coordinator fenced the producer) makes that epoch the current one."""
        entry = self.producers.get(pid)
        if entry is None or epoch > entry.epoch:
            self.producers[pid] = ProducerEntry(epoch, timestamp)
        return self.open_txns.pop(pid, -1)

    def expire(self, now_ms: int) -> int:
        old = [
            pid
            for pid, e in self.producers.items()
            if now_ms - e.last_timestamp > PRODUCER_EXPIRATION_MS and pid not in self.open_txns
        ]
        for pid in old:
            del self.producers[pid]
        return len(old)

    # -- snapshots -----------------------------------------------------------------

    def snapshot_bytes(self, offset: int) -> bytes:
        body: bytes = msgpack.packb(
            [
                offset,
                [
                    [
                        pid,
                        e.epoch,
                        e.last_timestamp,
                        [list(b) for b in e.batches],
                        self.open_txns.get(pid, -1),
                    ]
                    for pid, e in self.producers.items()
                ],
            ],
            use_bin_type=True,
        )
        return zlib.crc32(body).to_bytes(4, "big") + body

    @classmethod
    def from_snapshot(cls, data: bytes) -> tuple[int, ProducerStates] | None:
        """(offset, state) from a snapshot file's bytes; None when it is damaged."""
        if len(data) < 4 or zlib.crc32(data[4:]) != int.from_bytes(data[:4], "big"):
            return None
        try:
            offset, rows = msgpack.unpackb(data[4:], raw=False)
            states = cls()
            for pid, epoch, last_ts, batches, *rest in rows:
                entry = states.producers[pid] = ProducerEntry(epoch, last_ts)
                if rest and rest[0] >= 0:
                    states.open_txns[pid] = int(rest[0])
                for first, last_seq, base, last in batches:
                    entry.batches.append((first, last_seq, base, last))
            return int(offset), states
        except (ValueError, TypeError) as exc:
            log.warning("ignoring a damaged producer snapshot: %s", exc)
            return None


def snapshot_name(offset: int) -> str:
    return f"{offset:020d}{SNAPSHOT_SUFFIX}"


def list_snapshots(directory: Path) -> list[tuple[int, Path]]:
    out = []
    for p in directory.glob(f"*{SNAPSHOT_SUFFIX}"):
        stem = p.name[: -len(SNAPSHOT_SUFFIX)]
        if stem.isdigit():
            out.append((int(stem), p))
    out.sort()
    return out


class ProducerIds:
    """Hands out producer ids that never repeat, persisting a block at a time."""

    def __init__(self, root: Path) -> None:
        self.path = root / PRODUCER_IDS_FILE
        try:
            self._next = int(self.path.read_text().strip() or 0)
        except FileNotFoundError:
            self._next = 0
        except ValueError:
            raise OSError(f"{self.path} is damaged; it must hold one integer") from None
        self._block_end = self._next  # nothing of the stored block handed out yet

    def allocate(self) -> int:
        if self._next >= self._block_end:
            end = self._next + PRODUCER_ID_BLOCK
            write_atomically(self.path, f"{end}\n".encode())
            self._block_end = end
        pid = self._next
        self._next += 1
        return pid
