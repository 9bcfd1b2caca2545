"""The committed-offsets log (broker/logs/offsets.py): durability, recovery, compaction."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from wharf.broker.logs import offsets as offsets_module
from wharf.broker.logs.offsets import LOG_NAME, WILDCARD, OffsetsLog
from wharf.broker.store.fsio import FAULTS, FaultOp
from wharf.protocol.errors import InternalError
from wharf.protocol.records import split_batches


def torn_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(LOG_NAME + ".torn-*"))


def table(log: OffsetsLog) -> dict[str, dict[tuple[str, int], tuple[int, Any]]]:
    return {g: {tp: (c.offset, c.metadata) for tp, c in t.items()} for g, t in log.groups.items()}


async def reopen(log: OffsetsLog) -> OffsetsLog:
    await log.close()
    return OffsetsLog(log.directory)


async def test_commits_survive_reopening(tmp_path: Path) -> None:
    log = OffsetsLog(tmp_path)
    await log.commit([(("g", "t", 0), (5, "m", 1000)), (("g", "t", 1), (7, None, 1000))])
    await log.commit([(("g", "t", 0), (6, None, 2000)), (("h", "u", 3), (1, None, 3000))])
    assert table(log) == {
        "g": {("t", 0): (6, None), ("t", 1): (7, None)},
        "h": {("u", 3): (1, None)},
    }
    assert log.last_commit == {"g": 2000, "h": 3000}
    log = await reopen(log)
    assert table(log) == {
        "g": {("t", 0): (6, None), ("t", 1): (7, None)},
        "h": {("u", 3): (1, None)},
    }
    assert log.last_commit == {"g": 2000, "h": 3000}
    await log.close()


async def test_visible_only_once_fsynced(tmp_path: Path) -> None:
    log = OffsetsLog(tmp_path)
    fut = log.commit([(("g", "t", 0), (1, None, 1))])
    assert log.groups == {}  # queued, not yet durable
    await fut
    assert table(log) == {"g": {("t", 0): (1, None)}}
    await log.close()


async def test_concurrent_commits_share_a_write(tmp_path: Path) -> None:
    log = OffsetsLog(tmp_path)
    futs = [log.commit([(("g", "t", p), (p, None, 1))]) for p in range(50)]
    await asyncio.gather(*futs)
    # The first commit starts a write; the other 49 go together in the next one.
    assert log.fsyncs == 2
    assert len(log.groups["g"]) == 50
    await log.close()


async def test_tombstones_and_wildcards(tmp_path: Path) -> None:
    log = OffsetsLog(tmp_path)
    await log.commit(
        [
            (("g1", "t", 0), (1, None, 1)),
            (("g1", "u", 0), (1, None, 1)),
            (("g2", "t", 0), (1, None, 1)),
            (("g2", "u", 1), (1, None, 1)),
        ]
    )
    await log.commit([(("g1", "u", 0), None)])
    assert table(log)["g1"] == {("t", 0): (1, None)}
    # Every group's offsets of topic t, including one set earlier in the same write.
    await log.commit([(("g3", "t", 5), (2, None, 1)), (("", "t", WILDCARD), None)])
    assert table(log) == {"g2": {("u", 1): (1, None)}}
    # A whole group.
    await log.commit([(("g2", "", WILDCARD), None)])
    assert table(log) == {}
    assert log.last_commit == {}
    log = await reopen(log)
    assert table(log) == {}
    await log.close()


async def test_torn_tail_is_cut_and_kept(tmp_path: Path) -> None:
    log = OffsetsLog(tmp_path)
    await log.commit([(("g", "t", 0), (1, None, 1))])
    await log.commit([(("g", "t", 0), (2, None, 2))])
    await log.close()
    path = tmp_path / LOG_NAME
    whole = path.read_bytes()
    batches = split_batches(whole)
    assert len(batches) == 2
    # A crash in the middle of the second write: only part of it reached the disk.
    torn = whole[: len(whole) - 10]
    path.write_bytes(torn)
    log = OffsetsLog(tmp_path)
    assert table(log) == {"g": {("t", 0): (1, None)}}
    assert path.read_bytes() == whole[: len(batches[0])]
    [side] = torn_files(tmp_path)
    assert side.read_bytes() == torn[len(batches[0]) :]
    # The log keeps working after the cut.
    await log.commit([(("g", "t", 0), (3, None, 3))])
    log = await reopen(log)
    assert table(log) == {"g": {("t", 0): (3, None)}}
    await log.close()


async def test_corrupt_batch_is_cut(tmp_path: Path) -> None:
    log = OffsetsLog(tmp_path)
    await log.commit([(("g", "t", 0), (1, None, 1))])
    await log.commit([(("g", "t", 1), (2, None, 2))])
    await log.close()
    path = tmp_path / LOG_NAME
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # the CRC of the second batch no longer matches
    path.write_bytes(bytes(data))
    log = OffsetsLog(tmp_path)
    assert table(log) == {"g": {("t", 0): (1, None)}}
    assert len(torn_files(tmp_path)) == 1
    await log.close()


async def test_compaction_rewrites_live_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(offsets_module, "COMPACT_MIN_BYTES", 4096)
    log = OffsetsLog(tmp_path)
    path = tmp_path / LOG_NAME
    for i in range(200):
        await log.commit([(("g", "t", i % 4), (i, None, i))])
    assert log.compactions >= 1
    assert path.stat().st_size < 4096 + 1024
    assert log.file_bytes == path.stat().st_size
    assert table(log) == {"g": {("t", p): (196 + p, None) for p in range(4)}}
    log = await reopen(log)
    assert table(log) == {"g": {("t", p): (196 + p, None) for p in range(4)}}
    assert not (tmp_path / (LOG_NAME + ".tmp")).exists()
    await log.close()


async def test_commits_queued_during_compaction_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(offsets_module, "COMPACT_MIN_BYTES", 2048)
    log = OffsetsLog(tmp_path)
    expected: dict[tuple[str, int], tuple[int, Any]] = {}
    for round_ in range(30):
        # Several commits while a write (sometimes a rewrite) is running.
        futs = []
        for p in range(8):
            futs.append(log.commit([(("g", "t", p), (round_ * 10 + p, None, round_))]))
            expected[("t", p)] = (round_ * 10 + p, None)
        await asyncio.gather(*futs)
    assert log.compactions >= 1
    assert table(log) == {"g": expected}
    log = await reopen(log)
    assert table(log) == {"g": expected}
    await log.close()


@pytest.mark.parametrize("op", ["write", "fsync"])
async def test_failed_write_is_not_retried_on_the_same_file(tmp_path: Path, op: FaultOp) -> None:
    log = OffsetsLog(tmp_path)
    await log.commit([(("g", "t", 0), (1, None, 1))])
    # Injected at fsio's fault point, for the log file only (not the rewrite's .tmp).
    with (
        FAULTS.failing(op, OSError(5, "Input/output error"), under=tmp_path / LOG_NAME),
        pytest.raises(InternalError),
    ):
        await log.commit([(("g", "t", 0), (2, None, 2))])
    assert table(log) == {"g": {("t", 0): (1, None)}}  # the failed commit is not visible
    # The next write rewrites the live offsets into a new file instead.
    await log.commit([(("g", "t", 1), (5, None, 3))])
    assert log.compactions == 1
    log = await reopen(log)
    assert table(log) == {"g": {("t", 0): (1, None), ("t", 1): (5, None)}}
    await log.close()


async def test_leftover_rewrite_file_is_ignored(tmp_path: Path) -> None:
    log = OffsetsLog(tmp_path)
    await log.commit([(("g", "t", 0), (1, None, 1))])
    await log.close()
    (tmp_path / (LOG_NAME + ".tmp")).write_bytes(b"half a rewrite")
    log = OffsetsLog(tmp_path)
    assert table(log) == {"g": {("t", 0): (1, None)}}
    assert not (tmp_path / (LOG_NAME + ".tmp")).exists()
    await log.close()


async def test_closed_log_refuses_commits(tmp_path: Path) -> None:
    log = OffsetsLog(tmp_path)
    await log.close()
    with pytest.raises(InternalError):
        await log.commit([(("g", "t", 0), (1, None, 1))])
