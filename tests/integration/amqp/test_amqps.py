"""AMQP 0-9-1 over TLS (amqps_port): the native TLS port's certificates and client-auth,
PLAIN over TLS, EXTERNAL with a client certificate (docs/amqp.md, "TLS")."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiormq
import pika
import pika.credentials
import pika.exceptions
import pytest
import trustme
from pamqp import commands as C

from wharf.broker.config import UserConfig
from wharf.broker.security.passwords import hash_password
from wharf.broker.server import Broker

from ...conftest import make_settings
from ..test_api import api
from ..test_auth import non_loopback_ipv4
from .raw_amqp import PROTOCOL_HEADER, RawAmqp, free_port

APP_USERS = [UserConfig(name="app", password_hash=hash_password("app-pw"), tags=[])]


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    d = tmp_path / "pki"
    d.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(d / "server.key"))
    with (d / "server.pem").open("wb") as f:
        for blob in server.cert_chain_pems:
            f.write(blob.bytes())
    for name in ("app", "stranger"):
        leaf = ca.issue_cert(f"{name}.example.com", common_name=name)
        leaf.private_key_and_cert_chain_pem.write_to_path(str(d / f"{name}.pem"))
    return {n: str(d / f"{n}.pem") for n in ("ca", "server", "app", "stranger")} | {
        "key": str(d / "server.key")
    }


@pytest.fixture
async def tls_broker(tmp_path: Path, pki: dict[str, str]) -> AsyncIterator[Broker]:
    settings = make_settings(
        tmp_path,
        tls_port=0,
        https_port=0,
        amqps_port=free_port(),
        amqp_port=free_port(),
        tls_cert_file=pki["server"],
        tls_key_file=pki["key"],
        tls_ca_file=pki["ca"],
        tls_client_auth="optional",
        tls_cert_login="common_name",
        users=APP_USERS,
    )
    b = Broker(settings)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


def client_context(pki: dict[str, str], cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki["ca"])
    if cert is not None:
        ctx.load_cert_chain(cert)
    return ctx


def params(
    broker: Broker, ctx: ssl.SSLContext, credentials: pika.credentials.VALID_TYPES
) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host="127.0.0.1",
        port=broker.amqps_port,
        ssl_options=pika.SSLOptions(ctx, "127.0.0.1"),
        credentials=credentials,
        connection_attempts=1,
        socket_timeout=10,
    )


async def start_mechanisms(broker: Broker, ctx: ssl.SSLContext) -> str:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", broker.amqps_port, ssl=ctx, server_hostname="127.0.0.1"
    )
    try:
        client = RawAmqp(reader, writer)
        writer.write(PROTOCOL_HEADER)
        _, start = await client.recv()
        assert isinstance(start, C.Connection.Start)
        return str(start.mechanisms)
    finally:
        await client.close()


async def test_plain_over_amqps_with_the_native_tls_certificate(
    tls_broker: Broker, pki: dict[str, str]
) -> None:
    assert {"protocol": "amqps", "host": "127.0.0.1", "port": tls_broker.amqps_port} in (
        tls_broker.listeners()
    )

    def scenario() -> None:
        p = params(tls_broker, client_context(pki), pika.PlainCredentials("app", "app-pw"))
        with pika.BlockingConnection(p) as conn:
            ch = conn.channel()
            ch.queue_declare("tls-q")
            ch.basic_publish("", "tls-q", b"over tls")
            _, _, body = ch.basic_get("tls-q", auto_ack=True)
            assert body == b"over tls"

    await asyncio.to_thread(scenario)
    # Without a client certificate EXTERNAL is not offered.
    assert await start_mechanisms(tls_broker, client_context(pki)) == "PLAIN AMQPLAIN"


async def test_external_login_with_a_client_certificate(
    tls_broker: Broker, pki: dict[str, str]
) -> None:
    mechanisms = await start_mechanisms(tls_broker, client_context(pki, pki["app"]))
    assert mechanisms.split() == ["PLAIN", "AMQPLAIN", "EXTERNAL"]
    users: list[str] = []

    def scenario() -> None:
        ctx = client_context(pki, pki["app"])
        with pika.BlockingConnection(
            params(tls_broker, ctx, pika.credentials.ExternalCredentials())
        ) as conn:
            users.extend(c.username for c in tls_broker.connections.values())
            ch = conn.channel()
            ch.queue_declare("ext-q")
        stranger = client_context(pki, pki["stranger"])
        with pytest.raises(pika.exceptions.ProbableAuthenticationError, match="EXTERNAL"):
            pika.BlockingConnection(
                params(tls_broker, stranger, pika.credentials.ExternalCredentials())
            )

    await asyncio.to_thread(scenario)
    assert users == ["app"]


async def test_a_plain_client_on_the_amqps_port_fails_its_handshake(tls_broker: Broker) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tls_broker.amqps_port)
    writer.write(PROTOCOL_HEADER)
    try:
        data = await asyncio.wait_for(reader.read(100), 5)
    except ConnectionResetError:
        data = b""
    writer.close()
    assert not data.startswith(b"\x01")  # no AMQP frame: the TLS handshake failed
    listener = tls_broker.amqps_listener
    assert listener is not None
    for _ in range(100):
        if listener.failures:
            break
        await asyncio.sleep(0.05)
    assert listener.failures == 1


async def test_plain_over_amqps_is_allowed_from_a_remote_address(
    tmp_path: Path, pki: dict[str, str]
) -> None:
    """PLAIN without TLS is refused from a non-loopback address; over amqps it is not."""
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    settings = make_settings(
        tmp_path,
        host=addr,
        tls_port=0,
        https_port=0,
        amqp_port=free_port(),
        amqps_port=free_port(),
        tls_cert_file=pki["server"],
        tls_key_file=pki["key"],
        users=APP_USERS,
    )
    b = Broker(settings)
    await b.start()
    try:

        def scenario() -> None:
            ctx = client_context(pki)
            ctx.check_hostname = False  # the certificate names 127.0.0.1
            creds = pika.PlainCredentials("app", "app-pw")
            tls = pika.ConnectionParameters(
                host=addr,
                port=b.amqps_port,
                ssl_options=pika.SSLOptions(ctx),
                credentials=creds,
                connection_attempts=1,
                socket_timeout=10,
            )
            with pika.BlockingConnection(tls) as conn:
                conn.channel().queue_declare("remote-q")
            plain = pika.ConnectionParameters(
                host=addr, port=b.amqp_port, credentials=creds, connection_attempts=1
            )
            with pytest.raises(pika.exceptions.ProbableAuthenticationError):
                pika.BlockingConnection(plain)

        await asyncio.to_thread(scenario)
    finally:
        await b.stop()


async def test_a_tls_reload_applies_to_new_amqps_connections(
    tls_broker: Broker, pki: dict[str, str], tmp_path: Path
) -> None:
    new_ca = trustme.CA()
    new_ca_file = tmp_path / "new-ca.pem"
    new_ca.cert_pem.write_to_path(str(new_ca_file))
    server = new_ca.issue_cert("127.0.0.1")
    server.private_key_pem.write_to_path(pki["key"])
    server.cert_chain_pems[0].write_to_path(pki["server"])  # the leaf; no intermediates
    tls_broker.reload_tls()
    new_ctx = ssl.create_default_context(cafile=str(new_ca_file))
    assert await start_mechanisms(tls_broker, new_ctx) == "PLAIN AMQPLAIN"
    with pytest.raises(ssl.SSLCertVerificationError):
        await start_mechanisms(tls_broker, client_context(pki))  # the old CA


async def test_connections_api_says_which_amqp_connection_is_tls(
    tls_broker: Broker, pki: dict[str, str]
) -> None:
    b = tls_broker
    secure = await aiormq.connect(
        f"amqps://app:app-pw@127.0.0.1:{b.amqps_port}/", context=client_context(pki)
    )
    plain = await aiormq.connect(f"amqp://app:app-pw@127.0.0.1:{b.amqp_port}/")
    try:
        r = await api(b, "GET", "/api/connections")
        assert r.status == 200, r
        conns = [c for c in r.json() if c["protocol"] == "amqp"]
        assert sorted(c["tls"] for c in conns) == [False, True]
        [over_tls] = [c for c in conns if c["tls"]]
        assert over_tls["tls_version"] in ("TLSv1.2", "TLSv1.3") and over_tls["cipher"]
        r = await api(b, "GET", "/api/connections/" + over_tls["name"].replace(" ", "%20"))
        assert r.json()["tls_version"] == over_tls["tls_version"]
    finally:
        await secure.close()
        await plain.close()
