"""Consumers: ``async with conn.consume(queue) as messages: async for msg in messages``."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Generator
from types import TracebackType
from typing import Any, Final, Protocol

from wharf.protocol import frames as F
from wharf.protocol.errors import PreconditionFailed, WharfError

from .core import NEW_REQUEST, AckChannel, ConnectionCore, Reply, clone_error, result_of
from .message import Message, messages_from_entries

log = logging.getLogger("wharf.client")

# Consumer tags the SDK makes up when the caller gives none.  Choosing the tag here,
# before CONSUME is sent, means deliveries can never arrive for a tag we do not know.
SDK_TAG_PREFIX: Final = "wharf-py-"

_NEW: Final = 0
_STARTING: Final = 1
_ACTIVE: Final = 2
_CANCELLING: Final = 3
_CLOSED: Final = 4
# reconnect=True only: the connection was lost and this consumer waits to be resumed
# on the next one (_SUSPENDED), or its CONSUME is in flight there (_RESUMING).
_SUSPENDED: Final = 5
_RESUMING: Final = 6


class ConsumerOwner(Protocol):
    """What a consumer of a reconnecting ``Connection`` needs from it."""

    async def live_core(self) -> ConnectionCore:
        """The connection to use now (waits while reconnecting, within its bound)."""
        ...

    def consumer_started(self, consumer: Consumer) -> None: ...

    def consumer_stopped(self, consumer: Consumer) -> None: ...


class Consumer:
    """One subscription to a queue; an async context manager and async iterator.

    Deliveries are buffered (at most ``prefetch`` of them, as the broker enforces
    credit) and handed out by ``async for``.  Cancelling or timing out a wait for the
    next message never loses one.  When the consumer ends, messages that were
    delivered but never handed out are requeued; handed-out ones stay the caller's to
    settle.  One task at a time may iterate a consumer.
    """

    def __init__(
        self,
        core: ConnectionCore,
        queue: str,
        *,
        prefetch: int,
        no_ack: bool,
        exclusive: bool,
        consumer_tag: str,
        arguments: dict[str, Any] | None,
        owner: ConsumerOwner | None = None,
    ) -> None:
        self._core = core
        # Set with reconnect=True: the consumer is resumed on each new connection.
        self._owner = owner
        self.queue = queue
        self.prefetch = prefetch
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.consumer_tag = consumer_tag
        self.arguments = arguments
        # The CONSUME request id: the broker names it in errors about our acks.
        self.ack_id = 0
        self._channel: AckChannel | None = None
        self._buffer: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        # Raised once from the next __anext__, before any buffered message.
        self._interrupt: WharfError | None = None
        # Raised when the buffer is drained; sticky errors are raised every time.
        self._final: WharfError | None = None
        self._final_sticky = False
        self._stopped = False
        self._state = _NEW

    def __repr__(self) -> str:
        return f"<Consumer queue={self.queue!r} tag={self.consumer_tag!r} buffered={len(self)}>"

    def __len__(self) -> int:
        """Messages delivered and not yet handed out."""
        return len(self._buffer)

    @property
    def active(self) -> bool:
        return self._state == _ACTIVE

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Consumer:
        if self._state == _NEW:
            await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.cancel()

    def __await__(self) -> Generator[Any, None, Consumer]:
        """``consumer = await conn.consume(...)``: start without a ``with`` block."""
        return self.__aenter__().__await__()

    async def _start(self) -> None:
        if self._owner is not None:
            self._core = await self._owner.live_core()
        core = self._core
        core.check_usable()
        if core.must_wait_writable():
            await core.wait_writable()
        self._state = _STARTING
        rid = core.new_request_id()
        tag = self.consumer_tag or f"{SDK_TAG_PREFIX}{rid}"
        if core.has_consumer(tag):
            self._state = _CLOSED
            raise PreconditionFailed(f"consumer tag '{tag}' is already in use on this connection")
        self.consumer_tag = tag
        self.ack_id = rid
        if not self.no_ack:
            self._channel = AckChannel(core, rid)
        core.add_consumer(tag, rid, self)
        try:
            _, fut = core.start_request(self._consume_frame(rid, tag))
        except BaseException:
            core.remove_consumer(tag, rid)
            self._state = _CLOSED
            raise
        try:
            frame = await fut
        except asyncio.CancelledError:
            self._abandon()
            raise
        except BaseException:
            core.remove_consumer(tag, rid)
            self._state = _CLOSED
            self._stopped = True
            raise
        granted = result_of(frame).get("consumer_tag")
        if isinstance(granted, str) and granted and granted != tag:
            core.rename_consumer(tag, granted)
            self.consumer_tag = granted
        if self._state == _STARTING:
            self._state = _ACTIVE
            if self._owner is not None:
                self._owner.consumer_started(self)

    def _consume_frame(self, rid: int, tag: str) -> F.Consume:
        return F.Consume(
            rid, self.queue, tag, self.prefetch, self.no_ack, self.exclusive, self.arguments
        )

    def _abandon(self) -> None:
        """``__aenter__`` was cancelled while CONSUME was in flight: cancel it on the
        broker in the background and requeue whatever it delivered meanwhile."""
        self._state = _CANCELLING
        core = self._core
        if core.ended:
            self._finish()
            return
        try:
            _, fut = core.start_request(F.Cancel(NEW_REQUEST, self.consumer_tag))
        except WharfError:
            self._finish()
            return

        def done(f: asyncio.Future[Reply]) -> None:
            if not f.cancelled():
                f.exception()  # retrieved: a failure here changes nothing
            self._finish()

        fut.add_done_callback(done)

    async def cancel(self) -> None:
        """Stop consuming: CANCEL on the broker, requeue undelivered buffered messages.

        Iteration ends (after the remaining buffered messages for ``no_ack``
        consumers).  Idempotent; errors from a connection already gone are ignored.
        """
        if self._state == _CANCELLING:
            return
        if self._state == _CLOSED:
            # Ended by the broker (which settles what it delivered) or already cancelled.
            if not self._final_sticky:
                self._final = None
                self._stopped = True
                if not self.no_ack:
                    self._buffer.clear()
            self._wake()
            return
        if self._state == _NEW:
            self._state = _CLOSED
            self._stopped = True
            return
        if self._state == _SUSPENDED:
            # Nothing to cancel on the broker: the connection it consumed on is gone.
            self._finish()
            return
        self._state = _CANCELLING
        core = self._core
        try:
            if not core.ended and core.has_consumer(self.consumer_tag):
                # Not core.request(): an unrelated stored error must not stop the CANCEL.
                rid, fut = core.start_request(F.Cancel(NEW_REQUEST, self.consumer_tag))
                try:
                    await fut
                except asyncio.CancelledError:
                    core.abandon_request(rid)
                    raise
                except WharfError as exc:
                    if not core.ended:
                        log.debug("wharf: cancel of consumer %r failed: %s", self.consumer_tag, exc)
        finally:
            self._finish()

    def _finish(self) -> None:
        core = self._core
        core.remove_consumer(self.consumer_tag, self.ack_id)
        self._state = _CLOSED
        self._stopped = True
        if self._owner is not None:
            self._owner.consumer_stopped(self)
        buffer = self._buffer
        if buffer and not self.no_ack:
            if not core.ended:
                ack_id = self.ack_id
                for msg in buffer:
                    core.send_frame(F.Nack(ack_id, msg.delivery_tag, multiple=False, requeue=True))
            buffer.clear()
        self._wake()

    # -- iteration -----------------------------------------------------------------

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Message:
        buffer = self._buffer
        if buffer and self._interrupt is None:
            return buffer.popleft()
        return await self._next_slow()

    async def _next_slow(self) -> Message:
        buffer = self._buffer
        while True:
            if self._interrupt is not None:
                error = self._interrupt
                self._interrupt = None
                raise error
            if buffer:
                return buffer.popleft()
            if self._final is not None:
                error = self._final
                if self._final_sticky:
                    raise clone_error(error)
                self._final = None
                self._stopped = True
                raise error
            if self._stopped:
                raise StopAsyncIteration
            if self._state == _NEW:
                raise RuntimeError(
                    "start the consumer first: 'async with conn.consume(...)' or 'await'"
                )
            if self._waiter is not None:
                raise RuntimeError("another task is already iterating this consumer")
            waiter: asyncio.Future[None] = self._core.loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- called by the core (DeliverySink) -------------------------------------------

    def on_deliver(self, entries: list[Any]) -> None:
        self._buffer.extend(messages_from_entries(entries, self._channel))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_cancelled(self, error: WharfError) -> None:
        if self._state in (_STARTING, _ACTIVE, _RESUMING):
            self._state = _CLOSED
            self._final = error
            if self._owner is not None:
                self._owner.consumer_stopped(self)
        self._wake()

    def on_ack_error(self, error: WharfError) -> None:
        if self._interrupt is None:
            self._interrupt = error
        else:
            log.warning("wharf: consumer %r: further ack error: %s", self.consumer_tag, error)
        self._wake()

    def on_connection_lost(self, error: WharfError, resumable: bool) -> None:
        # The broker requeues everything unacked; buffered messages can no longer be
        # settled, so they are dropped rather than handed out.
        self._buffer.clear()
        if resumable and self._owner is not None and self._state in (_ACTIVE, _RESUMING):
            self._state = _SUSPENDED  # iteration waits for the resume
            return
        self.end(error)

    # -- reconnect (called by the Connection's recovery) -----------------------------

    @property
    def suspended(self) -> bool:
        return self._state == _SUSPENDED

    def end(self, error: WharfError) -> None:
        """The consumer is over for good (connection closed, or it could not be
        resumed): iteration raises ``error`` from now on."""
        self._buffer.clear()
        if self._state != _CLOSED or self._final is not None:
            self._final = error
            self._final_sticky = True
        self._state = _CLOSED
        if self._owner is not None:
            self._owner.consumer_stopped(self)
        self._wake()

    async def resume(self, core: ConnectionCore) -> None:
        """Consume again, on a new connection, with the same queue (``self.queue``,
        updated if the queue was renamed), tag, prefetch and arguments.

        Raises the broker's error; the caller decides whether to retry or ``end()``.
        """
        if self._state != _SUSPENDED:
            return  # cancelled meanwhile
        self._core = core
        rid = core.new_request_id()
        tag = self.consumer_tag
        self.ack_id = rid
        self._channel = None if self.no_ack else AckChannel(core, rid)
        core.add_consumer(tag, rid, self)
        self._state = _RESUMING
        try:
            _, fut = core.start_request(self._consume_frame(rid, tag))
            await fut
        except BaseException:
            core.remove_consumer(tag, rid)
            if self._state == _RESUMING:
                self._state = _SUSPENDED
            raise
        if self._state == _RESUMING:
            self._state = _ACTIVE
