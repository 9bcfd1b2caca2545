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
from itertools import islice
from typing import Any, Final, NamedTuple, NoReturn

import msgpack

from wharf.protocol import frames as F
from wharf.protocol.errors import (
    ConnectionLost,
    InvalidArgument,
    InvalidTxnState,
    OutOfOrderSequence,
    ProducerFenced,
)
from wharf.protocol.records import (
    CODEC_NONE,
    CODECS,
    CONTROL,
    HEADER_BYTES,
    MAX_BATCH_BYTES,
    BatchHeader,
    compress,
    decompress,
    encode_records,
    encode_values,
    read_header,
)

from .core import NEW_REQUEST, Reply, result_of

log = logging.getLogger("wharf.client")


class NoHeaders(dict[str, Any]):
    """The headers of every record that has none: one shared, read-only empty dict
    (a fresh dict per record would cost more than the rest of its decoding)."""

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("the headers of a fetched record are read-only")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (_no_headers, ())


NO_HEADERS: Final = NoHeaders()


def _no_headers() -> NoHeaders:
    return NO_HEADERS


class Record(NamedTuple):
    """One record read from a log topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None  # None: a tombstone (compacted topics)
    headers: dict[str, Any]  # read-only when the record has none (NO_HEADERS)
    timestamp: int  # epoch ms


_new = tuple.__new__


class _NoGC:
    """``with _NoGC():`` no garbage collection in between: objects made in a burst and
    then all kept (decoded records) or all dropped (a payload's arrays) are never
    traversed by a collection, which would cost more than making them."""

    __slots__ = ("_was_enabled",)

    def __enter__(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc_info: object) -> None:
        if self._was_enabled:
            gc.enable()


# A stream decodes this many records at a time: fewer than the garbage collector's
# default threshold (700 new objects), so that records handed out and dropped before
# the next piece is decoded are never traversed by a collection (one Record per
# record is the only tracked object that outlives the decoding).
PIECE_RECORDS: Final = 500


def records_from_batches(
    topic: str, partition: int, batches: Iterable[bytes], min_offset: int = 0
) -> list[Record]:
    """Decode fetched batches into records with offset >= ``min_offset``."""
    out: list[Record] = []
    with _NoGC():
        for batch in batches:
            h = read_header(batch)
            if h.next_offset <= min_offset or h.attributes & CONTROL:
                continue  # control batches (transaction markers) are not records
            rows = msgpack.unpackb(
                decompress(memoryview(batch)[HEADER_BYTES:], h.codec), raw=False, use_list=False
            )
            out += _records(topic, partition, h, rows, min_offset)
    return out


def _records(
    topic: str, partition: int, h: BatchHeader, rows: Sequence[Any], min_offset: int
) -> list[Record]:
    """Records of ``rows`` (decoded records of the batch ``h``), from ``min_offset``."""
    base = h.base_offset
    empty = NO_HEADERS
    if h.log_append_time:
        t = h.max_timestamp
        return [
            _new(Record, (topic, partition, base + r[0], r[2], r[3], r[4] or empty, t))
            for r in rows
            if base + r[0] >= min_offset
        ]
    if rows and base + rows[0][0] < min_offset:
        rows = [r for r in rows if base + r[0] >= min_offset]
    try:
        return [
            _new(Record, (topic, partition, base + o, k, v, hd or empty, ts))
            for o, ts, k, v, hd in rows
        ]
    except ValueError:  # records with more fields than this SDK knows
        return [
            _new(Record, (topic, partition, base + r[0], r[2], r[3], r[4] or empty, r[1]))
            for r in rows
        ]


class BatchReader:
    """Decodes one batch at a time, ``PIECE_RECORDS`` records per ``read()``."""

    __slots__ = ("_unpacker", "_header", "_topic", "_partition", "_min_offset", "left")

    def __init__(self) -> None:
        self._unpacker = _unpacker()
        self._header: BatchHeader | None = None
        self._topic = ""
        self._partition = 0
        self._min_offset = 0
        self.left = 0  # records of the batch not read yet

    def start(self, topic: str, partition: int, batch: bytes, min_offset: int) -> int:
        """Begin reading ``batch`` from ``min_offset``; returns the offset after it (the
        batch is skipped when that is not above ``min_offset``)."""
        if self.left:
            self.abandon()
        h = read_header(batch)
        if h.next_offset > min_offset and not h.attributes & CONTROL:
            self._unpacker.feed(decompress(memoryview(batch)[HEADER_BYTES:], h.codec))
            self.left = self._unpacker.read_array_header()
            self._header = h
            self._topic = topic
            self._partition = partition
            self._min_offset = min_offset
        return h.next_offset

    def read(self) -> tuple[list[Record], int]:
        """The next records (possibly none, when they are below the start offset) and
        the offset after them (the batch's end once it is all read)."""
        h = self._header
        assert h is not None and self.left > 0
        n = min(self.left, PIECE_RECORDS)
        with _NoGC():
            rows = list(islice(self._unpacker, n))
            if len(rows) < n:
                self.abandon()
                raise InvalidArgument(f"corrupt batch at offset {h.base_offset}: records missing")
            self.left -= n
            records = _records(self._topic, self._partition, h, rows, self._min_offset)
        if self.left:
            return records, h.base_offset + rows[-1][0] + 1
        return records, h.next_offset

    def abandon(self) -> None:
        """Forget the rest of the current batch."""
        if self.left:
            self._unpacker = _unpacker()
            self.left = 0


def _unpacker() -> msgpack.Unpacker:
    return msgpack.Unpacker(raw=False, use_list=False, max_buffer_size=MAX_BATCH_BYTES)


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
    with _NoGC():  # the records' arrays live only until packed
        payload = encode_values(values, key, headers, ts)
    return compress(payload, codec)


def records_payload(records: Sequence[RecordTuple], codec: int) -> bytes:
    if not records:
        raise InvalidArgument("produce needs at least one record")
    now = now_ms()
    with _NoGC():
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

    def __init__(
        self, request: Callable[[F.Frame], Awaitable[Reply]], *, transactional: bool = False
    ) -> None:
        self._request = request
        self._transactional = transactional  # batches flagged for the transaction
        self.producer_id = -1
        self.producer_epoch = -1
        self._sequences: dict[tuple[str, int], int] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._partitions: dict[str, int] = {}
        self._round_robin: dict[str, int] = {}
        self._init_lock = asyncio.Lock()

    async def refresh(self, topic: str) -> int:
        """Read the topic's partition count again (after it grew)."""
        reply = await self._request(F.TopicDescribe(NEW_REQUEST, topic))
        count = int(result_of(reply)["partitions"])
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

    def use_epoch(self, producer_id: int, epoch: int) -> None:
        """Send as ``producer_id``/``epoch`` from now on (INIT_TRANSACTIONS answered
        them): a new epoch numbers its records from 0 in every partition."""
        self.producer_id = producer_id
        self.producer_epoch = epoch
        self._sequences.clear()

    def _reset(self, pid: int) -> None:
        """Start over as a new producer (new id, sequences from 0): after a batch whose
        fate is unknown, a later one must not be taken for its retry."""
        if self.producer_id == pid:
            self.producer_id = self.producer_epoch = -1
            self._sequences.clear()

    async def _init(self) -> None:
        if self._transactional:
            raise InvalidTxnState(
                "the transactional producer lost its producer id (a batch of unknown fate "
                "after a lost connection): abort, then begin again"
            )
        async with self._init_lock:
            if self.producer_id < 0:
                result = result_of(await self._request(F.InitProducer(NEW_REQUEST)))
                self.producer_id = int(result["producer_id"])
                self.producer_epoch = int(result["producer_epoch"])

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
            frame = F.Produce(
                NEW_REQUEST,
                topic,
                partition,
                payload,
                codec,
                acks,
                pid,
                self.producer_epoch,
                seq,
                self._transactional,
            )
            attempt = 0
            while True:
                try:
                    reply = await self._request(frame)
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
        result = result_of(reply)
        return int(result["partition"]), int(result["base_offset"])
