"""The file-descriptor alarm: a broker close to its open-file limit says so in /readyz
and /metrics, keeps serving the connections it has, and clears the alarm once fds are
free again (docs/operations.md, "Resource alarms").

The broker runs with a small ``ulimit -n``; idle sockets to its native port use up its
fds.  The HTTP connection that watches it is opened first and kept alive, since a new
one may not be accepted while the broker is out of fds.

Serving a connection it has takes no new fd: not even a get, which once wrote the
queue's DELIVERED watermark to the store (the first write into a new segment fsyncs its
directory, which takes an fd).  When that write met the exhausted fds, the store failed,
/readyz never answered 200 again, and this test failed on loaded machines, where the
broker sat at the limit longer.  Each wait below is bounded by WAIT_S and polls (the
broker checks its fds once a second); a failure names what it waited for, the last
answer and the broker's log.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
from collections.abc import Callable
from pathlib import Path

from harness import BrokerProcess, broker_process

import wharf

MAX_OPEN_FILES = 96
POLL_S = 0.2
# Every wait (and each HTTP request on the watch connection) is bounded by this; the
# broker's check runs once a second, so a loaded machine still has time to spare.
WAIT_S = 30.0
# The whole test (the harness's default is 60 s): three waits and a broker start, below
# pytest-timeout's 120 s.
BUDGET_S = 90.0
# The message store's smallest segment (the segment_bytes setting's minimum): one
# message this big fills it, so the next persistent publish needs a new segment.
SEGMENT_BYTES = 1024 * 1024
# Persistent publishes sent while the broker is out of fds, each needing a new segment.
PUBLISHES_AT_THE_LIMIT = 5


def scrape(watch: http.client.HTTPConnection, path: str) -> tuple[int, str]:
    watch.request("GET", path)
    resp = watch.getresponse()
    return resp.status, resp.read().decode()


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m is not None, f"{name} not in /metrics"
    return float(m.group(1))


async def poll(
    bp: BrokerProcess,
    watch: http.client.HTTPConnection,
    path: str,
    done: Callable[[int, str], bool],
    what: str,
) -> str:
    """GET ``path`` until ``done(status, body)``; its body.  After WAIT_S an
    AssertionError with the last answer and the broker's log."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        status, body = await asyncio.to_thread(scrape, watch, path)
        if done(status, body):
            return body
        if loop.time() >= deadline:
            raise AssertionError(
                f"{what}: not within {WAIT_S} s; last {path}: {status} {body[-2000:]}\n"
                f"broker log:\n{bp.output()[-3000:]}"
            )
        await asyncio.sleep(POLL_S)


def fill_fds(port: int) -> list[socket.socket]:
    """Idle sockets to the broker's native port, enough to use up its fds and then some
    (the rest wait in the listen backlog and take every fd that is freed)."""
    fillers: list[socket.socket] = []
    for _ in range(MAX_OPEN_FILES):
        try:
            fillers.append(socket.create_connection(("127.0.0.1", port)))
        except OSError:
            break
    return fillers


async def wait_for_fd_alarm(
    bp: BrokerProcess, watch: http.client.HTTPConnection, raised: bool
) -> str:
    want = 1.0 if raised else 0.0
    return await poll(
        bp,
        watch,
        "/metrics",
        lambda _, text: metric(text, 'wharf_alarm{resource="fds"}') == want,
        f"fds alarm {'raised' if raised else 'cleared'}",
    )


async def test_fd_alarm_is_raised_near_the_limit_and_clears(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with broker_process(data_dir, max_open_files=MAX_OPEN_FILES, budget_s=BUDGET_S) as bp:
        watch = http.client.HTTPConnection("127.0.0.1", bp.http_port, timeout=WAIT_S)
        conn = await bp.connect()
        await conn.declare_queue("q")
        text = await wait_for_fd_alarm(bp, watch, raised=False)
        assert metric(text, "wharf_fd_limit") == MAX_OPEN_FILES
        fillers: list[socket.socket] = []
        try:
            # Enough idle sockets to pass 95% of the limit, and then some.
            for _ in range(MAX_OPEN_FILES):
                try:
                    fillers.append(socket.create_connection(("127.0.0.1", bp.port)))
                except OSError:
                    break
            text = await wait_for_fd_alarm(bp, watch, raised=True)
            assert metric(text, "wharf_open_fds") >= MAX_OPEN_FILES * 0.85
            status, body = await asyncio.to_thread(scrape, watch, "/readyz")
            assert status == 503
            assert json.loads(body)["alarms"] == ["fds"]
            # Connections already open keep working: fds are not needed to publish.
            await conn.publish("", "q", b"still served")
            got = await conn.get("q")
            assert got is not None
            await got.ack()
        finally:
            for s in fillers:
                s.close()
        try:
            text = await wait_for_fd_alarm(bp, watch, raised=False)
            # Running out of fds broke nothing: the store still takes persistent messages.
            assert metric(text, "wharf_store_failed") == 0, bp.output()[-3000:]
            body = await poll(
                bp, watch, "/readyz", lambda status, _: status == 200, "/readyz answers 200"
            )
            assert json.loads(body)["status"] == "ready"
            assert "fds alarm raised" in bp.output()
        finally:
            await conn.close()
            watch.close()


async def test_a_persistent_publish_needing_a_new_segment_without_fds(tmp_path: Path) -> None:
    """A persistent publish that needs a new store segment while the broker is out of
    fds is refused with a clear ResourceError, or stored; the store never fails, and the
    broker takes persistent messages again once fds are free.  The first write into a
    new segment used to fsync the directory through a new fd: with none free the store
    failed until a restart (/readyz 503, every persistent publish refused); and a roll
    whose segment could not be opened escaped the publish as an internal error."""
    data_dir = tmp_path / "data"
    env = {"WHARF_SEGMENT_BYTES": str(SEGMENT_BYTES)}
    async with broker_process(
        data_dir, env=env, max_open_files=MAX_OPEN_FILES, budget_s=BUDGET_S
    ) as bp:
        watch = http.client.HTTPConnection("127.0.0.1", bp.http_port, timeout=WAIT_S)
        conn = await bp.connect()
        try:
            await wait_for_fd_alarm(bp, watch, raised=False)  # connects the watch
            await conn.declare_queue("q", durable=True)
            await conn.publish("", "q", b"f" * SEGMENT_BYTES, persistent=True)  # fills it
            stored = 1
            refused: list[str] = []
            fillers = fill_fds(bp.port)
            try:
                await wait_for_fd_alarm(bp, watch, raised=True)
                for i in range(PUBLISHES_AT_THE_LIMIT):
                    try:
                        await conn.publish("", "q", b"at the limit %d" % i, persistent=True)
                        stored += 1
                    except wharf.ResourceError as exc:
                        refused.append(str(exc))
            finally:
                for s in fillers:
                    s.close()
            assert all("out of file descriptors" in r for r in refused), refused
            text = await wait_for_fd_alarm(bp, watch, raised=False)
            assert metric(text, "wharf_store_failed") == 0, bp.output()[-3000:]
            await conn.publish("", "q", b"after", persistent=True)
            stored += 1
            queue = await conn.declare_queue("q", durable=True, passive=True)
            assert queue.messages == stored
            await poll(bp, watch, "/readyz", lambda status, _: status == 200, "/readyz 200")
        finally:
            await conn.close()
            watch.close()
