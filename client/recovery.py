"""Automatic reconnection for ``wharf.connect(url, reconnect=True)``.

When the connection is lost (not closed by the application), ``Reconnector`` dials
again with exponential backoff and full jitter, replays on the new connection the
topology this ``Connection`` declared, resumes its consumers, and only then hands the
new connection to callers (who waited, within ``reconnect_wait_timeout``).

Replay order on each new connection; each step is pipelined (all its requests are
sent, then all answers awaited: the broker handles one connection's frames in order):

1. exchanges, in declaration order;
2. queues: named ones by their name; server-named exclusive ones with an empty name,
   so they get a new name (bindings and consumers follow it, and a "queue_renamed"
   event tells the application); server-named non-exclusive ones, which outlive a
   connection, passively by their name first and anew only if they are gone;
3. bindings, in declaration order;
4. consumers, with the same queue, tag, prefetch, no_ack, exclusive flag and arguments.

A retriable error (405 exclusive queue or consumer still held by the lost connection,
506, 541, or the new connection failing) abandons the attempt, which is retried after
the next backoff delay.  Any other error skips that one item with a "recovery_error"
event; a consumer that cannot be resumed ends (its iterator raises the error).
Deleted exchanges, queues and bindings are forgotten, and so is an auto-delete queue
once this connection's last consumer of it is cancelled (the broker deletes it then).

``Backoff`` and ``Topology`` are pure logic, unit-tested without sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

from wharf.protocol import frames as F
from wharf.protocol.errors import ConnectionLost, NotFound, WharfError

from .core import NEW_REQUEST, ConnectionCore, Reply, clone_error, result_of

if TYPE_CHECKING:
    from .consumer import Consumer

log = logging.getLogger("wharf.client")

# Full-jitter exponential backoff: attempt n waits uniform(0, min(cap, base * 2**n)).
BACKOFF_BASE_S: Final = 0.1
DEFAULT_RECONNECT_MAX_DELAY_S: Final = 30.0
# How long a call made during an outage waits for the reconnect (0: fail at once).
DEFAULT_RECONNECT_WAIT_TIMEOUT_S: Final = 30.0
# Budget for replaying the topology and consumers on one new connection.
RECOVERY_TIMEOUT_S: Final = 60.0
# A connection that lived at least this long starts the next outage's backoff from
# the base again; a shorter one (a broker that accepts, then fails) keeps it growing.
STABLE_CONNECTION_S: Final = 10.0
# 2**62 * 0.1 s is beyond any cap; a larger exponent would only overflow the float.
MAX_BACKOFF_EXPONENT: Final = 62

# Event names (``ConnectionEvent.name``).
DISCONNECTED: Final = "disconnected"
RECONNECTED: Final = "reconnected"
BLOCKED: Final = "blocked"
UNBLOCKED: Final = "unblocked"
THROTTLED: Final = "throttled"
QUEUE_RENAMED: Final = "queue_renamed"
RECOVERY_ERROR: Final = "recovery_error"
CLOSED: Final = "closed"
ERROR: Final = "error"


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """What ``Connection.on_event`` callbacks receive.

    ``name`` is one of: "disconnected" (``error``: why), "reconnected" (``attempt``:
    dials this outage took), "blocked" (``reason``: the broker's alarm, e.g.
    "memory"), "unblocked", "throttled" (``direction``: "produce" or "consume",
    ``throttle_ms``: how long the broker holds the connection back because the user is
    over a byte-rate quota), "queue_renamed" (``old_name``, ``new_name``),
    "recovery_error" (``error``, and ``old_name`` = what could not be restored, e.g.
    "queue 'q'"), "error" (``error``: an asynchronous error no call waits for, e.g. a
    refused fire-and-forget publish; see ``Connection.on_error``), "closed" (``error``:
    why; the connection will not come back).
    """

    name: str
    error: WharfError | None = None
    reason: str | None = None
    old_name: str | None = None
    new_name: str | None = None
    attempt: int = 0
    direction: str | None = None
    throttle_ms: int = 0


class Backoff:
    """Exponential backoff with full jitter (the AWS architecture blog's "Full Jitter")."""

    __slots__ = ("base_s", "max_delay_s", "_random")

    def __init__(
        self,
        base_s: float = BACKOFF_BASE_S,
        max_delay_s: float = DEFAULT_RECONNECT_MAX_DELAY_S,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if base_s <= 0 or max_delay_s <= 0:
            raise ValueError("backoff delays must be > 0")
        self.base_s = base_s
        self.max_delay_s = max_delay_s
        self._random: Callable[[], float] = rng

    def ceiling_s(self, attempt: int) -> float:
        """The longest delay before attempt ``attempt`` (0-based)."""
        exponent = min(max(attempt, 0), MAX_BACKOFF_EXPONENT)
        return min(self.max_delay_s, math.ldexp(self.base_s, exponent))  # base * 2**exponent

    def delay_s(self, attempt: int) -> float:
        return self._random() * self.ceiling_s(attempt)


# -- the recorded topology -------------------------------------------------------------


@dataclass(slots=True)
class ExchangeRecord:
    name: str
    type: str
    durable: bool = False
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] | None = None


@dataclass(slots=True)
class QueueRecord:
    name: str
    durable: bool = False
    exclusive: bool = False
    auto_delete: bool = False
    arguments: dict[str, Any] | None = None
    server_named: bool = False


@dataclass(frozen=True, slots=True)
class BindingRecord:
    destination: str
    source: str
    routing_key: str = ""
    arguments: dict[str, Any] | None = field(default=None, compare=True)
    to_exchange: bool = False  # an exchange-to-exchange binding
    to_topic: bool = False  # an exchange-to-log-topic binding


class Topology:
    """What one connection declared, in order, minus what it deleted since."""

    def __init__(self) -> None:
        self.exchanges: dict[str, ExchangeRecord] = {}
        self.queues: dict[str, QueueRecord] = {}
        self.bindings: list[BindingRecord] = []

    def __len__(self) -> int:
        return len(self.exchanges) + len(self.queues) + len(self.bindings)

    def exchange_declared(self, record: ExchangeRecord) -> None:
        self.exchanges[record.name] = record

    def exchange_deleted(self, name: str) -> None:
        self.exchanges.pop(name, None)
        self._drop_bindings(lambda b: b.source == name or (b.to_exchange and b.destination == name))

    def queue_declared(self, record: QueueRecord) -> None:
        self.queues[record.name] = record

    def queue_deleted(self, name: str) -> None:
        self.queues.pop(name, None)
        self._drop_bindings(
            lambda b: not b.to_exchange and not b.to_topic and b.destination == name
        )

    def topic_deleted(self, name: str) -> None:
        """Deleting a log topic removes its bindings (as the broker does)."""
        self._drop_bindings(lambda b: b.to_topic and b.destination == name)

    def queue_unused(self, name: str) -> None:
        """This connection's last consumer of ``name`` went: an auto-delete queue is gone."""
        record = self.queues.get(name)
        if record is not None and record.auto_delete:
            self.queue_deleted(name)

    def queue_renamed(self, old: str, new: str) -> None:
        """A server-named queue got a new name on a new connection."""
        self.queues = {(new if key == old else key): record for key, record in self.queues.items()}
        record = self.queues.get(new)
        if record is not None:
            record.name = new
        self.bindings = [
            BindingRecord(new, b.source, b.routing_key, b.arguments, False)
            if not b.to_exchange and not b.to_topic and b.destination == old
            else b
            for b in self.bindings
        ]

    def bound(self, binding: BindingRecord) -> None:
        if binding not in self.bindings:
            self.bindings.append(binding)

    def unbound(self, binding: BindingRecord) -> None:
        self._drop_bindings(lambda b: b == binding)

    def _drop_bindings(self, doomed: Callable[[BindingRecord], bool]) -> None:
        kept: list[BindingRecord] = []
        sources: list[str] = []
        for b in self.bindings:
            if doomed(b):
                sources.append(b.source)
            else:
                kept.append(b)
        self.bindings = kept
        # The broker deletes an auto-delete exchange when its last binding goes.
        for source in sources:
            record = self.exchanges.get(source)
            if (
                record is not None
                and record.auto_delete
                and not any(b.source == source for b in self.bindings)
            ):
                self.exchange_deleted(source)


# -- replaying it on a new connection ---------------------------------------------------

Emit = Callable[[ConnectionEvent], None]


class _Replay:
    """One attempt at restoring the topology and consumers on ``core``."""

    def __init__(
        self,
        core: ConnectionCore,
        topology: Topology,
        consumers: Sequence[Consumer],
        events: list[ConnectionEvent],
    ) -> None:
        self.core = core
        self.topology = topology
        self.consumers = consumers
        self.events = events

    def _ok(self, result: Reply | BaseException, what: str) -> bool:
        """True for an answer; False for an error that skips this item.  Raises the
        errors that abandon the whole attempt."""
        if not isinstance(result, BaseException):
            return True
        if not isinstance(result, WharfError):
            raise result
        if self.core.ended or result.retriable or result.fatal:
            raise result
        log.warning("wharf: reconnect: cannot restore %s: %s (skipped)", what, result)
        self.events.append(ConnectionEvent(RECOVERY_ERROR, error=result, old_name=what))
        return False

    async def _answers(self, requests: list[F.Frame]) -> list[Reply | BaseException]:
        core = self.core
        futures = [core.start_request(frame)[1] for frame in requests]
        return await asyncio.gather(*futures, return_exceptions=True)

    async def run(self) -> None:
        await self._exchanges()
        await self._queues()
        await self._bindings()
        await self._consumers()

    async def _exchanges(self) -> None:
        records = list(self.topology.exchanges.values())
        requests: list[F.Frame] = [
            F.ExchangeDeclare(
                NEW_REQUEST,
                r.name,
                r.type,
                r.durable,
                r.auto_delete,
                r.internal,
                False,
                r.arguments,
            )
            for r in records
        ]
        for record, result in zip(records, await self._answers(requests), strict=True):
            self._ok(result, f"exchange '{record.name}'")

    @staticmethod
    def _declare(record: QueueRecord, name: str, passive: bool = False) -> F.QueueDeclare:
        return F.QueueDeclare(
            NEW_REQUEST,
            name,
            record.durable,
            record.exclusive,
            record.auto_delete,
            passive,
            record.arguments,
        )

    async def _queues(self) -> None:
        records = list(self.topology.queues.values())
        requests: list[F.Frame] = []
        for r in records:
            if r.server_named and r.exclusive:
                requests.append(self._declare(r, ""))
            else:
                requests.append(self._declare(r, r.name, passive=r.server_named))
        fresh: list[QueueRecord] = []
        renames: list[tuple[str, str]] = []
        for record, result in zip(records, await self._answers(requests), strict=True):
            if record.server_named and not record.exclusive and isinstance(result, NotFound):
                fresh.append(record)  # gone (a broker restart): the broker names a new one
            elif self._ok(result, f"queue '{record.name}'") and record.server_named:
                renames.append((record.name, _queue_name(result, record.name)))
        if fresh:
            answers = await self._answers([self._declare(r, "") for r in fresh])
            for record, result in zip(fresh, answers, strict=True):
                if self._ok(result, f"queue '{record.name}'"):
                    renames.append((record.name, _queue_name(result, record.name)))
        for old, new in renames:
            if old == new:
                continue
            self.topology.queue_renamed(old, new)
            for consumer in self.consumers:
                if consumer.queue == old:
                    consumer.queue = new
            log.info("wharf: reconnect: server-named queue %r is now %r", old, new)
            self.events.append(ConnectionEvent(QUEUE_RENAMED, old_name=old, new_name=new))

    async def _bindings(self) -> None:
        records = list(self.topology.bindings)
        requests: list[F.Frame] = [
            (F.ExchangeBind if b.to_exchange else F.TopicBind if b.to_topic else F.QueueBind)(
                NEW_REQUEST, b.destination, b.source, b.routing_key, b.arguments
            )
            for b in records
        ]
        for b, result in zip(records, await self._answers(requests), strict=True):
            kind = "exchange" if b.to_exchange else "topic" if b.to_topic else "queue"
            self._ok(result, f"binding of {kind} '{b.destination}' to exchange '{b.source}'")

    async def _consumers(self) -> None:
        consumers = [c for c in self.consumers if c.suspended]
        results = await asyncio.gather(
            *(c.resume(self.core) for c in consumers), return_exceptions=True
        )
        abandon: BaseException | None = None
        for consumer, result in zip(consumers, results, strict=True):
            if result is None:
                continue
            if (
                isinstance(result, WharfError)
                and not self.core.ended
                and not result.retriable
                and not result.fatal
            ):
                what = f"consumer '{consumer.consumer_tag}' on queue '{consumer.queue}'"
                self._ok(result, what)  # reports it
                if consumer.suspended:
                    consumer.end(clone_error(result))
                continue
            abandon = abandon or result
        if abandon is not None:
            raise abandon


def _queue_name(result: Reply | BaseException, default: str) -> str:
    name = None if isinstance(result, BaseException) else result_of(result).get("queue")
    return name if isinstance(name, str) and name else default


# -- the reconnect loop -----------------------------------------------------------------


class Reconnector:
    """Owns one ``Connection``'s reconnecting: the topology record, the consumers to
    resume, the backoff and the task that dials again."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        dial: Callable[[], Awaitable[ConnectionCore]],
        install: Callable[[ConnectionCore], None],
        emit: Emit,
        max_delay_s: float,
        wait_timeout_s: float | None,
    ) -> None:
        self.loop = loop
        self._dial = dial
        self._install = install
        self._emit = emit
        self.backoff = Backoff(BACKOFF_BASE_S, max_delay_s)
        self.wait_timeout_s = wait_timeout_s
        self.topology = Topology()
        # Started, not cancelled consumers, in start order (a dict as an ordered set).
        self.consumers: dict[Consumer, None] = {}
        self._task: asyncio.Task[None] | None = None
        # Resolved with the new core once reconnected (or failed with the final error).
        self._restored: asyncio.Future[ConnectionCore] | None = None
        # The backoff exponent: reset only once a connection proved stable.
        self._attempt = 0
        self._dials = 0  # dials in the current outage
        self._connected_since = loop.time()
        self._events: list[ConnectionEvent] = []
        # Set when reconnecting stopped for good (closed, or a non-retriable refusal).
        self.final_error: WharfError | None = None

    @property
    def reconnecting(self) -> bool:
        return self._task is not None

    # -- consumers (ConsumerOwner, through the Connection) -----------------------------

    def consumer_started(self, consumer: Consumer) -> None:
        self.consumers[consumer] = None

    def consumer_stopped(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            del self.consumers[consumer]
            queue = consumer.queue
            if not any(c.queue == queue for c in self.consumers):
                self.topology.queue_unused(queue)

    # -- outage ------------------------------------------------------------------------

    def connection_lost(self, error: WharfError) -> None:
        """The current connection failed: start reconnecting (once per outage)."""
        if self._task is not None or self.final_error is not None:
            return
        if self.loop.time() - self._connected_since >= STABLE_CONNECTION_S:
            self._attempt = 0
        self._dials = 0
        restored: asyncio.Future[ConnectionCore] = self.loop.create_future()
        restored.add_done_callback(_retrieve)
        self._restored = restored
        log.warning("wharf: %s; reconnecting", error)
        self._task = self.loop.create_task(self._run(), name="wharf-reconnect")

    async def wait_restored(self, current: ConnectionCore) -> ConnectionCore:
        """The core to use: ``current`` if connected, else the next one, waiting up to
        ``wait_timeout_s`` (then ``ConnectionLost``)."""
        if self.final_error is not None:
            raise clone_error(self.final_error)
        restored = self._restored
        if restored is None:
            return current
        timeout = self.wait_timeout_s
        if timeout is not None and timeout <= 0:
            raise ConnectionLost(
                "the connection to the broker is down; reconnecting "
                "(reconnect_wait_timeout=0: not waiting)",
                details={"reconnecting": True},
            )
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(restored)
        except TimeoutError:
            raise ConnectionLost(
                f"the connection to the broker is down and did not come back within "
                f"{timeout} s (still reconnecting)",
                details={"reconnecting": True},
            ) from None

    async def stop(self, error: WharfError) -> None:
        """No more reconnecting (the application closes the connection)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._finish(error)

    def _finish(self, error: WharfError) -> None:
        if self.final_error is None:
            self.final_error = error
        self._task = None
        restored = self._restored
        self._restored = None
        if restored is not None and not restored.done():
            restored.set_exception(clone_error(error))
        consumers = list(self.consumers)
        self.consumers.clear()
        for consumer in consumers:
            consumer.end(clone_error(error))

    async def _run(self) -> None:
        try:
            while True:
                delay = self.backoff.delay_s(self._attempt)
                self._attempt += 1
                self._dials += 1
                await asyncio.sleep(delay)  # backoff, not synchronisation
                core = await self._dial_once()
                if core is not None and await self._replay(core):
                    self._succeed(core)
                    return
        except _GiveUp as give_up:
            self._give_up(give_up.error)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("wharf: reconnect failed unexpectedly")
            self._give_up(ConnectionLost(f"reconnecting failed: {exc!r}"))

    async def _dial_once(self) -> ConnectionCore | None:
        try:
            return await self._dial()
        except TimeoutError as exc:
            reason: WharfError = ConnectionLost(str(exc))
        except WharfError as exc:
            if not exc.retriable:
                raise _GiveUp(exc) from None
            reason = exc
        log.info(
            "wharf: reconnect attempt %d failed: %s (next within %.1f s)",
            self._dials,
            reason,
            self.backoff.ceiling_s(self._attempt),
        )
        return None

    async def _replay(self, core: ConnectionCore) -> bool:
        """Restore topology and consumers on ``core``; False (core aborted) to retry."""
        try:
            async with asyncio.timeout(RECOVERY_TIMEOUT_S):
                await _Replay(core, self.topology, list(self.consumers), self._events).run()
            core.check_usable()
        except asyncio.CancelledError:
            core.recoverable = False
            core.abort(ConnectionLost("the connection was closed by the client"))
            raise
        except (WharfError, TimeoutError) as exc:
            log.warning(
                "wharf: reconnect attempt %d: restoring the topology failed: %s; retrying",
                self._dials,
                exc or "timed out",
            )
            core.abort(ConnectionLost(f"restoring the topology failed: {exc}"))
            return False
        return True

    def _succeed(self, core: ConnectionCore) -> None:
        attempts = self._dials
        self._task = None
        self._connected_since = self.loop.time()
        restored = self._restored
        self._restored = None
        self._install(core)
        if restored is not None and not restored.done():
            restored.set_result(core)
        log.info("wharf: reconnected after %d attempt(s) (%s)", attempts, core.connection_id)
        self._flush_events()
        self._emit(ConnectionEvent(RECONNECTED, attempt=attempts))

    def _give_up(self, error: WharfError) -> None:
        log.error("wharf: giving up reconnecting: %s", error)
        self._finish(error)
        self._flush_events()
        self._emit(ConnectionEvent(CLOSED, error=error))

    def _flush_events(self) -> None:
        events = self._events
        self._events = []
        for event in events:
            self._emit(event)


class _GiveUp(Exception):
    def __init__(self, error: WharfError) -> None:
        super().__init__(str(error))
        self.error = error


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # nobody may be waiting: mark the outcome as seen


_E = TypeVar("_E", "ConnectionEvent", WharfError)


def run_callback(
    callback: Callable[[_E], object],
    event: _E,
    tasks: set[asyncio.Task[Any]],
) -> None:
    """Call an event (or error) callback; a coroutine it returns runs as a task (kept
    in ``tasks`` until done).  Failures are logged, never raised into the SDK."""
    name = event.name if isinstance(event, ConnectionEvent) else type(event).__name__
    try:
        result = callback(event)
    except Exception:
        log.exception("wharf: event callback %r failed on %r", callback, name)
        return
    if asyncio.iscoroutine(result):
        task = asyncio.get_running_loop().create_task(_logged(result, name))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def _logged(coro: Coroutine[Any, Any, Any], name: str) -> None:
    try:
        await coro
    except Exception:
        log.exception("wharf: event callback failed on %r", name)
