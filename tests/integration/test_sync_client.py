"""The blocking client (``wharf.sync``) end to end against a real broker.

The tests are plain functions (the sync API must not be called from a running event
loop), so the broker runs in this process on an event loop in a background thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import pytest

import wharf

from ..conftest import make_settings
from ..helpers import broker_thread

# Iteration ends after this long without a message (consume's idle timeout).  It is also
# how long a delivery may take to follow an ack across three threads (test, SDK loop,
# broker loop): 0.5 s could end an iteration early on a loaded machine, as 1 s did in
# test_subscribe's blocking stream.
IDLE_TIMEOUT_S: Final = 2.0
CALL_TIMEOUT_S: Final = 10.0


@pytest.fixture
def sync_url(tmp_path: Path) -> Iterator[str]:
    with broker_thread(make_settings(tmp_path)) as broker:
        yield f"wharf://guest:guest@127.0.0.1:{broker.port}"


@pytest.fixture
def conn(sync_url: str) -> Iterator[wharf.sync.SyncConnection]:
    with wharf.sync.connect(sync_url, call_timeout=CALL_TIMEOUT_S) as c:
        yield c


def test_declare_publish_get_ack(conn: wharf.sync.SyncConnection) -> None:
    conn.declare_exchange("orders", "topic", durable=True)
    info = conn.declare_queue("eu", durable=True)
    assert info == wharf.QueueInfo("eu", 0, 0)
    conn.bind_queue("eu", "orders", "eu.#")
    conn.publish("orders", "eu.de", b"one", message_id="1", headers={"k": "v"}, persistent=True)
    conn.publish_many("orders", "eu.fr", [b"two", b"three"])
    conn.publish("orders", "us.x", b"unrouted")  # confirmed and dropped
    assert conn.declare_queue("eu", passive=True).messages == 3

    msg = conn.get("eu")
    assert msg is not None
    assert (msg.body, msg.routing_key, msg.exchange) == (b"one", "eu.de", "orders")
    assert msg.message_id == "1" and msg.headers == {"k": "v"} and msg.persistent
    assert msg.delivery_count == 1 and not msg.redelivered
    msg.ack()
    second = conn.get("eu")
    assert second is not None and second.body == b"two"
    second.reject(requeue=True)
    again = conn.get("eu")
    assert again is not None and again.body == b"two" and again.redelivered
    again.ack()
    assert conn.purge_queue("eu") == 1
    assert conn.get("eu") is None
    conn.unbind_queue("eu", "orders", "eu.#")
    assert conn.delete_queue("eu") == 0
    conn.delete_exchange("orders")


def test_errors_raise_in_the_calling_thread(conn: wharf.sync.SyncConnection) -> None:
    with pytest.raises(wharf.NotFound):
        conn.declare_queue("missing", passive=True)
    with pytest.raises(wharf.Unroutable):
        conn.publish("", "no-such-queue", b"x", mandatory=True)
    conn.declare_queue("still-usable")  # request-level errors leave it usable


def test_consume_iterates_until_idle_and_acks(conn: wharf.sync.SyncConnection) -> None:
    conn.declare_queue("work")
    conn.publish_many("", "work", [b"m%d" % i for i in range(5)])
    got = []
    with conn.consume("work", prefetch=2, timeout=IDLE_TIMEOUT_S) as messages:
        for msg in messages:  # ends after IDLE_TIMEOUT_S without a message
            got.append(msg.body)
            msg.ack()
        conn.publish("", "work", b"late")
        late = list(messages)  # iterate again: still subscribed
        assert [m.body for m in late] == [b"late"]
        late[0].ack()
    assert got == [b"m%d" % i for i in range(5)]
    assert conn.declare_queue("work", passive=True) == wharf.QueueInfo("work", 0, 0)


def test_verbs_the_blocking_client_once_lacked(conn: wharf.sync.SyncConnection) -> None:
    # Generated from the async methods: policies, topic bindings, nack's delay_ms.
    assert conn.set_policy("p-sync", "^sync-", {"max-length": 5}) is True
    assert [p["name"] for p in conn.list_policies()] == ["p-sync"]
    conn.delete_policy("p-sync")
    conn.declare_exchange("sx", "topic")
    conn.create_topic("sync-log")
    conn.bind_topic("sync-log", "sx", "#")
    conn.publish("sx", "a", b"to the log")
    assert [r.value for r in conn.fetch("sync-log", 0, 0)] == [b"to the log"]
    conn.unbind_topic("sync-log", "sx", "#")
    conn.declare_queue("sync-q")
    conn.publish("", "sync-q", b"retry")
    with conn.consume("sync-q", timeout=CALL_TIMEOUT_S) as messages:
        first = next(messages)
        assert first.body == b"retry" and first.delivery_count == 1
        first.nack(requeue=True, delay_ms=1)
        again = next(messages)
        assert again.body == b"retry" and again.delivery_count == 2
        again.ack()


def test_nack_requeues_and_cancel_returns_prefetched(conn: wharf.sync.SyncConnection) -> None:
    conn.declare_queue("retry")
    conn.publish_many("", "retry", [b"a", b"b", b"c"])
    with conn.consume("retry", prefetch=10, timeout=IDLE_TIMEOUT_S) as messages:
        first = next(messages)
        assert first.body == b"a"
        first.nack(requeue=True)
        # "b" and "c" were prefetched but never handed out: leaving requeues them.
    seen = []
    while (msg := conn.get("retry")) is not None:
        seen.append((msg.body, msg.redelivered))
        msg.ack()
    assert seen == [(b"a", True), (b"b", True), (b"c", True)]


def test_rpc_round_trip_between_two_sync_connections(
    sync_url: str, conn: wharf.sync.SyncConnection
) -> None:
    conn.declare_queue("rpc-server")
    ready = threading.Event()

    def serve_one() -> None:
        with (
            wharf.sync.connect(sync_url) as server,
            server.consume("rpc-server", timeout=CALL_TIMEOUT_S) as requests,
        ):
            ready.set()
            request = next(requests)
            assert request.reply_to is not None
            server.publish(
                "", request.reply_to, request.body.upper(), correlation_id=request.correlation_id
            )
            request.ack()

    server_thread = threading.Thread(target=serve_one)
    server_thread.start()
    assert ready.wait(CALL_TIMEOUT_S)
    reply = conn.rpc("", "rpc-server", b"ping", timeout=CALL_TIMEOUT_S)
    assert reply.body == b"PING"
    server_thread.join(CALL_TIMEOUT_S)
    with pytest.raises(TimeoutError):  # nobody answers now
        conn.rpc("", "rpc-server", b"again", timeout=0.2)


def test_one_connection_shared_by_threads(conn: wharf.sync.SyncConnection) -> None:
    conn.declare_queue("shared")
    threads, per_thread = 8, 50

    def publish(n: int) -> None:
        for i in range(per_thread):
            conn.publish("", "shared", f"{n}-{i}".encode())

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(publish, range(threads)))
    assert conn.declare_queue("shared", passive=True).messages == threads * per_thread

    bodies: list[bytes] = []
    lock = threading.Lock()
    with conn.consume("shared", prefetch=20, timeout=IDLE_TIMEOUT_S) as messages:

        def drain() -> None:
            for msg in messages:  # several threads take turns on one consumer
                with lock:
                    bodies.append(msg.body)
                msg.ack()

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: drain(), range(4)))
    assert sorted(bodies) == sorted(
        f"{n}-{i}".encode() for n in range(threads) for i in range(per_thread)
    )


def test_events_and_close(sync_url: str) -> None:
    events: list[str] = []
    before = set(threading.enumerate())
    conn = wharf.sync.connect(sync_url)
    # The broker runs in this process: its scrypt workers (wharf-auth-*) start on the
    # first login (guest pays a scrypt too); they are not the SDK's.
    new = set(threading.enumerate()) - before
    (loop_thread,) = {t for t in new if not t.name.startswith("wharf-auth")}
    assert loop_thread.name == "wharf-sync" and loop_thread.daemon
    conn.on_event(lambda event: events.append(event.name))
    assert conn.is_connected and not conn.is_closed
    conn.declare_queue("q")
    conn.close()
    conn.close()  # idempotent
    assert conn.is_closed and events == ["closed"]
    assert not loop_thread.is_alive()
    with pytest.raises(wharf.ConnectionLost):
        conn.declare_queue("q")


def test_blocking_call_from_the_loop_thread_is_refused(conn: wharf.sync.SyncConnection) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def callback(event: wharf.ConnectionEvent) -> None:
        try:
            conn.declare_queue("from-callback")
        except RuntimeError as exc:
            errors.append(exc)
        done.set()

    conn.on_event(callback)
    # A refused fire-and-forget publish: its "error" event runs the callback on the
    # event-loop thread.
    conn.publish("missing-exchange", "k", b"m", confirm=False)
    assert done.wait(CALL_TIMEOUT_S)
    assert len(errors) == 1 and "event-loop thread" in str(errors[0])


def test_connect_failure_raises_and_leaves_no_thread() -> None:
    before = sum(1 for t in threading.enumerate() if t.name == "wharf-sync")
    with pytest.raises(wharf.ConnectionLost):
        wharf.sync.connect("wharf://guest:guest@127.0.0.1:1", timeout=5)
    after = sum(1 for t in threading.enumerate() if t.name == "wharf-sync")
    assert after == before
