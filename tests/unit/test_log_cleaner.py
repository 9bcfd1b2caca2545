"""Log compaction over segment files made of record batches (no broker, no sockets)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wharf.broker.logs import cleaner as LC
from wharf.broker.logs import compaction as C
from wharf.broker.logs.index import index_paths
from wharf.broker.logs.partition import Partition
from wharf.broker.logs.topics import TopicRegistry
from wharf.protocol.records import (
    CODEC_GZIP,
    CODEC_NONE,
    LOG_APPEND_TIME,
    build_batch,
    check_batch,
    compress,
    decode_records,
    read_header,
    split_batches,
)

NOW_MS = 1_700_000_000_000
DAY_MS = 86_400_000

Rec = tuple[bytes | None, bytes | None]


def batch(
    base: int,
    recs: list[Rec],
    *,
    codec: int = CODEC_NONE,
    attributes: int = 0,
    producer_id: int = -1,
    base_sequence: int = -1,
    delete_horizon: int = -1,
    ts: int = 1000,
) -> bytes:
    packed = [[i, ts + i, k, v, None] for i, (k, v) in enumerate(recs)]
    payload = compress(msgpack.packb(packed, use_bin_type=True), codec)
    return build_batch(
        base,
        payload,
        record_count=len(recs),
        last_offset_delta=len(recs) - 1,
        attributes=codec | attributes,
        first_timestamp=ts,
        max_timestamp=ts + len(recs) - 1,
        producer_id=producer_id,
        producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=base_sequence,
        delete_horizon=delete_horizon,
    )


def segment(tmp_path: Path, *batches: bytes) -> C.SegmentFile:
    base = read_header(batches[0]).base_offset
    path = tmp_path / f"{base:020d}.log"
    data = b"".join(batches)
    path.write_bytes(data)
    return C.SegmentFile(base, path, len(data))


def log_of(tmp_path: Path, *segs: list[list[Rec]]) -> tuple[list[C.SegmentFile], int]:
    """Segments of one-batch-per-list; returns them and the next offset (the limit)."""
    out: list[C.SegmentFile] = []
    offset = 0
    for seg_batches in segs:
        made = []
        for recs in seg_batches:
            made.append(batch(offset, recs))
            offset += len(recs)
        out.append(segment(tmp_path, *made))
    return out, offset


def records_of(path: Path) -> list[tuple[int, bytes | None, bytes | None]]:
    out = []
    for b in split_batches(path.read_bytes()):
        assert check_batch(b) is None
        out.extend((r[0], r[2], r[3]) for r in decode_records(bytes(b)))
    return out


def swap_in(result: C.CleanResult) -> None:
    for c in result.segments:
        c.cleaned.replace(c.source)


def reread(segs: list[C.SegmentFile]) -> list[C.SegmentFile]:
    return [C.SegmentFile(s.base_offset, s.path, s.path.stat().st_size) for s in segs]


def run(segs: list[C.SegmentFile], limit: int, **kw: Any) -> C.CleanResult:
    kw.setdefault("dirty_offset", 0)
    kw.setdefault("now_ms", NOW_MS)
    kw.setdefault("delete_retention_ms", DAY_MS)
    return C.clean_partition(segs, limit_offset=limit, **kw)


def test_keeps_the_latest_value_per_key_with_offsets_unchanged(tmp_path: Path) -> None:
    segs, limit = log_of(
        tmp_path,
        [[(b"a", b"1"), (b"b", b"1"), (b"a", b"2")]],
        [[(b"c", b"1"), (b"b", b"2")], [(b"a", b"3")]],
    )
    result = run(segs, limit)
    assert result.end_offset == limit
    swap_in(result)
    got = records_of(segs[0].path) + records_of(segs[1].path)
    assert got == [(3, b"c", b"1"), (4, b"b", b"2"), (5, b"a", b"3")]
    assert result.stats.records_removed == 3
    assert result.stats.batches_dropped == 1  # the first batch lost every record
    assert not list(tmp_path.glob("*.cleaned"))


def test_rebuilt_batch_keeps_base_last_offset_and_producer_fields(tmp_path: Path) -> None:
    first = batch(0, [(b"a", b"1"), (b"b", b"1"), (b"c", b"1")], producer_id=7, base_sequence=40)
    seg = segment(tmp_path, first, batch(3, [(b"b", b"2"), (b"c", b"2")]))
    result = run([seg], 5)
    swap_in(result)
    b0, b1 = split_batches(seg.path.read_bytes())
    h = read_header(b0)
    assert (h.base_offset, h.last_offset_delta, h.record_count) == (0, 2, 1)
    assert (h.producer_id, h.producer_epoch, h.base_sequence) == (7, 0, 40)
    assert (h.first_timestamp, h.max_timestamp) == (1000, 1000)
    assert check_batch(b0) is None
    assert bytes(b1) == batch(3, [(b"b", b"2"), (b"c", b"2")])  # untouched: byte for byte
    assert result.stats.batches_rebuilt == 1


def test_last_offset_delta_is_kept_when_the_last_record_goes(tmp_path: Path) -> None:
    # As Kafka: the producer's last sequence (base_sequence + last_offset_delta) survives.
    seg = segment(
        tmp_path,
        batch(0, [(b"a", b"1"), (b"b", b"1")], producer_id=1, base_sequence=0),
        batch(2, [(b"b", b"2")]),
    )
    swap_in(run([seg], 3))
    h = read_header(split_batches(seg.path.read_bytes())[0])
    assert (h.record_count, h.last_offset_delta) == (1, 1)


def test_segment_with_nothing_to_remove_is_not_rewritten(tmp_path: Path) -> None:
    segs, limit = log_of(tmp_path, [[(b"a", b"1"), (b"b", b"1")]], [[(b"a", b"2")]])
    before = segs[1].path.read_bytes()
    result = run(segs, limit)
    assert [c.base_offset for c in result.segments] == [0]
    assert not C.cleaned_path(segs[1].path).exists()
    assert segs[1].path.read_bytes() == before


def test_segment_losing_every_batch_stays_as_an_empty_file(tmp_path: Path) -> None:
    segs, limit = log_of(tmp_path, [[(b"a", b"1")], [(b"a", b"2")]], [[(b"a", b"3")]])
    result = run(segs, limit)
    swap_in(result)
    assert segs[0].path.read_bytes() == b""
    assert result.segments[0].size == 0
    assert result.stats.bytes_removed == segs[0].size
    assert records_of(segs[1].path) == [(2, b"a", b"3")]


def test_records_without_a_key_are_removed(tmp_path: Path) -> None:
    segs, limit = log_of(tmp_path, [[(None, b"x"), (b"a", b"1"), (None, b"y")]])
    swap_in(run(segs, limit))
    assert records_of(segs[0].path) == [(1, b"a", b"1")]


def test_tombstone_gets_a_horizon_then_goes_after_it(tmp_path: Path) -> None:
    segs, limit = log_of(tmp_path, [[(b"a", b"1"), (b"b", b"1")], [(b"a", None)]])
    first = run(segs, limit, delete_retention_ms=1000)
    swap_in(first)
    b0, b1 = split_batches(segs[0].path.read_bytes())
    assert [r[2:4] for r in decode_records(bytes(b0))] == [(b"b", b"1")]
    assert read_header(b0).delete_horizon == -1  # no tombstone in it
    assert read_header(b1).delete_horizon == NOW_MS + 1000
    assert check_batch(b1) is None
    assert first.stats.tombstone_horizon == NOW_MS + 1000

    segs = reread(segs)
    early = run(segs, limit, dirty_offset=limit, now_ms=NOW_MS + 999)
    assert early.segments == []  # horizon not reached: nothing to do
    assert early.stats.tombstone_horizon == NOW_MS + 1000

    late = run(segs, limit, dirty_offset=limit, now_ms=NOW_MS + 1000)
    swap_in(late)
    assert records_of(segs[0].path) == [(1, b"b", b"1")]
    assert late.stats.tombstones_removed == 1
    assert late.stats.tombstone_horizon == -1


def test_a_later_value_replaces_a_tombstone(tmp_path: Path) -> None:
    segs, limit = log_of(tmp_path, [[(b"a", None)], [(b"a", b"again")]])
    swap_in(run(segs, limit))
    assert records_of(segs[0].path) == [(1, b"a", b"again")]


def test_gzip_batch_is_rebuilt_gzip(tmp_path: Path) -> None:
    seg = segment(
        tmp_path,
        batch(0, [(b"a", b"1" * 100), (b"b", b"1" * 100)], codec=CODEC_GZIP),
        batch(2, [(b"a", b"2")]),
    )
    swap_in(run([seg], 3))
    b0 = split_batches(seg.path.read_bytes())[0]
    assert read_header(b0).codec == CODEC_GZIP
    assert [(r[0], r[2], r[3]) for r in decode_records(bytes(b0))] == [(1, b"b", b"1" * 100)]


def test_log_append_time_batch_keeps_its_timestamps(tmp_path: Path) -> None:
    seg = segment(
        tmp_path,
        batch(0, [(b"a", b"1"), (b"b", b"1")], attributes=LOG_APPEND_TIME, ts=5000),
        batch(2, [(b"a", b"2")]),
    )
    swap_in(run([seg], 3))
    h = read_header(split_batches(seg.path.read_bytes())[0])
    assert (h.first_timestamp, h.max_timestamp, h.log_append_time) == (5000, 5001, True)


def test_last_batch_of_a_producer_is_kept_whole(tmp_path: Path) -> None:
    producer_batch = batch(0, [(b"a", b"1")], producer_id=3, base_sequence=9)
    seg = segment(tmp_path, producer_batch, batch(1, [(b"a", b"2")]))
    result = run([seg], 2, keep_batches={0})
    assert result.segments == []  # nothing else to remove
    assert seg.path.read_bytes()[: len(producer_batch)] == producer_batch


def test_offset_map_budget_leaves_the_rest_dirty(tmp_path: Path) -> None:
    segs, limit = log_of(
        tmp_path,
        [[(b"a", b"1"), (b"b", b"1")], [(b"a", b"2")]],
        [[(b"c", b"1")], [(b"b", b"2")]],
    )
    # Room for one entry: the map stops before the second batch.
    result = run(segs, limit, budget_bytes=1)
    assert result.end_offset == 2
    assert result.segments == []  # the first batch alone has nothing superseded
    mapped, end = C.build_offset_map(segs, 2, limit, budget_bytes=1)
    assert (mapped, end) == ({b"a": 2}, 3)
    result = run(segs, limit, dirty_offset=2, budget_bytes=1)
    assert result.end_offset == 3
    swap_in(result)
    segs = reread(segs)
    assert records_of(segs[0].path) == [(1, b"b", b"1"), (2, b"a", b"2")]
    result = run(segs, limit, dirty_offset=3)
    swap_in(result)
    assert result.end_offset == limit
    assert records_of(segs[0].path) + records_of(segs[1].path) == [
        (2, b"a", b"2"),
        (3, b"c", b"1"),
        (4, b"b", b"2"),
    ]


def test_long_keys_are_mapped_by_digest(tmp_path: Path) -> None:
    long_a, long_b = b"k" * 40 + b"a", b"k" * 40 + b"b"
    segs, limit = log_of(tmp_path, [[(long_a, b"1"), (long_b, b"1")], [(long_a, b"2")]])
    assert len(C.map_key(long_a)) == 16
    assert C.map_key(b"short") == b"short"
    swap_in(run(segs, limit))
    assert records_of(segs[0].path) == [(1, long_b, b"1"), (2, long_a, b"2")]


def test_dirty_ratio(tmp_path: Path) -> None:
    segs, limit = log_of(tmp_path, [[(b"a", b"1")]], [[(b"a", b"2")]], [[(b"a", b"3")]])
    assert C.dirty_ratio(segs, 0, limit) == 1.0
    assert C.dirty_ratio(segs, 1, limit) == pytest.approx(2 / 3)
    assert C.dirty_ratio(segs, limit, limit) == 0.0
    assert C.dirty_ratio([], 0, 0) == 0.0


def test_corrupt_segment_abandons_the_clean(tmp_path: Path) -> None:
    segs, limit = log_of(tmp_path, [[(b"a", b"1")], [(b"a", b"2")]], [[(b"a", b"3")]])
    data = bytearray(segs[1].path.read_bytes())
    data[-1] ^= 0xFF
    segs[1].path.write_bytes(bytes(data))
    with pytest.raises(C.CorruptSegment, match="crc"):
        run(segs, limit)
    assert not list(tmp_path.glob("*.cleaned"))


def test_checkpoint_round_trip_and_bad_file(tmp_path: Path) -> None:
    assert LC.read_checkpoint(tmp_path) == LC.Checkpoint(0, -1)
    assert LC.read_checkpoint(tmp_path, log_start=7) == LC.Checkpoint(7, -1)
    LC.write_checkpoint(tmp_path, LC.Checkpoint(42, NOW_MS))
    assert LC.read_checkpoint(tmp_path) == LC.Checkpoint(42, NOW_MS)
    assert json.loads((tmp_path / LC.CHECKPOINT_FILE).read_bytes())["dirty_offset"] == 42
    (tmp_path / LC.CHECKPOINT_FILE).write_bytes(b"{not json")
    assert LC.read_checkpoint(tmp_path) == LC.Checkpoint(0, -1)
    (tmp_path / LC.CHECKPOINT_FILE).write_text('{"dirty_offset": -1, "tombstone_horizon": 0}')
    assert LC.read_checkpoint(tmp_path) == LC.Checkpoint(0, -1)


def test_leftover_cleaned_files_are_removed(tmp_path: Path) -> None:
    for name in ("00000000000000000000.log", "00000000000000000000.index"):
        (tmp_path / name).write_bytes(b"")
        (tmp_path / (name + ".cleaned")).write_bytes(b"x")
    assert LC.remove_leftovers(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00000000000000000000.index",
        "00000000000000000000.log",
    ]


keys = st.sampled_from([b"a", b"b", b"c", b"d", b"e" * 20])
value = st.one_of(st.none(), st.binary(min_size=1, max_size=4))
log_shape = st.lists(
    st.lists(st.lists(st.tuples(keys, value), min_size=1, max_size=4), min_size=1, max_size=3),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(shape=log_shape, first_dirty=st.integers(0, 3))
def test_cleaned_log_is_the_latest_per_key(
    tmp_path_factory: pytest.TempPathFactory, shape: list[list[list[Rec]]], first_dirty: int
) -> None:
    tmp = tmp_path_factory.mktemp("log")
    segs, limit = log_of(tmp, *shape)
    everything = [r for s in segs for r in records_of(s.path)]
    # A first pass with a horizon far away, then one after the horizon.
    for now in (NOW_MS, NOW_MS + 2 * DAY_MS):
        result = run(segs, limit, now_ms=now)
        swap_in(result)
        segs = reread(segs)
    latest: dict[bytes, tuple[int, bytes | None]] = {}
    for offset, key, val in everything:
        assert key is not None
        latest[key] = (offset, val)
    expected = sorted((o, k, v) for k, (o, v) in latest.items() if v is not None)
    assert [r for s in segs for r in records_of(s.path)] == expected


# -- against a real partition (TopicRegistry, no sockets) -------------------------------

TOPIC_CONFIG = {"cleanup_policy": "compact", "segment_bytes": 1024, "min_cleanable_dirty_ratio": 0}


def fill(registry: TopicRegistry, topic: str, keys: int, versions: int) -> dict[bytes, int]:
    """Versions of each key then unique-key fillers, so every version sits in a closed
    segment; returns key -> latest offset."""
    latest: dict[bytes, int] = {}
    for v in range(versions):
        for k in range(keys):
            key = b"k%d" % k
            _, latest[key] = registry.append_records(
                topic, 0, [(key, b"v%d" % v + b"." * 100, None, 1000 + v)], acks="written"
            )
    for i in range(12):
        registry.append_records(topic, 0, [(b"f%d" % i, b"." * 100, None, 2000)], acks="written")
    return latest


def partition_records(part: Partition) -> list[tuple[int, bytes | None, bytes | None]]:
    out: list[tuple[int, bytes | None, bytes | None]] = []
    offset = part.earliest
    while offset < part.latest:
        batches = part.fetch(offset, 1 << 20)
        for b in batches:
            out += [(r[0], r[2], r[3]) for r in decode_records(bytes(b), offset)]
        offset = read_header(batches[-1]).next_offset
    return out


def plan_of(part: Partition) -> tuple[list[C.SegmentFile], int]:
    closed = [C.SegmentFile(s.base_offset, s.path, s.size) for s in part.segments[:-1]]
    return closed, part.segments[-1].base_offset


def test_swap_serves_cleaned_data_and_survives_reopen(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = TopicRegistry(tmp_path)
    registry.create("t", 1, TOPIC_CONFIG)
    latest = fill(registry, "t", keys=3, versions=5)
    part = registry.get("t").partitions[0]
    segs, limit = plan_of(part)
    prepared = LC.prepare(
        segs,
        dirty_offset=0,
        limit_offset=limit,
        now_ms=NOW_MS,
        delete_retention_ms=DAY_MS,
        keep_batches=(),
        budget_bytes=C.OFFSET_MAP_BUDGET_BYTES,
    )
    swapped = LC.swap_in(part, prepared, {s.base_offset: s.size for s in segs})
    assert swapped is not None and len(swapped) == len(prepared.result.segments) > 0
    LC.finish_pass(part.path, [(s.path, s.size) for s in swapped], LC.Checkpoint(limit), None)
    assert not list(part.path.glob("*.cleaned"))
    got = partition_records(part)
    assert [(o, k) for o, k, _ in got if k in latest] == sorted((o, k) for k, o in latest.items())
    registry.close()

    caplog.clear()
    reopened = TopicRegistry(tmp_path)
    part = reopened.get("t").partitions[0]
    assert partition_records(part) == got
    assert "rebuilt the indexes" not in caplog.text  # the new index files were good
    assert LC.read_checkpoint(part.path) == LC.Checkpoint(limit)
    reopened.close()


def test_retention_during_a_clean_abandons_it(tmp_path: Path) -> None:
    registry = TopicRegistry(tmp_path)
    registry.create("t", 1, {**TOPIC_CONFIG, "cleanup_policy": "compact,delete"})
    fill(registry, "t", keys=2, versions=6)
    part = registry.get("t").partitions[0]
    segs, limit = plan_of(part)
    prepared = LC.prepare(
        segs,
        dirty_offset=0,
        limit_offset=limit,
        now_ms=NOW_MS,
        delete_retention_ms=DAY_MS,
        keep_batches=(),
        budget_bytes=C.OFFSET_MAP_BUDGET_BYTES,
    )
    assert prepared.result.segments
    before = partition_records(part)
    # Retention deletes the oldest segment meanwhile.
    registry.alter("t", None, {"retention_bytes": part.size_bytes - segs[0].size})
    assert part.apply_retention(0) == 1  # by bytes only: record times are 1970
    assert LC.swap_in(part, prepared, {s.base_offset: s.size for s in segs}) is None
    LC.discard_all(prepared.result)
    assert not list(part.path.glob("*.cleaned"))
    assert not segs[0].path.exists()  # not brought back by a rename
    assert partition_records(part) == [r for r in before if r[0] >= part.earliest]
    registry.close()


async def test_cleaner_picks_the_dirtiest_partition_and_closes(tmp_path: Path) -> None:
    registry = TopicRegistry(tmp_path)
    registry.create("plain", 1, {"segment_bytes": 1024})  # cleanup_policy delete
    registry.create("t", 2, TOPIC_CONFIG)
    cleaner = LC.LogCleaner(registry, 60_000)
    assert await cleaner.clean_once() is False  # nothing closed yet
    for i in range(40):
        registry.append_records("plain", 0, [(b"k", b"." * 100, None, 1)], acks="written")
        registry.append_records("t", 1, [(b"k", b"%d" % i + b"." * 100, None, 1)], acks="written")
    for part in registry.get("t").partitions + registry.get("plain").partitions:
        await wait_for_indexes(part)
    assert await cleaner.clean_once() is True
    assert cleaner.runs == 1 and cleaner.bytes_removed > 0
    # Partition 1 was cleaned: one "k" left below the active segment.
    part = registry.get("t").partitions[1]
    active = part.segments[-1].base_offset
    assert [o for o, _, _ in partition_records(part) if o < active] == [active - 1]
    assert len(partition_records(registry.get("plain").partitions[0])) == 40
    assert await cleaner.clean_once() is False  # nothing dirty is left
    await cleaner.close()
    registry.close()


async def wait_for_indexes(part: Partition) -> None:
    """A segment's index files are written in a worker thread after it rolls (and
    the segment counts as finished once the loop has seen that job end)."""
    for _ in range(500):
        if all(
            s.finished and all(p.exists() for p in index_paths(s.path)) for s in part.segments[:-1]
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("index files of closed segments not written")


async def test_close_waits_for_the_running_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = TopicRegistry(tmp_path)
    registry.create("t", 1, TOPIC_CONFIG)
    for i in range(20):
        registry.append_records("t", 0, [(b"k", b"%d" % i + b"." * 100, None, 1)], acks="written")
    await wait_for_indexes(registry.get("t").partitions[0])
    started = threading.Event()
    finished = threading.Event()

    def slow_prepare(*args: Any, abort: threading.Event, **kwargs: Any) -> Any:
        started.set()
        try:
            assert abort.wait(10), "close() did not abort the pass"
            time.sleep(0.2)  # a worker takes a moment to notice
            raise C.CleanAborted
        finally:
            finished.set()

    monkeypatch.setattr(LC, "prepare", slow_prepare)
    cleaner = LC.LogCleaner(registry, 10)
    cleaner.start()
    assert await asyncio.to_thread(started.wait, 10)
    await cleaner.close()
    assert finished.is_set()  # the worker thread was done before close() returned
    assert cleaner.runs == 0
    registry.close()
