"""Fixtures of the AMQP listener's tests: the broker with its AMQP port on a free port,
pika connection parameters for it, and a raw AMQP client for bad-input tests.

pika's BlockingConnection blocks its thread, and the broker runs in the test's event
loop: the tests run pika code in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pika
import pytest

from wharf.broker.server import Broker

from .raw_amqp import RawAmqp, free_port


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"amqp_port": free_port(), "heartbeat_s": 0}


@pytest.fixture
def amqp_params(broker: Broker) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host="127.0.0.1",
        port=broker.amqp_port,
        credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=1,
        blocked_connection_timeout=10,
        socket_timeout=10,
    )


@pytest.fixture
async def raw_amqp(broker: Broker) -> AsyncIterator[Callable[..., Any]]:
    clients: list[RawAmqp] = []

    async def _open(**kwargs: Any) -> RawAmqp:
        c = await RawAmqp.open(broker.amqp_port, **kwargs)
        clients.append(c)
        return c

    yield _open
    for c in clients:
        await c.close()
