"""A failed fsync is never retried: waiting publishes are nacked, consumers keep going."""

from __future__ import annotations

import errno

import pytest

import wharf
from wharf.broker.server import Broker


async def test_fsync_failure_nacks_persistent_publishes_and_keeps_serving(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.declare_queue("dq", durable=True)
    await conn.declare_queue("tq")
    await conn.publish("", "dq", b"before", persistent=True)
    assert broker.store is not None
    broker.store.fail_fsync = OSError(errno.EIO, "injected I/O error")
    with pytest.raises(wharf.ResourceError) as info:
        await conn.publish("", "dq", b"lost-disk", persistent=True)
    assert info.value.code == 506
    # The store stays failed: no retry on the same file.
    broker.store.fail_fsync = None
    with pytest.raises(wharf.ResourceError):
        await conn.publish("", "dq", b"after", persistent=True)
    # Transient traffic and consumers are still served, on the same connection.
    await conn.publish("", "tq", b"transient")
    msg = await conn.get("tq")
    assert msg is not None and msg.body == b"transient"
    await msg.ack()
    kept = await conn.get("dq")
    assert kept is not None and kept.body == b"before"
    await kept.ack()
