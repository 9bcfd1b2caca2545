"""The transaction log record keeps the queue acks of a transaction (issue 15 part 3), and
records written before acks existed still load."""

from __future__ import annotations

import msgpack

from wharf.broker.logs.transactions import PREPARE_COMMIT, Txn, _decode_value


def test_queue_acks_round_trip() -> None:
    txn = Txn("worker", 7, 2, 60_000)
    txn.state = PREPARE_COMMIT
    txn.partitions = {("out", 0)}
    txn.acks = {2**61 + 5: [9, 3], 11: [1]}
    back = _decode_value("worker", txn.value())
    assert back.acks == {2**61 + 5: [3, 9], 11: [1]}
    assert (back.state, back.partitions) == (PREPARE_COMMIT, {("out", 0)})


def test_a_record_without_acks_loads() -> None:
    old = msgpack.packb([7, 2, 60_000, "Ongoing", [["out", 0]], {}, 1, 2], use_bin_type=True)
    txn = _decode_value("worker", old)
    assert txn.acks == {} and txn.partitions == {("out", 0)}
