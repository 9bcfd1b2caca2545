"""A quorum queue (x-queue-type=quorum) keeps every message it takes on disk, transient
ones too: a confirmed publish survives kill -9, as on RabbitMQ's quorum queues; a classic
durable queue keeps only persistent ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import broker_process

STOP_MODES = ["sigterm", "kill"]
QUORUM = {"x-queue-type": "quorum"}
MESSAGES = 5


@pytest.mark.parametrize("mode", STOP_MODES)
async def test_confirmed_transient_messages_of_a_quorum_queue_survive(
    tmp_path: Path, mode: str
) -> None:
    async with broker_process(tmp_path / "data") as bp:
        conn = await bp.connect()
        await conn.declare_queue("qq", durable=True, arguments=QUORUM)
        await conn.declare_queue("cq", durable=True)
        for i in range(MESSAGES):
            # Confirmed: for the quorum queue, only once the store fsynced it.
            await conn.publish("", "qq", b"q%d" % i)
            await conn.publish("", "cq", b"c%d" % i)
        await bp.stop(mode)
        await conn.close()
        await bp.start()
        conn = await bp.connect()
        got = []
        while (msg := await conn.get("qq")) is not None:
            got.append(msg.body)
            await msg.ack()
        assert got == [b"q%d" % i for i in range(MESSAGES)]
        assert await conn.get("cq") is None  # transient: gone with the restart
        info = await conn.declare_queue("qq", durable=True, arguments=QUORUM)
        assert info.name == "qq"
        await conn.close()
