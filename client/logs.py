"""Log topics in the SDK: ``Record``, decoding fetched batches, building produced
payloads, and the idempotent ``Producer``.

FETCH answers with whole stored batches (protocol/records.py); a batch may start
before the offset asked for, so records below ``min_offset`` are skipped here.
A produced batch's payload is built here (a msgpack array of records, optionally
gzip-compressed) and stored by the broker as sent.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, NamedTuple

import msgpack

from wharf.protocol import frames as F
from wharf.protocol.errors import (
    ConnectionLost,
    InvalidArgument,
    OutOfOrderSequence,
    ProducerFenced,
)
from wharf.protocol.records import (
    CODEC_NONE,
    CODECS,
    HEADER_BYTES,
    compress,
    decompress,
    encode_records,
    encode_values,
    read_header,
)

log = logging.getLogger("wharf.client")


class Record(NamedTuple):
    """One record read from a log topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None  # None: a tombstone (compacted topics)
    headers: dict[str, Any]
    timestamp: int  # epoch ms


_new = tuple.__new__


def records_from_batches(
    topic: str, partition: int, batches: Iterable[bytes], min_offset: int = 0
) -> list[Record]:
    """Decode fetched batches into records with offset >= ``min_offset``."""
    out: list[Record] = []
    # A batch's records are made in one burst and all kept: a garbage collection in
    # the middle would only traverse them (it costs more than the decoding).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for batch in batches:
            out += _decode(topic, partition, batch, min_offset)
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


def _decode(topic: str, partition: int, batch: bytes, min_offset: int) -> list[Record]:
    h = read_header(batch)
    if h.next_offset <= min_offset:
        return []
    rows = msgpack.unpackb(
        decompress(memoryview(batch)[HEADER_BYTES:], h.codec), raw=False, use_list=False
    )
    base = h.base_offset
    if h.log_append_time:
        t = h.max_timestamp
        return [
            _new(Record, (topic, partition, base + r[0], r[2], r[3], r[4] or {}, t))
            for r in rows
            if base + r[0] >= min_offset
        ]
    if base < min_offset:
        rows = [r for r in rows if base + r[0] >= min_offset]
    try:
        return [
            _new(Record, (topic, partition, base + o, k, v, hd or {}, ts))
            for o, ts, k, v, hd in rows
        ]
    except ValueError:  # records with more fields than this SDK knows
        return [
            _new(Record, (topic, partition, base + r[0], r[2], r[3], r[4] or {}, r[1]))
            for r in rows
        ]


# -- producing -----------------------------------------------------------------------

ACKS: Final = ("none", "written", "fsynced")
# An idempotent producer retries a batch cut off by a lost connection this many times
# (each waits for the reconnect, see ``connect(reconnect=True)``).
PRODUCER_MAX_RETRIES: Final = 5
_SEQUENCE_MODULUS: Final = 2**31

# One record for ``produce_records``: (key, value, headers or None, timestamp ms or None).
RecordTuple = tuple[bytes | None, bytes | None, dict[str, Any] | None, int | None]


def now_ms() -> int:
    return int(time.time() * 1000)


def codec_for(compression: str | None) -> int:
    if compression is None:
        return CODEC_NONE
    codec = CODECS.get(compression)
    if codec is None:
        raise InvalidArgument(
            f"compression must be None or one of {', '.join(CODECS)}, got {compression!r}"
        )
    return codec


def check_acks(acks: str) -> None:
    if acks not in ACKS:
        raise InvalidArgument(f"acks must be one of {', '.join(ACKS)}, got {acks!r}")


def values_payload(
    values: Sequence[bytes | None],
    key: bytes | None,
    headers: dict[str, Any] | None,
    timestamp: int | None,
    codec: int,
) -> bytes:
    """The batch payload for ``values`` sharing key, headers and timestamp."""
    if not values:
        raise InvalidArgument("produce needs at least one value")
    ts = now_ms() if timestamp is None else timestamp
    return compress(encode_values(values, key, headers, ts), codec)


def records_payload(records: Sequence[RecordTuple], codec: int) -> bytes:
    if not records:
        raise InvalidArgument("produce needs at least one record")
    now = now_ms()
    payload, _count = encode_records(
        (key, value, headers, now if ts is None else ts) for key, value, headers, ts in records
    )
    return compress(payload, codec)


class Producer:
    """An idempotent producer (``conn.producer()``): the broker appends each batch
    exactly once per partition, even when it is sent again after a lost connection
    (with ``connect(reconnect=True)`` the producer resends it on the new connection
    by itself) or across a broker restart.

    It gets a producer id from the broker on first use and numbers the records it
    sends to each partition.  It picks the partition itself when none is given: by
    ``zlib.crc32(key) % partitions`` (as the broker does) or round-robin, with the
    partition count read once per topic (``refresh(topic)`` reads it again).  One
    batch per partition is in flight at a time, so batches stay in order.
    """

    def __init__(self, request: Callable[..., Awaitable[list[Any]]]) -> None:
        self._request = request
        self.producer_id = -1
        self.producer_epoch = -1
        self._sequences: dict[tuple[str, int], int] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._partitions: dict[str, int] = {}
        self._round_robin: dict[str, int] = {}
        self._init_lock = asyncio.Lock()

    async def refresh(self, topic: str) -> int:
        """Read the topic's partition count again (after it grew)."""
        frame = await self._request(F.TOPIC_DESCRIBE, topic)
        count = int(frame[2]["partitions"])
        self._partitions[topic] = count
        return count

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
        """Append one record; returns ``(partition, offset)``."""
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
        """Append ``values`` as one batch; returns ``(partition, first offset)``."""
        codec = codec_for(compression)
        payload = values_payload(values, key, headers, timestamp, codec)
        part = await self._choose(topic, partition, key)
        return await self._send(topic, part, payload, codec, acks, len(values))

    async def produce_records(
        self,
        topic: str,
        records: Sequence[RecordTuple],
        partition: int | None = None,
        acks: str = "written",
        compression: str | None = None,
    ) -> tuple[int, int]:
        """Append ``(key, value, headers, timestamp)`` records as one batch."""
        codec = codec_for(compression)
        payload = records_payload(records, codec)
        part = await self._choose(topic, partition, records[0][0])
        return await self._send(topic, part, payload, codec, acks, len(records))

    async def _choose(self, topic: str, partition: int | None, key: bytes | None) -> int:
        if partition is not None:
            return partition
        count = self._partitions.get(topic) or await self.refresh(topic)
        if key is not None:
            return zlib.crc32(key) % count
        p = self._round_robin.get(topic, 0) % count
        self._round_robin[topic] = p + 1
        return p

    def _reset(self, pid: int) -> None:
        """Start over as a new producer (new id, sequences from 0): after a batch whose
        fate is unknown, a later one must not be taken for its retry."""
        if self.producer_id == pid:
            self.producer_id = self.producer_epoch = -1
            self._sequences.clear()

    async def _init(self) -> None:
        async with self._init_lock:
            if self.producer_id < 0:
                frame = await self._request(F.INIT_PRODUCER)
                self.producer_id = int(frame[2]["producer_id"])
                self.producer_epoch = int(frame[2]["producer_epoch"])

    async def _send(
        self, topic: str, partition: int, payload: bytes, codec: int, acks: str, count: int
    ) -> tuple[int, int]:
        check_acks(acks)
        if acks == "none":
            raise InvalidArgument("an idempotent producer needs acks 'written' or 'fsynced'")
        key = (topic, partition)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            if self.producer_id < 0:
                await self._init()
            pid = self.producer_id
            seq = self._sequences.get(key, 0)
            fields = (payload, codec, acks, pid, self.producer_epoch, seq)
            attempt = 0
            while True:
                try:
                    frame = await self._request(F.PRODUCE, topic, partition, *fields)
                    break
                except ConnectionLost:
                    attempt += 1
                    if attempt > PRODUCER_MAX_RETRIES:
                        self._reset(pid)  # the batch may be in: its sequence is spent
                        raise
                    log.info("wharf: resending batch %d to %s/%d", seq, topic, partition)
                except (OutOfOrderSequence, ProducerFenced):
                    self._reset(pid)
                    raise
            if self.producer_id == pid:
                self._sequences[key] = (seq + count) % _SEQUENCE_MODULUS
        result = frame[2]
        return int(result["partition"]), int(result["base_offset"])
