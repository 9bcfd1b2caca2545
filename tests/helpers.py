"""Helpers for the integration and durability tests, all black-box: they observe and
disturb the broker only from outside (polling a public answer, speaking the protocol,
cutting TCP connections), never through private attributes.

- :func:`wait_until` / :func:`wait_until_sync`: bounded polling, the one way the tests
  wait for something that happens on the broker's own time.
- :class:`FrameClient`: sends any protocol request and returns its answer, or raises the
  ``WharfError`` its ERROR frame carries, as the SDK would; for tests of request rules
  the SDK never breaks on purpose (a stale generation, a ghost member id).
- :class:`TcpProxy`: sits between a client and the broker and can drop every connection
  as a failing network would, optionally at the moment the broker answers a given frame.
- :func:`scrape_metrics` / :func:`metric`: the broker's /metrics text and one sample of it.
- :func:`broker_thread`: a broker on its own event loop in a thread, for tests that are
  plain functions (the blocking SDK, the web UI's browser tests).

Test modules import them relatively (``from ..helpers import wait_until``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

import uvloop

from wharf.broker.config import Settings
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.codec import FrameDecoder, encode, encode_array
from wharf.protocol.errors import ConnectionLost, WharfError, error_from_code

# Often enough that a test does not wait long after the event; rare enough that polling
# does not compete with the broker on a loaded machine.
POLL_S: Final = 0.01
WAIT_S: Final = 5.0
# A bound on one request's answer, not a behaviour: a GROUP_JOIN waits for a rebalance.
REQUEST_TIMEOUT_S: Final = 30.0
PROXY_READ_BYTES: Final = 65536

Check = Callable[[], bool | Awaitable[bool]]


async def wait_until(check: Check, *, timeout: float = WAIT_S, what: str = "") -> None:
    """Poll ``check`` (a function returning a bool, or an awaitable of one) until it is
    true; an AssertionError naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {what or check}")
        await asyncio.sleep(POLL_S)


def wait_until_sync(check: Callable[[], bool], *, timeout: float = WAIT_S, what: str = "") -> None:
    """:func:`wait_until` for a thread without an event loop (the blocking SDK's tests)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {what or check}")
        time.sleep(POLL_S)


class FrameClient:
    """One authenticated protocol connection; ``request(ftype, *fields)`` sends
    ``[ftype, request_id, *fields]`` and returns the answer frame, matched by request id,
    so several requests may wait at once."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: FrameDecoder,
        frames: list[Any],
    ) -> None:
        """Use :meth:`open`: this takes a connection past AUTH_OK, with its decoder and
        the frames already decoded after it."""
        self.reader = reader
        self.writer = writer
        self._rids = itertools.count(2)
        self._pending: dict[int, asyncio.Future[list[Any]]] = {}
        self.closed_error: WharfError | None = None
        self._reading = asyncio.ensure_future(self._read(decoder, frames))

    @classmethod
    async def open(
        cls, port: int, *, client_properties: dict[str, Any] | None = None
    ) -> FrameClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(F.HANDSHAKE)
            decoder = FrameDecoder()
            frames: list[Any] = []
            async with asyncio.timeout(WAIT_S):
                for expected in (F.HELLO, F.AUTH_OK):
                    if expected == F.AUTH_OK:
                        auth = F.Auth(1, "PLAIN", "guest", "guest", 0, client_properties or {})
                        writer.write(encode(auth))
                    while not frames:
                        data = await reader.read(PROXY_READ_BYTES)
                        if not data:
                            raise ConnectionError("the broker closed the connection")
                        frames.extend(decoder.feed(data))
                    frame = frames.pop(0)
                    assert frame[0] == expected, frame
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, decoder, frames)

    async def _read(self, decoder: FrameDecoder, frames: list[Any]) -> None:
        # What the SDK raises when its connection ends under a request.
        error: WharfError = ConnectionLost("the broker closed the connection")
        try:
            while True:
                for frame in frames:
                    if frame[0] == F.CLOSE:
                        error = error_from_code(frame[2], frame[3]) if frame[2] else error
                    else:
                        self._answer(frame)
                data = await self.reader.read(PROXY_READ_BYTES)
                if not data:
                    break
                frames = decoder.feed(data)
        except (ConnectionError, OSError) as exc:
            error = ConnectionLost(f"the connection failed: {exc}")
        self.closed_error = error
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()

    def _answer(self, frame: list[Any]) -> None:
        if frame[0] not in (F.OK, F.GET_OK, F.ERROR):
            return  # heartbeats, deliveries: not answers
        fut = self._pending.pop(frame[1], None)
        if fut is None or fut.done():
            return
        if frame[0] == F.ERROR:
            details = frame[5] if len(frame) > 5 and isinstance(frame[5], dict) else None
            fut.set_exception(error_from_code(frame[2], frame[3], details))
        else:
            fut.set_result(frame)

    async def request(
        self, ftype: int, *fields: Any, timeout: float = REQUEST_TIMEOUT_S
    ) -> list[Any]:
        if self.closed_error is not None:
            raise error_from_code(self.closed_error.code, self.closed_error.message)
        rid = next(self._rids)
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self.writer.write(encode_array([ftype, rid, *fields]))
        async with asyncio.timeout(timeout):
            return await fut

    async def result(self, ftype: int, *fields: Any) -> Any:
        """The answer's result field (``frame[2]``)."""
        return (await self.request(ftype, *fields))[2]

    async def close(self) -> None:
        """Close the socket (no CLOSE frame); requests still waiting raise ConnectionLost."""
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading
        self.closed_error = ConnectionLost("the connection was closed by the client")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(self.closed_error)
        self._pending.clear()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


# Called with each frame the client sends; returns a predicate of the broker's frames:
# the connection is cut, without forwarding, at the first frame it accepts.
CutWhen = Callable[[list[Any]], Callable[[list[Any]], bool] | None]


class TcpProxy:
    """A TCP proxy on 127.0.0.1 port 0 in front of the broker's native port.

    ``cut()`` aborts every connection through it, as a network failure or a killed
    client process would: the client sees its socket reset, the broker sees it close,
    and nobody sends a CLOSE frame.  New connections (a reconnect) pass again.
    ``cut_when`` (see :data:`CutWhen`) cuts a connection at a chosen moment instead,
    for example before the broker's answer to a request reaches the client.
    """

    def __init__(self, target_port: int, cut_when: CutWhen | None = None) -> None:
        self.target_port = target_port
        self.cut_when = cut_when
        self.port = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, credentials: str = "guest:guest") -> str:
        return f"wharf://{credentials}@127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Abort every open connection through the proxy, both sides."""
        self.cuts += 1
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            b_reader, b_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            c_writer.transport.abort()
            return
        pair = (c_writer, b_writer)
        self._writers.update(pair)
        # Predicates over the broker's frames, armed by frames the client sent.
        armed: list[Callable[[list[Any]], bool]] = []
        up = asyncio.ensure_future(self._pipe(c_reader, b_writer, pair, upstream=armed))
        down = asyncio.ensure_future(self._pipe(b_reader, c_writer, pair, downstream=armed))
        self._tasks.update((up, down))
        for task in (up, down):
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        *,
        upstream: list[Callable[[list[Any]], bool]] | None = None,
        downstream: list[Callable[[list[Any]], bool]] | None = None,
    ) -> None:
        decoder: FrameDecoder | None = None
        if self.cut_when is not None:
            decoder = FrameDecoder(expect_handshake=upstream is not None)
        try:
            while data := await reader.read(PROXY_READ_BYTES):
                if decoder is not None and self.cut_when is not None:
                    frames = decoder.feed(data)
                    if upstream is not None:
                        for frame in frames:
                            predicate = self.cut_when(frame)
                            if predicate is not None:
                                upstream.append(predicate)
                    elif downstream and any(p(f) for f in frames for p in downstream):
                        self.cuts += 1
                        for w in pair:
                            w.transport.abort()
                        return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One side gone: the other goes too, as when a TCP connection dies.
            for w in pair:
                self._writers.discard(w)
                if not w.transport.is_closing():
                    w.transport.abort()


async def scrape_metrics(http_port: int, *, timeout: float = WAIT_S) -> str:
    """The text of ``GET /metrics`` on a connection of its own (which the HTTP
    connection gauge counts while it is being answered)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(timeout):
            data = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return body.decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name{labels}`` in a /metrics text (labels in the order
    the broker declares them); an AssertionError when there is none."""
    wanted = name
    if labels:
        wanted += "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == wanted:
            return float(value)
    raise AssertionError(f"no sample {wanted} in /metrics")


def is_answer_to(rid: int) -> Callable[[list[Any]], bool]:
    """For :data:`CutWhen`: the broker's answer (OK, GET_OK or ERROR) to request ``rid``."""
    return lambda frame: frame[0] in (F.OK, F.GET_OK, F.ERROR) and frame[1] == rid


__all__ = [
    "POLL_S",
    "WAIT_S",
    "FrameClient",
    "TcpProxy",
    "is_answer_to",
    "metric",
    "scrape_metrics",
    "wait_until",
    "wait_until_sync",
]


BROKER_THREAD_START_TIMEOUT_S: Final = 30.0
BROKER_THREAD_STOP_TIMEOUT_S: Final = 30.0


class BrokerThread:
    """A broker on its own event loop in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self.loop = uvloop.new_event_loop()
        self.broker = Broker(settings)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="broker", daemon=True)

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.broker.start())
        except BaseException as exc:
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.broker.stop())
            loop.close()

    def start(self) -> None:
        self.thread.start()
        assert self._started.wait(BROKER_THREAD_START_TIMEOUT_S), "broker did not start"
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(BROKER_THREAD_STOP_TIMEOUT_S)
        assert not self.thread.is_alive(), "broker did not stop"


@contextlib.contextmanager
def broker_thread(settings: Settings) -> Iterator[Broker]:
    """``with broker_thread(settings) as broker:`` a started broker (ports 0 in the
    settings: read ``broker.port``, ``broker.http_port``), stopped on the way out."""
    bt = BrokerThread(settings)
    bt.start()
    try:
        yield bt.broker
    finally:
        bt.stop()
