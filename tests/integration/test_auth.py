"""Authentication over TCP: refused logins, configured users, loopback-only guest,
the handshake timeout (login throttling: test_login_throttle.py)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import wharf
from wharf.broker.config import Settings, UserConfig, load_settings
from wharf.broker.security.auth import Authenticator
from wharf.broker.security.passwords import hash_password
from wharf.broker.server import Broker
from wharf.protocol import frames as F

from ..helpers import wait_until

Connect = Callable[..., Any]
RawFactory = Callable[..., Any]

TIMEOUT_S = 5.0

APP_USER = "app"
APP_PASSWORD = "app-s3cret"
APP_HASH = hash_password(APP_PASSWORD)
APP_USERS = [UserConfig(name=APP_USER, password_hash=APP_HASH, tags=["monitoring"])]


def url_for(broker: Broker, user: str, password: str, host: str = "127.0.0.1") -> str:
    return f"wharf://{user}:{password}@{host}:{broker.port}"


async def assert_can_work(c: wharf.Connection) -> None:
    info = await c.declare_queue("")
    await c.publish("", info.name, b"hi")
    msg = await c.get(info.name, no_ack=True)
    assert msg is not None and msg.body == b"hi"
    await c.delete_queue(info.name)


def non_loopback_ipv4() -> str | None:
    """An address of this machine that is not loopback (no packet is sent), or None."""
    for probe in ("192.0.2.1", "10.255.255.255", "8.8.8.8"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((probe, 9))
            except OSError:
                continue
            addr = str(s.getsockname()[0])
        if not addr.startswith("127.") and addr != "0.0.0.0":
            return addr
    return None


# -- refused logins ----------------------------------------------------------------------


async def test_wrong_password_is_refused_with_403(broker: Broker, conn: wharf.Connection) -> None:
    with pytest.raises(wharf.AccessRefused) as info:
        await wharf.connect(url_for(broker, "guest", "not-the-password"))
    assert info.value.code == 403
    await wait_until(lambda: len(broker.connections) == 1)
    await assert_can_work(conn)


async def test_unknown_user_is_refused_like_a_wrong_password(broker: Broker) -> None:
    with pytest.raises(wharf.AccessRefused) as unknown:
        await wharf.connect(url_for(broker, "nobody", "guest"))
    with pytest.raises(wharf.AccessRefused) as wrong:
        await wharf.connect(url_for(broker, "guest", "wrong"))
    assert unknown.value.code == wrong.value.code == 403
    # The message does not tell which of the two was wrong.
    assert unknown.value.message == wrong.value.message


async def test_refusal_on_the_wire_is_fatal_403_with_request_id_0(raw_client: RawFactory) -> None:
    rc = await raw_client(auth=False)
    rc.send(F.Auth(1, "PLAIN", "guest", "wrong", 0, {}))
    frames = await rc.recv_until_closed(TIMEOUT_S)
    assert len(frames) == 1, frames
    assert frames[0][:3] == [F.ERROR, 0, 403] and frames[0][4] is True, frames


async def test_unknown_mechanism_is_refused(raw_client: RawFactory) -> None:
    rc = await raw_client(auth=False)
    rc.send(F.Auth(1, "AMQPLAIN", "guest", "guest", 0, {}))
    frames = await rc.recv_until_closed(TIMEOUT_S)
    assert [f[:3] for f in frames] == [[F.ERROR, 0, 403]], frames
    assert "PLAIN" in frames[0][3]


@pytest.mark.parametrize("settings_overrides", [{"handshake_timeout_ms": 200}])
async def test_client_that_never_authenticates_is_dropped(raw_client: RawFactory) -> None:
    rc = await raw_client(auth=False)
    # The broker checks about once a second; 5 s bounds the wait.
    frames = await rc.recv_until_closed(TIMEOUT_S)
    assert [f[:3] for f in frames] == [[F.ERROR, 0, 403]], frames
    assert frames[0][4] is True


@pytest.mark.parametrize("settings_overrides", [{"default_user_enabled": False}])
async def test_guest_can_be_disabled(broker: Broker) -> None:
    with pytest.raises(wharf.AccessRefused):
        await wharf.connect(url_for(broker, "guest", "guest"))


# -- configured users ----------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"users": APP_USERS}])
async def test_configured_user_can_connect(broker: Broker, connect: Connect) -> None:
    app = await connect(url=url_for(broker, APP_USER, APP_PASSWORD))
    await assert_can_work(app)
    # Twice: the second login is served from the success cache and still works.
    again = await connect(url=url_for(broker, APP_USER, APP_PASSWORD))
    await assert_can_work(again)
    with pytest.raises(wharf.AccessRefused):
        await wharf.connect(url_for(broker, APP_USER, APP_PASSWORD + "x"))
    # The built-in guest is still there next to configured users.
    guest = await connect()
    await assert_can_work(guest)


@pytest.mark.parametrize("settings_overrides", [{"users": APP_USERS}])
async def test_user_id_property_must_match_the_authenticated_user(
    broker: Broker, connect: Connect
) -> None:
    app = await connect(url=url_for(broker, APP_USER, APP_PASSWORD))
    info = await app.declare_queue("")
    await app.publish("", info.name, b"mine", user_id=APP_USER)
    with pytest.raises(wharf.PreconditionFailed) as exc:
        await app.publish("", info.name, b"spoofed", user_id="guest")
    assert exc.value.code == 406
    msg = await app.get(info.name, no_ack=True)
    assert msg is not None and msg.user_id == APP_USER
    assert await app.get(info.name, no_ack=True) is None


async def test_users_from_a_toml_file(tmp_path: Path) -> None:
    guest_hash = hash_password("new-guest-password")
    config = tmp_path / "wharf.toml"
    config.write_text(
        "loopback_users = []\n"
        "\n[[users]]\n"
        f'name = "{APP_USER}"\n'
        f'password_hash = "{APP_HASH}"\n'
        'tags = ["administrator"]\n'
        "\n[[users]]\n"
        'name = "guest"\n'
        f'password_hash = "{guest_hash}"\n'
    )
    settings = load_settings(
        str(config),
        {
            "host": "127.0.0.1",
            "port": 0,
            "http_port": 0,
            "amqp_port": 0,
            "data_dir": str(tmp_path / "data"),
        },
        environ={},
    )
    broker = Broker(settings)
    await broker.start()
    try:
        app = await wharf.connect(url_for(broker, APP_USER, APP_PASSWORD))
        await assert_can_work(app)
        await app.close()
        # A [[users]] entry named guest replaces the built-in guest/guest.
        with pytest.raises(wharf.AccessRefused):
            await wharf.connect(url_for(broker, "guest", "guest"))
        guest = await wharf.connect(url_for(broker, "guest", "new-guest-password"))
        await guest.close()
    finally:
        await broker.stop()


# -- guest is loopback-only ------------------------------------------------------------------


async def test_guest_from_a_remote_address_is_refused_by_the_authenticator() -> None:
    authenticator = Authenticator(Settings(users=APP_USERS))
    try:
        with pytest.raises(wharf.AccessRefused) as info:
            await authenticator.authenticate("guest", "guest", "10.0.0.5")
        assert "loopback" in info.value.message
        with pytest.raises(wharf.AccessRefused):
            await authenticator.authenticate("guest", "guest", "::ffff:10.0.0.5")
        for loopback in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"):
            user = await authenticator.authenticate("guest", "guest", loopback)
            assert user.name == "guest"
        # Users not listed in loopback_users may connect from anywhere.
        user = await authenticator.authenticate(APP_USER, APP_PASSWORD, "10.0.0.5")
        assert user.name == APP_USER
        # A wrong password from remote says nothing about loopback.
        with pytest.raises(wharf.AccessRefused) as wrong:
            await authenticator.authenticate("guest", "nope", "10.0.0.6")
        assert "loopback" not in wrong.value.message
    finally:
        authenticator.close()


@pytest.mark.parametrize("settings_overrides", [{"host": "0.0.0.0", "users": APP_USERS}])
async def test_guest_over_a_non_loopback_address_is_refused(
    broker: Broker, connect: Connect
) -> None:
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with pytest.raises(wharf.AccessRefused) as info:
        await wharf.connect(url_for(broker, "guest", "guest", host=addr))
    assert "loopback" in info.value.message
    # APP_HASH is scrypt only: a first login from loopback gives app its SCRAM credential
    # (PLAIN, the fallback for that, is not offered to a remote address without TLS).
    await connect(url=url_for(broker, APP_USER, APP_PASSWORD))
    remote_app = await connect(url=url_for(broker, APP_USER, APP_PASSWORD, host=addr))
    await assert_can_work(remote_app)
    local_guest = await connect()
    await assert_can_work(local_guest)
