"""Fuzz target: the log record-batch decoder (protocol/records.py).

Input: one control byte, then bytes.  Bit 0 of the control byte picks the path:

    1  a produced payload (PRODUCE, hostile): bits 1-3 are the codec (0 none, 1 gzip,
       2-7 unknown).  With bit 4 set the bytes describe records rather than being the
       payload (msgpack's C decoder gives the fuzzer no coverage to steer by, so this is
       how it reaches the record checks): per record, a field count, then one byte per
       field choosing a value of ``_VALUES`` (mostly right, sometimes of a wrong type or
       out of range); the harness packs them (and gzips them for codec 1).
       ``check_payload`` accepts the payload or raises InvalidArgument.  When it
       accepts, the broker stores it behind a header built from what it learned, so
       that batch must pass ``check_batch``, and consumers must decode it into exactly
       the records counted (``decode_records``, the SDK's ``records_from_batches``).
    0  bytes read back from a segment or an offsets log (torn, corrupt): ``split_batches``
       and ``check_batch`` say what is wrong, never raise.

Anything else raised is a crash.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Final

import msgpack

from wharf.broker.logs.topics import MAX_TIMESTAMP_MS
from wharf.logs import records_from_batches
from wharf.protocol.errors import InvalidArgument
from wharf.protocol.records import (
    CODEC_GZIP,
    CODEC_NONE,
    HEADER_BYTES,
    build_batch,
    check_batch,
    check_payload,
    compress,
    decode_records,
    encode_records,
    encode_values,
    read_header,
    split_batches,
)

TARGET: Final = "batches"
MAX_LEN: Final = 8 * 1024
_BASE_OFFSET: Final = 1_000


# Field values of structured records; _INDEX stands for the record's own offset delta.
_INDEX: Final = object()
_VALUES: Final[tuple[object, ...]] = (
    _INDEX,
    1_700_000_000_000,
    b"key",
    b"value",
    None,
    {"h": b"v"},
    0,
    -1,
    1.5,
    True,
    "text",
    b"",
    [],
    {},
    2**63 - 1,
    2**64 - 1,
    -(2**63),
    [1, 2],
    {1: 2},
    _INDEX,
)
_MAX_RECORDS: Final = 64


def one_input(data: bytes) -> None:
    if not data:
        return
    control, body = data[0], data[1:]
    if control & 1:
        codec = (control >> 1) & 7
        if control & 16:
            body = compress(_structured_payload(body), codec if codec == CODEC_GZIP else 0)
        _produced(body, codec)
    else:
        _stored(body)


def _structured_payload(data: bytes) -> bytes:
    records: list[object] = []
    pos = 0
    while pos < len(data) and len(records) < _MAX_RECORDS:
        n = data[pos] % 8
        fields = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        record = [_VALUES[b % len(_VALUES)] for b in fields]
        records.append([len(records) if v is _INDEX else v for v in record])
    if len(records) == 1 and not records[0]:
        return msgpack.packb(None)  # not an array at all
    payload: bytes = msgpack.packb(records, use_bin_type=True)
    return payload


def _produced(payload: bytes, codec: int) -> None:
    try:
        _, info = check_payload(payload, codec)
    except InvalidArgument:
        return
    if info.max_timestamp > MAX_TIMESTAMP_MS:
        return  # refused by TopicRegistry.produce, as InvalidArgument
    assert info.count >= 1 and info.last_offset_delta == info.count - 1, info
    assert 0 <= info.first_timestamp <= info.max_timestamp, info
    batch = build_batch(
        _BASE_OFFSET,
        payload,
        record_count=info.count,
        last_offset_delta=info.last_offset_delta,
        attributes=codec,
        first_timestamp=info.first_timestamp,
        max_timestamp=info.max_timestamp,
    )
    assert check_batch(batch) is None, check_batch(batch)
    assert [len(b) for b in split_batches(batch)] == [len(batch)]
    records = decode_records(batch)
    assert [r[0] for r in records] == list(range(_BASE_OFFSET, _BASE_OFFSET + info.count))
    assert len(decode_records(batch, _BASE_OFFSET + info.count - 1)) == 1
    consumed = records_from_batches("t", 0, [batch])
    assert [r.offset for r in consumed] == [r[0] for r in records]


def _stored(data: bytes) -> None:
    problem = check_batch(data)
    assert problem is None or isinstance(problem, str)
    pieces = split_batches(data)
    assert sum(len(p) for p in pieces) <= len(data)
    pos = 0
    for piece in pieces:
        if len(piece) >= HEADER_BYTES:
            assert read_header(piece).size == len(piece)
        check_batch(data, pos)
        pos += len(piece)


def seeds() -> Iterator[bytes]:
    """Real payloads as producers send them, and real stored batches."""
    plain, _ = encode_records([(b"k", b"v", None, 1_700_000_000_000)])
    many, _ = encode_records(
        [
            (None, b"value-1", {"trace": "abc"}, 1_700_000_000_001),
            (b"key-2", None, None, 1_700_000_000_002),  # a tombstone
            (b"key-3", b"\x00" * 40, {"n": 3, "nested": [1, 2]}, 1_700_000_000_000),
        ]
    )
    same = encode_values([b"a", b"b", b"c", None], b"key", {"h": "v"}, 1_700_000_000_005)
    six = msgpack.packb([[0, 1, b"k", b"v", None, "extra"]], use_bin_type=True)
    for payload in (plain, many, same, six):
        for codec in (CODEC_NONE, CODEC_GZIP):
            compressed = compress(payload, codec)
            yield bytes([1 | codec << 1]) + compressed
            records = msgpack.unpackb(payload)
            batch = build_batch(
                0,
                compressed,
                record_count=len(records),
                last_offset_delta=len(records) - 1,
                attributes=codec,
                first_timestamp=min(r[1] for r in records),
                max_timestamp=max(r[1] for r in records),
            )
            yield b"\x00" + batch
            yield b"\x00" + batch + batch[: HEADER_BYTES + 3]  # a torn tail
    # Structured: two good records ([i, ts, key, value, headers]), then one with a str key.
    yield bytes([1 | 16]) + bytes([5, 0, 1, 2, 3, 5, 5, 0, 1, 4, 3, 4])
    yield bytes([1 | 16 | CODEC_GZIP << 1]) + bytes([5, 0, 1, 2, 3, 4, 6, 0, 1, 10, 3, 4, 7])
    yield b"\x01" + msgpack.packb([])
    yield b"\x03" + zlib.compress(plain)  # zlib, not gzip, framing


def dictionary() -> list[bytes]:
    return [b"\x1f\x8b\x08\x00", b"\x95\x00", b"\xcf\x00\x00\x01\x8b", b"\xc4\x01", b"\x02"]
