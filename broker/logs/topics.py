"""The registry of log topics: create/alter/delete, produce, fetch, offsets, retention.

On disk a topic is ``<logs dir>/<topic>/`` with ``topic.json`` (the settings it
overrides, see topicconfig.py) and one directory per partition (partition.py).  A
restart rebuilds the topic list by scanning these directories.  A topic is created
in a hidden ``.<name>.creating`` directory and renamed into place, so a crash never
leaves half a topic behind; the registry also keeps ``.producer_ids`` there
(producers.py).

Partitioning of a produce request with partition -1: ``zlib.crc32(key) %
partition_count`` of the first record's key when it has one (stable across restarts
and processes; it changes when the partition count grows, as in Kafka), otherwise
round-robin over the partitions.  All records of one request go to one partition.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

from wharf.protocol.errors import (
    ContentTooLarge,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
)
from wharf.protocol.records import CODECS, check_payload, encode_records

from ..store.fsio import fsync, fsync_dir, write_atomically
from .handles import SHARED, SegmentHandles
from .partition import Partition
from .producers import ProducerIds
from .segment import segment_name
from .topicconfig import DEFAULTS, TopicConfig, overrides

log = logging.getLogger("wharf.topics")

TOPIC_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,248}")
TOPIC_FILE: Final = "topic.json"
MAX_PARTITIONS: Final = 1024
MAX_FETCH_BYTES: Final = 64 * 1024 * 1024
ACKS_LEVELS: Final = ("none", "written", "fsynced")
DEFAULT_RETENTION_CHECK_INTERVAL_MS: Final = 300_000
# Limits of the batch header's fields (protocol/records.py).
MAX_TIMESTAMP_MS: Final = 2**63 - 1
MAX_PRODUCER_ID: Final = 2**63 - 1
MAX_EPOCH: Final = 2**15 - 1
MAX_SEQUENCE: Final = 2**31 - 1
# The record_count field of a stored batch header (protocol/records.py).
_RECORD_COUNT_AT: Final = slice(16, 20)

# One record handed to ``append_records``: (key, value, headers, timestamp ms).
RecordIn = tuple[bytes | None, bytes | None, dict[str, Any] | None, int]


class ProduceResult(NamedTuple):
    partition: Partition
    base_offset: int
    duplicate: bool
    log_append_time: int  # -1 unless the topic uses log-append time

    def reply(self) -> dict[str, Any]:
        return {
            "partition": self.partition.number,
            "base_offset": self.base_offset,
            "duplicate": self.duplicate,
            "log_append_time": self.log_append_time,
        }


class Topic:
    def __init__(
        self, name: str, path: Path, partitions: list[Partition], config: TopicConfig
    ) -> None:
        self.name = name
        self.path = path
        self.partitions = partitions
        self.config = config
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

    def set_config(self, config: TopicConfig) -> None:
        self.config = config
        for p in self.partitions:
            p.config = config

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "partitions": len(self.partitions),
            "config": self.config.to_map(),
            "offsets": [p.describe() for p in self.partitions],
            "internal": False,
        }

    def close(self, *, clean: bool = True) -> None:
        for p in self.partitions:
            p.close(clean=clean)

    def pending_jobs(self) -> list[asyncio.Future[None]]:
        return [job for p in self.partitions for job in p.pending_jobs()]


class TopicRegistry:
    """Owns every topic under one directory.  Handlers call it synchronously."""

    def __init__(
        self,
        root: Path,
        *,
        retention_check_interval_ms: int = DEFAULT_RETENTION_CHECK_INTERVAL_MS,
        max_batch_bytes: int = 16 * 1024 * 1024,
        handles: SegmentHandles = SHARED,
    ) -> None:
        self.root = root
        # Read handles of closed segments, shared by every partition (handles.py).
        self.handles = handles
        self.topics: dict[str, Topic] = {}
        self.retention_check_interval_ms = retention_check_interval_ms
        self.max_batch_bytes = max_batch_bytes
        # Called with the topic name after a topic is deleted (groups, bindings).
        self.on_topic_deleted: list[Callable[[str], None]] = []
        # Raises when no more topics may be created (the vhost's max-topics, set by
        # core/vhosts.py, which decides).
        self.check_new_topic: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        # Worker-thread jobs of closed partitions (deleted topics, shutdown) still
        # writing files: ``wait_closed`` waits for them.
        self._closing: list[asyncio.Future[None]] = []
        # Totals since start (GET /api/overview's log_stats): records and batch bytes
        # appended, and records and batch bytes sent to consumers (whole batches, as
        # stored; a batch can hold records before the offset asked for).
        self.records_produced = 0
        self.bytes_produced = 0
        self.records_fetched = 0
        self.bytes_fetched = 0
        root.mkdir(parents=True, exist_ok=True)
        # The names recovery goes by (topic dirs created, deleted or renamed in, the
        # producer ids file) durable first: a kill -9 may leave such a rename in the
        # page cache only, which a power loss after this run acted on would undo.
        fsync_dir(root)
        self.producer_ids = ProducerIds(root)
        self._recover()

    def _recover(self) -> None:
        started = time.monotonic()
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
            fsync_dir(entry)  # its topic.json and partition dirs (see __init__)
            config = _load_config(entry)
            parts = [
                Partition(entry / str(i), i, config, entry.name, self.handles) for i in range(count)
            ]
            self.topics[entry.name] = Topic(entry.name, entry, parts, config)
        if self.topics:
            log.info(
                "recovered %d log topics in %.3f s", len(self.topics), time.monotonic() - started
            )

    def get(self, name: str) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            raise NotFound(
                f"no topic '{name}'; create it with create_topic first", details={"topic": name}
            )
        return topic

    def describe_all(self) -> list[dict[str, Any]]:
        return [self.topics[name].describe() for name in sorted(self.topics)]

    # -- topic management ----------------------------------------------------------

    def create(self, name: str, partitions: int, config: dict[str, Any] | None) -> dict[str, Any]:
        """Create a topic; re-creating one with the same partition count is a no-op
        (settings given then must match the topic's, else 406)."""
        if not TOPIC_NAME_RE.fullmatch(name):
            raise InvalidArgument(
                f"bad topic name {name!r}: use 1-249 of A-Z a-z 0-9 . _ - "
                "(not starting with '.' or '-')"
            )
        _check_partition_count(partitions)
        settings = DEFAULTS.with_changes(config or {})
        existing = self.topics.get(name)
        if existing is not None:
            if len(existing.partitions) != partitions:
                raise PreconditionFailed(
                    f"topic '{name}' exists with {len(existing.partitions)} partitions, "
                    f"not {partitions}; use alter_topic to add partitions",
                    details={"partitions": len(existing.partitions)},
                )
            if config and existing.config.with_changes(config) != existing.config:
                raise PreconditionFailed(
                    f"topic '{name}' exists with other settings; use alter_topic to change them",
                    details={"config": existing.config.to_map()},
                )
            return {**existing.describe(), "created": False}
        if self.check_new_topic is not None:
            self.check_new_topic()
        tmp = self.root / f".{name}.creating"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _save_config(tmp, settings)
        for i in range(partitions):
            _make_partition_dir(tmp / str(i))
        fsync_dir(tmp)
        final = self.root / name
        os.rename(tmp, final)
        fsync_dir(self.root)
        parts = [
            Partition(final / str(i), i, settings, name, self.handles) for i in range(partitions)
        ]
        topic = Topic(name, final, parts, settings)
        self.topics[name] = topic
        log.info("created topic %s with %d partitions", name, partitions)
        return {**topic.describe(), "created": True}

    def alter(
        self, name: str, partitions: int | None, config: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Grow a topic to ``partitions`` partitions (never shrinks; None = as is)
        and/or change settings (the keys given replace the current values)."""
        topic = self.get(name)
        new_config = topic.config.with_changes(config) if config else topic.config
        have = len(topic.partitions)
        if partitions is not None:
            _check_partition_count(partitions)
            if partitions < have:
                raise InvalidArgument(
                    f"topic '{name}' has {have} partitions; the count can grow but never shrink",
                    details={"partitions": have},
                )
        if new_config != topic.config:
            _save_config(topic.path, new_config)
            topic.set_config(new_config)
            log.info("topic %s: settings now %s", name, overrides(new_config))
        for i in range(have, partitions or have):
            # In order, each complete before the next: a crash leaves a contiguous prefix.
            _make_partition_dir(topic.path / str(i))
            fsync_dir(topic.path)
            topic.partitions.append(
                Partition(topic.path / str(i), i, topic.config, name, self.handles)
            )
        return topic.describe()

    def delete(self, name: str) -> None:
        topic = self.get(name)
        del self.topics[name]
        topic.close(clean=False)
        self._closing = [job for job in self._closing if not job.done()]
        self._closing += topic.pending_jobs()
        doomed = self.root / f".{name}.deleting-{int(time.time() * 1000)}"
        os.rename(topic.path, doomed)
        fsync_dir(self.root)
        shutil.rmtree(doomed, ignore_errors=True)
        log.info("deleted topic %s", name)
        for listener in list(self.on_topic_deleted):
            try:
                listener(name)
            except Exception:
                log.exception("a listener for the deletion of topic %s failed", name)

    # -- records -------------------------------------------------------------------

    def produce(
        self,
        name: str,
        partition: int,
        payload: bytes,
        codec: int,
        acks: str,
        producer_id: int = -1,
        producer_epoch: int = -1,
        base_sequence: int = -1,
        transactional: bool = False,
    ) -> ProduceResult:
        """Validate and append one produced batch, its payload stored unchanged.  With
        acks="fsynced" the caller must ``await result.partition.sync()`` before
        replying.  ``transactional``: the transaction coordinator has checked the
        producer and added the partition to its transaction (transactions.py)."""
        if acks not in ACKS_LEVELS:
            raise InvalidArgument(f"acks must be one of {', '.join(ACKS_LEVELS)}, got {acks!r}")
        topic = self.get(name)
        if codec not in CODECS.values():
            raise InvalidArgument(f"unknown compression codec {codec}; known: {dict(CODECS)}")
        if len(payload) > self.max_batch_bytes:
            raise ContentTooLarge(
                f"a batch of {len(payload)} bytes exceeds max_message_bytes="
                f"{self.max_batch_bytes}; send smaller batches",
                details={"size": len(payload), "max_message_bytes": self.max_batch_bytes},
            )
        records, info = check_payload(payload, codec, self.max_batch_bytes)
        if info.max_timestamp > MAX_TIMESTAMP_MS:
            raise InvalidArgument(f"record timestamps must be at most {MAX_TIMESTAMP_MS}")
        if info.null_keys and topic.config.compacts:
            raise InvalidArgument(
                f"topic '{name}' is compacted (cleanup_policy={topic.config.cleanup_policy}): "
                "every record needs a key"
            )
        if partition == -1:
            partition = topic.choose_partition(records[0][2])
        part = topic.partition(partition)
        if producer_id >= 0:
            _check_producer_fields(producer_id, producer_epoch, base_sequence)
            original = part.check_producer(
                producer_id, producer_epoch, base_sequence, info.last_offset_delta + 1
            )
            if original is not None:
                return ProduceResult(part, original, True, -1)
        elif producer_id != -1:
            raise InvalidArgument("producer_id must be >= 0, or -1 when not idempotent")
        base, append_time = part.append(
            payload,
            record_count=info.count,
            last_offset_delta=info.last_offset_delta,
            codec=codec,
            first_timestamp=info.first_timestamp,
            max_timestamp=info.max_timestamp,
            producer_id=producer_id,
            producer_epoch=producer_epoch if producer_id >= 0 else -1,
            base_sequence=base_sequence if producer_id >= 0 else -1,
            hold_until_fsynced=acks == "fsynced",
            transactional=transactional and producer_id >= 0,
        )
        self.records_produced += info.count
        self.bytes_produced += len(payload)
        return ProduceResult(part, base, False, append_time)

    def append_records(
        self, name: str, partition: int, records: Sequence[RecordIn], *, acks: str
    ) -> tuple[Partition, int]:
        """Append a batch the broker builds itself (``(key, value, headers, timestamp)``
        tuples; partition -1 chooses as produce does).  With acks="fsynced" the caller
        waits for ``partition.sync()``."""
        if acks not in ACKS_LEVELS:
            raise InvalidArgument(f"acks must be one of {', '.join(ACKS_LEVELS)}, got {acks!r}")
        if not records:
            raise InvalidArgument("a batch needs at least one record")
        topic = self.get(name)
        if topic.config.compacts and any(r[0] is None for r in records):
            raise InvalidArgument(
                f"topic '{name}' is compacted: every record needs a key (routing key or "
                "x-partition-key)"
            )
        if partition == -1:
            partition = topic.choose_partition(records[0][0])
        part = topic.partition(partition)
        payload, count = encode_records(records)
        stamps = [r[3] for r in records]
        base, _ = part.append(
            payload,
            record_count=count,
            last_offset_delta=count - 1,
            codec=0,
            first_timestamp=min(stamps),
            max_timestamp=max(stamps),
            hold_until_fsynced=acks == "fsynced",
        )
        self.records_produced += count
        self.bytes_produced += len(payload)
        return part, base

    def fetch(
        self, name: str, partition: int, offset: int, max_bytes: int, committed: bool = False
    ) -> dict[str, Any]:
        """``committed`` (read committed): "high_watermark" is the last stable offset."""
        check_fetch_bytes(max_bytes)
        part = self.get(name).partition(partition)
        return {
            "batches": part.fetch(offset, max_bytes, committed=committed),
            "high_watermark": part.last_stable_offset if committed else part.high_watermark,
            "log_start": part.earliest,
        }

    def count_fetched(self, batches: Iterable[bytes | memoryview]) -> None:
        """Batches handed to a consumer: for the fetched totals."""
        for b in batches:
            self.records_fetched += int.from_bytes(b[_RECORD_COUNT_AT], "big")
            self.bytes_fetched += len(b)

    def offset_for_timestamp(self, name: str, partition: int, ts: int) -> int:
        """The first offset whose record timestamp is >= ``ts`` (latest when none)."""
        return self.get(name).partition(partition).offset_for_timestamp(ts)[0]

    def list_offsets(self, name: str, partition: int, ts: int | None = None) -> dict[str, Any]:
        part = self.get(name).partition(partition)
        out: dict[str, Any] = {
            "earliest": part.earliest,
            "latest": part.high_watermark,
            "last_stable": part.last_stable_offset,
        }
        if ts is not None:
            out["offset"], out["timestamp"] = part.offset_for_timestamp(ts)
        return out

    def init_producer(self) -> dict[str, int]:
        return {"producer_id": self.producer_ids.allocate(), "producer_epoch": 0}

    # -- retention -----------------------------------------------------------------

    def start(self) -> None:
        """Run retention every ``retention_check_interval_ms`` on the running loop."""
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.retention_check_interval_ms / 1000, self._tick)

    def _tick(self) -> None:
        try:
            self.check_retention(int(time.time() * 1000))
        except Exception:
            log.exception("log retention check failed")
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.retention_check_interval_ms / 1000, self._tick)

    def check_retention(self, now_ms: int) -> int:
        """Roll idle active segments, delete expired ones, forget silent producers;
        returns the number of segments deleted."""
        deleted = 0
        for topic in list(self.topics.values()):
            for part in topic.partitions:
                if part.failed is not None:
                    continue
                try:
                    part.roll_if_idle(now_ms)
                    deleted += part.apply_retention(now_ms)
                    part.producers.expire(now_ms)
                except OSError as exc:
                    log.error(
                        "topic %s partition %d: retention failed: %s", topic.name, part.number, exc
                    )
        return deleted

    def close(self) -> None:
        """Close every partition (fsyncing what is unsynced).  Worker threads may still
        be finishing segment rolls: ``await wait_closed()`` before the directory is
        opened again."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for topic in self.topics.values():
            topic.close()
            self._closing += topic.pending_jobs()
        self.topics.clear()

    async def wait_closed(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the worker threads of closed partitions (the
        index and snapshot files of a segment roll, an fsync); False when some were
        still running then."""
        jobs = [job for job in self._closing if not job.done()]
        self._closing = []
        if not jobs:
            return True
        _done, running = await asyncio.wait(jobs, timeout=timeout_s)
        if running:
            log.warning(
                "%d log segment jobs (fsyncs, index files) still running after %.1f s",
                len(running),
                timeout_s,
            )
            return False
        return True


def _check_producer_fields(producer_id: int, epoch: int, sequence: int) -> None:
    # The batch header holds them as i64, i16 and i32.
    if producer_id > MAX_PRODUCER_ID or not 0 <= epoch <= MAX_EPOCH:
        raise InvalidArgument(
            f"producer_id must be 0..{MAX_PRODUCER_ID} and producer_epoch 0..{MAX_EPOCH} "
            "(from INIT_PRODUCER)"
        )
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise InvalidArgument(f"base_sequence must be 0..{MAX_SEQUENCE}, got {sequence}")


def check_fetch_bytes(max_bytes: int) -> None:
    if not 0 < max_bytes <= MAX_FETCH_BYTES:
        raise InvalidArgument(f"max_bytes must be 1..{MAX_FETCH_BYTES}, got {max_bytes}")


def _check_partition_count(partitions: int) -> None:
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise InvalidArgument(f"partitions must be 1..{MAX_PARTITIONS}, got {partitions}")


def _load_config(topic_dir: Path) -> TopicConfig:
    try:
        data = json.loads((topic_dir / TOPIC_FILE).read_text())
    except FileNotFoundError:
        return DEFAULTS
    except ValueError as exc:
        raise InvalidArgument(f"{topic_dir / TOPIC_FILE} is not valid JSON: {exc}") from None
    return DEFAULTS.with_changes(data.get("config") or {})


def _save_config(topic_dir: Path, config: TopicConfig) -> None:
    body = json.dumps({"config": overrides(config)}, indent=2, sort_keys=True) + "\n"
    write_atomically(topic_dir / TOPIC_FILE, body.encode())


def _make_partition_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / segment_name(0), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fsync(fd, path / segment_name(0))
    finally:
        os.close(fd)
    fsync_dir(path)
