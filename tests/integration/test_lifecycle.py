"""Broker lifecycle: the ``wharf`` command as a subprocess (serve, SIGTERM, the data
directory lock, --version) and the same shutdown rules on an in-process broker."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

import wharf
from wharf.broker.config import Settings, UserConfig
from wharf.broker.security.auth import hash_password
from wharf.broker.server import Broker
from wharf.protocol.errors import WharfError
from wharf.protocol.frames import Consume

from ..helpers import wait_until

WHARF_BIN = Path(sys.executable).with_name("wharf")
START_TIMEOUT_S = 20.0
# Passed to the subprocess as WHARF_SHUTDOWN_TIMEOUT_S; the exit must come within it.
SHUTDOWN_TIMEOUT_S = 3.0
EXIT_SLACK_S = 5.0
TIMEOUT_S = 5.0
POLL_S = 0.05

Connect = Callable[..., Any]


def free_port() -> int:
    """A port that was free a moment ago (the broker cannot print a port-0 choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_status(port: int, path: str) -> int | None:
    """Status code of GET path, or None if nothing answers yet."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        async with asyncio.timeout(TIMEOUT_S):
            data = await reader.read()
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    if not data.startswith(b"HTTP/1."):
        return None
    return int(data.split(b" ", 2)[1])


class BrokerProcess:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, http_port: int, log: Path):
        self.proc = proc
        self.port = port
        self.http_port = http_port
        self.log = log

    @property
    def url(self) -> str:
        return f"wharf://guest:guest@127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_ready(self) -> None:
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(
                        f"broker exited with {self.proc.returncode}:\n{self.output()}"
                    )
                if await http_status(self.http_port, "/readyz") == 200:
                    return
                await asyncio.sleep(POLL_S)

    async def wait_exit(self, timeout: float) -> int:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            return await self.proc.wait()


@asynccontextmanager
async def broker_process(data_dir: Path, log: Path) -> AsyncIterator[BrokerProcess]:
    port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHARF_")}
    env["WHARF_SHUTDOWN_TIMEOUT_S"] = str(SHUTDOWN_TIMEOUT_S)
    env["WHARF_AMQP_PORT"] = "0"  # no AMQP listener (5672 may be in use here)
    env["WHARF_AMQPS_PORT"] = "0"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(WHARF_BIN),
            "serve",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--http-port", str(http_port),
            "--data-dir", str(data_dir),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
    bp = BrokerProcess(proc, port, http_port, log)
    try:
        yield bp
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- the wharf command -----------------------------------------------------------------------


def test_version_flag_prints_the_installed_version() -> None:
    result = subprocess.run(
        [str(WHARF_BIN), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wharf {version('wharf')}"
    assert version("wharf") == wharf.__version__


async def test_sigterm_closes_clients_with_320_and_exits_0(tmp_path: Path) -> None:
    async with broker_process(tmp_path / "data", tmp_path / "broker.log") as bp:
        await bp.wait_ready()
        conn = await wharf.connect(bp.url)
        try:
            info = await conn.declare_queue("")
            async with conn.consume(info.name) as messages:
                await conn.publish("", info.name, b"before-shutdown")
                async with asyncio.timeout(TIMEOUT_S):
                    msg = await anext(messages)
                assert msg.body == b"before-shutdown"
                bp.proc.send_signal(signal.SIGTERM)
                with pytest.raises(wharf.ConnectionForced) as forced:
                    async with asyncio.timeout(SHUTDOWN_TIMEOUT_S + EXIT_SLACK_S):
                        await anext(messages)
                assert forced.value.code == 320
            assert conn.is_closed
            with pytest.raises(wharf.ConnectionForced):
                await conn.declare_queue("")
        finally:
            await conn.close()
        code = await bp.wait_exit(SHUTDOWN_TIMEOUT_S + EXIT_SLACK_S)
        assert code == 0, bp.output()


async def test_sigint_also_shuts_down_cleanly(tmp_path: Path) -> None:
    async with broker_process(tmp_path / "data", tmp_path / "broker.log") as bp:
        await bp.wait_ready()
        bp.proc.send_signal(signal.SIGINT)
        assert await bp.wait_exit(SHUTDOWN_TIMEOUT_S + EXIT_SLACK_S) == 0, bp.output()


async def test_second_broker_on_the_same_data_dir_refuses_to_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with broker_process(data, tmp_path / "first.log") as first:
        await first.wait_ready()
        async with broker_process(data, tmp_path / "second.log") as second:
            code = await second.wait_exit(START_TIMEOUT_S)
            assert code != 0
            assert "data director" in second.output(), second.output()
        # The first broker is unaffected.
        assert await http_status(first.http_port, "/readyz") == 200
        conn = await wharf.connect(first.url)
        await conn.close()
        first.proc.send_signal(signal.SIGTERM)
        assert await first.wait_exit(SHUTDOWN_TIMEOUT_S + EXIT_SLACK_S) == 0
    # Once the first one is gone the directory can be used again.
    async with broker_process(data, tmp_path / "third.log") as third:
        await third.wait_ready()
        third.proc.send_signal(signal.SIGTERM)
        assert await third.wait_exit(SHUTDOWN_TIMEOUT_S + EXIT_SLACK_S) == 0


# -- in-process lifecycle ----------------------------------------------------------------------


async def test_stop_sends_320_to_connected_clients(broker: Broker, conn: wharf.Connection) -> None:
    info = await conn.declare_queue("")
    async with conn.consume(info.name) as messages:
        await broker.stop()
        with pytest.raises(wharf.ConnectionForced):
            async with asyncio.timeout(TIMEOUT_S):
                await anext(messages)
    assert conn.is_closed
    assert not broker.connections


async def test_second_in_process_broker_on_the_same_data_dir_is_refused(
    broker: Broker, tmp_path: Path
) -> None:
    other = Broker(
        Settings(
            host="127.0.0.1", port=0, http_port=0, amqp_port=0, data_dir=broker.settings.data_dir
        )
    )
    with pytest.raises(WharfError) as info:
        await other.start()
    assert "data directory" in info.value.message
    assert broker.ready


async def test_stop_releases_the_auth_worker_threads(tmp_path: Path) -> None:
    before = {t.ident for t in threading.enumerate()}
    user = UserConfig(name="app", password_hash=hash_password("pw"), tags=[])
    broker = Broker(
        Settings(
            host="127.0.0.1",
            port=0,
            http_port=0,
            amqp_port=0,
            data_dir=str(tmp_path / "d"),
            users=[user],
        )
    )
    await broker.start()
    try:
        conn = await wharf.connect(f"wharf://app:pw@127.0.0.1:{broker.port}")
        await conn.close()
    finally:
        await broker.stop()

    def new_auth_threads() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t.ident not in before and t.name.startswith("wharf-auth") and t.is_alive()
        ]

    await wait_until(lambda: not new_auth_threads(), timeout=TIMEOUT_S)


@pytest.mark.parametrize("settings_overrides", [{"shutdown_timeout_s": 0.5}])
async def test_stop_aborts_a_client_that_does_not_read_after_the_shutdown_timeout(
    broker: Broker, conn: wharf.Connection, raw_client: Callable[..., Any]
) -> None:
    info = await conn.declare_queue("")
    body = b"x" * (512 * 1024)
    await conn.publish_many("", info.name, [body] * 40)
    rc = await raw_client()
    rc.send(Consume(2, info.name, "never-reads", 0))
    # The raw client never reads again: its socket fills and the broker's writes back up.
    await wait_until(lambda: broker.queues[info.name].ready_count < 40, timeout=TIMEOUT_S)
    async with asyncio.timeout(0.5 + TIMEOUT_S):
        await broker.stop()
    assert not broker.connections
    assert conn.is_closed
