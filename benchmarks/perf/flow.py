"""Producers and consumers as separate processes, and the orchestrator that times them.

``run_flow`` declares the queue, starts the consumer processes and waits until each has
subscribed, starts the producer processes and releases them together, then waits until
the consumers have seen every message.  All processes are spawned (no fork of a running
event loop).  Workers talk to the orchestrator through one ``multiprocessing`` queue of
events: ``("ready", role, idx)``, ``("result", role, idx, dict)``, ``("error", role, idx,
text)``; consumers also publish their running count in a shared array so that the
orchestrator knows when everything has arrived without a message per delivery.

The SDK workers use the public API only (``wharf.connect``, ``publish_many``,
``consume``, ``ack``); the raw workers (``Plan.raw``) speak the protocol through
``benchmarks.rawclient`` so the figure is the broker's capacity, not the SDK's.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import queue as queue_mod
import struct
import time
import traceback
from array import array
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventT
from typing import Any, Final, Protocol, cast

from benchmarks.perf.rawclient import RawConnection
from wharf.broker.cli.ctl_progress import TerminalProgress
from wharf.protocol import frames as F

from .common import POLL_S, Target, log, padding, run_async, stamp

WORKER_READY_TIMEOUT_S: Final = 60.0
RESULT_TIMEOUT_S: Final = 60.0
# Sleep only when the next send is this far ahead; closer than that, spin on the loop.
PACE_SLEEP_MIN_S: Final = 0.0005

_unpack_stamp = struct.Struct(">Q").unpack_from


class Counts(Protocol):
    """Per-consumer running counts in shared memory (a lock-free ``ctypes`` array)."""

    def __getitem__(self, idx: int, /) -> int: ...
    def __setitem__(self, idx: int, value: int, /) -> None: ...
    def __len__(self) -> int: ...


def _total(counts: Counts) -> int:
    return sum(counts[i] for i in range(len(counts)))


@dataclass(frozen=True)
class Plan:
    target: Target
    queue: str
    count: int
    size: int
    producers: int = 1
    consumers: int = 1
    batch: int = 500
    prefetch: int = 2000
    rate: float = 0.0  # msg/s over all producers; 0 = as fast as possible
    confirm: bool = True
    inflight: int = 4  # publish batches awaiting their confirm, per producer
    raw: bool = False
    timeout_s: float = 300.0
    # Durable queue and persistent messages: confirms wait for the fsync.
    persistent: bool = False
    # Queue arguments (x-max-priority, x-message-ttl, ...) and, if > 0, publish batches
    # with priorities cycling 0..priorities-1.
    queue_arguments: tuple[tuple[str, Any], ...] = ()
    priorities: int = 0

    def share(self, idx: int) -> int:
        """How many messages producer ``idx`` sends."""
        base, extra = divmod(self.count, self.producers)
        return base + (1 if idx < extra else 0)


@dataclass
class FlowResult:
    producers: list[dict[str, Any]] = field(default_factory=list)
    consumers: list[dict[str, Any]] = field(default_factory=list)
    latencies_ns: list[int] = field(default_factory=list)
    consumed: int = 0
    timed_out: bool = False


# ---------------------------------------------------------------- orchestrator


def run_flow(plan: Plan) -> FlowResult:
    ctx = mp.get_context("spawn")
    events: mp.Queue[tuple[Any, ...]] = ctx.Queue()
    go = ctx.Event()
    stop = ctx.Event()
    counts = cast(Counts, ctx.Array("q", plan.consumers, lock=False))
    run_async(_declare(plan))
    procs: list[BaseProcess] = []
    result = FlowResult()
    try:
        # Alone, a consumer knows when it is done; several need the orchestrator's stop.
        own_target = plan.count if plan.consumers == 1 else 0
        for idx in range(plan.consumers):
            proc = ctx.Process(
                target=consumer_main,
                args=(plan, idx, own_target, counts, events, stop),
                name=f"bench-consumer-{idx}",
            )
            proc.start()
            procs.append(proc)
        _await_ready(events, "consumer", plan.consumers, procs)
        for idx in range(plan.producers):
            proc = ctx.Process(
                target=producer_main, args=(plan, idx, events, go), name=f"bench-producer-{idx}"
            )
            proc.start()
            procs.append(proc)
        _await_ready(events, "producer", plan.producers, procs)
        log(
            f"{plan.producers} producer(s), {plan.consumers} consumer(s), "
            f"{plan.count} x {plan.size} B, {'raw' if plan.raw else 'sdk'} client"
        )
        go.set()
        results: dict[tuple[str, int], dict[str, Any]] = {}
        deadline = time.monotonic() + plan.timeout_s
        progress = TerminalProgress("[bench] consumed", plan.count)
        while _total(counts) < plan.count:
            progress.update(_total(counts))
            if time.monotonic() > deadline:
                progress.finish()
                result.timed_out = True
                log(f"timed out with {_total(counts)}/{plan.count} consumed")
                break
            _drain_events(events, results, timeout_s=POLL_S)
        progress.finish()
        stop.set()
        wanted = plan.producers + plan.consumers
        deadline = time.monotonic() + RESULT_TIMEOUT_S
        while len(results) < wanted and time.monotonic() < deadline:
            _drain_events(events, results, timeout_s=0.5)
        if len(results) < wanted:
            raise RuntimeError(f"only {len(results)}/{wanted} workers reported a result")
        for (role, _), res in sorted(results.items()):
            if role == "producer":
                result.producers.append(res)
            else:
                lat = array("q")
                lat.frombytes(res.pop("latencies"))
                result.latencies_ns.extend(lat)
                result.consumers.append(res)
                result.consumed += res["count"]
    finally:
        stop.set()
        go.set()
        for worker in procs:
            worker.join(5)
            if worker.is_alive():
                worker.terminate()
                worker.join(5)
        with contextlib.suppress(Exception):
            run_async(_delete(plan))
    return result


async def _declare(plan: Plan) -> None:
    t = plan.target
    conn = await RawConnection.open(t.host, t.port, t.username, t.password, t.ssl_context())
    try:
        await conn.declare_queue(
            plan.queue, durable=plan.persistent, arguments=dict(plan.queue_arguments) or None
        )
    finally:
        await conn.close()


async def _delete(plan: Plan) -> None:
    t = plan.target
    conn = await RawConnection.open(t.host, t.port, t.username, t.password, t.ssl_context())
    try:
        await conn.delete_queue(plan.queue)
    finally:
        await conn.close()


def _await_ready(
    events: mp.Queue[tuple[Any, ...]], role: str, n: int, procs: list[BaseProcess]
) -> None:
    ready = 0
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    while ready < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n - ready} {role}(s) not ready in {WORKER_READY_TIMEOUT_S}s")
        try:
            event = events.get(timeout=0.2)
        except queue_mod.Empty:
            dead = [p.name for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"worker(s) died during start-up: {dead}") from None
            continue
        if event[0] == "error":
            raise RuntimeError(f"{event[1]} {event[2]} failed: {event[3]}")
        if event[0] == "ready" and event[1] == role:
            ready += 1


def _drain_events(
    events: mp.Queue[tuple[Any, ...]],
    results: dict[tuple[str, int], dict[str, Any]],
    timeout_s: float,
) -> None:
    try:
        event = events.get(timeout=timeout_s)
    except queue_mod.Empty:
        return
    while True:
        if event[0] == "error":
            raise RuntimeError(f"{event[1]} {event[2]} failed: {event[3]}")
        if event[0] == "result":
            results[(event[1], event[2])] = event[3]
        try:
            event = events.get_nowait()
        except queue_mod.Empty:
            return


# ---------------------------------------------------------------- worker plumbing


def _worker(
    role: str,
    idx: int,
    events: mp.Queue[tuple[Any, ...]],
    body: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
) -> None:
    try:
        res = run_async(body())
    except BaseException as exc:  # report anything, including KeyboardInterrupt
        events.put(("error", role, idx, f"{exc!r}\n{traceback.format_exc()}"))
        raise
    events.put(("result", role, idx, res))


async def _wait_event(event: EventT) -> None:
    await asyncio.to_thread(event.wait)


async def _run_until(main: Coroutine[Any, Any, None], stop: EventT) -> None:
    """Run ``main`` until it returns or the orchestrator sets ``stop``."""
    task = asyncio.ensure_future(main)
    while not task.done():
        if stop.is_set():
            task.cancel()
            break
        await asyncio.wait({task}, timeout=POLL_S)
    with contextlib.suppress(asyncio.CancelledError):
        await task


class _Pacer:
    """Spaces sends at a fixed rate (``rate`` msg/s; 0 = no pacing)."""

    __slots__ = ("_rate", "_t0")

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._t0 = time.perf_counter()

    async def wait(self, sent: int) -> None:
        if self._rate <= 0:
            return
        ahead = self._t0 + sent / self._rate - time.perf_counter()
        if ahead > PACE_SLEEP_MIN_S:
            await asyncio.sleep(ahead)


# ---------------------------------------------------------------- producers


def producer_main(plan: Plan, idx: int, events: mp.Queue[tuple[Any, ...]], go: EventT) -> None:
    async def body() -> dict[str, Any]:
        if plan.raw:
            return await _raw_producer(plan, idx, events, go)
        return await _sdk_producer(plan, idx, events, go)

    _worker("producer", idx, events, body)


async def _sdk_producer(
    plan: Plan, idx: int, events: mp.Queue[tuple[Any, ...]], go: EventT
) -> dict[str, Any]:
    import wharf

    conn = await wharf.connect(plan.target.url)
    share = plan.share(idx)
    pad = padding(plan.size)
    rate = plan.rate / plan.producers
    queue = plan.queue
    confirm = plan.confirm
    persistent = plan.persistent
    inflight = asyncio.Semaphore(plan.inflight)
    tasks: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []

    sent_batches = 0

    async def send(bodies: list[bytes]) -> None:
        nonlocal sent_batches
        prio = sent_batches % plan.priorities if plan.priorities else None
        sent_batches += 1
        if len(bodies) == 1:
            await conn.publish(
                "", queue, bodies[0], confirm=confirm, persistent=persistent, priority=prio
            )
        else:
            await conn.publish_many(
                "", queue, bodies, confirm=confirm, persistent=persistent, priority=prio
            )

    async def send_confirmed(bodies: list[bytes]) -> None:
        try:
            await send(bodies)
        except Exception as exc:
            failures.append(exc)
        finally:
            inflight.release()

    events.put(("ready", "producer", idx))
    await _wait_event(go)
    t_start = time.time_ns()
    pacer = _Pacer(rate)
    sent = 0
    try:
        while sent < share:
            n = min(plan.batch, share - sent)
            await pacer.wait(sent)
            if not confirm:
                # Returns at once unless the SDK is applying backpressure.
                await send([stamp(pad)] * n)
                sent += n
                continue
            await inflight.acquire()
            if failures:
                raise failures[0]
            task = asyncio.ensure_future(send_confirmed([stamp(pad)] * n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += n
        t_sent = time.time_ns()
        if tasks:
            await asyncio.gather(*tasks)
        if failures:
            raise failures[0]
        t_confirmed = time.time_ns()
    finally:
        await conn.close()
    return {
        "count": share,
        "t_start": t_start,
        "t_sent": t_sent,
        "t_confirmed": t_confirmed if confirm else None,
        "nacked": 0,
    }


async def _raw_producer(
    plan: Plan, idx: int, events: mp.Queue[tuple[Any, ...]], go: EventT
) -> dict[str, Any]:
    t = plan.target
    conn = await RawConnection.open(t.host, t.port, t.username, t.password, t.ssl_context())
    share = plan.share(idx)
    pad = padding(plan.size)
    rate = plan.rate / plan.producers
    window = plan.inflight * plan.batch
    encode = conn.encoder.encode_array
    write = conn.writer.write
    queue = plan.queue
    props = {"persistent": True} if plan.persistent else None
    state = {"confirmed": 0, "nacked": 0}
    progress = asyncio.Event()

    async def read_confirms() -> None:
        while True:
            for frame in await conn.read_frames():
                kind = frame[0]
                if kind == F.CONFIRM:
                    state["confirmed"] = max(state["confirmed"], frame[2])
                elif kind == F.PUBLISH_NACK:
                    state["nacked"] += 1
                elif kind == F.ERROR:
                    raise RuntimeError(f"broker error on publisher: {frame!r}")
            progress.set()

    events.put(("ready", "producer", idx))
    await _wait_event(go)
    t_start = time.time_ns()
    reader = asyncio.ensure_future(read_confirms()) if plan.confirm else None
    pacer = _Pacer(rate)
    sent = 0
    try:
        while sent < share:
            n = min(plan.batch, share - sent)
            await pacer.wait(sent)
            seq = sent + 1 if plan.confirm else 0
            if n == 1:
                write(encode((F.PUBLISH, seq, "", queue, None, stamp(pad), 0)))
            else:
                write(encode((F.PUBLISH_MANY, seq, "", queue, props, [stamp(pad)] * n, 0)))
            sent += n
            if reader is not None:
                while sent - state["confirmed"] > window:
                    progress.clear()
                    await _progress_or_failure(progress, reader)
            await conn.writer.drain()
        t_sent = time.time_ns()
        if reader is not None:
            while state["confirmed"] < share:
                progress.clear()
                await _progress_or_failure(progress, reader)
        t_confirmed = time.time_ns()
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await conn.close()
    return {
        "count": share,
        "t_start": t_start,
        "t_sent": t_sent,
        "t_confirmed": t_confirmed if plan.confirm else None,
        "nacked": state["nacked"],
    }


async def _progress_or_failure(progress: asyncio.Event, reader: asyncio.Task[None]) -> None:
    waiter = asyncio.ensure_future(progress.wait())
    done, _ = await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
    if reader in done:
        waiter.cancel()
        reader.result()
        raise RuntimeError("confirm reader stopped")


# ---------------------------------------------------------------- consumers


class _Tally:
    """What a consumer has seen so far; survives the consumer task being cancelled."""

    __slots__ = ("count", "t_last", "latencies")

    def __init__(self) -> None:
        self.count = 0
        self.t_last = 0
        self.latencies: list[int] = []

    def as_result(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "t_last": self.t_last,
            "latencies": array("q", self.latencies).tobytes(),
        }


def consumer_main(
    plan: Plan,
    idx: int,
    own_target: int,
    counts: Counts,
    events: mp.Queue[tuple[Any, ...]],
    stop: EventT,
) -> None:
    async def body() -> dict[str, Any]:
        tally = _Tally()
        if plan.raw:
            await _raw_consumer(plan, idx, own_target, counts, events, stop, tally)
        else:
            await _sdk_consumer(plan, idx, own_target, counts, events, stop, tally)
        return tally.as_result()

    _worker("consumer", idx, events, body)


async def _sdk_consumer(
    plan: Plan,
    idx: int,
    own_target: int,
    counts: Counts,
    events: mp.Queue[tuple[Any, ...]],
    stop: EventT,
    tally: _Tally,
) -> None:
    import wharf

    conn = await wharf.connect(plan.target.url)
    subscribed = asyncio.Event()

    async def consume() -> None:
        lat = tally.latencies
        now_ns = time.time_ns
        got = 0
        async with conn.consume(plan.queue, prefetch=plan.prefetch) as messages:
            subscribed.set()
            async for msg in messages:
                now = now_ns()
                lat.append(now - _unpack_stamp(msg.body)[0])
                await msg.ack()
                got += 1
                tally.count = got
                tally.t_last = now
                counts[idx] = got
                if got == own_target:
                    break

    task = asyncio.ensure_future(_run_until(consume(), stop))
    try:
        waiter = asyncio.ensure_future(subscribed.wait())
        await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        if not subscribed.is_set():
            waiter.cancel()
            await task  # raises why consume() ended early
            raise RuntimeError("consumer ended before subscribing")
        events.put(("ready", "consumer", idx))
        await task
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 5)


async def _raw_consumer(
    plan: Plan,
    idx: int,
    own_target: int,
    counts: Counts,
    events: mp.Queue[tuple[Any, ...]],
    stop: EventT,
    tally: _Tally,
) -> None:
    t = plan.target
    conn = await RawConnection.open(t.host, t.port, t.username, t.password, t.ssl_context())
    ack_id = await conn.consume(plan.queue, plan.prefetch)
    events.put(("ready", "consumer", idx))

    async def consume() -> None:
        lat = tally.latencies
        append = lat.append
        now_ns = time.time_ns
        encode = conn.encoder.encode_array
        write = conn.writer.write
        got = 0
        while True:
            batch = await conn.read_frames()
            now = now_ns()
            last_tag = 0
            for frame in batch:
                kind = frame[0]
                if kind == F.DELIVER:
                    deliveries = frame[3]
                    for d in deliveries:
                        append(now - _unpack_stamp(d[6])[0])
                    last_tag = deliveries[-1][0]
                    got += len(deliveries)
                elif kind == F.ERROR or kind == F.CANCELLED:
                    raise RuntimeError(f"broker error on consumer: {frame!r}")
            if last_tag:
                write(encode((F.ACK, ack_id, last_tag, True)))
                tally.count = got
                tally.t_last = now
                counts[idx] = got
                if got >= own_target > 0:
                    return

    try:
        await _run_until(consume(), stop)
    finally:
        await conn.close()
