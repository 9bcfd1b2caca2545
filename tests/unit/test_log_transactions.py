"""Transactions in partition storage without sockets: the aborted-transaction table and
.txnindex files, the last stable offset, read-committed reads, and recovery of both."""

from __future__ import annotations

from pathlib import Path

import pytest

from wharf.broker.logs import transactions
from wharf.broker.logs.partition import Partition, segment_name
from wharf.broker.logs.topicconfig import DEFAULTS
from wharf.broker.logs.txnindex import (
    AbortedTable,
    AbortedTxn,
    decode_txn_index,
    encode_txn_index,
    load_txn_index,
    txn_index_path,
)
from wharf.protocol.records import (
    CONTROL,
    MARKER_ABORT,
    MARKER_COMMIT,
    TRANSACTIONAL,
    decode_records,
    encode_records,
    read_header,
    read_marker,
)

SMALL = DEFAULTS.with_changes({"segment_bytes": 1024})


def append(p: Partition, value: bytes, *, pid: int = -1, seq: int = -1, txn: bool = False) -> int:
    payload, count = encode_records([(None, value, None, 1000)])
    if pid >= 0:
        assert p.check_producer(pid, 0, seq, count) is None
    base, _ = p.append(
        payload,
        record_count=count,
        last_offset_delta=count - 1,
        codec=0,
        first_timestamp=1000,
        max_timestamp=1000,
        producer_id=pid,
        producer_epoch=0 if pid >= 0 else -1,
        base_sequence=seq,
        transactional=txn,
    )
    return base


def values(p: Partition, committed: bool) -> list[bytes]:
    out = []
    offset = p.earliest
    while True:
        batches = p.fetch(offset, 1 << 20, committed=committed)
        if not batches:
            return out
        for b in batches:
            h = read_header(b)
            if not h.attributes & CONTROL:
                out += [r[3] for r in decode_records(b) if r[3] is not None]
            offset = h.next_offset


def test_aborted_table_lookup_copy_and_retention() -> None:
    t = AbortedTable()
    assert not t
    t.add(AbortedTxn(7, 10, 19, 20))
    t.add(AbortedTxn(7, 30, 34, 35))
    t.add(AbortedTxn(8, 12, 40, 41))
    t.add(AbortedTxn(7, 10, 19, 20))  # the same again (file and scan): once
    t.add(AbortedTxn(9, -1, 4, 5))  # a marker without batches here: nothing to hide
    assert t.count == 3
    assert [t.aborted(7, o) for o in (9, 10, 19, 20, 25, 30, 34, 35)] == [
        False, True, True, False, False, True, True, False,
    ]  # fmt: skip
    assert t.aborted(8, 40) and not t.aborted(9, 4) and not t.aborted(1, 12)
    # A fetch of offsets 41.. or ..9 needs no filtering; one overlapping 10..40 does.
    assert not t.any_between(41, 100) and not t.any_between(0, 10)
    assert t.any_between(40, 100) and t.any_between(0, 11) and t.any_between(25, 26)
    assert not AbortedTable().any_between(0, 100)
    c = t.copy()
    t.drop_below(21)  # retention took offsets below 21: the first range goes
    assert not t.aborted(7, 10) and t.aborted(7, 30) and t.count == 2
    assert c.aborted(7, 10) and c.count == 3 and c.any_between(0, 11)


def test_txn_index_file_round_trip_and_damage(tmp_path: Path) -> None:
    entries = [AbortedTxn(1, 0, 4, 5), AbortedTxn(2, 3, 9, 10)]
    data = encode_txn_index(entries)
    assert decode_txn_index(data) == entries
    assert decode_txn_index(data[:-1]) is None
    assert decode_txn_index(b"") is None
    assert decode_txn_index(encode_txn_index([])) == []


def test_last_stable_offset_and_read_committed(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0)
    append(p, b"plain-0")  # 0
    append(p, b"t1-a", pid=1, seq=0, txn=True)  # 1: opens producer 1's transaction
    append(p, b"plain-2")  # 2
    append(p, b"t2-a", pid=2, seq=0, txn=True)  # 3
    assert p.last_stable_offset == 1 and p.high_watermark == 4
    assert values(p, committed=True) == [b"plain-0"]
    assert p.append_marker(1, 0, commit=False) == 4  # abort producer 1
    assert p.last_stable_offset == 3  # producer 2 still open
    assert values(p, committed=True) == [b"plain-0", b"plain-2"]
    assert p.append_marker(2, 0, commit=True) == 5
    assert p.last_stable_offset == p.high_watermark == 6
    assert values(p, committed=True) == [b"plain-0", b"plain-2", b"t2-a"]
    assert values(p, committed=False) == [b"plain-0", b"t1-a", b"plain-2", b"t2-a"]
    assert p.append_marker(2, 0, commit=True) is None  # nothing open: no marker
    marker = read_marker(p.fetch(4, 1 << 20)[0])
    assert marker is not None and marker.kind == MARKER_ABORT and marker.txn_first_offset == 1
    marker = read_marker(p.fetch(5, 1 << 20)[0])
    assert marker is not None and marker.kind == MARKER_COMMIT
    h = read_header(p.fetch(5, 1 << 20)[0])
    assert h.attributes & (CONTROL | TRANSACTIONAL) == CONTROL | TRANSACTIONAL
    p.close()


def test_recovery_rebuilds_open_transactions_and_aborted_ranges(tmp_path: Path) -> None:
    path = tmp_path / "0"
    p = Partition(path, 0, SMALL)
    append(p, b"x" * 300, pid=1, seq=0, txn=True)  # 0
    for i in range(6):
        append(p, b"p%d" % i + b"." * 200)  # rolls several segments
    p.append_marker(1, 0, commit=False)  # aborted 0..6, marker 7
    append(p, b"y", pid=3, seq=0, txn=True)  # 8: left open
    append(p, b"tail")  # 9
    assert len(p.segments) > 2
    expected = values(p, committed=True)
    p.close(clean=False)  # as after kill -9: no snapshot at the end
    q = Partition(path, 0, SMALL)
    assert q.producers.open_txns == {3: 8}
    assert q.last_stable_offset == 8
    assert q.aborted.aborted(1, 0) and not q.aborted.aborted(3, 8)
    assert values(q, committed=True) == expected
    assert b"x" * 300 not in expected
    # A closed segment's .txnindex, when lost, is rebuilt from its markers.
    marker_seg = next(s for s in q.segments if s.base_offset <= 7 < s.next_offset)
    q.close()
    if marker_seg is not q.segments[-1]:
        assert load_txn_index(marker_seg.path) == [AbortedTxn(1, 0, 6, 7)]
        txn_index_path(marker_seg.path).unlink()
    r = Partition(path, 0, SMALL)
    assert r.aborted.aborted(1, 0)
    assert values(r, committed=True) == expected
    assert (path / segment_name(0)).exists()
    r.close()


def test_a_partition_without_transactions_has_no_txn_index_files(tmp_path: Path) -> None:
    path = tmp_path / "0"
    p = Partition(path, 0, SMALL)
    for i in range(8):
        append(p, b"p%d" % i + b"." * 200)
    assert len(p.segments) > 2 and not p.has_txns
    p.close()
    assert not list(path.glob("*.txnindex")) and not (path / "has-transactions").exists()
    q = Partition(path, 0, SMALL)
    append(q, b"t", pid=1, seq=0, txn=True)  # the first transactional batch flags it
    assert q.has_txns and (path / "has-transactions").exists()
    for i in range(8):
        append(q, b"q%d" % i + b"." * 200)
    q.close()
    assert list(path.glob("*.txnindex"))


async def test_transaction_log_last_record_wins_compacts_and_cuts_a_torn_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transactions, "COMPACT_MIN_BYTES", 2048)
    log = transactions.TxnLog(tmp_path)
    assert log.load() == {}
    for i in range(200):
        await log.write(f"id-{i % 3}", b"v%d" % i)
    size_before_close = log.file_bytes
    await log.close()
    assert size_before_close < 200 * 80  # rewritten on the way: 3 live records
    again = transactions.TxnLog(tmp_path)
    assert again.load() == {"id-0": b"v198", "id-1": b"v199", "id-2": b"v197"}
    await again.close()
    _tear(tmp_path / transactions.LOG_NAME)
    third = transactions.TxnLog(tmp_path)
    assert third.load()["id-1"] == b"v199"
    assert _torn_files(tmp_path)
    await third.close()


def _tear(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"\x00\x00\x01")  # a torn batch header


def _torn_files(directory: Path) -> list[Path]:
    return list(directory.glob("*.torn-*"))
