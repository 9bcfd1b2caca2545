"""Partition segment files: append, fetch, recovery and torn-tail truncation (no sockets)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from wharf.broker.logs.partition import HEADER_BYTES, OffsetOutOfRange, Partition, segment_name
from wharf.protocol.errors import InternalError


def records(*values: bytes) -> list[tuple[bytes | None, bytes, dict[str, object] | None, int]]:
    return [(None, v, None, 1000 + i) for i, v in enumerate(values)]


def test_offsets_are_consecutive_across_batches(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0)
    assert (p.earliest, p.latest) == (0, 0)
    assert p.append(records(b"a", b"b")) == 0
    assert p.append(records(b"c")) == 2
    assert p.latest == 3
    got = p.fetch(0, 1 << 20)
    assert [r[0] for r in got] == [0, 1, 2]
    assert [r[2] for r in got] == [b"a", b"b", b"c"]
    assert p.fetch(1, 1 << 20)[0][:3] == [1, None, b"b"]
    assert p.fetch(3, 1 << 20) == []
    p.close()


def test_fetch_out_of_range(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0)
    p.append(records(b"a"))
    with pytest.raises(OffsetOutOfRange):
        p.fetch(2, 100)
    with pytest.raises(OffsetOutOfRange):
        p.fetch(-1, 100)
    p.close()


def test_max_bytes_returns_whole_batches_and_at_least_one(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0)
    for i in range(5):
        p.append(records(bytes([i]) * 100, bytes([i]) * 100))
    one = p.fetch(0, 1)
    assert [r[0] for r in one] == [0, 1]  # the first batch, though it is over max_bytes
    some = p.fetch(0, 450)
    assert [r[0] for r in some] == [0, 1, 2, 3]
    p.close()


def test_reopen_recovers_offsets_and_records(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0)
    p.append([(b"k", b"v", {"h": "x"}, 5)])
    p.append(records(b"w"))
    p.close()
    q = Partition(tmp_path / "0", 0)
    assert q.latest == 2
    assert q.fetch(0, 1 << 20) == [[0, b"k", b"v", {"h": "x"}, 5], [1, None, b"w", None, 1000]]
    assert q.append(records(b"z")) == 2
    q.close()


@pytest.mark.parametrize("cut", [1, HEADER_BYTES - 1, HEADER_BYTES + 1, "crc"])
def test_torn_tail_is_truncated_and_kept_aside(tmp_path: Path, cut: int | str) -> None:
    path = tmp_path / "0"
    p = Partition(path, 0)
    p.append(records(b"first"))
    p.append(records(b"second", b"third"))
    p.close()
    seg = path / segment_name(0)
    data = seg.read_bytes()
    first_len = HEADER_BYTES + struct.unpack_from(">I", data, 0)[0]
    if cut == "crc":
        torn = data[:-1] + bytes([data[-1] ^ 0xFF])  # flip a payload byte of the last batch
    else:
        assert isinstance(cut, int)
        torn = data[: first_len + cut]
    seg.write_bytes(torn)
    q = Partition(path, 0)
    assert q.latest == 1
    assert [r[2] for r in q.fetch(0, 1 << 20)] == [b"first"]
    assert seg.stat().st_size == first_len
    sides = [f for f in os.listdir(path) if ".torn-" in f]
    assert len(sides) == 1
    assert (path / sides[0]).read_bytes() == torn[first_len:]
    # Appends continue after the cut at the next offset.
    assert q.append(records(b"again")) == 1
    q.close()
    r = Partition(path, 0)
    assert [x[2] for x in r.fetch(0, 1 << 20)] == [b"first", b"again"]
    r.close()


def test_corrupt_earlier_segment_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "0"
    p = Partition(path, 0)
    p.append(records(b"a"))
    p.close()
    seg = path / segment_name(0)
    seg.write_bytes(seg.read_bytes() + b"\x00garbage")
    (path / segment_name(1)).write_bytes(b"")
    with pytest.raises(InternalError, match="not the last segment"):
        Partition(path, 0)


async def test_sync_groups_callers_and_resolves(tmp_path: Path) -> None:
    p = Partition(tmp_path / "0", 0)
    done = p.sync()
    assert done.done()  # nothing written yet
    p.append(records(b"a"))
    first = p.sync()
    p.append(records(b"b"))
    second = p.sync()
    await first
    await second
    assert p.sync().done()
    p.close()


async def test_fsync_failure_fails_waiters_and_later_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wharf.broker.logs import partition as mod

    def broken(fd: int) -> None:
        os.close(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(mod, "_fsync_and_close", broken)
    p = Partition(tmp_path / "0", 0)
    p.append(records(b"a"))
    with pytest.raises(InternalError, match="fsync failed"):
        await p.sync()
    with pytest.raises(InternalError, match="refus|failed"):
        p.append(records(b"b"))
    p.close()
