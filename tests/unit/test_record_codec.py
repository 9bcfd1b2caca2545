"""Record batches both ways: the SDK's decoding into ``Record`` objects and the broker's
check of produced payloads (fast path and the record-by-record one agree)."""

from __future__ import annotations

import copy
import json
import pickle
import zlib
from typing import Any

import msgpack
import pytest

from wharf.logs import NO_HEADERS, PIECE_RECORDS, BatchReader, records_from_batches
from wharf.protocol.errors import InvalidArgument
from wharf.protocol.records import (
    CODEC_GZIP,
    LOG_APPEND_TIME,
    PayloadInfo,
    build_batch,
    check_payload,
    check_records,
    compress,
    encode_records,
    encode_values,
)


def batch(base: int, records: list[tuple[Any, ...]], attributes: int = 0) -> bytes:
    payload, count = encode_records(records)
    stamps = [r[3] for r in records]
    return build_batch(
        base,
        payload,
        record_count=count,
        last_offset_delta=count - 1,
        attributes=attributes,
        first_timestamp=min(stamps),
        max_timestamp=max(stamps) if not attributes else 99,
    )


def test_records_without_headers_share_one_read_only_dict() -> None:
    recs = records_from_batches(
        "t", 0, [batch(0, [(b"k", b"v1", None, 5), (None, b"v2", {"h": 1}, 6)])]
    )
    plain, with_headers = recs
    assert plain.headers == {} and plain.headers is NO_HEADERS
    assert isinstance(plain.headers, dict)
    assert with_headers.headers == {"h": 1}
    with_headers.headers["more"] = 2  # a record's own headers are its to change
    for change in (
        lambda h: h.__setitem__("x", 1),
        lambda h: h.update(x=1),
        lambda h: h.setdefault("x", 1),
        lambda h: h.pop("x"),
        lambda h: h.clear(),
    ):
        with pytest.raises(TypeError):
            change(plain.headers)
    assert NO_HEADERS == {}
    # It serializes as the empty map it is, and comes back as the same object.
    assert json.dumps(plain.headers) == "{}"
    assert msgpack.unpackb(msgpack.packb(plain.headers)) == {}
    assert pickle.loads(pickle.dumps(plain)) == plain
    assert pickle.loads(pickle.dumps(plain.headers)) is NO_HEADERS
    assert copy.deepcopy(plain).headers == {}
    assert dict(plain.headers) == {}


def test_log_append_time_and_min_offset() -> None:
    b = batch(10, [(None, b"a", None, 1), (None, b"b", None, 2)], LOG_APPEND_TIME)
    recs = records_from_batches("t", 3, [b], min_offset=11)
    assert [(r.partition, r.offset, r.value, r.timestamp) for r in recs] == [(3, 11, b"b", 99)]


def test_batch_reader_hands_out_pieces() -> None:
    n = PIECE_RECORDS + 7
    b = batch(100, [(None, b"%d" % i, None, i) for i in range(n)])
    reader = BatchReader()
    assert reader.start("t", 0, b, 102) == 100 + n
    first, end = reader.read()
    assert [r.offset for r in first] == list(range(102, 100 + PIECE_RECORDS))
    assert end == 100 + PIECE_RECORDS and reader.left == 7
    rest, end = reader.read()
    assert [r.value for r in rest] == [b"%d" % i for i in range(PIECE_RECORDS, n)]
    assert end == 100 + n and reader.left == 0
    # A batch wholly below the offset asked for is skipped.
    assert reader.start("t", 0, b, 100 + n) == 100 + n and reader.left == 0


def test_batch_reader_abandons_a_batch() -> None:
    n = PIECE_RECORDS + 1
    reader = BatchReader()
    reader.start("t", 0, batch(0, [(None, b"x", None, 1)] * n), 0)
    reader.read()
    reader.abandon()
    assert reader.left == 0
    reader.start("t", 0, batch(n, [(None, b"y", None, 1)]), 0)
    recs, end = reader.read()
    assert [(r.offset, r.value) for r in recs] == [(n, b"y")] and end == n + 1


# -- the broker's check of produced records -------------------------------------------


def test_check_records_of_a_usual_batch() -> None:
    records = [(i, 100 - i, b"k" if i % 2 else None, b"v", None) for i in range(10)]
    records[3] = (3, 7, b"k", None, {"h": 1})
    records[4] = [4, 96, None, b"v", None]  # arrays may come as lists
    assert check_records(records) == PayloadInfo(10, 9, 7, 100, True, True)
    assert check_records(tuple(records)) == PayloadInfo(10, 9, 7, 100, True, True)
    # Records with more fields than known are accepted (the general loop).
    longer = [(*r, "extra") for r in records]
    assert check_records(longer) == PayloadInfo(10, 9, 7, 100, True, True)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ((2, 5, None, b"v", None), "record 1: offset_delta must be 1"),
        ((True, 5, None, b"v", None), "record 1: offset_delta must be 1"),
        ((1, -1, None, b"v", None), "record 1: timestamp must be epoch ms"),
        ((1, 5.0, None, b"v", None), "record 1: timestamp must be epoch ms"),
        ((1, 5, "k", b"v", None), "record 1: key must be bin or nil"),
        ((1, 5, None, "v", None), "record 1: value must be bin or nil"),
        ((1, 5, None, b"v", [1]), "record 1: headers must be a map or nil"),
        ((1, 5, None, b"v"), "record 1 must be [offset_delta, timestamp, key, value, headers]"),
        ({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}, "record 1 must be"),
        (b"12345", "record 1 must be"),
    ],
)
def test_check_records_says_which_record_is_bad(record: Any, message: str) -> None:
    good = (0, 5, None, b"v", None)
    records = [good, record, (2, 5, None, b"v", None)]
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[")):
        check_records(records)


def test_a_gzip_bomb_is_refused_without_inflating_past_the_limit() -> None:
    # 64 MiB of zeros gzip to ~64 KiB; the broker inflates at most its limit, then refuses.
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = c.compress(bytes(64 * 1024 * 1024)) + c.flush()
    assert len(bomb) < 128 * 1024
    with pytest.raises(InvalidArgument, match="decompresses to more than 1048576 bytes"):
        check_payload(bomb, CODEC_GZIP, 1024 * 1024)


def test_a_compressed_batch_within_the_limit_is_accepted() -> None:
    raw = encode_values([b"x" * 100] * 50, None, None, 0)
    records, info = check_payload(compress(raw, CODEC_GZIP), CODEC_GZIP, len(raw))
    assert info.count == 50 and len(records) == 50
