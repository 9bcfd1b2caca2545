"""The log-topic and consumer-group methods of ``wharf.Connection`` (docs/logs.md).

``LogsApi`` is a mixin of ``Connection`` (connection.py): topics, produce and fetch,
topic bindings, ``subscribe`` and group administration.  Record encoding lives in
logs.py, streams in stream.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from wharf.protocol import frames as F
from wharf.protocol.errors import InvalidArgument
from wharf.protocol.records import read_header

from .core import NEW_REQUEST, result_of
from .logs import (
    Producer,
    Record,
    RecordTuple,
    check_acks,
    codec_for,
    records_from_batches,
    records_payload,
    values_payload,
)
from .recovery import BindingRecord
from .stream import Stream, TopicPartition
from .stream_options import (
    DEFAULT_AUTO_COMMIT_INTERVAL_S,
    DEFAULT_FETCH_MAX_BYTES,
    DEFAULT_FETCH_MAX_WAIT_S,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_MAX_PARTITION_FETCH_BYTES,
    DEFAULT_REBALANCE_TIMEOUT_S,
    DEFAULT_SESSION_TIMEOUT_S,
    ISOLATION_LEVELS,
    READ_COMMITTED,
    READ_UNCOMMITTED,
    Listener,
    stream_options,
)
from .transactions import TransactionalProducer

if TYPE_CHECKING:
    from .connection import Connection
    from .core import ConnectionCore, Reply
    from .recovery import Topology


class FetchResult(NamedTuple):
    """One fetch of one partition (``Connection.fetch_batch``)."""

    records: list[Record]
    next_offset: int  # where the next fetch starts
    high_watermark: int  # the partition's latest offset when it answered
    log_start: int  # its earliest offset then


class LogsApi:
    """Mixin of ``Connection``: log topics and consumer groups."""

    if TYPE_CHECKING:
        # Provided by Connection.
        async def _request(self, frame: F.Frame) -> Reply: ...

        async def _usable_core(self) -> ConnectionCore: ...

        _core: ConnectionCore

        @property
        def _topology(self) -> Topology | None: ...

    # -- log topics (docs/logs.md) ----------------------------------------------------

    async def create_topic(
        self, /, name: str, partitions: int = 1, **config: Any
    ) -> dict[str, Any]:
        """Create a log topic (a no-op if it exists with this partition count and these
        settings); returns its description.  ``config``: topic settings such as
        ``retention_ms``, ``retention_bytes``, ``segment_bytes``, ``segment_ms``,
        ``timestamp_type``, ``cleanup_policy`` (docs/logs.md)."""
        reply = await self._request(F.TopicCreate(NEW_REQUEST, name, partitions, config or None))
        return result_of(reply)

    async def alter_topic(
        self, /, name: str, partitions: int | None = None, **config: Any
    ) -> dict[str, Any]:
        """Grow a topic to ``partitions`` partitions (it never shrinks) and/or change
        settings (those given replace the current values); returns its description."""
        reply = await self._request(F.TopicAlter(NEW_REQUEST, name, partitions, config or None))
        return result_of(reply)

    async def delete_topic(self, name: str) -> None:
        await self._request(F.TopicDelete(NEW_REQUEST, name))
        topology = self._topology
        if topology is not None:
            topology.topic_deleted(name)  # its bindings went with it

    async def describe_topic(self, name: str) -> dict[str, Any]:
        """``{"name", "partitions", "config": {every setting}, "offsets": [{"partition",
        "earliest", "latest", "bytes", "segments"}, ...], "internal"}``."""
        return result_of(await self._request(F.TopicDescribe(NEW_REQUEST, name)))

    async def list_topics(self) -> list[dict[str, Any]]:
        """Every topic's description (as ``describe_topic``), by name."""
        return list(result_of(await self._request(F.TopicList(NEW_REQUEST))).get("topics", []))

    async def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: dict[str, Any] | None = None,
        partition: int | None = None,
        acks: str = "written",
        timestamp: int | None = None,
        compression: str | None = None,
    ) -> tuple[int, int]:
        """Append one record; returns ``(partition, offset)``.  Without ``partition`` the
        broker picks ``zlib.crc32(key) % partitions``, or round-robin without a key.
        ``timestamp``: epoch ms (default: now).  ``acks``: "written" (in the broker's
        page cache), "fsynced" (on disk) or "none" (not waited for: returns
        ``(partition or -1, -1)`` at once; errors are not reported).
        ``compression="gzip"`` compresses the batch."""
        return await self.produce_many(
            topic, [value], key, headers, partition, acks, timestamp, compression
        )

    async def produce_many(
        self,
        topic: str,
        values: Sequence[bytes | None],
        key: bytes | None = None,
        headers: dict[str, Any] | None = None,
        partition: int | None = None,
        acks: str = "written",
        timestamp: int | None = None,
        compression: str | None = None,
    ) -> tuple[int, int]:
        """Append ``values`` as one batch to one partition (all with the same key,
        headers and timestamp); returns ``(partition, offset of the first)``, the rest
        follow it.  Arguments as ``produce``."""
        codec = codec_for(compression)
        payload = values_payload(values, key, headers, timestamp, codec)
        return await self._produce(topic, partition, payload, codec, acks)

    async def produce_records(
        self,
        topic: str,
        records: Sequence[RecordTuple],
        partition: int | None = None,
        acks: str = "written",
        compression: str | None = None,
    ) -> tuple[int, int]:
        """Append ``(key, value, headers, timestamp)`` records (headers and timestamp
        may be None) as one batch to one partition, chosen by the first record's key
        when ``partition`` is None; returns ``(partition, offset of the first)``."""
        codec = codec_for(compression)
        return await self._produce(topic, partition, records_payload(records, codec), codec, acks)

    async def _produce(
        self, topic: str, partition: int | None, payload: bytes, codec: int, acks: str
    ) -> tuple[int, int]:
        check_acks(acks)
        number = -1 if partition is None else partition
        if acks == "none":
            core = await self._usable_core()
            if core.must_wait_writable():
                await core.wait_writable()
            core.send_frame(F.Produce(0, topic, number, payload, codec, acks))
            return number, -1
        reply = await self._request(F.Produce(NEW_REQUEST, topic, number, payload, codec, acks))
        result = result_of(reply)
        return int(result["partition"]), int(result["base_offset"])

    def producer(self) -> Producer:
        """An idempotent producer on this connection (see ``wharf.logs.Producer``):
        each batch is appended once even when resent after a lost connection."""
        return Producer(self._request)

    def transactional_producer(
        self, transactional_id: str, *, timeout: float | None = None
    ) -> TransactionalProducer:
        """A transactional producer on this connection (docs/logs.md, "Transactions"):
        ``async with p.transaction(): await p.produce(...); await p.send_offsets(...)``.
        ``timeout`` (seconds): the broker aborts a transaction open longer (default:
        its transaction_timeout_ms)."""
        return TransactionalProducer(
            self._request, transactional_id, timeout, connection=lambda: self._core
        )

    async def fetch(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_bytes: int = 1_048_576,
        max_wait: float = 0.0,
        isolation_level: str = "read_uncommitted",
    ) -> list[Record]:
        """Records of ``topic``/``partition`` from ``offset`` on, whole stored batches up
        to about ``max_bytes`` (at least one batch).  With nothing there yet, waits up
        to ``max_wait`` seconds (at most 30) for records, then returns an empty list.
        An offset outside earliest..latest raises ``wharf.OffsetOutOfRange``.
        ``isolation_level="read_committed"``: only records of committed transactions
        (and non-transactional ones) below the last stable offset."""
        reply = await self._request(
            F.Fetch(
                NEW_REQUEST,
                topic,
                partition,
                offset,
                max_bytes,
                int(max_wait * 1000),
                _isolation(isolation_level),
            )
        )
        return records_from_batches(topic, partition, result_of(reply)["batches"], offset)

    async def fetch_batch(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_bytes: int = 1_048_576,
        max_wait: float = 0.0,
        isolation_level: str = "read_uncommitted",
    ) -> FetchResult:
        """``fetch`` with where to go on from: ``FetchResult(records, next_offset,
        high_watermark, log_start)``.  ``next_offset`` is the offset after the last
        batch returned, past any records compaction removed at its end; when there is
        nothing, the high watermark (no record exists from ``offset`` up to it).  Page
        through a partition with ``offset = result.next_offset``.  With
        ``isolation_level="read_committed"`` the high watermark is the last stable
        offset."""
        reply = await self._request(
            F.Fetch(
                NEW_REQUEST,
                topic,
                partition,
                offset,
                max_bytes,
                int(max_wait * 1000),
                _isolation(isolation_level),
            )
        )
        result = result_of(reply)
        batches = result["batches"]
        high_watermark = int(result["high_watermark"])
        if batches:
            next_offset = max(offset, read_header(batches[-1]).next_offset)
        else:
            next_offset = max(offset, high_watermark)
        return FetchResult(
            records_from_batches(topic, partition, batches, offset),
            next_offset,
            high_watermark,
            int(result["log_start"]),
        )

    async def list_offsets(self, topic: str, partition: int) -> tuple[int, int]:
        """``(earliest, latest)``; latest is the end of what can be fetched: the offset
        the next record will get, unless records produced with acks="fsynced" still
        wait for their fsync (docs/logs.md, "When a record becomes visible")."""
        result = result_of(await self._request(F.ListOffsets(NEW_REQUEST, topic, partition)))
        return int(result["earliest"]), int(result["latest"])

    async def offset_for_time(self, topic: str, partition: int, timestamp: int) -> int:
        """The offset of the first record whose timestamp (epoch ms) is >= ``timestamp``;
        the latest offset when there is none."""
        reply = await self._request(F.ListOffsets(NEW_REQUEST, topic, partition, timestamp))
        result = result_of(reply)
        return int(result["offset"])

    # -- topic bindings (exchanges routing into log topics; docs/logs.md) -------------

    async def bind_topic(
        self,
        topic: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Bind log topic ``topic`` to ``exchange`` like a queue: every message the
        binding matches is also appended to the topic as a record (key = the header
        ``x-partition-key`` or the routing key).  The publisher's confirm covers the
        append (an fsync for persistent messages)."""
        await self._request(F.TopicBind(NEW_REQUEST, topic, exchange, routing_key, arguments))
        topology = self._topology
        if topology is not None:
            topology.bound(BindingRecord(topic, exchange, routing_key, arguments, to_topic=True))

    async def unbind_topic(
        self,
        topic: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._request(F.TopicUnbind(NEW_REQUEST, topic, exchange, routing_key, arguments))
        topology = self._topology
        if topology is not None:
            topology.unbound(BindingRecord(topic, exchange, routing_key, arguments, to_topic=True))

    # -- consumer groups (docs/logs.md, "Consumer groups: SDK") -----------------------

    def subscribe(
        self,
        topics: str | Sequence[str],
        *,
        group: str | None = None,
        auto_offset_reset: str = "latest",
        enable_auto_commit: bool = True,
        auto_commit_interval: float = DEFAULT_AUTO_COMMIT_INTERVAL_S,
        strategy: str = "range",
        instance_id: str | None = None,
        session_timeout: float = DEFAULT_SESSION_TIMEOUT_S,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL_S,
        rebalance_timeout: float = DEFAULT_REBALANCE_TIMEOUT_S,
        fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES,
        max_partition_fetch_bytes: int = DEFAULT_MAX_PARTITION_FETCH_BYTES,
        fetch_max_wait: float = DEFAULT_FETCH_MAX_WAIT_S,
        partitions: Sequence[TopicPartition] | None = None,
        on_assign: Listener | None = None,
        on_revoke: Listener | None = None,
        isolation_level: str = "read_uncommitted",
    ) -> Stream:
        """Read log topics: ``async with conn.subscribe("events", group="g") as s:
        async for rec in s``.  Times are in seconds.

        With ``group`` the broker assigns the partitions among the group's members
        and the stream commits offsets; without it (or with ``partitions``) the
        stream reads the given partitions (default: all of the topics) by itself.
        See docs/logs.md for every argument.
        """
        options = stream_options(
            topics,
            group=group,
            auto_offset_reset=auto_offset_reset,
            enable_auto_commit=enable_auto_commit,
            auto_commit_interval=auto_commit_interval,
            strategy=strategy,
            instance_id=instance_id,
            session_timeout=session_timeout,
            heartbeat_interval=heartbeat_interval,
            rebalance_timeout=rebalance_timeout,
            fetch_max_bytes=fetch_max_bytes,
            max_partition_fetch_bytes=max_partition_fetch_bytes,
            fetch_max_wait=fetch_max_wait,
            partitions=partitions,
            on_assign=on_assign,
            on_revoke=on_revoke,
            isolation_level=isolation_level,
        )
        return Stream(cast("Connection", self), options)

    async def list_groups(self) -> list[dict[str, Any]]:
        """Groups with members or committed offsets: ``[{"group", "state", "members",
        "generation", "strategy"}, ...]``."""
        groups = result_of(await self._request(F.GroupList(NEW_REQUEST))).get("groups", [])
        return list(groups)

    async def describe_group(self, group: str) -> dict[str, Any]:
        """A group's state, members with their assignment, and per partition the
        committed offset, latest offset and lag (``wharf.NotFound`` if unknown)."""
        return result_of(await self._request(F.GroupDescribe(NEW_REQUEST, group)))

    async def delete_group(self, group: str) -> None:
        """Delete a group's committed offsets; only when it has no members
        (``wharf.PreconditionFailed`` otherwise)."""
        await self._request(F.GroupDelete(NEW_REQUEST, group))

    async def reset_offsets(
        self,
        group: str,
        topic: str,
        to: str | int = "earliest",
        *,
        value: int | None = None,
        partitions: Sequence[int] | None = None,
    ) -> dict[TopicPartition, int]:
        """Move a group's committed offsets of ``topic`` (all partitions, or those
        given) while the group has no members: ``to`` = "earliest", "latest", an
        offset (int), or "timestamp" with ``value`` = epoch ms.  Returns the new
        committed offsets."""
        if isinstance(to, int):
            how, value = "offset", to
        else:
            how = to
        parts = list(partitions) if partitions is not None else None
        reply = await self._request(
            F.GroupResetOffsets(NEW_REQUEST, group, topic, how, value, parts)
        )
        return {(t, p): o for t, p, o in result_of(reply).get("offsets", [])}

    async def committed_offsets(
        self, group: str, topics: Sequence[str] | None = None
    ) -> dict[TopicPartition, int]:
        """The group's committed offsets (the next offset to read), of all its topics
        or of ``topics``."""
        names = list(topics) if topics is not None else None
        reply = await self._request(F.OffsetFetch(NEW_REQUEST, group, names))
        return {(t, p): o for t, p, o, *_ in result_of(reply).get("offsets", []) if o >= 0}


def _isolation(level: str) -> int:
    if level == READ_COMMITTED:
        return F.READ_COMMITTED
    if level == READ_UNCOMMITTED:
        return F.READ_UNCOMMITTED
    raise InvalidArgument(f"isolation_level must be one of {', '.join(ISOLATION_LEVELS)}")
