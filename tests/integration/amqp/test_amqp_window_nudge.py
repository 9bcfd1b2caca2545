"""Consumers that defer their acks past their next poll do not stall (py-amqp, kombu's hub).

Celery's worker (kombu's hub) runs an early ack with ``hub.call_soon``: the ack is written
only after the hub's next ``epoll`` returns. When the worker has read its whole prefetch
window within one turn of the hub, every ack it owes is waiting for that poll, and nothing
else will come on the socket: the poll sleeps until the hub's own timer (up to 10 s).
Wharf answers acks fast enough to refill a window within one such turn, so it sends a
heartbeat to a connection that holds a just-filled window in silence (``WINDOW_NUDGE_S``).

The clients block; they run in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import select
import threading
import time
from typing import Any, Final

import amqp
import pytest
from kombu import Connection, Consumer, Producer, Queue
from kombu.asynchronous import Hub

from wharf.broker.server import Broker

from .raw_amqp import free_port

# Well below the 30 s a 60 s heartbeat interval leaves between idle heartbeats.
NUDGE_WAIT_S: Final = 3.0
HEARTBEAT_S: Final = 60
MESSAGES: Final = 3000
PREFETCH: Final = 4
# The whole run on a loaded machine.
RUN_TIMEOUT_S: Final = 120.0
# Between two messages; a stall of the old kind is the hub's poll timeout, 10 s.
MAX_GAP_S: Final = 5.0
# A hub timer far away makes the hub's poll wait its longest (10 s), as in a worker.
FAR_TIMER_S: Final = 3600.0


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"amqp_port": free_port(), "heartbeat_s": HEARTBEAT_S}


@pytest.fixture
def url(broker: Broker) -> str:
    return f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}//"


async def test_a_silent_full_window_gets_a_heartbeat(broker: Broker) -> None:
    """A consumer holds its one-message window without acking: a frame arrives within
    NUDGE_WAIT_S, not only at the next idle heartbeat (30 s)."""

    def scenario() -> tuple[bool, float]:
        conn = amqp.Connection(f"127.0.0.1:{broker.amqp_port}", heartbeat=HEARTBEAT_S)
        conn.connect()
        try:
            ch = conn.channel()
            ch.queue_declare("nudge.q", auto_delete=True)
            ch.basic_qos(0, 1, False)
            # Published before the consumer exists: the window fills at basic.consume,
            # and the client sends nothing after it (a publish just after the delivery
            # would count as the client speaking, and rightly cancel the nudge).
            ch.basic_publish(amqp.Message(b"one"), routing_key="nudge.q")
            ch.basic_publish(amqp.Message(b"two"), routing_key="nudge.q")
            got: list[Any] = []
            ch.basic_consume("nudge.q", callback=got.append)
            while not got:
                conn.drain_events(timeout=NUDGE_WAIT_S)
            start = time.monotonic()
            readable, _, _ = select.select([conn.sock], [], [], NUDGE_WAIT_S)
            waited = time.monotonic() - start
            frame = conn.transport.read_frame() if readable else None
            ch.basic_ack(got[0].delivery_tag)
            return frame is not None and frame[0] == 8, waited  # 8: a heartbeat frame
        finally:
            conn.close()

    heartbeat, waited = await asyncio.to_thread(scenario)
    assert heartbeat, f"no heartbeat within {waited:.1f} s"


async def test_kombu_hub_with_deferred_acks_does_not_stall(url: str) -> None:
    """Celery's worker pattern: kombu's hub, prefetch 4, each ack by ``hub.call_soon``.

    Whether the old stall happens depends on timing (it did in 2 of 2 runs on a loaded
    machine, 0 of 3 on a quieter one); the test above is the deterministic one."""

    def scenario() -> tuple[float, float]:
        hub = Hub()
        hub.call_later(FAR_TIMER_S, lambda: None)
        queue = Queue("nudge.tasks", routing_key="nudge.tasks", auto_delete=True)
        with Connection(url, heartbeat=HEARTBEAT_S) as conn:
            conn.ensure_connection()
            with conn.channel() as ch:
                queue(ch).declare()

            def publish() -> None:  # as Celery's senders: while the worker consumes
                with Connection(url, heartbeat=HEARTBEAT_S) as pconn:
                    producer = Producer(pconn)
                    for i in range(MESSAGES):
                        producer.publish({"i": i}, routing_key="nudge.tasks")

            sender = threading.Thread(target=publish)
            done = [0]
            last = [0.0]
            longest_gap = [0.0]

            def on_message(message: Any) -> None:
                now = time.monotonic()
                if done[0]:
                    longest_gap[0] = max(longest_gap[0], now - last[0])
                last[0] = now
                done[0] += 1
                hub.call_soon(message.ack)  # as Celery's early ack

            consumer = Consumer(conn, [queue], on_message=on_message, prefetch_count=PREFETCH)
            conn.transport.register_with_event_loop(conn.connection, hub)
            start = time.monotonic()
            sender.start()
            with consumer:
                loop = hub.create_loop()
                while done[0] < MESSAGES and time.monotonic() - start < RUN_TIMEOUT_S:
                    next(loop)
            elapsed = time.monotonic() - start
            sender.join(RUN_TIMEOUT_S)
            hub.close()
            assert done[0] == MESSAGES, f"{done[0]} of {MESSAGES} in {elapsed:.1f} s"
            return elapsed, longest_gap[0]

    elapsed, gap = await asyncio.to_thread(scenario)
    # A stall of the old kind lasts the hub's whole poll timeout (10 s).
    assert gap < MAX_GAP_S, f"a {gap:.1f} s pause between messages ({elapsed:.1f} s in all)"
