"""A blocking client for scripts and WSGI apps: ``conn = wharf.sync.connect(url)``.

Not a second protocol implementation: each ``SyncConnection`` runs an asyncio
``wharf.Connection`` on an event loop of its own, in a background daemon thread, and
every call is handed to that loop with ``asyncio.run_coroutine_threadsafe`` while the
calling thread blocks on the result.  All SDK state lives on the loop thread, so one
``SyncConnection`` can be shared by several threads: each call blocks only its caller,
calls from different threads run concurrently on the loop (publishes from many
threads share the connection's confirm stream), and one consumer is iterated by one
thread at a time (concurrent ``next()`` calls take turns).

Callbacks given to ``on_event``/``on_blocked``/``on_error`` run on the loop thread: they
must not call back into this blocking API (that would wait on the thread that has to do
the work; it raises ``RuntimeError`` instead).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from ssl import SSLContext
from types import TracebackType
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

import uvloop

from wharf.protocol.errors import ConnectionLost, WharfError

from .connection import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_HEARTBEAT_S,
    DEFAULT_PREFETCH,
    Connection,
)
from .connection import connect as _connect
from .consumer import Consumer
from .logs import Record
from .logs_api import FetchResult
from .message import Message
from .recovery import (
    DEFAULT_RECONNECT_MAX_DELAY_S,
    DEFAULT_RECONNECT_WAIT_TIMEOUT_S,
    ConnectionEvent,
)
from .stream import Stream, TopicPartition
from .url import DEFAULT_URL

P = ParamSpec("P")
R = TypeVar("R")

# Budget for the loop thread to finish after close() (its connection is closed by then).
THREAD_JOIN_TIMEOUT_S: Final = 10.0


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self._main, name="wharf-sync", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def run(self, coro: Coroutine[Any, Any, R], timeout: float | None) -> R:  # noqa: ASYNC109
        """Run ``coro`` on the loop and block until it is done (at most ``timeout`` s:
        then it is cancelled and ``TimeoutError`` raised)."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError(
                "a blocking wharf.sync call was made on the client's own event-loop thread "
                "(from an on_event/on_blocked/on_error callback?); it would wait forever"
            )
        if not self.thread.is_alive():
            coro.close()
            raise ConnectionLost("the connection was closed by the client")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():
                raise  # the operation's own TimeoutError (e.g. rpc)
            future.cancel()
            raise TimeoutError(f"the call did not complete within {timeout} s") from None
        except concurrent.futures.CancelledError:
            # close() from another thread stopped the loop under this call.
            raise ConnectionLost("the connection was closed by the client") from None
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: stop the operation too
            raise

    def call(self, fn: Callable[[], R]) -> R:
        """Run a plain function on the loop thread and return its result."""

        async def wrapper() -> R:
            return fn()

        return self.run(wrapper(), None)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            if threading.current_thread() is not self.thread:
                self.thread.join(THREAD_JOIN_TIMEOUT_S)


def _blocking(
    method: Callable[Concatenate[Connection, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[SyncConnection, P], R]:
    """The blocking twin of an async ``Connection`` method (same arguments, same result)."""

    @functools.wraps(method)
    def call(self: SyncConnection, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._runner.run(method(self._conn, *args, **kwargs), self.call_timeout)

    return call


def _blocking_message(
    method: Callable[Concatenate[Connection, P], Coroutine[Any, Any, Message]],
) -> Callable[Concatenate[SyncConnection, P], SyncMessage]:
    """``_blocking`` for a method that returns a message."""

    @functools.wraps(method)
    def call(self: SyncConnection, /, *args: P.args, **kwargs: P.kwargs) -> SyncMessage:
        message = self._runner.run(method(self._conn, *args, **kwargs), self.call_timeout)
        return SyncMessage(message, self._runner)

    return call


class SyncMessage:
    """A delivered message, with blocking ``ack``/``nack``/``reject``.

    The same fields as ``wharf.Message`` (``message`` is that object).  Settling a
    message of a connection that was lost behaves as in the async SDK: with
    ``reconnect=True`` it does nothing (the broker requeued the message), without it
    raises ``ConnectionLost``.
    """

    __slots__ = ("message", "_runner")

    def __init__(self, message: Message, runner: _LoopThread) -> None:
        self.message = message
        self._runner = runner

    def __repr__(self) -> str:
        return f"<SyncMessage tag={self.delivery_tag} routing_key={self.routing_key!r}>"

    def ack(self, multiple: bool = False) -> None:
        """Acknowledge (with ``multiple``: every unsettled delivery up to this one)."""
        self._runner.run(self.message.ack(multiple), None)

    def nack(self, requeue: bool = True, multiple: bool = False) -> None:
        """Negatively acknowledge: requeue, or dead-letter/drop with ``requeue=False``."""
        self._runner.run(self.message.nack(requeue, multiple), None)

    def reject(self, requeue: bool = True) -> None:
        self._runner.run(self.message.reject(requeue), None)

    @property
    def body(self) -> bytes:
        return self.message.body

    @property
    def delivery_tag(self) -> int:
        return self.message.delivery_tag

    @property
    def redelivered(self) -> bool:
        return self.message.redelivered

    @property
    def delivery_count(self) -> int:
        return self.message.delivery_count

    @property
    def exchange(self) -> str:
        return self.message.exchange

    @property
    def routing_key(self) -> str:
        return self.message.routing_key

    @property
    def properties(self) -> dict[str, Any] | None:
        return self.message.properties

    @property
    def headers(self) -> dict[str, Any]:
        return self.message.headers

    @property
    def content_type(self) -> str | None:
        return self.message.content_type

    @property
    def content_encoding(self) -> str | None:
        return self.message.content_encoding

    @property
    def message_id(self) -> str | None:
        return self.message.message_id

    @property
    def correlation_id(self) -> str | None:
        return self.message.correlation_id

    @property
    def reply_to(self) -> str | None:
        return self.message.reply_to

    @property
    def timestamp(self) -> int | None:
        return self.message.timestamp

    @property
    def type(self) -> str | None:
        return self.message.type

    @property
    def app_id(self) -> str | None:
        return self.message.app_id

    @property
    def user_id(self) -> str | None:
        return self.message.user_id

    @property
    def persistent(self) -> bool:
        return self.message.persistent

    @property
    def priority(self) -> int | None:
        return self.message.priority

    @property
    def expiration(self) -> int | None:
        return self.message.expiration


class SyncConsumer:
    """A started subscription: a blocking iterator and a context manager.

    ``for msg in consumer`` blocks for the next message; with ``timeout`` set the
    iteration ends when none arrives within that many seconds (the subscription stays:
    iterate again to go on).  It also ends when the consumer is cancelled; a broker
    cancel (e.g. the queue was deleted) raises its error, as in the async SDK.
    Leaving the ``with`` block (or ``cancel()``) ends the subscription and requeues
    what was prefetched but not yet handed out.
    """

    def __init__(self, consumer: Consumer, runner: _LoopThread, timeout: float | None) -> None:
        self.consumer = consumer
        self.timeout = timeout
        self._runner = runner
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<SyncConsumer queue={self.queue!r} tag={self.consumer_tag!r}>"

    @property
    def queue(self) -> str:
        return self.consumer.queue

    @property
    def consumer_tag(self) -> str:
        return self.consumer.consumer_tag

    def __enter__(self) -> SyncConsumer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()

    def __iter__(self) -> Iterator[SyncMessage]:
        return self

    def __next__(self) -> SyncMessage:
        with self._lock:
            message = self._runner.run(self._next(self.timeout), None)
        if message is None:
            raise StopIteration
        return SyncMessage(message, self._runner)

    async def _next(self, timeout: float | None) -> Message | None:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                return await self.consumer.__anext__()
        except (TimeoutError, StopAsyncIteration):
            return None

    def cancel(self) -> None:
        """Stop consuming (idempotent)."""
        try:
            self._runner.run(self.consumer.cancel(), None)
        except ConnectionLost:
            pass  # the connection is already closed: nothing left to cancel


class SyncStream:
    """A started ``wharf.Stream``: a blocking iterator of records and a context manager.

    ``for rec in stream`` blocks for the next record; with ``timeout`` set the
    iteration ends when none arrives within that many seconds (the stream stays:
    iterate again to go on).  ``on_assign``/``on_revoke`` callbacks run on the
    client's loop thread.  Leaving the ``with`` block (or ``close()``) closes the
    stream (auto-commit, leave the group).
    """

    def __init__(self, stream: Stream, runner: _LoopThread, timeout: float | None) -> None:
        self.stream = stream
        self.timeout = timeout
        self._runner = runner
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<SyncStream {self.stream!r}>"

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        with self._lock:
            record = self._runner.run(self._next(self.timeout), None)
        if record is None:
            raise StopIteration
        return record

    async def _next(self, timeout: float | None) -> Record | None:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                return await self.stream.__anext__()
        except (TimeoutError, StopAsyncIteration):
            return None

    def getmany(
        self,
        timeout: float | None = None,  # noqa: ASYNC109
        max_records: int | None = None,
    ) -> list[Record]:
        """``Stream.getmany``: the records available now, waiting up to ``timeout``."""
        with self._lock:
            return self._runner.run(self.stream.getmany(timeout, max_records), None)

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        self._runner.run(self.stream.commit(offsets), None)

    def committed(self, tp: TopicPartition) -> int | None:
        return self._runner.run(self.stream.committed(tp), None)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._runner.call(lambda: self.stream.seek(tp, offset))

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self._runner.run(self.stream.seek_to_beginning(*tps), None)

    def seek_to_end(self, *tps: TopicPartition) -> None:
        self._runner.run(self.stream.seek_to_end(*tps), None)

    def seek_to_timestamp(
        self, tps: TopicPartition | Sequence[TopicPartition], timestamp: int
    ) -> None:
        self._runner.run(self.stream.seek_to_timestamp(tps, timestamp), None)

    def pause(self, *tps: TopicPartition) -> None:
        self._runner.call(lambda: self.stream.pause(*tps))

    def resume(self, *tps: TopicPartition) -> None:
        self._runner.call(lambda: self.stream.resume(*tps))

    def paused(self) -> set[TopicPartition]:
        return self._runner.call(self.stream.paused)

    def assignment(self) -> list[TopicPartition]:
        return self._runner.call(self.stream.assignment)

    def position(self, tp: TopicPartition) -> int | None:
        return self._runner.call(lambda: self.stream.position(tp))

    def lag(self) -> dict[TopicPartition, int]:
        return self._runner.call(self.stream.lag)

    def close(self) -> None:
        """Close the stream (idempotent)."""
        try:
            self._runner.run(self.stream.close(), None)
        except ConnectionLost:
            pass  # the connection is already closed


class SyncConnection:
    """A blocking ``wharf.Connection``: the same verbs, without ``await``.

    ``call_timeout`` (seconds, None = no bound) caps each blocking call except
    iterating a consumer (which has its own ``timeout``); a call that runs over is
    cancelled and raises ``TimeoutError`` (a publish may still have reached the broker).
    """

    def __init__(self, conn: Connection, runner: _LoopThread, call_timeout: float | None) -> None:
        self._conn = conn
        self._runner = runner
        self.call_timeout = call_timeout
        self._close_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<wharf.sync.SyncConnection {self._conn!r}>"

    def __enter__(self) -> SyncConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def connection(self) -> Connection:
        """The async connection underneath (use it only on its loop: ``self.loop``)."""
        return self._conn

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._runner.loop

    @property
    def is_closed(self) -> bool:
        return self._closed or self._conn.is_closed

    @property
    def is_connected(self) -> bool:
        return not self._closed and self._conn.is_connected

    @property
    def connection_id(self) -> str:
        return self._conn.connection_id

    @property
    def blocked(self) -> str | None:
        return self._conn.blocked

    @property
    def server_properties(self) -> dict[str, Any]:
        return self._conn.server_properties

    @property
    def max_message_bytes(self) -> int:
        return self._conn.max_message_bytes

    def on_event(self, callback: Callable[[ConnectionEvent], object]) -> None:
        """``Connection.on_event``; the callback runs on the client's loop thread."""
        self._runner.call(lambda: self._conn.on_event(callback))

    def on_blocked(self, callback: Callable[[str | None], None]) -> None:
        """``Connection.on_blocked``; the callback runs on the client's loop thread."""
        self._runner.call(lambda: self._conn.on_blocked(callback))

    def on_error(self, callback: Callable[[WharfError], object]) -> None:
        """``Connection.on_error``; the callback runs on the client's loop thread."""
        self._runner.call(lambda: self._conn.on_error(callback))

    def close(self) -> None:
        """Close the connection and stop its thread.  Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._runner.run(self._conn.close(), None)  # close() has its own 5 s budget
        finally:
            self._runner.stop()

    # -- the same verbs as Connection --------------------------------------------------

    declare_exchange = _blocking(Connection.declare_exchange)
    delete_exchange = _blocking(Connection.delete_exchange)
    bind_exchange = _blocking(Connection.bind_exchange)
    unbind_exchange = _blocking(Connection.unbind_exchange)
    declare_queue = _blocking(Connection.declare_queue)
    bind_queue = _blocking(Connection.bind_queue)
    unbind_queue = _blocking(Connection.unbind_queue)
    purge_queue = _blocking(Connection.purge_queue)
    delete_queue = _blocking(Connection.delete_queue)
    publish = _blocking(Connection.publish)
    publish_many = _blocking(Connection.publish_many)

    # -- log topics (docs/logs.md) ---------------------------------------------------

    def create_topic(self, name: str, partitions: int = 1, **config: Any) -> dict[str, Any]:
        return self._runner.run(
            self._conn.create_topic(name, partitions, **config), self.call_timeout
        )

    def alter_topic(
        self, name: str, partitions: int | None = None, **config: Any
    ) -> dict[str, Any]:
        return self._runner.run(
            self._conn.alter_topic(name, partitions, **config), self.call_timeout
        )

    delete_topic = _blocking(Connection.delete_topic)
    describe_topic = _blocking(Connection.describe_topic)
    list_topics = _blocking(Connection.list_topics)
    produce = _blocking(Connection.produce)
    produce_many = _blocking(Connection.produce_many)
    produce_records = _blocking(Connection.produce_records)
    list_offsets = _blocking(Connection.list_offsets)
    offset_for_time = _blocking(Connection.offset_for_time)

    def fetch(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_bytes: int = 1_048_576,
        max_wait: float = 0.0,
    ) -> list[Record]:
        """``Connection.fetch``; a long poll may last ``max_wait`` beyond ``call_timeout``."""
        timeout = None if self.call_timeout is None else self.call_timeout + max_wait
        fetch = self._conn.fetch(topic, partition, offset, max_bytes, max_wait)
        return self._runner.run(fetch, timeout)

    def fetch_batch(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_bytes: int = 1_048_576,
        max_wait: float = 0.0,
    ) -> FetchResult:
        """``Connection.fetch_batch``; a long poll may last ``max_wait`` beyond
        ``call_timeout``."""
        timeout = None if self.call_timeout is None else self.call_timeout + max_wait
        fetch = self._conn.fetch_batch(topic, partition, offset, max_bytes, max_wait)
        return self._runner.run(fetch, timeout)

    def get(self, queue: str, no_ack: bool = False) -> SyncMessage | None:
        """Fetch one message (None when the queue is empty)."""
        message = self._runner.run(self._conn.get(queue, no_ack), self.call_timeout)
        return None if message is None else SyncMessage(message, self._runner)

    def consume(
        self,
        queue: str,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        no_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str = "",
        arguments: dict[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> SyncConsumer:
        """Subscribe now: ``with conn.consume(q, timeout=5) as messages: for msg in ...``.

        ``timeout``: iteration ends after that many seconds without a message (None:
        wait for ever)."""

        async def start() -> Consumer:
            consumer = self._conn.consume(
                queue,
                prefetch=prefetch,
                no_ack=no_ack,
                exclusive=exclusive,
                consumer_tag=consumer_tag,
                arguments=arguments,
            )
            return await consumer

        consumer = self._runner.run(start(), self.call_timeout)
        return SyncConsumer(consumer, self._runner, timeout)

    rpc = _blocking_message(Connection.rpc)

    # -- consumer groups ------------------------------------------------------------

    def subscribe(
        self,
        topics: str | Sequence[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **options: Any,
    ) -> SyncStream:
        """Start a stream now: ``with conn.subscribe("events", group="g", timeout=5) as
        records: for rec in records: ...``.  ``options`` are ``Connection.subscribe``'s;
        ``timeout``: iteration ends after that many seconds without a record."""

        async def start() -> Stream:
            stream = self._conn.subscribe(topics, **options)
            await stream.start()
            return stream

        stream = self._runner.run(start(), self.call_timeout)
        return SyncStream(stream, self._runner, timeout)

    list_groups = _blocking(Connection.list_groups)
    describe_group = _blocking(Connection.describe_group)
    delete_group = _blocking(Connection.delete_group)
    reset_offsets = _blocking(Connection.reset_offsets)
    committed_offsets = _blocking(Connection.committed_offsets)


def connect(
    url: str = DEFAULT_URL,
    *,
    heartbeat_s: int = DEFAULT_HEARTBEAT_S,
    timeout: float = DEFAULT_CONNECT_TIMEOUT_S,  # noqa: ASYNC109
    client_properties: dict[str, Any] | None = None,
    reconnect: bool = False,
    reconnect_max_delay: float = DEFAULT_RECONNECT_MAX_DELAY_S,
    reconnect_wait_timeout: float | None = DEFAULT_RECONNECT_WAIT_TIMEOUT_S,
    call_timeout: float | None = None,
    ssl: SSLContext | None = None,
) -> SyncConnection:
    """Open a blocking connection; the arguments are those of ``wharf.connect`` plus
    ``call_timeout`` (see ``SyncConnection``); ``ssl`` and ``wharfs://`` URLs as there."""
    runner = _LoopThread()
    try:
        conn = runner.run(
            _connect(
                url,
                heartbeat_s=heartbeat_s,
                timeout=timeout,
                client_properties=client_properties,
                reconnect=reconnect,
                reconnect_max_delay=reconnect_max_delay,
                reconnect_wait_timeout=reconnect_wait_timeout,
                ssl=ssl,
            ),
            None,  # connect() has its own budget
        )
    except BaseException:
        runner.stop()
        raise
    return SyncConnection(conn, runner, call_timeout)


__all__ = ["SyncConnection", "SyncConsumer", "SyncMessage", "SyncStream", "connect"]
