"""Login throttling over real sockets, native AUTH and HTTP basic auth (security/throttle.py).

Clients pick their source address among 127.0.0.0/8 (Linux routes all of it to loopback),
so "another address" is a real peer address as the broker sees it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

from wharf.broker.config import UserConfig
from wharf.broker.security import auth, throttle
from wharf.broker.security.auth import Authenticator
from wharf.broker.security.passwords import hash_password
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.codec import FrameDecoder, encode

APP_PASSWORD = "app-s3cret-pw"
OPS_PASSWORD = "ops-s3cret-pw"
USERS = [
    UserConfig(name="app", password_hash=hash_password(APP_PASSWORD), tags=["administrator"]),
    UserConfig(name="ops", password_hash=hash_password(OPS_PASSWORD), tags=[]),
]
ATTACKER = "127.0.0.2"
OTHER = "127.0.0.3"
PROTOCOLS = ["native", "http"]

pytestmark = pytest.mark.parametrize("settings_overrides", [{"users": USERS}])


async def native_login(port: int, user: str, password: str, source: str) -> bool:
    """AUTH over a fresh connection from ``source``; True if AUTH_OK came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    decoder = FrameDecoder()
    frames: list[Any] = []
    try:
        writer.write(F.HANDSHAKE)
        writer.write(encode(F.Auth(1, "PLAIN", user, password, 0, {})))
        while len(frames) < 2:  # HELLO, then AUTH_OK or ERROR
            data = await reader.read(65536)
            if not data:
                break
            frames.extend(decoder.feed(data))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return len(frames) >= 2 and frames[1][0] == F.AUTH_OK


async def http_login(port: int, user: str, password: str, source: str) -> bool:
    """GET /api/whoami with basic auth from ``source``; True on 200."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        writer.write(
            f"GET /api/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        head = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return head.split(b" ")[1:2] == [b"200"]


def login_for(broker: Broker, protocol: str) -> Callable[[str, str, str], Any]:
    if protocol == "native":
        return lambda u, p, s: native_login(broker.port, u, p, s)
    return lambda u, p, s: http_login(broker.http_port, u, p, s)


def short_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (auth, throttle):  # raising=False: the same test runs on older code
        monkeypatch.setattr(module, "FAILURE_DELAY_BASE_S", 0.001, raising=False)
        monkeypatch.setattr(module, "FAILURE_DELAY_MAX_S", 0.002, raising=False)


@pytest.fixture
def checks_in_flight(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts scrypt checks (known and unknown users) and the most running at once."""
    seen = {"calls": 0, "running": 0, "max_running": 0}
    lock = threading.Lock()

    def counted(real: Callable[..., bool]) -> Callable[..., bool]:
        def check(*args: str) -> bool:
            with lock:
                seen["calls"] += 1
                seen["running"] += 1
                seen["max_running"] = max(seen["max_running"], seen["running"])
            try:
                return real(*args)
            finally:
                with lock:
                    seen["running"] -= 1

        return check

    monkeypatch.setattr(auth, "verify_password", counted(auth.verify_password))
    monkeypatch.setattr(auth, "burn_scrypt", counted(auth.burn_scrypt))
    return seen


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "shape", ["one pair", "one address, many users", "one user, many addresses"]
)
async def test_parallel_guesses_are_checked_one_at_a_time(
    broker: Broker,
    monkeypatch: pytest.MonkeyPatch,
    checks_in_flight: dict[str, int],
    protocol: str,
    shape: str,
) -> None:
    short_delays(monkeypatch)
    login = login_for(broker, protocol)
    guesses = 12
    if shape == "one pair":
        tries = [("app", ATTACKER)] * guesses
    elif shape == "one address, many users":
        tries = [(f"user{i}", ATTACKER) for i in range(guesses)]
    else:
        tries = [("app", f"127.0.1.{i + 1}") for i in range(guesses)]
    results = await asyncio.gather(*(login(u, f"guess-{i}", s) for i, (u, s) in enumerate(tries)))
    assert results == [False] * guesses
    assert checks_in_flight["calls"] == guesses
    # 12 parallel connections guess no faster than one connection would.
    assert checks_in_flight["max_running"] == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_correct_password_is_not_delayed_while_others_guess(
    broker: Broker, protocol: str
) -> None:
    """A brute force on user app from ATTACKER (real delays, up to 5 s each) does not hold
    up app from another address, nor another user from ATTACKER."""
    login = login_for(broker, protocol)
    guesses = 20
    attackers = [asyncio.create_task(login("app", f"guess-{i}", ATTACKER)) for i in range(guesses)]
    try:
        async with asyncio.timeout(10):
            while broker.authenticator.failures_by_mechanism == {}:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert await login("app", APP_PASSWORD, OTHER)  # same user, another address
        assert await login("ops", OPS_PASSWORD, ATTACKER)  # same address, another user
        # Both got in while the guesses were still paced by the growing delay (20
        # guesses need over a minute); unthrottled they would be done in a second.
        assert sum(t.done() for t in attackers) < guesses // 2
    finally:
        for t in attackers:
            t.cancel()
        await asyncio.gather(*attackers, return_exceptions=True)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_recorded_delay_never_applies_to_another_pair(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    now = [1000.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    authenticator = Authenticator(
        broker.settings, clock=lambda: now[0], sleep=sleep, audit=broker.audit
    )
    monkeypatch.setattr(broker, "authenticator", authenticator)
    login = login_for(broker, protocol)
    try:
        for i in range(6):
            assert not await login("app", f"guess-{i}", ATTACKER)
        assert slept == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]
        slept.clear()
        assert await login("ops", OPS_PASSWORD, ATTACKER)
        assert await login("app", APP_PASSWORD, OTHER)
        assert slept == []
    finally:
        authenticator.close()


async def test_failures_are_logged_once_per_user_and_address(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    short_delays(monkeypatch)
    with caplog.at_level(logging.INFO):
        for i in range(5):
            assert not await native_login(broker.port, "app", f"native-pw-{i}", ATTACKER)
            assert not await http_login(broker.http_port, "ops", f"http-pw-{i}", ATTACKER)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    refusals = [line for line in lines if "refused" in line or "403" in line]
    assert len(refusals) == 2, refusals  # one per (user, address), none per connection
    assert not any("-pw-" in line for line in lines)  # never a password
