"""Bounded fds of log partitions (handles.py): only the active segment of a partition
holds an fd; closed segments are read through a broker-wide LRU of pinned read
handles; running out of fds at a roll refuses the append and changes nothing; and
what readers see stops at the fsynced offset while an acks="fsynced" append waits."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from wharf.broker.logs import partition as partition_mod
from wharf.broker.logs.handles import SegmentHandles
from wharf.broker.logs.partition import Partition
from wharf.broker.logs.topicconfig import DEFAULTS
from wharf.protocol.errors import OffsetOutOfRange, ResourceError
from wharf.protocol.records import decode_records, encode_records

SMALL = DEFAULTS.with_changes({"segment_bytes": 1024, "retention_ms": -1})


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def append(p: Partition, value: bytes, *, hold: bool = False) -> int:
    payload, count = encode_records([(None, value, None, 1000)])
    base, _ = p.append(
        payload,
        record_count=count,
        last_offset_delta=count - 1,
        codec=0,
        first_timestamp=1000,
        max_timestamp=1000,
        hold_until_fsynced=hold,
    )
    return base


def values(p: Partition, offset: int = 0) -> list[bytes | None]:
    out: list[bytes | None] = []
    while True:
        batches = p.fetch(offset, 1 << 20)
        if not batches:
            return out
        recs = [r for b in batches for r in decode_records(bytes(b), offset)]
        out += [r[3] for r in recs]
        offset = recs[-1][0] + 1


def test_closed_segments_hold_no_fd_and_reads_use_a_bounded_pool(tmp_path: Path) -> None:
    before = open_fds()
    handles = SegmentHandles(4)
    p = Partition(tmp_path / "0", 0, SMALL, handles=handles)
    for i in range(300):  # each record fills a segment: 300 rolls
        append(p, b"%04d" % i + b"x" * 900)
    assert len(p.segments) == 300
    assert open_fds() - before <= 1  # the active segment only
    assert values(p) == [b"%04d" % i + b"x" * 900 for i in range(300)]
    assert open_fds() - before <= 1 + handles.max_open
    assert len(handles) <= handles.max_open and handles.pinned == 0
    p.close()
    # Start-up opens the active segment only, whatever the segment count.
    q = Partition(tmp_path / "0", 0, SMALL, handles=handles)
    assert open_fds() - before <= 1
    assert q.latest == 300 and values(q, 299) == [b"0299" + b"x" * 900]
    q.close()
    assert open_fds() == before


def test_retention_deleting_a_segment_while_a_reader_holds_it(tmp_path: Path) -> None:
    handles = SegmentHandles(4)
    p = Partition(tmp_path / "0", 0, SMALL.with_changes({"retention_bytes": 0}), handles=handles)
    for i in range(5):
        append(p, b"%d" % i + b"r" * 900)
    first = p.segments[0]
    h = first.pin()  # a fetch, the index writer or compaction still reads it
    size = first.size
    assert p.apply_retention(0) == 4
    assert not first.path.exists()
    # The reader's fd is still the deleted file's: no EBADF, no other file's bytes.
    data = os.pread(h.fd, size, 0)
    assert decode_records(data)[0][3] == b"0" + b"r" * 900
    assert len(handles) == 0  # out of the pool at once ...
    fd = h.fd
    handles.release(h)
    assert h.fd == -1  # ... and closed at the last release
    with pytest.raises(OSError) as closed:
        os.fstat(fd)  # nothing was opened since: the number is not reused
    assert closed.value.errno == errno.EBADF
    with pytest.raises(OffsetOutOfRange):
        p.fetch(0, 1 << 20)
    assert values(p, p.earliest) == [b"4" + b"r" * 900]
    p.close()


def test_pool_evicts_the_least_recently_used_unpinned_handle(tmp_path: Path) -> None:
    handles = SegmentHandles(2)
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.log"
        path.write_bytes(b"%d" % i)
        paths.append(path)
    keys = [object() for _ in paths]
    pinned = handles.acquire(keys[0], paths[0])
    h1 = handles.acquire(keys[1], paths[1])
    handles.release(h1)
    h2 = handles.acquire(keys[2], paths[2])
    handles.release(h2)
    assert len(handles) == 2
    assert h1.fd == -1  # evicted: the least recently used unpinned one
    assert os.pread(pinned.fd, 1, 0) == b"0"  # pinned: never evicted
    handles.release(pinned)
    assert handles.close_idle() == 2


def test_out_of_fds_at_a_roll_refuses_the_append_and_keeps_the_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = Partition(tmp_path / "0", 0, SMALL)
    append(p, b"a" * 900)
    real_open = os.open

    def no_fds(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, flags, *args)

    monkeypatch.setattr(partition_mod.os, "open", no_fds)
    with pytest.raises(ResourceError) as exc:
        append(p, b"b" * 900)  # needs a roll
    assert exc.value.code == 506 and "file descriptors" in exc.value.message
    assert p.failed is None
    assert [s.base_offset for s in p.segments] == [0] and p.latest == 1
    assert sorted(f.name for f in p.path.glob("*.log")) == ["00000000000000000000.log"]
    monkeypatch.setattr(partition_mod.os, "open", real_open)
    assert append(p, b"c" * 900) == 1  # appendable again, no offset lost or doubled
    assert values(p) == [b"a" * 900, b"c" * 900]
    p.close()


async def test_fsynced_appends_are_visible_only_once_fsynced(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0, SMALL)
    append(p, b"written")  # acks="written": visible at once
    assert p.high_watermark == p.latest == 1
    woken: list[int] = []
    p.add_waiter(lambda: woken.append(p.high_watermark))
    append(p, b"fsynced", hold=True)
    append(p, b"after")  # behind a held record: held too
    assert (p.high_watermark, p.latest) == (1, 3)
    assert values(p) == [b"written"]
    assert p.fetch(1, 1 << 20) == []
    assert woken == []  # long polls wake when the watermark moves, not at the append
    await p.sync()
    assert p.high_watermark == p.latest == p.durable == 3
    assert woken == [3]
    assert values(p) == [b"written", b"fsynced", b"after"]
    p.close()


async def test_a_held_append_is_fsynced_even_when_nobody_waits(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0, SMALL)
    woken = asyncio.Event()
    p.add_waiter(woken.set)
    append(p, b"persistent, no confirm", hold=True)
    assert p.high_watermark == 0
    await asyncio.wait_for(woken.wait(), 5.0)
    assert p.high_watermark == 1 and values(p) == [b"persistent, no confirm"]
    p.close()
