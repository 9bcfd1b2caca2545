"""Record batches of log topics: the one format shared by producer, disk and consumer.

A batch is stored on disk, and returned by FETCH, exactly as below: a fixed 64-byte
header followed by the payload.  The producer builds the payload; the broker adds the
header (base offset, count, timestamps, CRC) and never rewrites the payload, except
when compaction drops records or when it builds a batch itself (messages routed from
an exchange).  No I/O here.

Header, all integers big-endian::

    u32 length             bytes after this field (60 + payload bytes)
    u64 base_offset        offset of the first record
    u32 last_offset_delta  offset of the last record - base_offset
    u32 record_count       records in the payload (< last_offset_delta + 1 after compaction)
    u8  magic              2
    u8  attributes         bits 0-2 codec (0 none, 1 gzip); bit 3 timestamp type
                           (0 create time, 1 log-append time); bit 4 transactional
                           (written by a transactional producer); bit 5 control (a
                           COMMIT/ABORT marker, never an application record); bits 6-7
                           zero
    i64 first_timestamp    smallest record timestamp (epoch ms)
    i64 max_timestamp      largest record timestamp; with log-append time, the
                           broker's clock at append, and every record reads as it
    i64 producer_id        -1 when not idempotent
    i16 producer_epoch     -1 when not idempotent
    i32 base_sequence      sequence number of the first record, -1 when not idempotent
    i64 delete_horizon     epoch ms after which compaction may drop this batch's
                           tombstones; -1 until compaction has seen it
    u32 crc                CRC-32 (zlib.crc32) of bytes 8..59 of the header + payload

Payload: a msgpack array of records, gzip-compressed as a whole when the codec says
so.  One record is ``[offset_delta, timestamp, key, value, headers]``: offset_delta
int (0 .. last_offset_delta, increasing), timestamp int epoch ms, key bin|nil, value
bin|nil (nil = tombstone), headers map|nil.  A producer numbers its records 0..n-1.

Control batches (attribute bit 5) hold one record: key = msgpack ``[0, type]`` (type 0
ABORT, 1 COMMIT), value = msgpack ``[coordinator_epoch, txn_first_offset]`` (the offset
of the transaction's first batch in this partition, for the aborted-transaction index),
producer id and epoch of the transaction in the header, base_sequence -1.  Their offset
is counted like any record's; SDKs never hand them to applications.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

import msgpack

from .errors import InvalidArgument

HEADER: Final = struct.Struct(">IQIIBBqqqhiqI")
HEADER_BYTES: Final = HEADER.size  # 64
LENGTH_BYTES: Final = 4
MAGIC: Final = 2

CODEC_NONE: Final = 0
CODEC_GZIP: Final = 1
CODECS: Final = {"none": CODEC_NONE, "gzip": CODEC_GZIP}
CODEC_MASK: Final = 0x07
LOG_APPEND_TIME: Final = 0x08
TRANSACTIONAL: Final = 0x10
CONTROL: Final = 0x20
# Control record types (the key of a control batch's one record).
MARKER_ABORT: Final = 0
MARKER_COMMIT: Final = 1
MARKER_NAMES: Final = {MARKER_ABORT: "abort", MARKER_COMMIT: "commit"}

# A batch claiming more than this is corruption, not something to allocate.
MAX_BATCH_BYTES: Final = 256 * 1024 * 1024
_GZIP_WBITS: Final = 31  # zlib producing/reading the gzip container (RFC 1952)


class BatchHeader(NamedTuple):
    length: int
    base_offset: int
    last_offset_delta: int
    record_count: int
    magic: int
    attributes: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    delete_horizon: int
    crc: int

    @property
    def size(self) -> int:
        """Bytes of the whole batch, header included."""
        return self.length + LENGTH_BYTES

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def codec(self) -> int:
        return self.attributes & CODEC_MASK

    @property
    def log_append_time(self) -> bool:
        return bool(self.attributes & LOG_APPEND_TIME)

    @property
    def transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL)

    @property
    def control(self) -> bool:
        return bool(self.attributes & CONTROL)


# -- producer side ---------------------------------------------------------------------


def encode_records(
    records: Iterable[tuple[bytes | None, bytes | None, dict[str, Any] | None, int]],
) -> tuple[bytes, int]:
    """Pack ``(key, value, headers, timestamp)`` tuples into a payload; returns
    ``(payload, count)``.  Offsets deltas are 0..count-1."""
    packed = [(i, ts, key, value, headers) for i, (key, value, headers, ts) in enumerate(records)]
    return msgpack.packb(packed, use_bin_type=True), len(packed)


def encode_values(
    values: Sequence[bytes | None], key: bytes | None, headers: dict[str, Any] | None, ts: int
) -> bytes:
    """The payload for many values sharing one key, headers and timestamp (fast path)."""
    payload: bytes = msgpack.packb(
        [(i, ts, key, value, headers) for i, value in enumerate(values)], use_bin_type=True
    )
    return payload


def compress(payload: bytes, codec: int, level: int = -1) -> bytes:
    if codec == CODEC_NONE:
        return payload
    if codec == CODEC_GZIP:
        c = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
        return c.compress(payload) + c.flush()
    raise InvalidArgument(f"unknown compression codec {codec}")


def decompress(
    payload: bytes | memoryview, codec: int, max_bytes: int = MAX_BATCH_BYTES
) -> bytes | memoryview:
    """The payload uncompressed; refuses (InvalidArgument) one that would exceed
    ``max_bytes`` once uncompressed, without inflating more than that."""
    if codec == CODEC_NONE:
        return payload
    if codec == CODEC_GZIP:
        try:
            d = zlib.decompressobj(_GZIP_WBITS)
            out = d.decompress(payload, max_bytes)
            if d.unconsumed_tail or (len(out) == max_bytes and d.decompress(b"", 1)):
                raise InvalidArgument(
                    f"a batch decompresses to more than {max_bytes} bytes",
                    details={"max_message_bytes": max_bytes},
                )
            return out
        except zlib.error as exc:
            raise InvalidArgument(f"batch payload is not valid gzip: {exc}") from None
    raise InvalidArgument(f"unknown compression codec {codec}")


# -- broker side -----------------------------------------------------------------------


class PayloadInfo(NamedTuple):
    """What the broker learns by checking a produced payload."""

    count: int  # type: ignore[assignment]  # (shadows tuple.count on purpose)
    last_offset_delta: int
    first_timestamp: int
    max_timestamp: int
    null_keys: bool  # some record has no key (refused on compacted topics)
    tombstones: bool  # some record has a nil value


def check_payload(
    payload: bytes, codec: int, max_bytes: int = MAX_BATCH_BYTES
) -> tuple[Sequence[Any], PayloadInfo]:
    """Validate a produced payload without changing it; returns its decoded records and
    what the broker needs to know of them.  Raises InvalidArgument.

    A compressed payload may uncompress to at most ``max_bytes`` (the broker passes its
    ``max_message_bytes``, as for an uncompressed one): a few KiB of gzip must not make
    the broker inflate and decode hundreds of MiB."""
    raw = decompress(payload, codec, max_bytes)
    try:
        records = msgpack.unpackb(raw, raw=False, use_list=False)
    except Exception as exc:  # msgpack raises several types for bad input
        raise InvalidArgument(f"batch payload is not a msgpack array of records: {exc}") from None
    return records, check_records(records)


def check_records(records: Any) -> PayloadInfo:
    if type(records) is not tuple and type(records) is not list:
        raise InvalidArgument("batch payload must be a msgpack array of records")
    if not records:
        raise InvalidArgument("a batch needs at least one record")
    info = _check_plain_records(records)
    if info is not None:
        return info
    # Records with more fields, or a bad one: check one by one and say which.
    first_ts = max_ts = -1
    null_keys = tombstones = False
    for i, rec in enumerate(records):
        if (type(rec) is not tuple and type(rec) is not list) or len(rec) < 5:
            raise InvalidArgument(
                f"record {i} must be [offset_delta, timestamp, key, value, headers]"
            )
        delta, ts, key, value, headers = rec[0], rec[1], rec[2], rec[3], rec[4]
        if delta != i or type(delta) is not int:
            raise InvalidArgument(f"record {i}: offset_delta must be {i}")
        if type(ts) is not int or ts < 0:
            raise InvalidArgument(f"record {i}: timestamp must be epoch ms (int >= 0)")
        if key is None:
            null_keys = True
        elif type(key) is not bytes:
            raise InvalidArgument(f"record {i}: key must be bin or nil")
        if value is None:
            tombstones = True
        elif type(value) is not bytes:
            raise InvalidArgument(f"record {i}: value must be bin or nil")
        if headers is not None and type(headers) is not dict:
            raise InvalidArgument(f"record {i}: headers must be a map or nil")
        if first_ts < 0 or ts < first_ts:
            first_ts = ts
        if ts > max_ts:
            max_ts = ts
    return PayloadInfo(len(records), len(records) - 1, first_ts, max_ts, null_keys, tombstones)


def _check_plain_records(records: Sequence[Any]) -> PayloadInfo | None:
    """``check_records`` for the usual batch, as one tight loop (half the time of the
    general one); None when some record is not a valid 5-field record."""
    first_ts = max_ts = -1
    null_keys = tombstones = False
    i = 0
    try:
        for delta, ts, key, value, headers in records:
            if delta != i or delta.__class__ is not int or ts.__class__ is not int or ts < 0:
                return None
            if key.__class__ is not bytes:
                if key is not None:
                    return None
                null_keys = True
            if value.__class__ is not bytes:
                if value is not None:
                    return None
                tombstones = True
            if headers is not None and headers.__class__ is not dict:
                return None
            if ts > max_ts:
                max_ts = ts
            if ts < first_ts or first_ts < 0:
                first_ts = ts
            i += 1
    except (TypeError, ValueError):  # a record that is not a 5-element array
        return None
    return PayloadInfo(i, i - 1, first_ts, max_ts, null_keys, tombstones)


def build_batch(
    base_offset: int,
    payload: bytes,
    *,
    record_count: int,
    last_offset_delta: int,
    attributes: int,
    first_timestamp: int,
    max_timestamp: int,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    delete_horizon: int = -1,
) -> bytes:
    """Header + payload.  The CRC covers bytes 8..59 of the header and the payload."""
    head = HEADER.pack(
        HEADER_BYTES - LENGTH_BYTES + len(payload),
        base_offset,
        last_offset_delta,
        record_count,
        MAGIC,
        attributes,
        first_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        delete_horizon,
        0,
    )
    crc = zlib.crc32(payload, zlib.crc32(memoryview(head)[8:60]))
    return head[:60] + crc.to_bytes(4, "big") + payload


def read_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    return BatchHeader._make(HEADER.unpack_from(buf, pos))


def check_batch(buf: bytes | bytearray | memoryview, pos: int = 0) -> str | None:
    """Why the batch at ``pos`` is not whole and intact, or None when it is."""
    if len(buf) - pos < HEADER_BYTES:
        return "short header"
    h = read_header(buf, pos)
    if h.length < HEADER_BYTES - LENGTH_BYTES or h.length > MAX_BATCH_BYTES:
        return f"bad batch length {h.length}"
    if pos + h.size > len(buf):
        return "short payload"
    if h.magic != MAGIC:
        return f"unknown batch magic {h.magic}"
    view = memoryview(buf)
    crc = zlib.crc32(view[pos + HEADER_BYTES : pos + h.size], zlib.crc32(view[pos + 8 : pos + 60]))
    if crc != h.crc:
        return "crc mismatch"
    if h.record_count <= 0 or h.record_count > h.last_offset_delta + 1:
        return f"bad record count {h.record_count} for {h.last_offset_delta + 1} offsets"
    return None


def with_delete_horizon(batch: bytes, horizon: int) -> bytes:
    """The same batch with its delete horizon set (CRC recomputed)."""
    h = read_header(batch)
    return build_batch(
        h.base_offset,
        batch[HEADER_BYTES:],
        record_count=h.record_count,
        last_offset_delta=h.last_offset_delta,
        attributes=h.attributes,
        first_timestamp=h.first_timestamp,
        max_timestamp=h.max_timestamp,
        producer_id=h.producer_id,
        producer_epoch=h.producer_epoch,
        base_sequence=h.base_sequence,
        delete_horizon=horizon,
    )


def marker_payload(
    kind: int, coordinator_epoch: int, txn_first_offset: int, timestamp: int
) -> bytes:
    """The payload of a control batch: one COMMIT or ABORT record."""
    key = msgpack.packb([0, kind])
    value = msgpack.packb([coordinator_epoch, txn_first_offset])
    payload: bytes = msgpack.packb([[0, timestamp, key, value, None]], use_bin_type=True)
    return payload


class Marker(NamedTuple):
    kind: int  # MARKER_ABORT or MARKER_COMMIT
    coordinator_epoch: int
    txn_first_offset: int  # -1 when unknown


def read_marker(batch: bytes | memoryview) -> Marker | None:
    """The marker of a control batch; None when it is not one or is unreadable."""
    h = read_header(batch)
    if not h.attributes & CONTROL:
        return None
    try:
        rows = msgpack.unpackb(
            decompress(memoryview(batch)[HEADER_BYTES:], h.codec), raw=False, use_list=False
        )
        _version, kind = msgpack.unpackb(rows[0][2], raw=False)
        epoch, first = msgpack.unpackb(rows[0][3], raw=False)
        return Marker(int(kind), int(epoch), int(first))
    except Exception:  # a damaged control record: treated as no marker
        return None


# -- consumer side ---------------------------------------------------------------------

# One decoded record: (offset, timestamp, key, value, headers).
DecodedRecord = tuple[int, int, bytes | None, bytes | None, dict[str, Any] | None]


def decode_records(batch: bytes | memoryview, min_offset: int = 0) -> list[DecodedRecord]:
    """The records of one whole batch with offset >= ``min_offset``.  The caller has
    the batch from a trusted source (FETCH); corruption raises InvalidArgument."""
    h = read_header(batch)
    raw = decompress(memoryview(batch)[HEADER_BYTES:], h.codec)
    try:
        records = msgpack.unpackb(raw, raw=False, use_list=False)
    except Exception as exc:
        raise InvalidArgument(f"corrupt batch at offset {h.base_offset}: {exc}") from None
    base = h.base_offset
    if h.log_append_time:
        ts = h.max_timestamp
        return [(base + r[0], ts, r[2], r[3], r[4]) for r in records if base + r[0] >= min_offset]
    if min_offset <= base:
        return [(base + r[0], r[1], r[2], r[3], r[4]) for r in records]
    return [(base + r[0], r[1], r[2], r[3], r[4]) for r in records if base + r[0] >= min_offset]


def split_batches(data: bytes | memoryview) -> list[memoryview]:
    """Cut concatenated batches into one view each; a partial last batch is dropped."""
    view = memoryview(data)
    out: list[memoryview] = []
    pos = 0
    end = len(view)
    while end - pos >= HEADER_BYTES:
        size = int.from_bytes(view[pos : pos + 4], "big") + LENGTH_BYTES
        if pos + size > end:
            break
        out.append(view[pos : pos + size])
        pos += size
    return out
