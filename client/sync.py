"""A blocking client for scripts and WSGI apps: ``conn = wharf.sync.connect(url)``.

Not a second protocol implementation: each ``SyncConnection`` runs an asyncio
``wharf.Connection`` on an event loop of its own, in a background daemon thread, and
every call is handed to that loop with ``asyncio.run_coroutine_threadsafe`` while the
calling thread blocks on the result.  All SDK state lives on the loop thread, so one
``SyncConnection`` can be shared by several threads: each call blocks only its caller,
calls from different threads run concurrently on the loop (publishes from many
threads share the connection's confirm stream), and one consumer is iterated by one
thread at a time (concurrent ``next()`` calls take turns).

Callbacks given to ``on_event``/``on_blocked``/``on_throttled``/``on_error`` run on the
loop thread: they must not call back into this blocking API (that would wait on the
thread that has to do the work; it raises ``RuntimeError`` instead).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from ssl import SSLContext
from types import TracebackType
from typing import Any, Concatenate, Final, Generic, ParamSpec, Self, TypeVar, overload

import uvloop

from wharf.protocol.errors import ConnectionLost

from .connection import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_HEARTBEAT_S,
    DEFAULT_PREFETCH,
    Connection,
)
from .connection import connect as _connect
from .consumer import Consumer
from .logs import Record
from .message import Message, MessageFields
from .recovery import (
    DEFAULT_RECONNECT_MAX_DELAY_S,
    DEFAULT_RECONNECT_WAIT_TIMEOUT_S,
)
from .stream import Stream
from .url import DEFAULT_URL

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
Item = TypeVar("Item")  # what an async iterator yields

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


# -- the blocking twins, generated from the async methods --------------------------------
#
# Each Sync* class holds its async object in ``_async``, the loop thread in ``_runner``
# and a per-call bound in ``call_timeout``; the helpers below make a method of it from
# the async method itself (same name, arguments, defaults and docstring: see
# tests/unit/test_sync_parity.py), so no validation, default or result shaping is
# written twice: the blocking side only marshals the call onto the loop thread.


class _Twin:
    """The blocking twin of an async SDK object."""

    _async: Any
    _runner: _LoopThread
    call_timeout: float | None = None


class _Forward(Generic[R]):
    """A read-only attribute of the async object, read as it is (a plain read needs
    no loop thread).  ``attr`` is the async class's property, for its type and doc."""

    def __init__(self, attr: Callable[[Any], R]) -> None:
        self.__doc__ = attr.__doc__
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Forward[R]: ...

    @overload
    def __get__(self, obj: _Twin, owner: type | None = None) -> R: ...

    def __get__(self, obj: _Twin | None, owner: type | None = None) -> R | _Forward[R]:
        if obj is None:
            return self
        value: R = getattr(obj._async, self._name)
        return value


def _blocking(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[_Twin, P], R]:
    """The blocking twin of an async method: the same call, run on the loop thread."""

    @functools.wraps(method)
    def call(self: _Twin, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._runner.run(method(self._async, *args, **kwargs), self.call_timeout)

    return call


def _on_loop(method: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[_Twin, P], R]:
    """The twin of a plain (not async) method: called on the loop thread, where all
    SDK state lives."""

    @functools.wraps(method)
    def call(self: _Twin, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._runner.call(lambda: method(self._async, *args, **kwargs))

    return call


def _long_poll(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[_Twin, P], R]:
    """``_blocking`` for a call that may wait ``max_wait`` seconds for data (a long
    poll): it may last that much beyond ``call_timeout``."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def call(self: _Twin, /, *args: P.args, **kwargs: P.kwargs) -> R:
        timeout = self.call_timeout
        if timeout is not None:
            bound = signature.bind(self._async, *args, **kwargs)
            bound.apply_defaults()
            timeout += float(bound.arguments["max_wait"])
        return self._runner.run(method(self._async, *args, **kwargs), timeout)

    return call


@overload
def _blocking_message(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, Message]],
) -> Callable[Concatenate[_Twin, P], SyncMessage]: ...


@overload
def _blocking_message(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, Message | None]],
) -> Callable[Concatenate[_Twin, P], SyncMessage | None]: ...


def _blocking_message(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, Message | None]],
) -> Callable[Concatenate[_Twin, P], SyncMessage | None]:
    """``_blocking`` for a method that returns a message (or None)."""

    @functools.wraps(method)
    def call(self: _Twin, /, *args: P.args, **kwargs: P.kwargs) -> SyncMessage | None:
        message = self._runner.run(method(self._async, *args, **kwargs), self.call_timeout)
        return None if message is None else SyncMessage(message, self._runner)

    return call


class SyncMessage(_Twin, MessageFields):
    """A delivered message, with blocking ``ack``/``nack``/``reject``.

    The same fields and properties as ``wharf.Message`` (``message`` is that object).
    Settling a message of a connection that was lost behaves as in the async SDK: with
    ``reconnect=True`` it does nothing (the broker requeued the message), without it
    raises ``ConnectionLost``.
    """

    __slots__ = ("message", "_runner")

    def __init__(self, message: Message, runner: _LoopThread) -> None:
        self._copy_fields(message)
        self.message = message
        self._runner = runner

    @property
    def _async(self) -> Message:
        return self.message

    def __repr__(self) -> str:
        return f"<SyncMessage tag={self.delivery_tag} routing_key={self.routing_key!r}>"

    ack = _blocking(Message.ack)
    nack = _blocking(Message.nack)
    reject = _blocking(Message.reject)


class _BlockingIterator(_Twin, Generic[Item, T]):
    """A started async iterator (a consumer, a stream) as a blocking iterator and a
    context manager.  ``timeout``: iteration ends after that many seconds without an
    item (None: wait for ever); it can be iterated again later.  One thread at a time
    takes the next item (concurrent ``next()`` calls take turns)."""

    def __init__(
        self, iterator: AsyncIterator[Item], runner: _LoopThread, timeout: float | None
    ) -> None:
        self._async = iterator
        self._runner = runner
        self.timeout = timeout
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T:
        with self._lock:
            item = self._runner.run(_next_within(self._async, self.timeout), None)
        if item is None:
            raise StopIteration
        return self._wrap(item)

    def _wrap(self, item: Item) -> T:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError


class SyncConsumer(_BlockingIterator[Message, SyncMessage]):
    """A started subscription: ``for msg in consumer`` blocks for the next message.

    With ``timeout`` set the iteration ends when none arrives within that many seconds
    (the subscription stays: iterate again to go on).  It also ends when the consumer
    is cancelled; a broker cancel (e.g. the queue was deleted) raises its error, as in
    the async SDK.  Leaving the ``with`` block (or ``cancel()``) ends the subscription
    and requeues what was prefetched but not yet handed out.
    """

    def __init__(self, consumer: Consumer, runner: _LoopThread, timeout: float | None) -> None:
        super().__init__(consumer, runner, timeout)
        self.consumer = consumer

    def __repr__(self) -> str:
        return f"<SyncConsumer queue={self.queue!r} tag={self.consumer_tag!r}>"

    active = _Forward(Consumer.active)

    @property
    def queue(self) -> str:
        return self.consumer.queue  # renamed with its server-named queue after a reconnect

    @property
    def consumer_tag(self) -> str:
        return self.consumer.consumer_tag

    def _wrap(self, item: Message) -> SyncMessage:
        return SyncMessage(item, self._runner)

    def _stop(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        """Stop consuming (idempotent)."""
        _end_quietly(self._runner, self.consumer.cancel())


class SyncStream(_BlockingIterator[Record, Record]):
    """A started ``wharf.Stream``: ``for rec in stream`` blocks for the next record.

    With ``timeout`` set the iteration ends when none arrives within that many seconds
    (the stream stays: iterate again to go on).  ``on_assign``/``on_revoke`` callbacks
    run on the client's loop thread.  Leaving the ``with`` block (or ``close()``)
    closes the stream (auto-commit, leave the group).
    """

    def __init__(self, stream: Stream, runner: _LoopThread, timeout: float | None) -> None:
        super().__init__(stream, runner, timeout)
        self.stream = stream

    def __repr__(self) -> str:
        return f"<SyncStream {self.stream!r}>"

    def _wrap(self, item: Record) -> Record:
        return item

    def _stop(self) -> None:
        self.close()

    def getmany(
        self,
        timeout: float | None = None,  # noqa: ASYNC109
        max_records: int | None = None,
    ) -> list[Record]:
        """``Stream.getmany``: the records available now, waiting up to ``timeout``
        (taking turns with threads iterating this stream)."""
        with self._lock:
            return self._runner.run(self.stream.getmany(timeout, max_records), None)

    commit = _blocking(Stream.commit)
    committed = _blocking(Stream.committed)
    seek = _on_loop(Stream.seek)
    seek_to_beginning = _blocking(Stream.seek_to_beginning)
    seek_to_end = _blocking(Stream.seek_to_end)
    seek_to_timestamp = _blocking(Stream.seek_to_timestamp)
    pause = _on_loop(Stream.pause)
    resume = _on_loop(Stream.resume)
    paused = _on_loop(Stream.paused)
    assignment = _on_loop(Stream.assignment)
    position = _on_loop(Stream.position)
    lag = _on_loop(Stream.lag)
    highwater = _on_loop(Stream.highwater)

    def close(self) -> None:
        """Close the stream (idempotent)."""
        _end_quietly(self._runner, self.stream.close())


async def _next_within(
    iterator: AsyncIterator[T],
    timeout: float | None,  # noqa: ASYNC109
) -> T | None:
    """The iterator's next item, or None when it ends or none comes within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            return await anext(iterator)
    except (TimeoutError, StopAsyncIteration):
        return None


def _end_quietly(runner: _LoopThread, coro: Coroutine[Any, Any, None]) -> None:
    """Cancel a consumer or close a stream; nothing is left to end once the
    connection (and its loop thread) is closed."""
    try:
        runner.run(coro, None)
    except ConnectionLost:
        pass


class SyncConnection(_Twin):
    """A blocking ``wharf.Connection``: the same verbs, without ``await``.

    ``call_timeout`` (seconds, None = no bound) caps each blocking call except
    iterating a consumer (which has its own ``timeout``); a call that runs over is
    cancelled and raises ``TimeoutError`` (a publish may still have reached the broker).
    """

    def __init__(self, conn: Connection, runner: _LoopThread, call_timeout: float | None) -> None:
        self._conn = self._async = conn
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
    def vhost(self) -> str:
        """The virtual host this connection works in (the URL's path; "/" by default)."""
        return self._conn.vhost

    @property
    def is_closed(self) -> bool:
        return self._closed or self._conn.is_closed

    @property
    def is_connected(self) -> bool:
        return not self._closed and self._conn.is_connected

    reconnecting = _Forward(Connection.reconnecting)
    connection_id = _Forward(Connection.connection_id)
    heartbeat_s = _Forward(Connection.heartbeat_s)
    blocked = _Forward(Connection.blocked)
    throttled_ms = _Forward(Connection.throttled_ms)
    server_properties = _Forward(Connection.server_properties)
    max_message_bytes = _Forward(Connection.max_message_bytes)

    # Their callbacks run on the client's loop thread (see the module docstring).
    on_event = _on_loop(Connection.on_event)
    on_blocked = _on_loop(Connection.on_blocked)
    on_throttled = _on_loop(Connection.on_throttled)
    on_error = _on_loop(Connection.on_error)

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
    replay_dead_letters = _blocking(Connection.replay_dead_letters)
    set_policy = _blocking(Connection.set_policy)
    delete_policy = _blocking(Connection.delete_policy)
    list_policies = _blocking(Connection.list_policies)
    publish = _blocking(Connection.publish)
    publish_many = _blocking(Connection.publish_many)
    get = _blocking_message(Connection.get)
    rpc = _blocking_message(Connection.rpc)

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
        The arguments are ``Connection.consume``'s plus ``timeout``: iteration ends
        after that many seconds without a message (None: wait for ever)."""
        consumer = self._conn.consume(
            queue,
            prefetch=prefetch,
            no_ack=no_ack,
            exclusive=exclusive,
            consumer_tag=consumer_tag,
            arguments=arguments,
        )
        self._runner.run(consumer.__aenter__(), self.call_timeout)
        return SyncConsumer(consumer, self._runner, timeout)

    # -- log topics (docs/logs.md) ---------------------------------------------------

    create_topic = _blocking(Connection.create_topic)
    alter_topic = _blocking(Connection.alter_topic)
    delete_topic = _blocking(Connection.delete_topic)
    describe_topic = _blocking(Connection.describe_topic)
    list_topics = _blocking(Connection.list_topics)
    produce = _blocking(Connection.produce)
    produce_many = _blocking(Connection.produce_many)
    produce_records = _blocking(Connection.produce_records)
    list_offsets = _blocking(Connection.list_offsets)
    offset_for_time = _blocking(Connection.offset_for_time)
    fetch = _long_poll(Connection.fetch)
    fetch_batch = _long_poll(Connection.fetch_batch)
    bind_topic = _blocking(Connection.bind_topic)
    unbind_topic = _blocking(Connection.unbind_topic)

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
        stream = self._conn.subscribe(topics, **options)
        self._runner.run(stream.__aenter__(), self.call_timeout)
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
    auth_mechanism: str | None = None,
) -> SyncConnection:
    """Open a blocking connection; the arguments are those of ``wharf.connect`` plus
    ``call_timeout`` (see ``SyncConnection``); ``ssl``, ``auth_mechanism`` and ``wharfs://``
    URLs as there."""
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
                auth_mechanism=auth_mechanism,
            ),
            None,  # connect() has its own budget
        )
    except BaseException:
        runner.stop()
        raise
    return SyncConnection(conn, runner, call_timeout)


__all__ = ["SyncConnection", "SyncConsumer", "SyncMessage", "SyncStream", "connect"]
