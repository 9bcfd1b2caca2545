"""Record format of the message store's segment files.  No I/O beyond a file object.

A segment file is a sequence of records::

    +---------------+--------------+-----------+---------------------------+
    | length: u32BE | crc32: u32BE | type: u8  | payload: msgpack (length) |
    +---------------+--------------+-----------+---------------------------+

``crc32`` (zlib) covers the type byte and the payload.  Record types and payloads:

    MSGS       [queue_uid, first_position, exchange, routing_key, properties,
                [body, ...], delivery_count, flags, expires_at, txid]
               flags bit 0: transient (paged out of memory only; ignored by recovery)
               expires_at: epoch ms when the messages expire (TTL), 0 = never
               consecutive positions first_position, first_position+1, ...
               txid (optional, 0 = none): written by a transaction's commit, see TXEND
    ACKS       [queue_uid, [position, ...], txid]      settled (acked, dropped, purged)
    DELIVERED  [queue_uid, position]                   every position <= this one has
                                                       been handed to a consumer
    COUNTS     [queue_uid, [[position, delivery_count], ...]]   after requeues
    DELAYS     [queue_uid, [[position, due_ms], ...]]   held for a delayed retry until due
    DEDUP      [queue_uid, [[message_id, accepted_ms, expires_ms], ...], txid]
               ids a deduplicating queue (x-dedup-window-ms) accepted; a segment about
               to be deleted has its unexpired entries copied forward first
    TXEND      [txid]                                  the end of an atomic commit
               (core/transactions.py): the records tagged with ``txid`` all lie in this
               segment before it, and recovery applies them only if this record is
               there (a torn or lost tail drops the whole transaction, never a part)

A message is identified by (queue_uid, position); the same message may appear in two
segments after compaction copies it forward, and recovery keeps one copy.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO, Final, NamedTuple

import msgpack

MSGS: Final = 1
ACKS: Final = 2
DELIVERED: Final = 3
COUNTS: Final = 4
DELAYS: Final = 5
DEDUP: Final = 6
TXEND: Final = 7
RECORD_TYPES: Final = frozenset((MSGS, ACKS, DELIVERED, COUNTS, DELAYS, DEDUP, TXEND))
# MSGS flags (the record's 8th field): bodies paged out of a long queue's memory that
# are not persistent; recovery skips them.
FLAG_TRANSIENT: Final = 0x01

HEADER: Final = struct.Struct(">IIB")
HEADER_BYTES: Final = HEADER.size
# A record bigger than this is corruption, not data (bodies are capped far below).
MAX_RECORD_BYTES: Final = 1 << 30

_packer = msgpack.Packer(use_bin_type=True, autoreset=True)
_crc32 = zlib.crc32
_pack_header = HEADER.pack


def encode_record(rtype: int, payload: Any) -> bytes:
    body: bytes = _packer.pack(payload)
    crc = _crc32(body, _crc32(bytes((rtype,))))
    return _pack_header(len(body), crc, rtype) + body


class CorruptRecord(Exception):
    pass


def decode_record(data: bytes) -> Any:
    """Payload of one whole record (header included); raises CorruptRecord."""
    if len(data) < HEADER_BYTES:
        raise CorruptRecord("short record")
    length, crc, rtype = HEADER.unpack_from(data, 0)
    body = data[HEADER_BYTES : HEADER_BYTES + length]
    if len(body) != length or _crc32(body, _crc32(bytes((rtype,)))) != crc:
        raise CorruptRecord("record checksum mismatch")
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


class Record(NamedTuple):
    offset: int
    rtype: int
    payload: Any


class ScanResult(NamedTuple):
    records: list[Record]
    good_bytes: int  # offset just past the last valid record
    total_bytes: int
    error: str | None  # why scanning stopped before the end, if it did


def scan(f: BinaryIO) -> ScanResult:
    """Read every valid record from the start; stop at the first torn or corrupt one."""
    data = f.read()
    total = len(data)
    pos = 0
    records: list[Record] = []
    error: str | None = None
    view = memoryview(data)
    while pos < total:
        if total - pos < HEADER_BYTES:
            error = f"torn record header at offset {pos}"
            break
        length, crc, rtype = HEADER.unpack_from(data, pos)
        if length > MAX_RECORD_BYTES or rtype not in RECORD_TYPES:
            error = f"corrupt record header at offset {pos}"
            break
        start = pos + HEADER_BYTES
        end = start + length
        if end > total:
            error = f"torn record at offset {pos} ({total - start} of {length} bytes)"
            break
        body = view[start:end]
        if _crc32(body, _crc32(bytes((rtype,)))) != crc:
            error = f"checksum mismatch in record at offset {pos}"
            break
        try:
            payload = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception:
            error = f"undecodable record at offset {pos}"
            break
        records.append(Record(pos, rtype, payload))
        pos = end
    view.release()
    return ScanResult(records, pos, total, error)


def iter_messages(payload: Any) -> Iterator[tuple[int, bytes]]:
    """(position, body) pairs of a MSGS payload."""
    first = payload[1]
    for i, body in enumerate(payload[5]):
        yield first + i, body
