"""Endurance over AMQP 0-9-1: pika with publisher confirms publishes into a durable queue
of a non-default vhost past several segment rolls while a second pika connection
consumes part of it; the broker is killed with SIGKILL while the publisher is still
publishing, restarted on the same data directory, and pika consumes the rest.

Judged from what pika was told: every message whose publish was confirmed and that was
not acked before the crash comes back; each id at most once after the restart, in
publish order; a message delivered before the crash comes back only with
``redelivered=True``; an acked one (its ack made durable by a confirmed publish on the
same connection) never comes back; nothing unconfirmed beyond the one publish in flight
at the kill shows up.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pika.exceptions
from harness import SMALL_SEGMENT_BYTES, BrokerProcess, broker_process, free_port

VHOST = "orders"
QUEUE = "amqp.soak"
BARRIER_QUEUE = "amqp.barrier"
BODY_PAD = b"." * 4096
ID_RE = re.compile(rb"m(\d+)\|")
# About 250 messages of 4 KiB per 1 MiB segment: at least four rolls before the kill.
MIN_CONFIRMED_AT_KILL = 1300
ACKED = 400
HELD = 100
PREFETCH = 200
MEMORY_BUDGET_BYTES = 8192
TIMEOUT_S = 30.0
POLL_S = 0.02


def body(i: int) -> bytes:
    return b"m%d|" % i + BODY_PAD


def msg_id(data: bytes) -> int:
    m = ID_RE.match(data)
    assert m is not None, data[:40]
    return int(m.group(1))


def params(port: int) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host="127.0.0.1",
        port=port,
        virtual_host=VHOST,
        credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=1,
        socket_timeout=10,
        blocked_connection_timeout=10,
    )


def create_vhost(bp: BrokerProcess) -> None:
    auth = base64.b64encode(b"guest:guest").decode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{bp.http_port}/api/vhosts/{VHOST}",
        method="PUT",
        headers={"Authorization": f"Basic {auth}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status in (201, 204)


@dataclass
class Publisher:
    """Publishes ids 0, 1, 2, ... one confirmed persistent publish at a time until the
    connection is lost."""

    port: int
    sent: int = 0  # ids < sent were handed to pika
    confirmed: int = 0  # ids < confirmed were confirmed
    errors: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            with pika.BlockingConnection(params(self.port)) as conn:
                ch = conn.channel()
                ch.confirm_delivery()
                ch.queue_declare(QUEUE, durable=True)
                props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
                while True:
                    self.sent += 1
                    ch.basic_publish("", QUEUE, body(self.sent - 1), props, mandatory=True)
                    self.confirmed = self.sent
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.StreamLostError):
            return  # the broker was killed
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))


def consume_part(port: int) -> tuple[list[int], list[int]]:
    """Ack ACKED messages and hold HELD unacked; a confirmed publish on the same
    connection then makes the acks durable.  Returns (acked ids, held ids); the
    connection is left open (the kill closes it)."""
    conn = pika.BlockingConnection(params(port))
    ch = conn.channel()
    acked: list[int] = []
    held: list[int] = []
    # basic.get, not a consumer: a consumer's prefetch would hand out (and so flag as
    # redelivered after the crash) more than the test holds.
    while len(acked) + len(held) < ACKED + HELD:
        method, _props, data = ch.basic_get(QUEUE, auto_ack=False)
        assert method is not None, "the queue ran dry"
        assert not method.redelivered
        if len(acked) < ACKED:
            ch.basic_ack(method.delivery_tag)
            acked.append(msg_id(data))
        else:
            held.append(msg_id(data))
    barrier = conn.channel()
    barrier.confirm_delivery()
    barrier.queue_declare(BARRIER_QUEUE, durable=True)
    barrier.basic_publish(
        "", BARRIER_QUEUE, b"barrier", pika.BasicProperties(delivery_mode=2), mandatory=True
    )
    # Keep the connection (and the held deliveries) open until the kill.
    threading.Thread(target=_hold, args=(conn,), daemon=True).start()
    return acked, held


def _hold(conn: pika.BlockingConnection) -> None:
    try:
        while conn.is_open:
            conn.process_data_events(time_limit=0.2)
    except Exception:  # noqa: BLE001 - the broker is killed under it
        return


def consume_rest(port: int) -> list[tuple[int, bool]]:
    """Everything in the queue after the restart: (id, redelivered), each acked."""
    out: list[tuple[int, bool]] = []
    with pika.BlockingConnection(params(port)) as conn:
        ch = conn.channel()
        ready = ch.queue_declare(QUEUE, passive=True).method.message_count
        ch.basic_qos(prefetch_count=PREFETCH)
        if ready:
            for method, _props, data in ch.consume(QUEUE, inactivity_timeout=TIMEOUT_S):
                assert method is not None, f"{len(out)} of {ready} delivered"
                out.append((msg_id(data), bool(method.redelivered)))
                ch.basic_ack(method.delivery_tag)
                if len(out) == ready:
                    break
            ch.cancel()
        assert ch.queue_declare(QUEUE, passive=True).method.message_count == 0
    return out


async def test_pika_confirmed_publishes_survive_kill_past_segment_rolls(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {
        "WHARF_SEGMENT_BYTES": str(SMALL_SEGMENT_BYTES),
        "WHARF_QUEUE_MEMORY_BUDGET_BYTES": str(MEMORY_BUDGET_BYTES),
        "WHARF_AMQP_PORT": str(free_port()),
    }
    async with broker_process(data, env=env, start=False) as bp:
        await bp.start()
        port = int(bp.extra_env["WHARF_AMQP_PORT"])
        await asyncio.to_thread(create_vhost, bp)
        pub = Publisher(port)
        pub.start()
        async with asyncio.timeout(TIMEOUT_S):
            while pub.confirmed < ACKED + HELD and not pub.errors:  # noqa: ASYNC110 (a thread)
                await asyncio.sleep(POLL_S)
        acked, held = await asyncio.to_thread(consume_part, port)
        assert acked + held == list(range(ACKED + HELD))
        async with asyncio.timeout(TIMEOUT_S):
            while pub.confirmed < MIN_CONFIRMED_AT_KILL and not pub.errors:  # noqa: ASYNC110
                await asyncio.sleep(POLL_S)
        segs = list((data / "vhosts" / VHOST / "messages").glob("*.seg"))
        assert len(segs) >= 4, segs  # several rolls
        # kill -9 with the publisher still publishing.
        await bp.kill()
        assert pub.thread is not None
        await asyncio.to_thread(pub.thread.join, TIMEOUT_S)
        assert not pub.errors, pub.errors
        confirmed, sent = pub.confirmed, pub.sent

        bp.extra_env["WHARF_AMQP_PORT"] = str(free_port())
        await bp.start()
        port = int(bp.extra_env["WHARF_AMQP_PORT"])
        back = await asyncio.to_thread(consume_rest, port)
        ids = [i for i, _ in back]
        # Nothing confirmed lost: every confirmed id not acked before the crash is back.
        missing = sorted(set(range(ACKED, confirmed)) - set(ids))
        assert not missing, (len(missing), missing[:10])
        # No duplicates, publish order, nothing acked and nothing never sent.
        assert ids == sorted(set(ids)), "duplicates or out of order after the restart"
        assert ids[0] == ACKED and ids[-1] < sent, (ids[:3], ids[-3:], sent)
        # Delivered before the crash: back flagged; never delivered: not flagged.
        assert all(r for i, r in back if i in set(held))
        assert not [i for i, r in back if r and i not in set(held)]
        assert not bp.log_problems(), bp.log_problems()
