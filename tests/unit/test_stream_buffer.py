"""The stream's record buffer: positions, stale fetch answers, hand-out, drops (no I/O)."""

from __future__ import annotations

from wharf.logs import PIECE_RECORDS
from wharf.protocol.records import build_batch, encode_records
from wharf.stream_buffer import RecordBuffer

TP = ("t", 0)
OTHER = ("t", 1)


def batch(base: int, n: int, *, gap_at_end: int = 0) -> bytes:
    payload, count = encode_records((None, b"v%d" % (base + i), None, 1000 + i) for i in range(n))
    return build_batch(
        base,
        payload,
        record_count=count,
        last_offset_delta=n - 1 + gap_at_end,
        attributes=0,
        first_timestamp=1000,
        max_timestamp=1000 + n - 1,
    )


def offsets(records: list) -> list[int]:  # type: ignore[type-arg]
    return [r.offset for r in records]


def test_fetch_position_runs_ahead_and_position_follows_hand_out() -> None:
    buf = RecordBuffer()
    buf.set_position(TP, 0)
    assert buf.add(TP, 0, [batch(0, 3), batch(3, 2)])
    assert buf.fetch_positions[TP] == 5
    assert buf.position(TP) == 0
    assert buf.activate()
    assert buf.position(TP) == 0
    buf.idx += 2  # two records handed out
    assert buf.position(TP) == 2
    assert buf.processed() == {TP: 2}
    buf.idx = len(buf.cur)  # the piece is the first batch
    assert buf.position(TP) == 3
    assert buf.activate()
    buf.idx = len(buf.cur)
    assert buf.position(TP) == 5
    assert not buf.activate()


def test_stale_answer_is_dropped() -> None:
    buf = RecordBuffer()
    buf.set_position(TP, 0)
    assert buf.add(TP, 0, [batch(0, 3)])
    # A second answer for offset 0 (sent before the first came back) is stale now.
    assert not buf.add(TP, 0, [batch(0, 3)])
    # A partition that is not assigned gets nothing.
    assert not buf.add(OTHER, 0, [batch(0, 3)])
    assert buf.fetch_positions == {TP: 3}


def test_first_batch_may_start_before_the_position() -> None:
    buf = RecordBuffer()
    buf.set_position(TP, 2)
    assert buf.add(TP, 2, [batch(0, 5)])
    assert offsets(buf.take(None)) == [2, 3, 4]
    assert buf.position(TP) == 5


def test_take_limits_and_spans_chunks() -> None:
    buf = RecordBuffer()
    buf.set_position(TP, 0)
    buf.set_position(OTHER, 10)
    buf.add(TP, 0, [batch(0, 4)])
    buf.add(OTHER, 10, [batch(10, 3)])
    first = buf.take(3)
    assert offsets(first) == [0, 1, 2]
    assert buf.position(TP) == 3
    rest = buf.take(10)  # fills up from the next chunks
    assert [(r.partition, r.offset) for r in rest] == [(0, 3), (1, 10), (1, 11), (1, 12)]
    assert buf.processed() == {TP: 4, OTHER: 13}
    assert buf.take(None) == []
    assert buf.nbytes == 0


def test_take_without_limit_gives_one_decoded_piece() -> None:
    buf = RecordBuffer()
    buf.set_position(TP, 0)
    buf.set_position(OTHER, 0)
    buf.add(TP, 0, [batch(0, 2)])
    buf.add(OTHER, 0, [batch(0, 2)])
    assert [(r.partition, r.offset) for r in buf.take(None)] == [(0, 0), (0, 1)]
    assert [(r.partition, r.offset) for r in buf.take(None)] == [(1, 0), (1, 1)]


def test_big_chunks_are_decoded_piece_by_piece() -> None:
    values = [b"x" * 1000] * 100  # ~100 kB per batch
    batches = []
    for i in range(5):
        payload, count = encode_records((None, v, None, 1) for v in values)
        batches.append(
            build_batch(
                i * 100,
                payload,
                record_count=count,
                last_offset_delta=count - 1,
                attributes=0,
                first_timestamp=1,
                max_timestamp=1,
            )
        )
    buf = RecordBuffer()
    buf.set_position(TP, 50)  # the first batch starts before the position
    assert buf.add(TP, 50, batches)
    total = buf.nbytes
    first = buf.take(None)
    assert first[0].offset == 50 and len(first) < 450
    assert buf.position(TP) == first[-1].offset + 1
    assert 0 < buf.nbytes < total
    got = [r.offset for r in first]
    while piece := buf.take(None):
        got += [r.offset for r in piece]
    assert got == list(range(50, 500))
    assert buf.nbytes == 0 and buf.position(TP) == 500


def test_whole_chunk_is_returned_without_copy_and_position_settles() -> None:
    buf = RecordBuffer()
    buf.set_position(TP, 0)
    buf.add(TP, 0, [batch(0, 3, gap_at_end=2)])  # offsets 3, 4 compacted away
    records = buf.take(None)
    assert offsets(records) == [0, 1, 2]
    records.clear()  # the caller owns the list
    assert buf.position(TP) == 5
    assert buf.fetch_positions[TP] == 5


def test_drop_keeps_handed_out_position_and_refetches_from_it() -> None:
    buf = RecordBuffer()
    buf.set_position(TP, 0)
    buf.set_position(OTHER, 0)
    buf.add(TP, 0, [batch(0, 5)])
    buf.add(TP, 5, [batch(5, 5)])
    buf.add(OTHER, 0, [batch(0, 2)])
    assert buf.activate()
    buf.idx = 2
    buf.drop([TP])
    assert buf.position(TP) == 2
    assert buf.fetch_positions == {TP: 2, OTHER: 2}
    assert [(r.partition, r.offset) for r in buf.take(None)] == [(1, 0), (1, 1)]
    assert buf.nbytes == 0


def test_seek_drops_buffer_and_moves_both_positions() -> None:
    buf = RecordBuffer()
    buf.set_position(TP, 0)
    buf.add(TP, 0, [batch(0, 5)])
    buf.take(2)
    buf.set_position(TP, 100)
    assert buf.position(TP) == 100
    assert buf.fetch_positions[TP] == 100
    assert buf.take(None) == []


def test_drop_all_and_forget() -> None:
    buf = RecordBuffer()
    buf.set_position(TP, 0)
    buf.add(TP, 0, [batch(0, 5)])
    buf.take(1)
    buf.drop()
    assert buf.processed() == {TP: 1}
    assert buf.fetch_positions == {TP: 1}
    buf.forget()
    assert buf.processed() == {}
    assert buf.position(TP) is None


def test_big_batch_is_handed_out_in_pieces() -> None:
    n = PIECE_RECORDS * 2 + 10
    buf = RecordBuffer()
    buf.set_position(TP, 5)  # the batch starts before the position
    buf.add(TP, 5, [batch(0, n), batch(n, 3)])
    first = buf.take(None)
    assert offsets(first) == list(range(5, PIECE_RECORDS))
    assert buf.position(TP) == PIECE_RECORDS
    second = buf.take(None)
    assert offsets(second) == list(range(PIECE_RECORDS, 2 * PIECE_RECORDS))
    assert [r.value for r in second[:1]] == [b"v%d" % PIECE_RECORDS]
    assert offsets(buf.take(7)) == list(range(2 * PIECE_RECORDS, 2 * PIECE_RECORDS + 7))
    assert buf.position(TP) == 2 * PIECE_RECORDS + 7
    assert offsets(buf.take(None)) == list(range(2 * PIECE_RECORDS + 7, n))
    assert offsets(buf.take(None)) == [n, n + 1, n + 2]
    assert buf.position(TP) == n + 3 and buf.nbytes == 0


def test_drop_in_the_middle_of_a_batch_refetches_from_the_position() -> None:
    n = PIECE_RECORDS + 100
    buf = RecordBuffer()
    buf.set_position(TP, 0)
    buf.set_position(OTHER, 0)
    buf.add(TP, 0, [batch(0, n)])
    buf.add(OTHER, 0, [batch(0, 2)])
    assert len(buf.take(None)) == PIECE_RECORDS  # the rest of the batch is undecoded
    buf.drop([TP])
    assert buf.position(TP) == PIECE_RECORDS
    assert buf.fetch_positions == {TP: PIECE_RECORDS, OTHER: 2}
    assert [(r.partition, r.offset) for r in buf.take(None)] == [(1, 0), (1, 1)]
    # Fetched again from the position: the same batch, from the middle.
    buf.add(TP, PIECE_RECORDS, [batch(0, n)])
    assert offsets(buf.take(None)) == list(range(PIECE_RECORDS, n))
    assert buf.take(None) == []
