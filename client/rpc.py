"""Request-reply over a private reply queue (``Connection.rpc``)."""

from __future__ import annotations

import asyncio
from typing import Any

from wharf.protocol import frames as F
from wharf.protocol.errors import WharfError

from .core import NEW_REQUEST, ConnectionCore, clone_error, result_of
from .message import Message, messages_from_entries


class RpcReplies:
    """A no_ack consumer on a server-named exclusive queue, routing replies to waiters
    by correlation id."""

    def __init__(self, core: ConnectionCore) -> None:
        self.core = core
        self.queue = ""
        self.consumer_tag = ""
        self.ack_id = 0
        self.waiters: dict[str, asyncio.Future[Message]] = {}
        self._lock = asyncio.Lock()
        self.ready = False

    async def ensure_ready(self) -> str:
        """Declare the reply queue and consume from it, once; returns the queue name."""
        if self.ready:
            return self.queue
        async with self._lock:
            if self.ready:
                return self.queue
            core = self.core
            reply = await core.request(
                F.QueueDeclare(NEW_REQUEST, "", durable=False, exclusive=True, auto_delete=True)
            )
            self.queue = result_of(reply)["queue"]
            rid = core.new_request_id()
            tag = f"wharf-py-rpc-{rid}"
            core.add_consumer(tag, rid, self)
            try:
                _, fut = core.start_request(
                    F.Consume(rid, self.queue, tag, prefetch=0, no_ack=True, exclusive=True)
                )
                await fut
            except BaseException:
                core.remove_consumer(tag, rid)
                raise
            self.consumer_tag = tag
            self.ack_id = rid
            self.ready = True
            return self.queue

    # -- DeliverySink ----------------------------------------------------------------

    def on_deliver(self, entries: list[Any]) -> None:
        waiters = self.waiters
        for msg in messages_from_entries(entries, None):
            cid = msg.correlation_id
            fut = waiters.pop(cid, None) if cid is not None else None
            if fut is not None and not fut.done():
                fut.set_result(msg)
            # Late replies (after a timeout) and strays are dropped.

    def on_cancelled(self, error: WharfError) -> None:
        self.ready = False  # the next rpc() sets up a new reply queue
        self._fail_waiters(error)

    def on_ack_error(self, error: WharfError) -> None:
        pass  # no_ack: there are no acks

    def on_connection_lost(self, error: WharfError, resumable: bool) -> None:
        # Never resumed: after a reconnect the next rpc() makes a new reply queue.
        self.ready = False
        self._fail_waiters(error)

    def _fail_waiters(self, error: WharfError) -> None:
        waiters = self.waiters
        self.waiters = {}
        for fut in waiters.values():
            if not fut.done():
                fut.set_exception(clone_error(error))
