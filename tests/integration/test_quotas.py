"""Per-user limits and byte-rate quotas (docs/security.md "## Limits and quotas").

A user over its max-connections is refused after authentication (506, RabbitMQ's
wording); a user over a byte-rate quota is slowed down, never failed: its publishes and
produces are read later, its deliveries and fetch answers come later.  Rates are checked
with generous bounds only (under 3x the quota), and that something was throttled at all.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final

import pytest

import wharf
from wharf.broker.server import Broker

from ..conftest import make_settings
from ..helpers import wait_until
from .test_api import api
from .test_ctl import run_ctl
from .test_http import scrape

APP: Final = ("app", "app-pw")
QUOTA: Final = 200_000  # bytes/s
BODY: Final = b"x" * 10_000
BATCH: Final = [BODY] * 10  # 100 kB a frame
TOTAL_BATCHES: Final = 8  # 4x the quota: 800 kB
TOTAL_BYTES: Final = TOTAL_BATCHES * len(BATCH) * len(BODY)


async def make_app_user(broker: Broker) -> None:
    r = await api(broker, "PUT", "/api/users/app", {"password": APP[1], "tags": []})
    assert r.status == 201, r
    full = {"configure": ".*", "write": ".*", "read": ".*"}
    r = await api(broker, "PUT", "/api/permissions/%2F/app", full)
    assert r.status == 201, r


async def set_limit(broker: Broker, name: str, value: int, user: str = "app") -> None:
    r = await api(broker, "PUT", f"/api/user-limits/{user}/{name}", {"value": value})
    assert r.status in (200, 201), r


def app_url(broker: Broker) -> str:
    return f"wharf://{APP[0]}:{APP[1]}@127.0.0.1:{broker.port}"


def guest_url(broker: Broker) -> str:
    return f"wharf://guest:guest@127.0.0.1:{broker.port}"


async def throttle_seconds(broker: Broker, direction: str) -> float:
    samples = await scrape(broker)
    key = ("wharf_throttle_seconds_total", frozenset({("user", "app"), ("direction", direction)}))
    return samples.get(key, 0.0)


def record_throttles(conn: wharf.Connection) -> tuple[list[tuple[str, int]], list[str]]:
    """(what on_throttled saw, the directions of "throttled" events)."""
    calls: list[tuple[str, int]] = []
    events: list[str] = []
    conn.on_throttled(lambda direction, ms: calls.append((direction, ms)))
    conn.on_event(lambda e: events.append(e.direction or "") if e.name == "throttled" else None)
    return calls, events


# -- max-connections -------------------------------------------------------------------------


async def test_max_connections_refuses_the_next_login_with_506(broker: Broker) -> None:
    await make_app_user(broker)
    await set_limit(broker, "max-connections", 2)
    first = await wharf.connect(app_url(broker))
    second = await wharf.connect(app_url(broker))
    try:
        with pytest.raises(wharf.WharfError) as refused:
            await wharf.connect(app_url(broker))
        assert refused.value.code == 506
        assert "connection limit (2) for user 'app' is reached" in str(refused.value)
        guest = await wharf.connect(guest_url(broker))  # other users are not limited
        await guest.close()
        await first.close()
        await wait_until(lambda: app_connections_are(broker, 1), what="one app connection")
        third = await wharf.connect(app_url(broker))  # a slot is free again
        await third.close()
    finally:
        await second.close()


async def app_connections_are(broker: Broker, n: int) -> bool:
    r = await api(broker, "GET", "/api/connections")
    return sum(1 for c in r.json() if c["user"] == "app") == n


async def test_user_limits_api_shapes_and_errors(broker: Broker) -> None:
    await make_app_user(broker)
    r = await api(broker, "PUT", "/api/user-limits/app/max-connections", {"value": 5})
    assert r.status == 201 and r.json() == {"user": "app", "name": "max-connections", "value": 5}
    r = await api(broker, "PUT", "/api/user-limits/app/max-connections", {"value": 4})
    assert r.status == 200, r
    await set_limit(broker, "max-channels", 10)
    await set_limit(broker, "max-publish-bytes-per-second", 1_000_000)
    expected = {
        "user": "app",
        "value": {
            "max-channels": 10,
            "max-connections": 4,
            "max-publish-bytes-per-second": 1_000_000,
        },
    }
    assert (await api(broker, "GET", "/api/user-limits")).json() == [expected]
    assert (await api(broker, "GET", "/api/user-limits/app")).json() == [expected]
    assert (await api(broker, "GET", "/api/user-limits/guest")).json() == []
    for path, body, status in (
        ("/api/user-limits/app/max-queues", {"value": 1}, 400),
        ("/api/user-limits/app/max-connections", {"value": "many"}, 400),
        ("/api/user-limits/app/max-connections", {"value": -5}, 400),
        ("/api/user-limits/app/max-consume-bytes-per-second", {"value": 0}, 400),
        ("/api/user-limits/app/max-connections", {"value": 1, "extra": 2}, 400),
        ("/api/user-limits/nobody/max-connections", {"value": 1}, 404),
    ):
        r = await api(broker, "PUT", path, body)
        assert r.status == status, (path, body, r)
    r = await api(broker, "PUT", "/api/user-limits/app/max-channels", {"value": -1})  # = clear
    assert r.status == 200, r
    r = await api(broker, "DELETE", "/api/user-limits/app/max-connections")
    assert r.status == 200, r
    r = await api(broker, "DELETE", "/api/user-limits/app/max-connections")
    assert r.status == 404, r
    r = await api(broker, "GET", "/api/user-limits/app")
    assert r.json() == [{"user": "app", "value": {"max-publish-bytes-per-second": 1_000_000}}]
    # Administrators only.
    r = await api(broker, "GET", "/api/user-limits", auth=APP)
    assert r.status == 403, r
    # Deleting the user deletes its limits.
    assert (await api(broker, "DELETE", "/api/users/app")).status == 200
    assert (await api(broker, "GET", "/api/user-limits")).json() == []


async def test_ctl_user_limits_commands(broker: Broker) -> None:
    await make_app_user(broker)
    url = f"http://127.0.0.1:{broker.http_port}"
    r = await run_ctl("user-limits", "set", "app", "max-connections", "3", url=url)
    assert r.code == 0 and "max-connections of app set to 3" in r.out, r
    r = await run_ctl("user-limits", "list", url=url)
    assert ["app", "max-connections", "3"] in [line.split() for line in r.out.splitlines()], r
    r = await run_ctl("--json", "user-limits", "list", "app", url=url)
    assert r.json() == [{"user": "app", "value": {"max-connections": 3}}]
    r = await run_ctl("user-limits", "clear", "app", "max-connections", url=url)
    assert r.code == 0, r
    r = await run_ctl("user-limits", "set", "app", "max-bananas", "3", url=url)
    assert r.code == 2, r  # not a limit name: a usage error


async def test_limits_survive_a_restart(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    b = Broker(settings)
    await b.start()
    try:
        await make_app_user(b)
        await set_limit(b, "max-connections", 0)
        await set_limit(b, "max-consume-bytes-per-second", 123_456)
    finally:
        await b.stop()
    b = Broker(settings)
    await b.start()
    try:
        r = await api(b, "GET", "/api/user-limits/app")
        assert r.json() == [
            {
                "user": "app",
                "value": {"max-connections": 0, "max-consume-bytes-per-second": 123_456},
            }
        ]
        with pytest.raises(wharf.WharfError) as refused:
            await wharf.connect(app_url(b))
        assert refused.value.code == 506
        assert "connection limit (0) for user 'app'" in str(refused.value)
    finally:
        await b.stop()


# -- byte-rate quotas ------------------------------------------------------------------------


async def test_a_publisher_over_its_quota_is_slowed_and_loses_nothing(
    broker: Broker, conn: wharf.Connection
) -> None:
    await make_app_user(broker)
    await set_limit(broker, "max-publish-bytes-per-second", QUOTA)
    await conn.declare_queue("app-q")
    await conn.declare_queue("guest-q")
    loop = asyncio.get_running_loop()
    async with await wharf.connect(app_url(broker)) as app:
        calls, events = record_throttles(app)

        async def publish(c: wharf.Connection, queue: str) -> float:
            start = loop.time()
            for _ in range(TOTAL_BATCHES):
                await c.publish_many("", queue, BATCH)  # each waits for its confirm
            return loop.time() - start

        # The unlimited guest publishes as much at the same time; it finishes.
        app_s, _ = await asyncio.gather(publish(app, "app-q"), publish(conn, "guest-q"))
        assert TOTAL_BYTES / app_s < 3 * QUOTA, app_s
        assert calls and {d for d, _ in calls} == {"produce"}
        assert all(ms > 0 for _, ms in calls)
        assert events and set(events) == {"produce"}
        assert app.throttled_ms["produce"] > 0
    messages = TOTAL_BATCHES * len(BATCH)
    assert (await conn.declare_queue("app-q", passive=True)).messages == messages
    assert (await conn.declare_queue("guest-q", passive=True)).messages == messages
    assert await throttle_seconds(broker, "produce") > 0


async def test_a_producer_over_its_quota_is_slowed(broker: Broker, conn: wharf.Connection) -> None:
    await make_app_user(broker)
    await set_limit(broker, "max-publish-bytes-per-second", QUOTA)
    await conn.create_topic("app-t")
    loop = asyncio.get_running_loop()
    async with await wharf.connect(app_url(broker)) as app:
        calls, _ = record_throttles(app)
        start = loop.time()
        for _ in range(TOTAL_BATCHES):
            await app.produce_many("app-t", BATCH)
        elapsed = loop.time() - start
        assert TOTAL_BYTES / elapsed < 3 * QUOTA, elapsed
        assert {d for d, _ in calls} == {"produce"}
    _, latest = await conn.list_offsets("app-t", 0)
    assert latest == TOTAL_BATCHES * len(BATCH)


async def test_a_consumer_over_its_quota_is_slowed_and_gets_everything(
    broker: Broker, conn: wharf.Connection
) -> None:
    await make_app_user(broker)
    await set_limit(broker, "max-consume-bytes-per-second", QUOTA)
    messages = TOTAL_BATCHES * len(BATCH)
    for queue in ("app-q", "guest-q"):
        await conn.declare_queue(queue)
        for _ in range(TOTAL_BATCHES):
            await conn.publish_many("", queue, BATCH)
    loop = asyncio.get_running_loop()

    async def consume_all(c: wharf.Connection, queue: str) -> tuple[float, int]:
        start = loop.time()
        got = 0
        async with c.consume(queue, prefetch=10) as stream:
            async for message in stream:
                assert message.body == BODY
                await message.ack()
                got += 1
                if got == messages:
                    break
        return loop.time() - start, got

    async with await wharf.connect(app_url(broker)) as app:
        calls, events = record_throttles(app)
        guest = await wharf.connect(guest_url(broker))  # unlimited, at the same time
        try:
            (app_s, got), (_, guest_got) = await asyncio.gather(
                consume_all(app, "app-q"), consume_all(guest, "guest-q")
            )
        finally:
            await guest.close()
        assert got == guest_got == messages
        assert TOTAL_BYTES / app_s < 3 * QUOTA, app_s
        assert {d for d, _ in calls} == {"consume"} and set(events) == {"consume"}
        # GET answers count too, and are held back rather than refused.
        await conn.publish("", "app-q", BODY)
        got_one = await app.get("app-q", no_ack=True)
        assert got_one is not None and got_one.body == BODY
    assert (await conn.declare_queue("app-q", passive=True)).messages == 0
    assert await throttle_seconds(broker, "consume") > 0


async def test_a_fetcher_over_its_quota_is_slowed(broker: Broker, conn: wharf.Connection) -> None:
    await make_app_user(broker)
    await set_limit(broker, "max-consume-bytes-per-second", QUOTA)
    await conn.create_topic("app-t")
    for _ in range(TOTAL_BATCHES):
        await conn.produce_many("app-t", BATCH)
    records = TOTAL_BATCHES * len(BATCH)
    loop = asyncio.get_running_loop()
    async with await wharf.connect(app_url(broker)) as app:
        calls, _ = record_throttles(app)
        start = loop.time()
        offset = got = 0
        while offset < records:
            result = await app.fetch_batch("app-t", 0, offset, max_bytes=len(BODY) * len(BATCH))
            got += len(result.records)
            offset = result.next_offset
        elapsed = loop.time() - start
        assert got == records
        assert TOTAL_BYTES / elapsed < 3 * QUOTA, elapsed
        assert {d for d, _ in calls} == {"consume"}
    assert await throttle_seconds(broker, "consume") > 0


async def test_a_quota_set_while_connected_applies_and_clearing_it_lifts_it(
    broker: Broker,
) -> None:
    await make_app_user(broker)
    async with await wharf.connect(app_url(broker)) as app:
        calls, _ = record_throttles(app)
        await app.declare_queue("app-q")
        for _ in range(TOTAL_BATCHES):
            await app.publish_many("", "app-q", BATCH)
        assert calls == []  # no quota, no throttling
        await set_limit(broker, "max-publish-bytes-per-second", QUOTA)
        for _ in range(TOTAL_BATCHES):
            await app.publish_many("", "app-q", BATCH)
        assert calls, "throttled once the quota was set"
        r = await api(broker, "DELETE", "/api/user-limits/app/max-publish-bytes-per-second")
        assert r.status == 200, r
        seen = len(calls)
        for _ in range(TOTAL_BATCHES):
            await app.publish_many("", "app-q", BATCH)
        assert len(calls) == seen
