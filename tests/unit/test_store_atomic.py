"""Atomic commits in the message store (core/transactions.py's base): the persistent
publishes, acks and DEDUP entries of one commit are one group commit in one segment, and
after a crash at ANY byte of it recovery shows all of them or none."""

from __future__ import annotations

import shutil
from pathlib import Path

from wharf.broker.store.recovery import recover
from wharf.broker.store.segments import MessageStore, list_segments

UID = 3
OTHER = 4
BODY = b"m" * 50


async def _store_with_committed_tx(directory: Path) -> tuple[int, int]:
    """Message 0 published and flushed; then one commit acks it and publishes 1 and 2
    (to two queues) with a DEDUP entry.  Returns (tx start offset, tx end offset)."""
    store = MessageStore(directory)
    store.open_for_append([])
    seg, _ = store.append_messages(UID, 0, "", "q", None, [BODY])
    await store.flush()
    start = seg.size
    fsyncs = store.fsyncs
    store.begin_atomic()
    store.settle(UID, 0, seg)
    store.append_messages(UID, 1, "", "q", {"message_id": "a"}, [BODY])
    store.append_messages(OTHER, 0, "", "q", None, [BODY, BODY])
    store.dedup(UID, "a", 1, 2**62)
    batch = store.end_atomic()
    assert batch == store.batch
    await store.flush()
    assert store.durable_batch >= batch
    assert store.fsyncs == fsyncs + 1  # one write, one fsync for the whole commit
    assert store.active is seg  # all in one segment
    end = seg.size
    store.close()
    return start, end


def _view(directory: Path) -> tuple[set[tuple[int, int]], set[str]]:
    rec = recover(directory)
    live = {(uid, pos) for uid, msgs in rec.messages.items() for pos in msgs}
    ids = {mid for entries in rec.dedup.values() for mid in entries}
    return live, ids


async def test_a_commit_torn_anywhere_is_all_or_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    start, end = await _store_with_committed_tx(data)
    before = ({(UID, 0)}, set[str]())
    after = ({(UID, 1), (OTHER, 0), (OTHER, 1)}, {"a"})
    assert _view(data) == after
    ((_, path),) = list_segments(data)
    whole = path.read_bytes()
    for cut in range(start, end):
        trial = tmp_path / f"cut-{cut}"
        trial.mkdir()
        (trial / path.name).write_bytes(whole[:cut])
        assert _view(trial) == before, f"torn at byte {cut - start} of {end - start}"
        shutil.rmtree(trial)


async def test_an_aborted_commit_is_dropped_by_recovery(tmp_path: Path) -> None:
    store = MessageStore(tmp_path)
    store.open_for_append([])
    store.begin_atomic()
    store.append_messages(UID, 0, "", "q", None, [BODY])
    store.end_atomic(commit=False)  # a publish failed half-way: no TXEND
    store.append_messages(UID, 1, "", "q", None, [BODY])
    await store.flush()
    store.close()
    rec = recover(tmp_path)
    assert set(rec.messages[UID]) == {1}
    assert rec.uncommitted == 1


async def test_a_commit_rolls_first_and_never_spans_two_segments(tmp_path: Path) -> None:
    store = MessageStore(tmp_path, segment_bytes=100)
    store.open_for_append([])
    store.append_messages(UID, 0, "", "q", None, [BODY, BODY])  # fills the segment
    first = store.active
    store.begin_atomic()
    for pos in range(2, 10):
        store.append_messages(UID, pos, "", "q", None, [BODY])
    store.end_atomic()
    assert store.active is not first
    assert len(store.segments) == 2
    await store.flush()
    store.close()
    assert set(recover(tmp_path).messages[UID]) == set(range(10))


async def test_when_durable_is_told_after_the_commit_is_on_disk(tmp_path: Path) -> None:
    store = MessageStore(tmp_path)
    store.open_for_append([])
    told: list[bool] = []
    store.begin_atomic()
    store.append_messages(UID, 0, "", "q", None, [BODY])
    batch = store.end_atomic()
    store.when_durable(batch, told.append)
    assert told == []
    await store.flush()
    assert told == [True]
    store.when_durable(batch, told.append)  # already durable: at once
    assert told == [True, True]
    store.close()


async def test_reclaim_carries_unexpired_dedup_ids_forward_and_drops_expired(
    tmp_path: Path,
) -> None:
    """A segment with nothing live left is deleted only after its unexpired DEDUP
    entries were copied into the active segment and fsynced; expired ones just go."""
    store = MessageStore(tmp_path, segment_bytes=300)
    store.open_for_append([])
    seg, _ = store.append_messages(UID, 0, "", "q", {"message_id": "keep"}, [BODY, BODY])
    store.dedup(UID, "keep", 1, 2**62)  # far in the future
    store.dedup(UID, "gone", 1, 2)  # expired long ago
    await store.flush()
    assert seg.dedup_offsets and store.active is seg
    store.append_messages(OTHER, 0, "", "q", None, [BODY] * 3)  # fills seg
    store.settle(UID, 0, seg)
    store.settle(UID, 1, seg)
    for pos in range(3):
        store.settle(OTHER, pos, seg)
    assert seg.live == 0
    store.append_messages(OTHER, 3, "", "q", None, [BODY])  # rolls: seg is not active
    await store.flush()
    await store.flush()  # the carried copy's batch, then the deletion
    assert not seg.path.exists()
    assert [s.dedup_offsets != [] for s in store.segments] == [True]
    store.close()
    rec = recover(tmp_path)
    assert set(rec.dedup[UID]) == {"keep"}
    assert rec.dedup[UID]["keep"] == (1, 2**62)  # the first acceptance time is kept
