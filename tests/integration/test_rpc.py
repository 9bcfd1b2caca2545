"""Request-reply over TCP with ``Connection.rpc``: a responder consumes a queue and
publishes each reply to the default exchange with routing key = ``reply_to`` and the
request's ``correlation_id``; the caller gets its reply on a server-named exclusive
queue."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import wharf

TIMEOUT_S = 5.0

Connect = Callable[..., Any]
Handler = Callable[[wharf.Message], Awaitable[bytes]]


async def upper(msg: wharf.Message) -> bytes:
    return msg.body.upper()


@contextlib.asynccontextmanager
async def responder(
    conn: wharf.Connection,
    queue: str,
    handler: Handler = upper,
    seen: list[wharf.Message] | None = None,
) -> AsyncIterator[None]:
    """Serve ``queue`` on ``conn`` in a task for the duration of the block."""
    await conn.declare_queue(queue)
    started = asyncio.get_running_loop().create_future()

    async def serve() -> None:
        async with conn.consume(queue) as requests:
            started.set_result(None)
            async for request in requests:
                if seen is not None:
                    seen.append(request)
                assert request.reply_to is not None
                reply = await handler(request)
                await conn.publish(
                    "", request.reply_to, reply, correlation_id=request.correlation_id
                )
                await request.ack()

    task = asyncio.create_task(serve())
    try:
        await asyncio.wait_for(asyncio.shield(started), TIMEOUT_S)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_rpc_request_reply(conn: wharf.Connection, connect: Connect) -> None:
    server: wharf.Connection = await connect()
    seen: list[wharf.Message] = []

    async with responder(server, "rpc.upper", seen=seen):
        reply = await conn.rpc("", "rpc.upper", b"hello", timeout=TIMEOUT_S)

    assert reply.body == b"HELLO"
    [request] = seen
    assert request.body == b"hello"
    assert request.correlation_id is not None
    assert reply.correlation_id == request.correlation_id
    assert reply.routing_key == request.reply_to


async def test_rpc_reply_queue_is_server_named_and_exclusive(
    conn: wharf.Connection, connect: Connect
) -> None:
    server: wharf.Connection = await connect()
    seen: list[wharf.Message] = []

    async with responder(server, "rpc.upper", seen=seen):
        await conn.rpc("", "rpc.upper", b"one", timeout=TIMEOUT_S)
        await conn.rpc("", "rpc.upper", b"two", timeout=TIMEOUT_S)

    reply_queues = {m.reply_to for m in seen}
    assert len(reply_queues) == 1  # one reply queue per connection, reused
    [reply_queue] = reply_queues
    assert reply_queue is not None and reply_queue.startswith("amq.gen-")

    # Exclusive to the caller's connection: nobody else may read it.
    with pytest.raises(wharf.ResourceLocked):
        await server.declare_queue(reply_queue, passive=True)
    with pytest.raises(wharf.ResourceLocked):
        await server.consume(reply_queue)

    # And it goes away with that connection.
    await conn.close()
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            try:
                await server.declare_queue(reply_queue, passive=True)
            except wharf.NotFound:
                break


async def test_concurrent_rpcs_get_their_own_replies(
    conn: wharf.Connection, connect: Connect
) -> None:
    release = asyncio.Event()

    async def slow(msg: wharf.Message) -> bytes:
        await release.wait()
        return b"slow-" + msg.body

    async def fast(msg: wharf.Message) -> bytes:
        return b"fast-" + msg.body

    # The slow request is answered after the fast ones, so replies arrive out of
    # order and must be matched by correlation id.
    slow_server: wharf.Connection = await connect()
    fast_server: wharf.Connection = await connect()
    async with responder(slow_server, "rpc.slow", slow), responder(fast_server, "rpc.fast", fast):
        pending = asyncio.create_task(conn.rpc("", "rpc.slow", b"0", timeout=TIMEOUT_S))
        replies = await asyncio.gather(
            *(conn.rpc("", "rpc.fast", b"%d" % i, timeout=TIMEOUT_S) for i in range(1, 6))
        )
        assert [r.body for r in replies] == [b"fast-%d" % i for i in range(1, 6)]
        assert not pending.done()
        release.set()
        assert (await pending).body == b"slow-0"


async def test_rpc_to_unroutable_destination_raises_at_once(conn: wharf.Connection) -> None:
    with pytest.raises(wharf.Unroutable):
        await conn.rpc("", "nobody-serves-this", b"ping", timeout=TIMEOUT_S)


async def test_rpc_timeout_then_later_rpc_works(conn: wharf.Connection, connect: Connect) -> None:
    await conn.declare_queue("rpc.later")  # routable, but nobody answers yet

    with pytest.raises(TimeoutError):
        await conn.rpc("", "rpc.later", b"first", timeout=0.2)

    server: wharf.Connection = await connect()
    async with responder(server, "rpc.later"):
        # The unanswered request is served first; its late reply is dropped, and the
        # next call gets its own reply, not that one.
        reply = await conn.rpc("", "rpc.later", b"second", timeout=TIMEOUT_S)
    assert reply.body == b"SECOND"
