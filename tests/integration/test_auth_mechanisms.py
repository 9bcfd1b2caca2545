"""SCRAM-SHA-256, the PLAIN policy and EXTERNAL over real sockets (docs/security.md,
"Authentication"): the wire exchange, the SDK's choice and checks, the upgrade of users
stored before SCRAM, and client-certificate logins."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import scramp
import trustme

import wharf
from wharf.broker.config import Settings, UserConfig
from wharf.broker.security.passwords import hash_password
from wharf.broker.server import Broker
from wharf.broker.store.definitions import DEFINITIONS_FILE, FORMAT_VERSION
from wharf.protocol import frames as F
from wharf.protocol.codec import FrameDecoder, encode

from .test_auth import non_loopback_ipv4

TIMEOUT_S = 5.0
SCRAM = "SCRAM-SHA-256"
APP_USER = "app"
APP_PASSWORD = "app-s3cret"
APP_HASH = hash_password(APP_PASSWORD)  # scrypt only: a user stored before SCRAM
APP_USERS = [UserConfig(name=APP_USER, password_hash=APP_HASH, tags=["administrator"])]

RawFactory = Callable[..., Any]


def audit_events(broker: Broker, event: str) -> list[dict[str, Any]]:
    path = Path(broker.data_path) / "audit.log"
    lines = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    return [e for e in lines if e["event"] == event]


def url_for(broker: Broker, user: str, password: str, host: str = "127.0.0.1", q: str = "") -> str:
    return f"wharf://{user}:{password}@{host}:{broker.port}{q}"


class Raw:
    """A socket past the Wharf handshake: frames out, frame arrays in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.pending: list[Any] = []

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> tuple[Raw, Any]:
        """(the client, the broker's HELLO)."""
        reader, writer = await asyncio.open_connection(host, port)
        raw = cls(reader, writer)
        writer.write(F.HANDSHAKE)
        return raw, await raw.recv()

    def send(self, frame: F.Frame) -> None:
        self.writer.write(encode(frame))

    async def recv(self) -> Any:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT_S)
            if not data:
                raise EOFError("closed")
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


# -- SCRAM on the wire ---------------------------------------------------------------------


async def test_scram_exchange_on_the_wire(broker: Broker) -> None:
    raw, hello = await Raw.open(broker.port)
    try:
        assert hello[7] == [SCRAM, "PLAIN"]  # loopback: PLAIN too; no EXTERNAL without TLS
        client = scramp.ScramClient([SCRAM], "guest", "guest")
        raw.send(F.Auth(5, SCRAM, "guest", client.get_client_first(), 0, {}))
        challenge = await raw.recv()
        assert challenge[:2] == [F.AUTH_CHALLENGE, 5]
        client.set_server_first(challenge[2])
        raw.send(F.AuthResponse(5, client.get_client_final()))
        ok = await raw.recv()
        assert ok[:2] == [F.AUTH_OK, 5]
        client.set_server_final(ok[5])  # raises unless the broker proved the credential
        raw.send(F.QueueDeclare(6, "scram-q", False, False, False, False, None))
        assert (await raw.recv())[:2] == [F.OK, 6]
    finally:
        await raw.close()
    assert audit_events(broker, "auth.success")[-1]["mechanism"] == SCRAM


@pytest.mark.parametrize(
    "frames",
    [
        [F.Auth(1, SCRAM, "guest", "not a scram message", 0, {})],
        [F.AuthResponse(1, "c=biws,r=x,p=eA==")],  # no challenge pending
    ],
    ids=["malformed-client-first", "response-without-challenge"],
)
async def test_bad_scram_input_is_a_fatal_error_and_the_broker_goes_on(
    broker: Broker, conn: wharf.Connection, frames: list[F.Frame]
) -> None:
    raw, _ = await Raw.open(broker.port)
    try:
        for frame in frames:
            raw.send(frame)
        error = await raw.recv()
        assert error[0] == F.ERROR and error[2] in (403, 503) and error[4] is True
    finally:
        await raw.close()
    await conn.declare_queue("still-serving")


async def test_sdk_uses_scram_by_default(broker: Broker, connect: Any) -> None:
    c = await connect()
    await c.declare_queue("by-scram")
    assert audit_events(broker, "auth.success")[-1]["mechanism"] == SCRAM
    forced = await connect(url=url_for(broker, "guest", "guest", q="?auth_mechanism=PLAIN"))
    await forced.declare_queue("by-plain")
    assert audit_events(broker, "auth.success")[-1]["mechanism"] == "PLAIN"


async def test_scram_wrong_password_is_refused_and_counted(broker: Broker) -> None:
    with pytest.raises(wharf.AccessRefused, match="invalid credentials"):
        await wharf.connect(
            url_for(broker, "guest", "wrong"), auth_mechanism=SCRAM, timeout=TIMEOUT_S
        )
    assert broker.authenticator.failures_by_mechanism.get(SCRAM) == 1
    failure = audit_events(broker, "auth.failure")[-1]
    assert failure["mechanism"] == SCRAM and "wrong" not in json.dumps(failure)


async def test_sdk_refuses_a_broker_whose_server_signature_is_wrong() -> None:
    """A fake broker that does not know the password answers SCRAM with AUTH_OK and a
    made-up signature: the SDK must not trust it."""
    served: list[bool] = []

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Raw(reader, writer)
        peer.decoder = FrameDecoder(expect_handshake=True)
        peer.send(F.Hello(0, 1, "wharf", 1 << 20, 1 << 20, 0, [SCRAM]))
        auth = await peer.recv()
        while auth[0] != F.AUTH:  # the SDK's port probe (a HEARTBEAT) comes first
            auth = await peer.recv()
        nonce = dict(p.split("=", 1) for p in auth[4].split(",")[2:])["r"]
        salt = base64.b64encode(b"s" * 16).decode()
        peer.send(F.AuthChallenge(auth[1], f"r={nonce}srv,s={salt},i=4096"))
        response = await peer.recv()
        forged = "v=" + base64.b64encode(b"\1" * 32).decode()
        peer.send(F.AuthOk(response[1], "conn-1", 0, {}, forged))
        served.append(True)
        with contextlib.suppress(Exception):
            await reader.read()  # until the SDK hangs up
        await peer.close()

    server = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(wharf.AccessRefused, match="signature is wrong"):
            await wharf.connect(f"wharf://app:secret@127.0.0.1:{port}", timeout=TIMEOUT_S)
        assert served == [True]
    finally:
        server.close()
        await server.wait_closed()


# -- users stored before SCRAM --------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"users": APP_USERS}])
async def test_config_user_without_scram_logs_in_and_is_upgraded(
    broker: Broker, connect: Any
) -> None:
    assert broker.authenticator.users.get(APP_USER).scram is None  # type: ignore[union-attr]
    with pytest.raises(wharf.AccessRefused, match="log in once with PLAIN"):
        await wharf.connect(
            url_for(broker, APP_USER, APP_PASSWORD), auth_mechanism=SCRAM, timeout=TIMEOUT_S
        )
    # The SDK's default: SCRAM is refused, PLAIN is offered on loopback, so it falls back.
    c = await connect(url=url_for(broker, APP_USER, APP_PASSWORD))
    await c.declare_queue("upgraded")
    assert broker.authenticator.users.get(APP_USER).scram is not None  # type: ignore[union-attr]
    again = await connect(url=url_for(broker, APP_USER, APP_PASSWORD), auth_mechanism=SCRAM)
    await again.declare_queue("upgraded")


async def test_definitions_file_written_before_scram_still_works(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    old = {
        "version": FORMAT_VERSION,
        "exchanges": [],
        "queues": [],
        "bindings": [],
        "users": [{"name": "ops", "password_hash": APP_HASH, "tags": ["administrator"]}],
    }
    (data / DEFINITIONS_FILE).write_text(json.dumps(old), "utf-8")
    settings = Settings(host="127.0.0.1", port=0, amqp_port=0, http_port=0, data_dir=str(data))
    for _ in range(2):  # the second start reads what the first one saved
        b = Broker(settings)
        await b.start()
        try:
            c = await wharf.connect(url_for(b, "ops", APP_PASSWORD), timeout=TIMEOUT_S)
            await c.close()
        finally:
            await b.stop()
    saved = json.loads((data / DEFINITIONS_FILE).read_text("utf-8"))
    (ops,) = [u for u in saved["users"] if u["name"] == "ops"]
    assert ops["password_hash"] == APP_HASH and ops["scram_sha_256"].startswith(SCRAM + "$")
    b = Broker(settings)
    await b.start()
    try:
        c = await wharf.connect(
            url_for(b, "ops", APP_PASSWORD), auth_mechanism=SCRAM, timeout=TIMEOUT_S
        )
        await c.close()
    finally:
        await b.stop()


# -- PLAIN without TLS from a remote address -------------------------------------------------


def remote_addr() -> str:
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    return addr


@pytest.mark.parametrize("settings_overrides", [{"host": "0.0.0.0", "users": APP_USERS}])
async def test_plain_is_refused_off_loopback_without_tls(broker: Broker, connect: Any) -> None:
    addr = remote_addr()
    raw, hello = await Raw.open(broker.port, addr)
    try:
        assert hello[7] == [SCRAM]  # PLAIN is not offered here
        raw.send(F.Auth(1, "PLAIN", APP_USER, APP_PASSWORD, 0, {}))
        error = await raw.recv()
        assert error[0] == F.ERROR and error[2] == 403
        assert "allow_plain_without_tls" in error[3] and "wharfs://" in error[3]
    finally:
        await raw.close()
    with pytest.raises(wharf.AccessRefused, match="does not accept PLAIN"):
        await wharf.connect(url_for(broker, APP_USER, APP_PASSWORD, addr), auth_mechanism="PLAIN")
    # Not upgraded yet and no PLAIN to fall back to: the SDK says what to do.
    with pytest.raises(wharf.AccessRefused, match="log in once with PLAIN over TLS"):
        await wharf.connect(url_for(broker, APP_USER, APP_PASSWORD, addr), timeout=TIMEOUT_S)
    await connect(url=url_for(broker, APP_USER, APP_PASSWORD))  # loopback: upgrades
    remote = await connect(url=url_for(broker, APP_USER, APP_PASSWORD, addr))  # SCRAM
    await remote.declare_queue("remote-scram")


@pytest.mark.parametrize(
    "settings_overrides",
    [{"host": "0.0.0.0", "http_host": "0.0.0.0", "users": APP_USERS}],
)
async def test_http_basic_over_plain_http_is_refused_off_loopback(broker: Broker) -> None:
    addr = remote_addr()
    status, body = await asyncio.to_thread(http_get, addr, broker.http_port)
    assert status == 401 and "HTTPS" in body["error"]
    status, _ = await asyncio.to_thread(http_get, "127.0.0.1", broker.http_port)
    assert status == 200


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "host": "0.0.0.0",
            "http_host": "0.0.0.0",
            "users": APP_USERS,
            "allow_plain_without_tls": True,
        }
    ],
)
async def test_allow_plain_without_tls_lets_remote_plain_in(broker: Broker, connect: Any) -> None:
    addr = remote_addr()
    c = await connect(url=url_for(broker, APP_USER, APP_PASSWORD, addr, "?auth_mechanism=PLAIN"))
    await c.declare_queue("remote-plain")
    status, _ = await asyncio.to_thread(http_get, addr, broker.http_port)
    assert status == 200


def http_get(host: str, port: int) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://{host}:{port}/api/overview")
    token = base64.b64encode(f"{APP_USER}:{APP_PASSWORD}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# -- EXTERNAL: client certificates ------------------------------------------------------------


@pytest.fixture
def cert_broker_settings(tmp_path: Path) -> tuple[Settings, dict[str, str]]:
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
    settings = Settings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        amqp_port=0,  # 5672 and 5671 may be taken here
        amqps_port=0,
        tls_port=0,
        https_port=0,
        data_dir=str(tmp_path / "data"),
        tls_cert_file=str(d / "server.pem"),
        tls_key_file=str(d / "server.key"),
        tls_ca_file=str(d / "ca.pem"),
        tls_client_auth="optional",
        tls_cert_login="common_name",
        users=APP_USERS,
    )
    files = {
        "ca": str(d / "ca.pem"),
        "app": str(d / "app.pem"),
        "stranger": str(d / "stranger.pem"),
    }
    return settings, files


async def test_external_login_with_a_client_certificate(
    cert_broker_settings: tuple[Settings, dict[str, str]],
) -> None:
    settings, files = cert_broker_settings
    b = Broker(settings)
    await b.start()
    try:
        base = f"wharfs://{{user}}@127.0.0.1:{b.tls_port}?cafile={files['ca']}"
        # No password and a certificate: the SDK picks EXTERNAL.
        c = await wharf.connect(
            base.format(user="app") + f"&certfile={files['app']}", timeout=TIMEOUT_S
        )
        await c.declare_queue("cert-q")
        await c.close()
        success = audit_events(b, "auth.success")[-1]
        assert (success["user"], success["mechanism"]) == ("app", "EXTERNAL")
        with pytest.raises(wharf.AccessRefused, match="'stranger', which does not exist"):
            await wharf.connect(
                base.format(user="") + f"&certfile={files['stranger']}&auth_mechanism=EXTERNAL",
                timeout=TIMEOUT_S,
            )
        with pytest.raises(wharf.AccessRefused, match="no EXTERNAL login"):
            await wharf.connect(
                base.format(user="app") + "&auth_mechanism=EXTERNAL", timeout=TIMEOUT_S
            )
        failure = audit_events(b, "auth.failure")[-1]
        assert failure["mechanism"] == "EXTERNAL"
        assert b.authenticator.failures_by_mechanism.get("EXTERNAL") == 1
        # Over TLS the same user may also use its password (PLAIN is offered with TLS).
        pw = await wharf.connect(
            f"wharfs://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{b.tls_port}?cafile={files['ca']}"
            "&auth_mechanism=PLAIN",
            timeout=TIMEOUT_S,
        )
        await pw.close()
    finally:
        await b.stop()
