"""Compaction merges small neighbouring segments (as Kafka's cleaner groups them up
to segment_bytes), and a merge that a crash interrupted is completed at start-up."""

from __future__ import annotations

import asyncio
from pathlib import Path

from wharf.broker.logs import cleaner as LC
from wharf.broker.logs.index import index_paths
from wharf.broker.logs.partition import Partition
from wharf.broker.logs.topicconfig import DEFAULTS
from wharf.broker.logs.topics import TopicRegistry
from wharf.protocol.records import decode_records, read_header

SEGMENT_BYTES = 1024
CONFIG = {
    "cleanup_policy": "compact",
    "segment_bytes": SEGMENT_BYTES,
    "min_cleanable_dirty_ratio": 0,
}


def records(part: Partition) -> list[tuple[int, bytes | None, bytes | None]]:
    out: list[tuple[int, bytes | None, bytes | None]] = []
    offset = part.earliest
    while offset < part.latest:
        batches = part.fetch(offset, 1 << 20)
        if not batches:
            break
        for b in batches:
            out += [(r[0], r[2], r[3]) for r in decode_records(bytes(b), offset)]
        offset = read_header(batches[-1]).next_offset
    return out


async def finished(part: Partition) -> None:
    for _ in range(500):
        if all(s.finished for s in part.segments[:-1]):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("closed segments not finished")


async def test_compaction_merges_small_segments_up_to_segment_bytes(tmp_path: Path) -> None:
    registry = TopicRegistry(tmp_path)
    registry.create("t", 1, CONFIG)
    appended: list[tuple[int, bytes, bytes]] = []
    for i in range(120):  # 4 keys, 30 versions each: each segment keeps a record or two
        key, value = b"k%d" % (i % 4), b"v%d|" % i + b"." * 150
        _, offset = registry.append_records("t", 0, [(key, value, None, 1000)], acks="written")
        appended.append((offset, key, value))
    part = registry.get("t").partitions[0]
    limit = part.segments[-1].base_offset
    # The map covers the closed segments: the latest of each key below the active one.
    latest = {k: (o, v) for o, k, v in appended if o < limit}
    await finished(part)
    before = len(part.segments)
    assert before > 20
    cleaner = LC.LogCleaner(registry, 60_000)
    assert await cleaner.clean_once() is True
    expected = sorted(
        (o, k, v) for k, (o, v) in latest.items() if o < part.segments[-1].base_offset
    )
    closed = part.segments[:-1]
    assert len(closed) <= 3, [s.size for s in closed]
    assert all(s.size <= SEGMENT_BYTES for s in closed)
    got = records(part)
    assert [r for r in got if r[0] < limit] == expected
    assert not list(part.path.glob("*.cleaned")) and not list(part.path.glob("*.swap-*"))
    logs = sorted(p.name for p in part.path.glob("*.log"))
    assert logs == [s.path.name for s in part.segments]
    await cleaner.close()
    registry.close()
    reopened = TopicRegistry(tmp_path)
    again = reopened.get("t").partitions[0]
    assert len(again.segments) == len(closed) + 1
    assert records(again) == got
    reopened.close()


def test_a_merge_interrupted_by_a_crash_is_completed_at_start(tmp_path: Path) -> None:
    cfg = DEFAULTS.with_changes({"segment_bytes": SEGMENT_BYTES, "cleanup_policy": "compact"})
    p = Partition(tmp_path / "0", 0, cfg)
    for i in range(10):
        p.append(
            _payload(b"k%d" % i, b"v%d|" % i + b"." * 600),
            record_count=1,
            last_offset_delta=0,
            codec=0,
            first_timestamp=1000,
            max_timestamp=1000,
        )
    want = records(p)
    first, second, third, fourth = p.segments[:4]
    # The crash: the merged file of the first three is in place as a swap file, the
    # first segment and its index files are already gone, the other two not yet.
    merged = b"".join(s.path.read_bytes() for s in (first, second, third))
    p.close()
    swap = first.path.with_name(f"{first.path.name}.swap-{fourth.base_offset}")
    swap.write_bytes(merged)  # compaction.swap_path
    for f in (first.path, *index_paths(first.path)):
        f.unlink()
    q = Partition(tmp_path / "0", 0, cfg)
    assert [s.base_offset for s in q.segments[:2]] == [first.base_offset, fourth.base_offset]
    assert records(q) == want
    assert not list(q.path.glob("*.swap-*")) and not second.path.exists()
    q.close()


def _payload(key: bytes, value: bytes) -> bytes:
    from wharf.protocol.records import encode_records

    payload, _ = encode_records([(key, value, None, 1000)])
    return payload
