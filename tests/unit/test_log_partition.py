"""Partition storage without sockets: segments, indexes, recovery, retention, producers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from wharf.broker.logs import index as index_mod
from wharf.broker.logs.index import (
    INDEX_INTERVAL_BYTES,
    OFFSET_ENTRY,
    TIME_ENTRY,
    index_paths,
    load_index,
    rebuild_indexes,
)
from wharf.broker.logs.partition import Partition, segment_name
from wharf.broker.logs.producers import ProducerIds, list_snapshots
from wharf.broker.logs.topicconfig import DEFAULTS, TopicConfig
from wharf.protocol.errors import (
    InternalError,
    InvalidArgument,
    OffsetOutOfRange,
    OutOfOrderSequence,
    ProducerFenced,
)
from wharf.protocol.records import check_records, decode_records, encode_records, read_header

SMALL = DEFAULTS.with_changes({"segment_bytes": 1024})


def append(
    p: Partition,
    *values: bytes,
    ts: int | list[int] = 1000,
    pid: int = -1,
    seq: int = -1,
    epoch: int = 0,
    key: bytes | None = None,
) -> int:
    stamps = ts if isinstance(ts, list) else [ts] * len(values)
    payload, _ = encode_records((key, v, None, t) for v, t in zip(values, stamps, strict=True))
    info = check_records(list(encode_rows(values, stamps, key)))
    if pid >= 0:
        dup = p.check_producer(pid, epoch, seq, info.count)
        if dup is not None:
            return -dup - 1  # marks a duplicate
    base, _ = p.append(
        payload,
        record_count=info.count,
        last_offset_delta=info.last_offset_delta,
        codec=0,
        first_timestamp=info.first_timestamp,
        max_timestamp=info.max_timestamp,
        producer_id=pid,
        producer_epoch=epoch if pid >= 0 else -1,
        base_sequence=seq,
    )
    return base


def encode_rows(values: tuple[bytes, ...], stamps: list[int], key: bytes | None) -> list[Any]:
    return [[i, t, key, v, None] for i, (v, t) in enumerate(zip(values, stamps, strict=True))]


def read_all(p: Partition, offset: int = 0) -> list[tuple[int, bytes | None]]:
    out: list[tuple[int, bytes | None]] = []
    while offset < p.latest:
        batches = p.fetch(offset, 1 << 20)
        assert batches
        recs = [r for b in batches for r in decode_records(bytes(b), offset)]
        out += [(r[0], r[3]) for r in recs]
        offset = read_header(bytes(batches[-1])).next_offset
    return out


def test_offsets_are_consecutive_and_fetch_returns_whole_batches(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0)
    assert (p.earliest, p.latest) == (0, 0)
    assert append(p, b"a", b"b") == 0
    assert append(p, b"c") == 2
    assert p.latest == 3
    batches = p.fetch(1, 1 << 20)
    # The first batch starts before offset 1: the reader skips record 0.
    assert [read_header(bytes(b)).base_offset for b in batches] == [0, 2]
    assert [r[0] for r in decode_records(bytes(batches[0]), 1)] == [1]
    assert p.fetch(3, 1 << 20) == []
    assert read_all(p) == [(0, b"a"), (1, b"b"), (2, b"c")]
    p.close()


def test_fetch_out_of_range_says_the_valid_range(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0, topic="t")
    append(p, b"a")
    for bad in (2, -1):
        with pytest.raises(OffsetOutOfRange) as info:
            p.fetch(bad, 100)
        assert info.value.details == {"earliest": 0, "latest": 1, "offset": bad}
    p.close()


def test_max_bytes_returns_whole_batches_and_at_least_one(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0)
    for i in range(5):
        append(p, bytes([i]) * 100, bytes([i]) * 100)
    size = len(p.fetch(0, 1)[0])
    assert len(p.fetch(0, 1)) == 1  # over max_bytes, but a reader must progress
    assert len(p.fetch(0, 2 * size)) == 2
    assert len(p.fetch(0, 2 * size + size - 1)) == 2
    p.close()


def test_big_batch_after_small_ones_is_read_whole(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0)
    for _ in range(60):
        append(p, b"s" * 90)
    append(p, b"B" * 50_000)
    append(p, b"after")
    got = read_all(p, 59)
    assert got == [(59, b"s" * 90), (60, b"B" * 50_000), (61, b"after")]
    p.close()


def test_reopen_recovers_offsets_and_records(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0)
    append(p, b"v", key=b"k")
    append(p, b"w")
    p.close()
    q = Partition(tmp_path / "0", 0)
    assert q.latest == 2
    assert read_all(q) == [(0, b"v"), (1, b"w")]
    assert append(q, b"z") == 2
    q.close()


@pytest.mark.parametrize("cut", [1, 63, 65, "crc"])
def test_torn_tail_is_truncated_and_kept_aside(tmp_path: Path, cut: int | str) -> None:
    path = tmp_path / "0"
    p = Partition(path, 0)
    append(p, b"first")
    append(p, b"second", b"third")
    p.close()
    seg = path / segment_name(0)
    data = seg.read_bytes()
    first_len = read_header(data).size
    if cut == "crc":
        torn = data[:-1] + bytes([data[-1] ^ 0xFF])
    else:
        assert isinstance(cut, int)
        torn = data[: first_len + cut]
    seg.write_bytes(torn)
    q = Partition(path, 0)
    assert q.latest == 1
    assert read_all(q) == [(0, b"first")]
    assert seg.stat().st_size == first_len
    sides = [f for f in os.listdir(path) if ".torn-" in f]
    assert len(sides) == 1
    assert (path / sides[0]).read_bytes() == torn[first_len:]
    assert append(q, b"again") == 1
    q.close()
    r = Partition(path, 0)
    assert read_all(r) == [(0, b"first"), (1, b"again")]
    r.close()


def fill(p: Partition, batches: int, size: int = 300) -> None:
    for i in range(batches):
        append(p, bytes([65 + i % 26]) * size, ts=1000 + i)


def test_segments_roll_at_segment_bytes_with_index_files(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0, SMALL)
    fill(p, 20)
    assert len(p.segments) > 3
    for seg in p.segments[:-1]:
        assert seg.size <= 1024
        off, tim = index_paths(seg.path)
        assert off.exists() and tim.exists()
        assert len(tim.read_bytes()) >= TIME_ENTRY.size  # the closing entry
    assert [o for o, _ in read_all(p)] == list(range(20))
    # Segment names are their base offsets.
    assert [s.path.name for s in p.segments] == [segment_name(s.base_offset) for s in p.segments]
    p.close()


def test_recovery_scans_only_the_active_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = Partition(tmp_path / "0", 0, SMALL)
    fill(p, 30)
    closed = len(p.segments) - 1
    p.close()
    scanned: list[int] = []
    real = index_mod.scan_log

    def counting(path: Path, base: int, end: int | None = None) -> Any:
        scanned.append(base)
        return real(path, base, end)

    monkeypatch.setattr("wharf.broker.logs.partition.scan_log", counting)
    q = Partition(tmp_path / "0", 0, SMALL)
    assert len(q.segments) == closed + 1
    assert scanned == [q.segments[-1].base_offset]
    assert [o for o, _ in read_all(q)] == list(range(30))
    q.close()


@pytest.mark.parametrize("damage", ["missing", "odd size", "not monotonic", "past the end"])
def test_bad_index_files_are_rebuilt(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "0"
    p = Partition(path, 0, SMALL.with_changes({"segment_bytes": 16384}))
    for i in range(100):
        append(p, b"x" * 200, ts=5000 + i)
    first = p.segments[0]
    assert len(first.index.rel_offsets) >= 2
    p.close()
    off_path, time_path = index_paths(first.path)
    good = off_path.read_bytes(), time_path.read_bytes()
    if damage == "missing":
        off_path.unlink()
    elif damage == "odd size":
        time_path.write_bytes(good[1] + b"\x00")
    elif damage == "not monotonic":
        entries = list(OFFSET_ENTRY.iter_unpack(good[0]))
        entries[0], entries[1] = entries[1], entries[0]
        off_path.write_bytes(b"".join(OFFSET_ENTRY.pack(*e) for e in entries))
    else:
        off_path.write_bytes(good[0] + OFFSET_ENTRY.pack(10_000, 10_000_000))
    q = Partition(path, 0)
    assert (off_path.read_bytes(), time_path.read_bytes()) == good
    assert [o for o, _ in read_all(q)] == list(range(100))
    assert q.offset_for_timestamp(5030) == (30, 5030)
    q.close()


def test_rebuild_indexes_matches_what_appends_wrote(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0, SMALL.with_changes({"segment_bytes": 16384}))
    for i in range(80):
        append(p, b"y" * 150, ts=[9000 - i])
    seg = p.segments[0]
    p.close()
    files = [f.read_bytes() for f in index_paths(seg.path)]
    for f in index_paths(seg.path):
        f.unlink()
    rebuild_indexes(seg.path, seg.base_offset)
    assert [f.read_bytes() for f in index_paths(seg.path)] == files
    size = seg.path.stat().st_size
    loaded = load_index(seg.path, seg.base_offset, size, p.segments[1].base_offset)
    assert loaded is not None
    assert loaded.max_timestamp == 9000
    assert load_index(seg.path, seg.base_offset, 10, None) is None  # positions past the end


def test_offset_index_is_sparse(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0)
    for _ in range(200):
        append(p, b"z" * 100)
    idx = p.segments[0].index
    entries = len(idx.rel_offsets)
    assert 0 < entries <= p.size_bytes // INDEX_INTERVAL_BYTES
    pos = list(idx.positions)
    assert all(b - a >= INDEX_INTERVAL_BYTES for a, b in zip(pos, pos[1:], strict=False))
    p.close()


def test_offset_for_timestamp_finds_the_first_record_at_or_after(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0, SMALL)
    # Timestamps out of order within and across batches (create time).
    append(p, b"a", b"b", ts=[100, 300])
    append(p, b"c", ts=200)
    fill_ts = [400 + i for i in range(12)]
    for t in fill_ts:
        append(p, b"d" * 200, ts=t)
    assert len(p.segments) > 2
    assert p.offset_for_timestamp(0) == (0, 100)
    assert p.offset_for_timestamp(150) == (1, 300)
    assert p.offset_for_timestamp(301) == (3, 400)
    assert p.offset_for_timestamp(409) == (12, 409)
    assert p.offset_for_timestamp(10_000) == (p.latest, -1)
    assert p.offset_for_timestamp(-2) == (0, -1)
    assert p.offset_for_timestamp(-1) == (p.latest, -1)
    p.close()


def test_log_append_time_stamps_every_record_with_the_broker_clock(tmp_path: Path) -> None:
    cfg = DEFAULTS.with_changes({"timestamp_type": "log_append_time"})
    p = Partition(tmp_path / "0", 0, cfg)
    payload, _ = encode_records([(None, b"a", None, 5), (None, b"b", None, 6)])
    base, at = p.append(
        payload,
        record_count=2,
        last_offset_delta=1,
        codec=0,
        first_timestamp=5,
        max_timestamp=6,
        now_ms=777_000,
    )
    assert (base, at) == (0, 777_000)
    recs = decode_records(bytes(p.fetch(0, 1 << 20)[0]))
    assert [r[1] for r in recs] == [777_000, 777_000]
    p.close()


def test_retention_by_time_deletes_old_closed_segments_only(tmp_path: Path) -> None:
    cfg = SMALL.with_changes({"retention_ms": 1000})
    p = Partition(tmp_path / "0", 0, cfg)
    for i in range(12):
        append(p, b"r" * 300, ts=10_000 + i)
    segs = len(p.segments)
    assert segs > 2
    assert p.apply_retention(now_ms=10_500) == 0
    deleted = p.apply_retention(now_ms=20_000)
    assert deleted == segs - 1  # everything but the active segment
    assert p.earliest == p.segments[0].base_offset == p.latest - len(read_all(p, p.earliest))
    assert not (tmp_path / "0" / segment_name(0)).exists()
    with pytest.raises(OffsetOutOfRange):
        p.fetch(0, 100)
    p.close()
    q = Partition(tmp_path / "0", 0, cfg)
    assert q.earliest == p.earliest
    q.close()


def test_retention_by_bytes_keeps_the_partition_near_the_limit(tmp_path: Path) -> None:
    cfg = SMALL.with_changes({"retention_bytes": 2048, "retention_ms": -1})
    p = Partition(tmp_path / "0", 0, cfg)
    for _ in range(20):
        append(p, b"q" * 300)
    assert p.apply_retention(now_ms=0) > 0
    assert 2048 <= p.size_bytes < 2048 + 1024 + 400
    assert p.apply_retention(now_ms=0) == 0
    p.close()


def test_delete_policy_off_keeps_everything(tmp_path: Path) -> None:
    cfg = SMALL.with_changes({"retention_ms": 1, "cleanup_policy": "compact"})
    p = Partition(tmp_path / "0", 0, cfg)
    for _ in range(10):
        append(p, b"q" * 300, key=b"k")
    assert p.apply_retention(now_ms=10**12) == 0
    p.close()


def test_idle_active_segment_rolls_after_segment_ms(tmp_path: Path) -> None:
    cfg = DEFAULTS.with_changes({"segment_ms": 100})
    p = Partition(tmp_path / "0", 0, cfg)
    assert not p.roll_if_idle(now_ms=10**13)  # empty: nothing to roll
    append(p, b"a")
    first = p.segments[0].first_append_ms
    assert not p.roll_if_idle(first + 50)
    assert p.roll_if_idle(first + 200)
    assert len(p.segments) == 2 and p.segments[-1].size == 0
    p.close()


def test_segment_ms_rolls_on_record_time(tmp_path: Path) -> None:
    cfg = DEFAULTS.with_changes({"segment_ms": 100})
    p = Partition(tmp_path / "0", 0, cfg)
    append(p, b"a", ts=1000)
    append(p, b"b", ts=1050)
    assert len(p.segments) == 1
    append(p, b"c", ts=1101)
    assert len(p.segments) == 2
    p.close()


def test_corrupt_closed_segment_with_data_after_it_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "0"
    p = Partition(path, 0, SMALL)
    fill(p, 10)
    first = p.segments[0].path
    p.close()
    for f in index_paths(first):
        f.unlink()
    data = bytearray(first.read_bytes())
    data[100] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(InternalError, match="later segments hold data"):
        Partition(path, 0)


def test_torn_closed_segment_before_empty_ones_is_cut(tmp_path: Path) -> None:
    """A machine that lost power after a roll: the new segment is empty, the old one
    lost its unsynced tail and its index files never made it."""
    path = tmp_path / "0"
    p = Partition(path, 0)
    fill(p, 3)
    p.roll()
    first, second = p.segments[0].path, p.segments[1].path
    p.close()
    for f in index_paths(first):
        f.unlink()
    first.write_bytes(first.read_bytes()[:-10])
    q = Partition(path, 0)
    assert len(q.segments) == 1
    assert not second.exists()
    assert q.latest == 2
    q.close()


@pytest.mark.parametrize("config", [DEFAULTS, DEFAULTS.with_changes({"cleanup_policy": "compact"})])
def test_closed_segment_cut_at_a_batch_boundary_before_empty_ones(
    tmp_path: Path, config: TopicConfig
) -> None:
    """As above, but the power loss cut the old segment exactly after a whole batch
    (the length of its last fsync): its end, not the next segment's base, is the end
    of the log, so no offset without a record is handed out.  A compacted segment may
    end early by itself, so there the next base stays the end."""
    path = tmp_path / "0"
    p = Partition(path, 0, config)
    for i in range(3):
        append(p, b"v%d" % i, key=b"k")
    p.roll()
    first, second = p.segments[0].path, p.segments[1].path
    last_batch = read_header(bytes(p.fetch(2, 1 << 20)[0])).size
    p.close()
    for f in index_paths(first):
        f.unlink()
    os.truncate(first, first.stat().st_size - last_batch)
    q = Partition(path, 0, config)
    if config.compacts:
        assert (len(q.segments), q.latest) == (2, 3)
    else:
        assert (len(q.segments), q.latest) == (1, 2)
        assert not second.exists()
        assert read_all(q) == [(0, b"v0"), (1, b"v1")]
        assert append(q, b"next", key=b"k") == 2
    q.close()


# -- idempotent producers -----------------------------------------------------------------


def test_retried_batch_is_not_appended_twice(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0)
    assert append(p, b"a", b"b", pid=7, seq=0) == 0
    assert append(p, b"c", pid=7, seq=2) == 2
    assert append(p, b"a", b"b", pid=7, seq=0) == -1  # duplicate of base 0
    assert append(p, b"c", pid=7, seq=2) == -3  # duplicate of base 2
    assert p.latest == 3
    with pytest.raises(OutOfOrderSequence) as info:
        append(p, b"d", pid=7, seq=5)
    assert info.value.details == {"expected": 3, "sequence": 5}
    with pytest.raises(OutOfOrderSequence):
        append(p, b"x", pid=8, seq=4)  # a new producer starts at 0
    assert append(p, b"e", pid=7, seq=0, epoch=1) == 3  # a new epoch starts at 0
    with pytest.raises(ProducerFenced):
        append(p, b"f", pid=7, seq=1, epoch=0)
    p.close()


def test_only_the_last_five_batches_are_remembered(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0)
    for i in range(7):
        append(p, b"v", pid=1, seq=i)
    assert append(p, b"v", pid=1, seq=2) == -3
    with pytest.raises(OutOfOrderSequence):
        append(p, b"v", pid=1, seq=1)
    p.close()


@pytest.mark.parametrize("how", ["clean", "crash", "crash, snapshots lost"])
def test_producer_state_survives_reopen(tmp_path: Path, how: str) -> None:
    path = tmp_path / "0"
    p = Partition(path, 0, SMALL)
    for i in range(12):
        assert append(p, b"w" * 300, pid=3, seq=i) == i
    assert len(p.segments) > 2
    assert list_snapshots(path)
    if how == "clean":
        p.close()
    else:
        for seg in p.segments:  # a kill -9: nothing more written
            seg.close()
        p.closed = True
        if how == "crash, snapshots lost":
            for _o, snap in list_snapshots(path):
                snap.unlink()
    q = Partition(path, 0, SMALL)
    assert append(q, b"w" * 300, pid=3, seq=11) == -12  # still a duplicate
    assert append(q, b"w" * 300, pid=3, seq=9) == -10
    assert append(q, b"w" * 300, pid=3, seq=12) == 12
    q.close()


def test_producer_ids_never_repeat(tmp_path: Path) -> None:
    ids = ProducerIds(tmp_path)
    first = [ids.allocate() for _ in range(3)]
    again = ProducerIds(tmp_path)
    assert again.allocate() > max(first)
    assert first == sorted(set(first))


# -- durability ---------------------------------------------------------------------------


async def test_sync_groups_callers_and_resolves(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0, SMALL)
    assert p.sync().done()  # nothing written yet
    append(p, b"a")
    first = p.sync()
    fill(p, 6)  # rolls: new segments must be covered too
    second = p.sync()
    await first
    await second
    assert p.sync().done()
    assert all(s.synced_size == s.size and not s.new for s in p.segments)
    p.close()


async def test_fsync_failure_fails_waiters_and_later_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(jobs: list[tuple[int, str, int]], directory: Any, sync_log: Any) -> None:
        for fd, _p, _s in jobs:
            os.close(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("wharf.broker.logs.partition._fsync_files", broken)
    p = Partition(tmp_path / "0", 0)
    append(p, b"a")
    with pytest.raises(InternalError, match="fsync failed"):
        await p.sync()
    with pytest.raises(InternalError, match="failed"):
        append(p, b"b")
    p.close()


# -- topic settings -----------------------------------------------------------------------


def test_topic_settings_are_checked() -> None:
    cfg = DEFAULTS.with_changes({"cleanup_policy": "delete, compact", "retention_ms": -1})
    assert cfg.cleanup_policy == "compact,delete" and cfg.compacts and cfg.deletes
    assert isinstance(cfg, TopicConfig)
    bad: list[dict[str, Any]] = [
        {"retention_msec": 1},
        {"retention_ms": -2},
        {"segment_bytes": 10},
        {"segment_bytes": "1000"},
        {"timestamp_type": "now"},
        {"cleanup_policy": "forever"},
        {"min_cleanable_dirty_ratio": 1.5},
        {"segment_ms": True},
    ]
    for change in bad:
        with pytest.raises(InvalidArgument) as info:
            DEFAULTS.with_changes(change)
        assert info.value.details == {"config": next(iter(change))}


def test_fetch_matches_a_full_scan_for_random_offsets_and_limits(tmp_path: Path) -> None:
    import random

    rng = random.Random(5)
    p = Partition(tmp_path / "0", 0, DEFAULTS.with_changes({"segment_bytes": 20_000}))
    batches: list[tuple[int, int, int]] = []  # (base, last, stored size)
    for _ in range(300):
        count = rng.randint(1, 4)
        size = rng.choice((10, 100, 1000, 6000))
        base = append(p, *[b"r" * size] * count)
        batches.append((base, base + count - 1, 0))
    assert len(p.segments) > 5
    for _ in range(300):
        offset = rng.randrange(p.latest)
        max_bytes = rng.choice((1, 500, 5000, 50_000))
        got = p.fetch(offset, max_bytes)
        heads = [read_header(bytes(b)) for b in got]
        # The first batch holds the offset; the rest follow without a gap.
        assert heads[0].base_offset <= offset <= heads[0].last_offset
        for a, b in zip(heads, heads[1:], strict=False):
            assert b.base_offset == a.next_offset
        total = sum(h.size for h in heads)
        assert total <= max_bytes or len(heads) == 1
        if heads[-1].next_offset < p.latest:  # stopped early only when the next is too big
            following = next(b for b in batches if b[0] == heads[-1].next_offset)
            nxt = p.fetch(following[0], 1 << 20)[0]
            assert total + len(nxt) > max_bytes
    p.close()


async def test_close_writes_the_index_files_of_segments_rolled_during_a_finishing_job(
    tmp_path: Path,
) -> None:
    """Segments rolled while the one finishing job runs wait for the next job; a
    close in between (shutdown) must finish them itself, or the restart rebuilds."""
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    gate = threading.Event()
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    class GatedExecutor(ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            def gated() -> Any:
                loop.call_soon_threadsafe(started.set)
                gate.wait(10)
                return fn(*args, **kwargs)

            return super().submit(gated)

    executor = GatedExecutor(max_workers=1)
    loop.set_default_executor(executor)
    p = Partition(tmp_path / "0", 0, SMALL)
    fill(p, 4)  # rolls: the first finishing job starts and waits at the gate
    await asyncio.wait_for(started.wait(), 10)
    fill(p, 8)  # more rolls while that job is held
    p.close()
    gate.set()
    await asyncio.gather(*p.pending_jobs(), return_exceptions=True)
    for seg in p.segments[:-1]:
        off, tim = index_paths(seg.path)
        assert off.exists() and tim.exists(), seg.path.name
    executor.shutdown(wait=True)
