"""The SDK pointed at the broker's HTTP port fails at once with a clear error (not a
timeout), and the probe that makes this possible is harmless to a Wharf broker.
(``wharf ctl`` pointed at the Wharf port: test_ctl.py.)"""

from __future__ import annotations

import asyncio

import pytest

import wharf
from wharf.broker.server import Broker

# Well under the SDK's 10 s default: without the HTTP check the connect times out
# (TimeoutError) instead of raising ProtocolMismatch, which is what fails the tests.
CONNECT_TIMEOUT_S = 3.0
HTTP_MESSAGE = "this port speaks HTTP; the Wharf port is 5680"


def http_port_url(broker: Broker) -> str:
    return f"wharf://guest:guest@127.0.0.1:{broker.http_port}"


async def test_sdk_at_the_http_port_raises_protocol_mismatch(broker: Broker) -> None:
    with pytest.raises(wharf.ProtocolMismatch) as info:
        await wharf.connect(http_port_url(broker), timeout=CONNECT_TIMEOUT_S)

    assert HTTP_MESSAGE in str(info.value)
    assert f"127.0.0.1:{broker.http_port}" in str(info.value)
    assert info.value.fatal and not info.value.retriable


async def test_sdk_with_reconnect_at_the_http_port_also_fails_at_once(broker: Broker) -> None:
    with pytest.raises(wharf.ProtocolMismatch, match=HTTP_MESSAGE):
        await wharf.connect(http_port_url(broker), timeout=CONNECT_TIMEOUT_S, reconnect=True)


async def test_blocking_client_at_the_http_port(broker: Broker) -> None:
    def run() -> None:
        wharf.sync.connect(http_port_url(broker), timeout=CONNECT_TIMEOUT_S)

    with pytest.raises(wharf.ProtocolMismatch, match=HTTP_MESSAGE):
        await asyncio.to_thread(run)


async def test_the_probe_is_ignored_by_the_broker(url: str) -> None:
    # Every connection sends the probe; a Wharf broker ignores it and serves as usual.
    async with await wharf.connect(url) as conn:
        await conn.declare_queue("q")
        await conn.publish("", "q", b"m")
        msg = await conn.get("q", no_ack=True)
        assert msg is not None and msg.body == b"m"
