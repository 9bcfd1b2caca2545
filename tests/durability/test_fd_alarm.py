"""The file-descriptor alarm: a broker close to its open-file limit says so in /readyz
and /metrics, keeps serving the connections it has, and clears the alarm once fds are
free again (docs/operations.md, "Resource alarms").

The broker runs with a small ``ulimit -n``; idle sockets to its native port use up its
fds.  The HTTP connection that watches it is opened first and kept alive, since a new
one may not be accepted while the broker is out of fds.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
from pathlib import Path

from harness import broker_process

MAX_OPEN_FILES = 96
POLL_S = 0.2
WAIT_S = 30.0


def scrape(watch: http.client.HTTPConnection, path: str) -> tuple[int, str]:
    watch.request("GET", path)
    resp = watch.getresponse()
    return resp.status, resp.read().decode()


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m is not None, f"{name} not in /metrics"
    return float(m.group(1))


async def wait_for_fd_alarm(watch: http.client.HTTPConnection, raised: bool) -> str:
    want = 1.0 if raised else 0.0
    async with asyncio.timeout(WAIT_S):
        while True:
            _, text = await asyncio.to_thread(scrape, watch, "/metrics")
            if metric(text, 'wharf_alarm{resource="fds"}') == want:
                return text
            await asyncio.sleep(POLL_S)


async def test_fd_alarm_is_raised_near_the_limit_and_clears(tmp_path: Path) -> None:
    async with broker_process(tmp_path / "data", max_open_files=MAX_OPEN_FILES) as bp:
        watch = http.client.HTTPConnection("127.0.0.1", bp.http_port, timeout=10)
        conn = await bp.connect()
        await conn.declare_queue("q")
        text = await wait_for_fd_alarm(watch, raised=False)
        assert metric(text, "wharf_fd_limit") == MAX_OPEN_FILES
        fillers: list[socket.socket] = []
        try:
            # Enough idle sockets to pass 95% of the limit, and then some.
            for _ in range(MAX_OPEN_FILES):
                try:
                    fillers.append(socket.create_connection(("127.0.0.1", bp.port)))
                except OSError:
                    break
            text = await wait_for_fd_alarm(watch, raised=True)
            assert metric(text, "wharf_open_fds") >= MAX_OPEN_FILES * 0.85
            status, body = await asyncio.to_thread(scrape, watch, "/readyz")
            assert status == 503
            assert json.loads(body)["alarms"] == ["fds"]
            # Connections already open keep working: fds are not needed to publish.
            await conn.publish("", "q", b"still served")
            assert (await conn.get("q")) is not None
        finally:
            for s in fillers:
                s.close()
        try:
            await wait_for_fd_alarm(watch, raised=False)
            ok, last = await wait_ready(watch)
            assert ok, f"/readyz never answered 200 again: {last}\n{bp.output()[-3000:]}"
            assert "fds alarm raised" in bp.output()
        finally:
            await conn.close()
            watch.close()


async def wait_ready(watch: http.client.HTTPConnection) -> tuple[bool, object]:
    """/readyz answers 200 again (polled: it follows the broker's once-a-second check)."""
    last: object = None
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                last = await asyncio.to_thread(scrape, watch, "/readyz")
                if last[0] == 200:
                    return True, last
                await asyncio.sleep(POLL_S)
    except TimeoutError as exc:
        return False, (last, repr(exc))
