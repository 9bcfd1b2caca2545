"""SDK reconnect (``wharf.connect(url, reconnect=True)``) against a broker subprocess that
is stopped (SIGTERM or kill -9) and started again on the same ports and data directory.

What is checked is what an application sees: events, consumers that keep iterating,
publishes that either confirm or raise the retriable ``ConnectionLost`` (and are then
retried), no confirmed persistent message lost, server-named queues renamed.  Waiting
is on events and futures, each bounded; the only polling is for a broker process to
start or exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final

import pytest

import wharf

WHARF_BIN: Final = Path(sys.executable).with_name("wharf")
START_TIMEOUT_S: Final = 30.0
EXIT_TIMEOUT_S: Final = 20.0
# Polling a starting broker's port (waiting for a process, not synchronisation).
READY_POLL_S: Final = 0.05
# Budget for a client to notice a loss / come back once the broker is up again.
EVENT_TIMEOUT_S: Final = 20.0
# Reconnect fast in tests: the backoff cap (seconds).
MAX_DELAY_S: Final = 0.5
PROGRESS_TIMEOUT_S: Final = 30.0
DRAIN_TIMEOUT_S: Final = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrokerProcess:
    """``wharf serve`` on fixed ports and one data directory, restartable."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "data"
        self.log_dir = tmp_path
        self.port = _free_port()
        self.http_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def url(self) -> str:
        return f"wharf://guest:guest@127.0.0.1:{self.port}"

    def log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.log_dir.glob("broker-*.log"))
        )

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self.proc is None or self.proc.poll() is not None
        self.runs += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("WHARF_")}
        env["WHARF_SHUTDOWN_TIMEOUT_S"] = "3"
        env["WHARF_AMQP_PORT"] = "0"  # no AMQP listener (5672 may be in use here)
        env["WHARF_AMQPS_PORT"] = "0"
        cmd = [
            str(WHARF_BIN), "serve",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--http-port", str(self.http_port),
            "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        with (self.log_dir / f"broker-{self.runs}.log").open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        return self.proc

    async def start(self) -> None:
        """Start on the same ports and data directory; wait until it takes logins."""
        proc = self._spawn()
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while True:
                    assert proc.poll() is None, f"broker exited at start:\n{self.log()}"
                    try:
                        conn = await wharf.connect(self.url, timeout=5.0)
                    except (wharf.WharfError, OSError):
                        await asyncio.sleep(READY_POLL_S)  # waiting for a process
                        continue
                    await conn.close()
                    return
        except TimeoutError:
            raise AssertionError(
                f"broker not ready in {START_TIMEOUT_S} s:\n{self.log()}"
            ) from None

    async def stop(self, how: str) -> None:
        proc = self.proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, EXIT_TIMEOUT_S)
        if how == "sigterm":
            assert code == 0, f"exit code {code} after SIGTERM:\n{self.log()}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(EXIT_TIMEOUT_S)


@pytest.fixture
async def broker_process(tmp_path: Path) -> AsyncIterator[BrokerProcess]:
    bp = BrokerProcess(tmp_path)
    await bp.start()
    try:
        yield bp
    finally:
        bp.kill()


class Events:
    """Records a connection's events; lets a test wait for the n-th of a kind."""

    def __init__(self, conn: wharf.Connection) -> None:
        self.seen: list[wharf.ConnectionEvent] = []
        self._changed = asyncio.Event()
        conn.on_event(self._on_event)

    def _on_event(self, event: wharf.ConnectionEvent) -> None:
        self.seen.append(event)
        self._changed.set()

    def count(self, name: str) -> int:
        return sum(1 for e in self.seen if e.name == name)

    def of(self, name: str) -> list[wharf.ConnectionEvent]:
        return [e for e in self.seen if e.name == name]

    async def wait_for(self, name: str, n: int = 1, timeout: float = EVENT_TIMEOUT_S) -> None:
        async with asyncio.timeout(timeout):
            while self.count(name) < n:
                self._changed.clear()
                await self._changed.wait()


async def _until(predicate: Callable[[], bool], changed: asyncio.Event, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            changed.clear()
            await changed.wait()


async def _connect(
    url: str, reconnect_wait_timeout: float | None = EVENT_TIMEOUT_S
) -> wharf.Connection:
    return await wharf.connect(
        url,
        reconnect=True,
        reconnect_max_delay=MAX_DELAY_S,
        reconnect_wait_timeout=reconnect_wait_timeout,
    )


@pytest.mark.parametrize("stops", [("sigterm", "kill")], ids=["sigterm-then-kill9"])
async def test_publisher_and_consumer_ride_through_restarts(
    broker_process: BrokerProcess, stops: tuple[str, ...]
) -> None:
    bp = broker_process
    consumer_conn = await _connect(bp.url)
    publisher_conn = await _connect(bp.url)
    consumer_events = Events(consumer_conn)
    publisher_events = Events(publisher_conn)
    await consumer_conn.declare_queue("work", durable=True)
    await publisher_conn.declare_queue("work", durable=True)

    confirmed: set[str] = set()
    received: Counter[str] = Counter()
    lost_publishes = 0
    progress = asyncio.Event()
    stop_publishing = asyncio.Event()

    async def publish_forever() -> None:
        nonlocal lost_publishes
        seq = 0
        while not stop_publishing.is_set():
            message_id = str(seq)
            while True:  # retry one message until it is confirmed
                try:
                    await publisher_conn.publish(
                        "", "work", b"x" * 100, message_id=message_id, persistent=True
                    )
                    break
                except wharf.ConnectionLost as exc:
                    assert exc.retriable
                    lost_publishes += 1
            confirmed.add(message_id)
            seq += 1
            progress.set()

    async def consume_forever() -> None:
        async with consumer_conn.consume("work", prefetch=50) as messages:
            async for msg in messages:
                assert msg.message_id is not None
                received[msg.message_id] += 1
                await msg.ack()  # a no-op for a delivery of a lost connection
                progress.set()

    publisher = asyncio.create_task(publish_forever())
    consumer = asyncio.create_task(consume_forever())
    try:
        await _until(lambda: len(received) >= 100, progress, PROGRESS_TIMEOUT_S)
        for n, how in enumerate(stops, start=1):
            await bp.stop(how)
            await consumer_events.wait_for("disconnected", n)
            await publisher_events.wait_for("disconnected", n)
            assert not consumer_conn.is_connected and not consumer_conn.is_closed
            await bp.start()
            await consumer_events.wait_for("reconnected", n)
            await publisher_events.wait_for("reconnected", n)
            # Both sides make progress on the new connection.
            goal_published, goal_received = len(confirmed) + 100, len(received) + 100

            def both_progressed(g: int = goal_published, r: int = goal_received) -> bool:
                return len(confirmed) >= g and len(received) >= r

            await _until(both_progressed, progress, PROGRESS_TIMEOUT_S)
        stop_publishing.set()
        await asyncio.wait_for(publisher, PROGRESS_TIMEOUT_S)
        await _until(lambda: confirmed <= received.keys(), progress, DRAIN_TIMEOUT_S)
    finally:
        stop_publishing.set()
        for task in (publisher, consumer):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await consumer_conn.close()
        await publisher_conn.close()

    assert not consumer.done() or consumer.cancelled()
    missing = confirmed - received.keys()
    assert not missing, f"{len(missing)} confirmed messages never delivered"
    for events in (consumer_events, publisher_events):
        disconnected = events.of("disconnected")
        assert len(disconnected) == len(stops)
        assert all(isinstance(e.error, wharf.ConnectionLost) for e in disconnected)
        assert events.count("reconnected") == len(stops)
        assert [e.name for e in events.seen][-1] == "closed"
    assert consumer_conn.is_closed and publisher_conn.is_closed


async def test_server_named_exclusive_queue_is_renamed_and_rebound(
    broker_process: BrokerProcess,
) -> None:
    bp = broker_process
    conn = await _connect(bp.url)
    events = Events(conn)
    try:
        await conn.declare_exchange("news", "fanout")  # not durable: gone after a restart
        info = await conn.declare_queue("", exclusive=True)
        await conn.bind_queue(info.name, "news")
        async with conn.consume(info.name) as messages:
            await bp.stop("sigterm")
            await bp.start()
            await events.wait_for("reconnected")
            (renamed,) = events.of("queue_renamed")
            assert renamed.old_name == info.name
            assert renamed.new_name is not None and renamed.new_name != info.name
            assert messages.queue == renamed.new_name
            # The exchange, the renamed queue, its binding and the consumer are back.
            other = await wharf.connect(bp.url)
            try:
                await other.publish("news", "", b"after the restart")
            finally:
                await other.close()
            msg = await asyncio.wait_for(messages.__anext__(), EVENT_TIMEOUT_S)
            assert msg.body == b"after the restart"
            assert msg.routing_key == "" and msg.exchange == "news"
            await msg.ack()
        assert [e.name for e in events.seen] == ["disconnected", "queue_renamed", "reconnected"]
    finally:
        await conn.close()


async def test_calls_during_an_outage_wait_for_the_reconnect_or_fail_fast(
    broker_process: BrokerProcess,
) -> None:
    bp = broker_process
    waiting = await _connect(bp.url, reconnect_wait_timeout=EVENT_TIMEOUT_S)
    failing_fast = await _connect(bp.url, reconnect_wait_timeout=0)
    waiting_events, fast_events = Events(waiting), Events(failing_fast)
    try:
        await waiting.declare_queue("outage", durable=True)
        await bp.stop("kill")
        await waiting_events.wait_for("disconnected")
        await fast_events.wait_for("disconnected")
        assert waiting.reconnecting and not waiting.is_connected
        with pytest.raises(wharf.ConnectionLost) as info:
            await failing_fast.publish("", "outage", b"now")
        assert info.value.retriable and info.value.details.get("reconnecting")

        pending = asyncio.create_task(waiting.publish("", "outage", b"waited", persistent=True))
        await bp.start()
        await asyncio.wait_for(pending, EVENT_TIMEOUT_S)  # confirmed on the new connection
        msg = await waiting.get("outage", no_ack=True)
        assert msg is not None and msg.body == b"waited"
        await fast_events.wait_for("reconnected")
        await failing_fast.publish("", "outage", b"after")  # usable again
    finally:
        await waiting.close()
        await failing_fast.close()


async def test_close_during_an_outage_stops_reconnecting(broker_process: BrokerProcess) -> None:
    bp = broker_process
    conn = await _connect(bp.url, reconnect_wait_timeout=None)
    events = Events(conn)
    await conn.declare_queue("closing", durable=True)
    consumer = await conn.consume("closing")
    await bp.stop("kill")
    await events.wait_for("disconnected")
    waiter = asyncio.create_task(conn.declare_queue("closing", durable=True))
    await asyncio.wait_for(conn.close(), EVENT_TIMEOUT_S)
    assert conn.is_closed and not conn.reconnecting
    with pytest.raises(wharf.ConnectionLost):
        await asyncio.wait_for(waiter, EVENT_TIMEOUT_S)
    with pytest.raises(wharf.ConnectionLost):
        await asyncio.wait_for(consumer.__anext__(), EVENT_TIMEOUT_S)
    with pytest.raises(wharf.ConnectionLost):
        await conn.publish("", "closing", b"x")
    assert [e.name for e in events.seen] == ["disconnected", "closed"]


async def test_in_flight_confirms_fail_with_connection_lost(
    broker_process: BrokerProcess,
) -> None:
    """Publishes awaiting their confirm when the broker dies raise ConnectionLost,
    never vanish; a retry after the reconnect succeeds."""
    bp = broker_process
    conn = await _connect(bp.url)
    events = Events(conn)
    try:
        await conn.declare_queue("inflight", durable=True)
        bodies = [b"m%d" % i for i in range(2000)]
        batch = asyncio.create_task(conn.publish_many("", "inflight", bodies, persistent=True))
        await bp.stop("kill")
        try:
            await asyncio.wait_for(batch, EVENT_TIMEOUT_S)
        except wharf.ConnectionLost as exc:
            assert exc.retriable  # lost with the connection: publish again
        await events.wait_for("disconnected")
        await bp.start()
        await asyncio.wait_for(
            conn.publish_many("", "inflight", bodies, persistent=True), EVENT_TIMEOUT_S
        )
    finally:
        await conn.close()


def test_sync_client_reconnects(broker_process: BrokerProcess) -> None:
    """The blocking client rides through a restart too (its loop thread reconnects)."""
    bp = broker_process
    with wharf.sync.connect(bp.url, reconnect=True, reconnect_max_delay=MAX_DELAY_S) as conn:
        conn.declare_queue("sync-reconnect", durable=True)
        conn.publish("", "sync-reconnect", b"before", persistent=True)
        asyncio.run(bp.stop("sigterm"))
        asyncio.run(bp.start())
        conn.publish("", "sync-reconnect", b"after", persistent=True)
        bodies = []
        while (msg := conn.get("sync-reconnect")) is not None:
            bodies.append(msg.body)
            msg.ack()
        assert bodies == [b"before", b"after"]
