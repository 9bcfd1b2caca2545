"""The broker's read arena for fetch answers: reads do not overlap, memory is reused."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from wharf.broker.logs.segment import MAX_ARENA_BYTES, ReadArena

DATA = bytes(range(256)) * 64


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "segment.log"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


def test_reads_of_one_answer_do_not_overlap(fd: int) -> None:
    arena = ReadArena()
    arena.reset(4096)
    a = arena.read(fd, 1000, 0)
    b = arena.read(fd, 1000, 500)
    c = arena.read(fd, 5000, 100)  # does not fit: read on its own
    assert (bytes(a), bytes(b), bytes(c)) == (DATA[:1000], DATA[500:1500], DATA[100:5100])
    assert a.obj is b.obj and c.obj is not a.obj


def test_memory_is_kept_from_answer_to_answer(fd: int) -> None:
    arena = ReadArena()
    arena.reset(1 << 40)  # more than an arena holds: capped
    first = arena.read(fd, 100, 0)
    assert len(first.obj) == MAX_ARENA_BYTES
    arena.reset(1 << 40)
    again = arena.read(fd, 10, len(DATA) - 10)
    assert again.obj is first.obj and bytes(again) == DATA[-10:]
    assert bytes(arena.read(fd, 100, len(DATA) - 50)) == DATA[-50:]  # short at the end
