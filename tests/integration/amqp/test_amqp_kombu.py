"""kombu, unmodified, against Wharf's AMQP listener (py-amqp underneath, as Celery uses it).

kombu blocks its thread, and the broker serves in the test's event loop: the kombu code
runs in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import urllib.request
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from wharf.broker.server import Broker

TIMEOUT_S = 10.0


@pytest.fixture
def kombu_url(broker: Broker) -> str:
    return f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}//"


async def test_producer_consumer(kombu_url: str) -> None:
    def scenario() -> None:
        with Connection(kombu_url, connect_timeout=TIMEOUT_S) as conn:
            tasks = Exchange("tasks", "direct", durable=True)
            high = Queue("tasks.high", tasks, routing_key="high", durable=True)
            low = Queue("tasks.low", tasks, routing_key="low", durable=True)
            with conn.channel() as channel:
                producer = Producer(channel, exchange=tasks, serializer="json")
                for i in range(3):
                    producer.publish({"n": i}, routing_key="high", declare=[high, low], retry=True)
                producer.publish({"n": "low"}, routing_key="low", headers={"x-kind": "low"})
                got: list[tuple[str, Any]] = []

                def on_message(body: Any, message: Any) -> None:
                    got.append((message.delivery_info["routing_key"], body))
                    if body == {"n": 1} and not message.delivery_info["redelivered"]:
                        message.requeue()  # back to the queue, delivered again
                    else:
                        message.ack()

                with Consumer(channel, [high, low], callbacks=[on_message], accept=["json"]):
                    while len(got) < 5:
                        conn.drain_events(timeout=TIMEOUT_S)
                assert sorted(got, key=str) == sorted(
                    [
                        ("high", {"n": 0}),
                        ("high", {"n": 1}),
                        ("high", {"n": 1}),
                        ("high", {"n": 2}),
                        ("low", {"n": "low"}),
                    ],
                    key=str,
                )
                assert high.bind(channel).queue_declare(passive=True).message_count == 0
                # Nothing more: drain_events times out.
                with (
                    Consumer(channel, [high], callbacks=[on_message], accept=["json"]),
                    pytest.raises(socket.timeout),
                ):
                    conn.drain_events(timeout=0.2)

    await asyncio.to_thread(scenario)


async def test_simple_queue_and_purge(kombu_url: str) -> None:
    def scenario() -> None:
        with Connection(kombu_url, connect_timeout=TIMEOUT_S) as conn:
            queue = conn.SimpleQueue("simple")
            for i in range(3):
                queue.put({"i": i}, serializer="json")
            first = queue.get(block=True, timeout=TIMEOUT_S)
            assert first.payload == {"i": 0}
            first.ack()
            second = queue.get(block=True, timeout=TIMEOUT_S)
            second.reject(requeue=True)
            # The consumer has no prefetch limit: "i": 2 may be ahead of the requeued one.
            rest = [queue.get(block=True, timeout=TIMEOUT_S) for _ in range(2)]
            assert sorted(m.payload["i"] for m in rest) == [1, 2]
            assert [m.delivery_info["redelivered"] for m in rest if m.payload["i"] == 1] == [True]
            for m in rest:
                m.ack()
            with pytest.raises(queue.Empty):
                queue.get(block=True, timeout=0.2)
            queue.close()

            idle = Queue("idle").bind(conn.default_channel)
            idle.declare()
            producer = Producer(conn.default_channel)
            for i in range(2):
                producer.publish({"i": i}, routing_key="idle", serializer="json")
            assert idle.purge() == 2
            assert idle.get() is None

    await asyncio.to_thread(scenario)


async def test_ensure_reconnects_after_operator_close(kombu_url: str, broker: Broker) -> None:
    """``Connection.ensure`` retries a publish whose connection the broker closed
    (``DELETE /api/connections/{name}``: connection.close 320)."""

    def scenario() -> None:
        with Connection(kombu_url, connect_timeout=TIMEOUT_S) as conn:
            queue = conn.SimpleQueue("ensured")
            queue.put("before")
            [listed] = api(broker, "GET", "connections")
            assert listed["protocol"] == "amqp"
            assert listed["client_properties"]["product"] == "py-amqp"
            api(broker, "DELETE", f"connections/{listed['name']}")
            producer = Producer(conn.default_channel)
            publish = conn.ensure(producer, producer.publish, max_retries=5, interval_start=0.1)
            publish("after", routing_key="ensured", exchange="")
            queue = conn.SimpleQueue("ensured")
            got = [queue.get(block=True, timeout=TIMEOUT_S) for _ in range(2)]
            assert [m.payload for m in got] == ["before", "after"]
            for m in got:
                m.ack()
            queue.close()
            [again] = api(broker, "GET", "connections")
            assert again["name"] != listed["name"]  # kombu connected again

    await asyncio.to_thread(scenario)


def api(broker: Broker, method: str, path: str) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{broker.http_port}/api/{path}",
        method=method,
        headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()},
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        return json.loads(response.read())
