"""The registry of log topics: create/grow/delete, produce, fetch, list offsets.

On disk a topic is ``<logs dir>/<topic>/<partition>/`` (see partition.py for the
segment format); there is no other metadata yet, so a restart rebuilds the topic list
by scanning these directories.  A topic is created in a hidden ``.<name>.creating``
directory and renamed into place, so a crash never leaves half a topic behind.

Partitioning of a produce request with partition -1: ``zlib.crc32(key) %
partition_count`` of the first record's key when it has one (stable across restarts
and processes; it changes when the partition count grows, as in Kafka), otherwise
round-robin over the partitions.  All records of one request go to one partition.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import zlib
from pathlib import Path
from typing import Any, Final

from wharf.protocol.errors import (
    InvalidArgument,
    NotFound,
    PreconditionFailed,
)

from .partition import OffsetOutOfRange, Partition, RecordIn, segment_name

log = logging.getLogger("wharf.logs")

TOPIC_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,248}")
MAX_PARTITIONS: Final = 1024
MAX_FETCH_BYTES: Final = 64 * 1024 * 1024
ACKS_LEVELS: Final = ("written", "fsynced")


class Topic:
    def __init__(self, name: str, path: Path, partitions: list[Partition]) -> None:
        self.name = name
        self.path = path
        self.partitions = partitions
        self._round_robin = 0

    def choose_partition(self, key: bytes | None) -> int:
        n = len(self.partitions)
        if key is not None:
            return zlib.crc32(key) % n
        p = self._round_robin % n
        self._round_robin = p + 1
        return p

    def partition(self, number: int) -> Partition:
        if not 0 <= number < len(self.partitions):
            raise NotFound(
                f"topic '{self.name}' has no partition {number} "
                f"(it has {len(self.partitions)}: 0..{len(self.partitions) - 1})",
                details={"partitions": len(self.partitions)},
            )
        return self.partitions[number]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "partitions": len(self.partitions),
            "config": {},
            "offsets": [
                {"partition": p.number, "earliest": p.earliest, "latest": p.latest}
                for p in self.partitions
            ],
        }

    def close(self) -> None:
        for p in self.partitions:
            p.close()


class TopicRegistry:
    """Owns every topic under one directory.  Handlers call it synchronously."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.topics: dict[str, Topic] = {}
        root.mkdir(parents=True, exist_ok=True)
        self._recover()

    def _recover(self) -> None:
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir():
                continue
            if entry.name.startswith("."):
                # An interrupted create or delete: nothing in it was ever acknowledged.
                shutil.rmtree(entry, ignore_errors=True)
                continue
            numbers = sorted(int(p.name) for p in entry.iterdir() if p.name.isdigit())
            count = 0
            while count < len(numbers) and numbers[count] == count:
                count += 1
            if count < len(numbers):
                log.warning("topic %s: ignoring partition dirs after a gap at %d", entry, count)
            if count == 0:
                log.warning("topic dir %s has no partitions; ignoring it", entry)
                continue
            parts = [Partition(entry / str(i), i) for i in range(count)]
            self.topics[entry.name] = Topic(entry.name, entry, parts)
        if self.topics:
            log.info("recovered %d log topics", len(self.topics))

    def get(self, name: str) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            raise NotFound(f"no topic '{name}'; create it with create_topic first")
        return topic

    # -- topic management ----------------------------------------------------------

    def create(self, name: str, partitions: int, config: dict[str, Any] | None) -> dict[str, Any]:
        """Create a topic; re-creating one with the same partition count is a no-op."""
        if not TOPIC_NAME_RE.fullmatch(name):
            raise InvalidArgument(
                f"bad topic name {name!r}: use 1-249 of A-Z a-z 0-9 . _ - "
                "(not starting with '.' or '-')"
            )
        _check_partition_count(partitions)
        if config:
            raise InvalidArgument(
                f"topic settings {sorted(config)} are not supported yet; "
                "create the topic without settings",
                details={"unsupported": sorted(config)},
            )
        existing = self.topics.get(name)
        if existing is not None:
            if len(existing.partitions) != partitions:
                raise PreconditionFailed(
                    f"topic '{name}' exists with {len(existing.partitions)} partitions, "
                    f"not {partitions}; use alter_topic to add partitions",
                    details={"partitions": len(existing.partitions)},
                )
            return {**existing.describe(), "created": False}
        tmp = self.root / f".{name}.creating"
        shutil.rmtree(tmp, ignore_errors=True)
        for i in range(partitions):
            _make_partition_dir(tmp / str(i))
        _fsync_dir(tmp)
        final = self.root / name
        os.rename(tmp, final)
        _fsync_dir(self.root)
        topic = Topic(name, final, [Partition(final / str(i), i) for i in range(partitions)])
        self.topics[name] = topic
        log.info("created topic %s with %d partitions", name, partitions)
        return {**topic.describe(), "created": True}

    def alter(self, name: str, partitions: int) -> dict[str, Any]:
        """Grow a topic to ``partitions`` partitions (never shrinks)."""
        topic = self.get(name)
        _check_partition_count(partitions)
        have = len(topic.partitions)
        if partitions < have:
            raise InvalidArgument(
                f"topic '{name}' has {have} partitions; the count can grow but never shrink",
                details={"partitions": have},
            )
        for i in range(have, partitions):
            # In order, each complete before the next: a crash leaves a contiguous prefix.
            _make_partition_dir(topic.path / str(i))
            _fsync_dir(topic.path)
            topic.partitions.append(Partition(topic.path / str(i), i))
        return topic.describe()

    def delete(self, name: str) -> None:
        topic = self.get(name)
        del self.topics[name]
        topic.close()
        doomed = self.root / f".{name}.deleting-{int(time.time() * 1000)}"
        os.rename(topic.path, doomed)
        _fsync_dir(self.root)
        shutil.rmtree(doomed, ignore_errors=True)
        log.info("deleted topic %s", name)

    # -- records -------------------------------------------------------------------

    def produce(
        self, name: str, partition: int, records: list[Any], acks: str
    ) -> tuple[Partition, int]:
        """Append one batch; returns the partition and the batch's base offset.  With
        acks="fsynced" the caller must ``await partition.sync()`` before replying."""
        if acks not in ACKS_LEVELS:
            raise InvalidArgument(f"acks must be one of {', '.join(ACKS_LEVELS)}, got {acks!r}")
        topic = self.get(name)
        batch = _check_records(records)
        if partition == -1:
            partition = topic.choose_partition(batch[0][0])
        part = topic.partition(partition)
        return part, part.append(batch)

    def fetch(self, name: str, partition: int, offset: int, max_bytes: int) -> dict[str, Any]:
        if max_bytes <= 0 or max_bytes > MAX_FETCH_BYTES:
            raise InvalidArgument(f"max_bytes must be 1..{MAX_FETCH_BYTES}, got {max_bytes}")
        part = self.get(name).partition(partition)
        try:
            records = part.fetch(offset, max_bytes)
        except OffsetOutOfRange:
            raise InvalidArgument(
                f"offset {offset} is out of range for {name}/{partition}: valid offsets are "
                f"{part.earliest}..{part.latest} (latest = the next offset to be written)",
                details={"earliest": part.earliest, "latest": part.latest, "offset": offset},
            ) from None
        return {"records": records, "high_watermark": part.latest}

    def list_offsets(self, name: str, partition: int) -> dict[str, Any]:
        part = self.get(name).partition(partition)
        return {"earliest": part.earliest, "latest": part.latest}

    def close(self) -> None:
        for topic in self.topics.values():
            topic.close()
        self.topics.clear()


def _check_partition_count(partitions: int) -> None:
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise InvalidArgument(f"partitions must be 1..{MAX_PARTITIONS}, got {partitions}")


def _check_records(records: list[Any]) -> list[RecordIn]:
    if not isinstance(records, (list, tuple)) or not records:
        raise InvalidArgument("records must be a non-empty array of [key, value, headers, ts]")
    now_ms = int(time.time() * 1000)
    out: list[RecordIn] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, (list, tuple)) or len(rec) < 4:
            raise InvalidArgument(f"record {i} must be an array [key, value, headers, timestamp]")
        key, value, headers, ts = rec[0], rec[1], rec[2], rec[3]
        if key is not None and not isinstance(key, bytes):
            raise InvalidArgument(f"record {i}: key must be bin or nil")
        if not isinstance(value, bytes):
            raise InvalidArgument(f"record {i}: value must be bin")
        if headers is not None and not isinstance(headers, dict):
            raise InvalidArgument(f"record {i}: headers must be a map or nil")
        if ts is None or ts == 0:
            ts = now_ms  # nil/0: the broker's clock (create time otherwise)
        elif not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
            raise InvalidArgument(f"record {i}: timestamp must be epoch ms (int >= 0) or nil")
        out.append((key, value, headers, ts))
    return out


def _make_partition_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / segment_name(0), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
