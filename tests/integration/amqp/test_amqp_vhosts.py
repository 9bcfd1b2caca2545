"""AMQP connections and the core's vhosts and limits: connection.open names the vhost,
and the same rules as the native protocol decide (core/vhosts.py, core/quotas.py)."""

from __future__ import annotations

import asyncio
import threading

import pika
import pika.exceptions
import pytest

import wharf
from wharf.broker.server import Broker

from ..test_api import api
from ..test_http import scrape, value


def _params(broker: Broker, vhost: str = "/", user: str = "guest") -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host="127.0.0.1",
        port=broker.amqp_port,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(user, "guest" if user == "guest" else "pw-" + user),
        connection_attempts=1,
        socket_timeout=10,
    )


async def test_connection_open_names_the_vhost_and_isolates_it(broker: Broker) -> None:
    assert (await api(broker, "PUT", "/api/vhosts/orders")).status == 201

    def publish_in_orders() -> None:
        with pika.BlockingConnection(_params(broker, "orders")) as c:
            ch = c.channel()
            ch.confirm_delivery()
            ch.queue_declare("jobs", durable=True)
            ch.basic_publish("", "jobs", b"in orders", mandatory=True)

    await asyncio.to_thread(publish_in_orders)
    # The native SDK sees it in "orders" and nothing in "/".
    url = f"wharf://guest:guest@127.0.0.1:{broker.port}"
    async with await wharf.connect(url + "/orders") as conn:
        msg = await conn.get("jobs")
        assert msg is not None and msg.body == b"in orders"
        await msg.ack()
    async with await wharf.connect(url) as conn:
        with pytest.raises(wharf.NotFound):
            await conn.declare_queue("jobs", passive=True)
    r = await api(broker, "GET", "/api/connections")
    assert r.status == 200


async def test_unknown_vhost_is_refused_with_530(broker: Broker) -> None:
    def open_unknown() -> None:
        pika.BlockingConnection(_params(broker, "nowhere"))

    # pika reports a close during connection.open as a probable access denial.
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        await asyncio.to_thread(open_unknown)
    assert "(530)" in str(info.value) and "vhost nowhere not found" in str(info.value)


async def test_vhost_and_user_connection_limits_apply_to_amqp(broker: Broker) -> None:
    assert (await api(broker, "PUT", "/api/vhosts/tiny")).status == 201
    limit = {"value": 1}
    assert (await api(broker, "PUT", "/api/vhost-limits/tiny/max-connections", limit)).status in (
        200,
        201,
        204,
    )

    def two_in_tiny() -> str:
        with pika.BlockingConnection(_params(broker, "tiny")):
            try:
                pika.BlockingConnection(_params(broker, "tiny"))
            except pika.exceptions.ProbableAccessDeniedError as exc:
                return str(exc)
        return ""

    refused = await asyncio.to_thread(two_in_tiny)
    assert "(530)" in refused and "connection limit in vhost 'tiny' (1)" in refused

    user = {"password": "pw-app", "tags": ""}
    assert (await api(broker, "PUT", "/api/users/app", user)).status == 201
    perm = {"configure": ".*", "write": ".*", "read": ".*"}
    assert (await api(broker, "PUT", "/api/permissions/%2F/app", perm)).status == 201
    assert (await api(broker, "PUT", "/api/user-limits/app/max-connections", limit)).status in (
        200,
        201,
        204,
    )

    def two_as_app() -> str:
        with pika.BlockingConnection(_params(broker, "/", "app")):
            try:
                pika.BlockingConnection(_params(broker, "/", "app"))
            except pika.exceptions.ProbableAccessDeniedError as exc:
                return str(exc)
        return ""

    refused = await asyncio.to_thread(two_as_app)
    assert "(530)" in refused and "for user 'app'" in refused


async def test_metrics_count_connections_by_protocol(
    broker: Broker, conn: wharf.Connection
) -> None:
    """One SDK connection (the fixture) and one pika connection: /metrics counts each
    under its protocol."""
    opened = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with pika.BlockingConnection(_params(broker)) as c:
            c.channel()
            opened.set()
            while not release.is_set():
                c.process_data_events(time_limit=0.05)

    task = asyncio.ensure_future(asyncio.to_thread(hold))
    try:
        assert await asyncio.to_thread(opened.wait, 10)
        samples = await scrape(broker)
        assert value(samples, "wharf_protocol_connections", protocol="amqp") == 1
        assert value(samples, "wharf_protocol_connections", protocol="native") == 1
    finally:
        release.set()
        await task
