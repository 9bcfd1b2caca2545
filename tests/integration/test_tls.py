"""TLS: the native TLS port, HTTPS, client certificates, reload, expiry, failure modes.

Certificates come from trustme (a throw-away CA in memory); every test talks to a real
broker over real sockets: the SDK with ``wharfs://`` URLs and ``ssl=``, raw sockets for
what a misbehaving client sends, urllib for HTTPS, and ``wharf ctl`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import shutil
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import trustme

import wharf
from wharf.broker.config import Settings
from wharf.broker.server import Broker, _reload_tls_on_sighup
from wharf.protocol import frames as F

TIMEOUT_S = 5.0
POLL_S = 0.01


class Pki(NamedTuple):
    ca: trustme.CA
    dir: Path
    ca_file: str
    cert_file: str
    key_file: str
    client_cert: str  # client certificate + key in one PEM (signed by ca)
    other_ca_file: str  # a CA that signed nothing here
    other_client_cert: str  # signed by the other CA


def _write_leaf(leaf: trustme.LeafCert, cert: Path, key: Path) -> None:
    leaf.private_key_pem.write_to_path(str(key))
    with cert.open("wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    d = tmp_path / "pki"
    d.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    _write_leaf(ca.issue_cert("127.0.0.1", "localhost"), d / "server.pem", d / "server.key")
    ca.issue_cert(
        "client-app", common_name="client-app"
    ).private_key_and_cert_chain_pem.write_to_path(str(d / "client.pem"))
    other = trustme.CA()
    other.cert_pem.write_to_path(str(d / "other-ca.pem"))
    other.issue_cert("intruder").private_key_and_cert_chain_pem.write_to_path(
        str(d / "intruder.pem")
    )
    return Pki(
        ca,
        d,
        str(d / "ca.pem"),
        str(d / "server.pem"),
        str(d / "server.key"),
        str(d / "client.pem"),
        str(d / "other-ca.pem"),
        str(d / "intruder.pem"),
    )


def tls_settings(pki: Pki, **extra: Any) -> dict[str, Any]:
    return {
        "tls_port": 0,
        "https_port": 0,
        "tls_cert_file": pki.cert_file,
        "tls_key_file": pki.key_file,
        **extra,
    }


@pytest.fixture
def settings_overrides(pki: Pki) -> dict[str, Any]:
    return tls_settings(pki)


def tls_url(broker: Broker, pki: Pki, **query: str) -> str:
    q = "&".join(f"{k}={v}" for k, v in {"cafile": pki.ca_file, **query}.items())
    return f"wharfs://guest:guest@127.0.0.1:{broker.tls_port}?{q}"


def client_context(pki: Pki, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca_file)
    if cert is not None:
        ctx.load_cert_chain(cert)
    return ctx


async def round_trip(conn: wharf.Connection, queue: str = "tls-q") -> None:
    await conn.declare_queue(queue)
    await conn.publish("", queue, b"over tls")
    msg = await conn.get(queue)
    assert msg is not None and msg.body == b"over tls"
    await msg.ack()


async def peer_cert_der(port: int, pki: Pki) -> bytes:
    """The certificate the TLS port presents to a new connection."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(pki))
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        assert der is not None
        return bytes(der)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def https_get(port: int, path: str, pki: Pki, **kw: Any) -> tuple[int, Any]:
    """(status, JSON body) of an HTTPS request as guest (blocking; run in a thread)."""
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", method=kw.get("method"))
    req.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S, context=client_context(pki)) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def wait_closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Read until the broker closes the socket; what it sent."""
    got = b""
    async with asyncio.timeout(TIMEOUT_S):
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while chunk := await reader.read(65536):
                got += chunk
    return got


# -- working connections -----------------------------------------------------------------------


async def test_wharfs_url_publishes_and_consumes(broker: Broker, pki: Pki) -> None:
    conn = await wharf.connect(tls_url(broker, pki), timeout=TIMEOUT_S)
    try:
        await round_trip(conn)
    finally:
        await conn.close()


async def test_ssl_context_argument(broker: Broker, pki: Pki) -> None:
    url = f"wharfs://guest:guest@127.0.0.1:{broker.tls_port}"
    conn = await wharf.connect(url, ssl=client_context(pki), timeout=TIMEOUT_S)
    try:
        await round_trip(conn)
    finally:
        await conn.close()


async def test_blocking_client_over_tls(broker: Broker, pki: Pki) -> None:
    def work() -> bytes:
        url = f"wharfs://guest:guest@127.0.0.1:{broker.tls_port}"
        with wharf.sync.connect(url, ssl=client_context(pki), timeout=TIMEOUT_S) as conn:
            conn.declare_queue("sync-tls")
            conn.publish("", "sync-tls", b"blocking")
            msg = conn.get("sync-tls")
            assert msg is not None
            msg.ack()
            return msg.body

    assert await asyncio.to_thread(work) == b"blocking"


async def test_https_healthz_and_overview_listeners(broker: Broker, pki: Pki) -> None:
    status, body = await asyncio.to_thread(https_get, broker.https_port, "/healthz", pki)
    assert (status, body) == (200, {"status": "ok"})
    status, body = await asyncio.to_thread(https_get, broker.https_port, "/api/overview", pki)
    assert status == 200
    protocols = {x["protocol"]: x["port"] for x in body["listeners"]}
    assert protocols == {
        "wharf": broker.port,
        "wharfs": broker.tls_port,
        "http": broker.http_port,
        "https": broker.https_port,
    }


@pytest.mark.parametrize("settings_overrides", [{}], ids=["no-tls"])
async def test_no_tls_configured_keeps_the_plain_defaults(broker: Broker) -> None:
    assert broker.tls is None and broker.tls_port == 0 and broker.https_port == 0
    conn = await wharf.connect(f"wharf://guest:guest@127.0.0.1:{broker.port}")
    try:
        await round_trip(conn)
    finally:
        await conn.close()


async def test_plain_port_zero_turns_the_plain_listener_off(tmp_path: Path, pki: Pki) -> None:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        amqp_port=0,
        amqps_port=0,
        data_dir=str(tmp_path / "data"),
        plain_port=0,
        **tls_settings(pki),
    )
    b = Broker(settings)
    await b.start()
    try:
        assert b.port == 0
        assert [x["protocol"] for x in b.listeners()] == ["wharfs", "http", "https"]
        conn = await wharf.connect(tls_url(b, pki), timeout=TIMEOUT_S)
        await round_trip(conn)
        await conn.close()
    finally:
        await b.stop()


# -- failure modes -------------------------------------------------------------------------------


async def test_plain_bytes_to_the_tls_port_are_logged_and_closed_at_once(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wharf.tls")
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.tls_port)
    writer.write(F.HANDSHAKE)
    try:
        assert await wait_closed_by_server(reader) == b""
    finally:
        writer.close()
    assert any("does not speak TLS" in r.getMessage() for r in caplog.records), caplog.text


async def test_sdk_speaking_plain_to_the_tls_port_gets_a_clear_error(broker: Broker) -> None:
    url = f"wharf://guest:guest@127.0.0.1:{broker.tls_port}"
    # Well within the 10 s handshake timeout: the broker closes at once and the SDK says why.
    with pytest.raises(wharf.ConnectionLost, match="wharfs://"):
        await wharf.connect(url, timeout=TIMEOUT_S)


async def test_tls_to_the_plain_port_gets_a_clear_error(broker: Broker, pki: Pki) -> None:
    url = f"wharfs://guest:guest@127.0.0.1:{broker.port}?cafile={pki.ca_file}"
    with pytest.raises(wharf.TlsError, match="did not answer with TLS") as info:
        await wharf.connect(url, timeout=TIMEOUT_S)
    assert info.value.retriable is False


async def test_wrong_ca_is_refused_by_the_client(broker: Broker, pki: Pki) -> None:
    url = f"wharfs://guest:guest@127.0.0.1:{broker.tls_port}?cafile={pki.other_ca_file}"
    with pytest.raises(wharf.TlsError, match="failed verification"):
        await wharf.connect(url, timeout=TIMEOUT_S)


async def test_hostname_is_checked(broker: Broker, pki: Pki) -> None:
    _write_leaf(pki.ca.issue_cert("wharf.example"), Path(pki.cert_file), Path(pki.key_file))
    broker.reload_tls()
    with pytest.raises(wharf.TlsError, match="127.0.0.1"):  # the name the SDK checked
        await wharf.connect(tls_url(broker, pki), timeout=TIMEOUT_S)


@pytest.fixture
def required(pki: Pki) -> dict[str, Any]:
    return tls_settings(pki, tls_ca_file=pki.ca_file, tls_client_auth="required")


@pytest.fixture
async def broker_required(tmp_path: Path, required: dict[str, Any]) -> AsyncIterator[Broker]:
    b = Broker(
        Settings(
            host="127.0.0.1",
            port=0,
            http_port=0,
            amqp_port=0,
            amqps_port=0,
            data_dir=str(tmp_path / "d"),
            **required,
        )
    )
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


async def test_client_certificate_required(
    broker_required: Broker, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    b = broker_required
    conn = await wharf.connect(tls_url(b, pki, certfile=pki.client_cert), timeout=TIMEOUT_S)
    try:
        await round_trip(conn)
    finally:
        await conn.close()
    caplog.set_level(logging.WARNING, logger="wharf.tls")
    with pytest.raises(wharf.TlsError, match="refused the client certificate"):
        await wharf.connect(tls_url(b, pki), timeout=TIMEOUT_S)  # none given
    with pytest.raises(wharf.TlsError, match="refused the client certificate"):
        await wharf.connect(tls_url(b, pki, certfile=pki.other_client_cert), timeout=TIMEOUT_S)
    async with asyncio.timeout(TIMEOUT_S):
        while b.tls_listener is not None and b.tls_listener.failures < 2:  # noqa: ASYNC110
            await asyncio.sleep(POLL_S)
    assert "client certificate refused" in caplog.text


async def test_client_certificate_optional(tmp_path: Path, pki: Pki) -> None:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        amqp_port=0,
        amqps_port=0,
        data_dir=str(tmp_path / "d"),
        **tls_settings(pki, tls_ca_file=pki.ca_file, tls_client_auth="optional"),
    )
    b = Broker(settings)
    await b.start()
    try:
        for url in (tls_url(b, pki), tls_url(b, pki, certfile=pki.client_cert)):
            conn = await wharf.connect(url, timeout=TIMEOUT_S)
            await round_trip(conn)
            await conn.close()
        with pytest.raises(wharf.TlsError, match="refused the client certificate"):
            await wharf.connect(tls_url(b, pki, certfile=pki.other_client_cert), timeout=TIMEOUT_S)
    finally:
        await b.stop()


async def test_silent_connections_are_closed_on_every_listener(tmp_path: Path, pki: Pki) -> None:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        amqp_port=0,
        amqps_port=0,
        data_dir=str(tmp_path / "d"),
        **tls_settings(pki, handshake_timeout_ms=300),
    )
    b = Broker(settings)
    await b.start()
    opened: list[asyncio.StreamWriter] = []
    try:
        # No TLS handshake at all, on the native TLS port and on HTTPS.
        for port in (b.tls_port, b.https_port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            opened.append(writer)
            assert await wait_closed_by_server(reader) == b""
        # TLS done, then nothing: the Wharf handshake deadline counts from the accept.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", b.tls_port, ssl=client_context(pki)
        )
        opened.append(writer)
        writer.write(F.HANDSHAKE)
        got = await wait_closed_by_server(reader)
        assert b"not completed in time" in got
    finally:
        for w in opened:
            w.close()
        await b.stop()


async def test_connections_silent_after_their_tls_handshake_are_closed(
    tmp_path: Path, pki: Pki
) -> None:
    """TLS done, then not one byte: no Wharf handshake on the native TLS port, no request
    head on HTTPS; and plain sockets that send nothing, on the plain ports."""
    settings = Settings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        amqp_port=0,  # 5672 and 5671 may be taken here
        amqps_port=0,
        data_dir=str(tmp_path / "d"),
        **tls_settings(pki, handshake_timeout_ms=300),
    )
    b = Broker(settings)
    await b.start()
    opened: list[asyncio.StreamWriter] = []
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", b.tls_port, ssl=client_context(pki)
        )
        opened.append(writer)
        got = await wait_closed_by_server(reader)
        assert b"not completed in time" in got  # after HELLO, the fatal error
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", b.https_port, ssl=client_context(pki)
        )
        opened.append(writer)
        assert await wait_closed_by_server(reader) == b""
        for port in (b.port, b.http_port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            opened.append(writer)
            await wait_closed_by_server(reader)  # returns: the broker closed it
    finally:
        for w in opened:
            w.close()
        await b.stop()


# -- reload and expiry -----------------------------------------------------------------------


async def test_reload_swaps_the_certificate_for_new_connections(broker: Broker, pki: Pki) -> None:
    before = await peer_cert_der(broker.tls_port, pki)
    old_conn = await wharf.connect(tls_url(broker, pki), timeout=TIMEOUT_S)
    try:
        fresh = pki.ca.issue_cert("127.0.0.1", "localhost")
        _write_leaf(fresh, Path(pki.cert_file), Path(pki.key_file))
        status, body = await asyncio.to_thread(
            https_get, broker.https_port, "/api/tls/reload", pki, method="POST"
        )
        assert status == 200, body
        assert body["reloads"] == 1 and body["last_error"] is None
        after = await peer_cert_der(broker.tls_port, pki)
        assert after != before
        assert after == ssl.PEM_cert_to_DER_cert(fresh.cert_chain_pems[0].bytes().decode())
        await round_trip(old_conn, "still-open")  # connections already open carry on
        # HTTPS shares the reloaded context.
        assert await peer_cert_der(broker.https_port, pki) == after
    finally:
        await old_conn.close()


async def test_failed_reload_keeps_the_old_certificate(
    broker: Broker, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    before = await peer_cert_der(broker.tls_port, pki)
    # A key of another certificate next to the current one.
    pki.ca.issue_cert("elsewhere").private_key_pem.write_to_path(pki.key_file)
    status, body = await asyncio.to_thread(
        https_get, broker.https_port, "/api/tls/reload", pki, method="POST"
    )
    assert status == 409, body
    assert "previous certificate stays in use" in body["error"]
    assert "is not the key of the certificate" in body["error"]
    assert "TLS reload failed" in caplog.text
    assert await peer_cert_der(broker.tls_port, pki) == before
    conn = await wharf.connect(tls_url(broker, pki), timeout=TIMEOUT_S)
    await round_trip(conn)
    await conn.close()


async def test_sighup_reloads(broker: Broker, pki: Pki) -> None:
    before = await peer_cert_der(broker.tls_port, pki)
    _write_leaf(pki.ca.issue_cert("127.0.0.1"), Path(pki.cert_file), Path(pki.key_file))
    _reload_tls_on_sighup(broker)  # what `wharf serve` runs on SIGHUP
    assert await peer_cert_der(broker.tls_port, pki) != before


@pytest.fixture
def expired(pki: Pki) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    leaf = pki.ca.issue_cert(
        "127.0.0.1",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    _write_leaf(leaf, pki.dir / "expired.pem", pki.dir / "expired.key")
    return {
        "tls_cert_file": str(pki.dir / "expired.pem"),
        "tls_key_file": str(pki.dir / "expired.key"),
    }


async def test_expired_certificate_is_reported(
    tmp_path: Path, pki: Pki, expired: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        amqp_port=0,
        amqps_port=0,
        data_dir=str(tmp_path / "d"),
        **{**tls_settings(pki), **expired},
    )
    b = Broker(settings)
    await b.start()
    try:
        assert "expired" in caplog.text
        with pytest.raises(wharf.TlsError, match="expired"):
            await wharf.connect(tls_url(b, pki), timeout=TIMEOUT_S)

        def scrape() -> str:
            url = f"http://127.0.0.1:{b.http_port}/metrics"
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
                return str(r.read().decode())

        metrics = await asyncio.to_thread(scrape)
        line = next(
            x for x in metrics.splitlines() if x.startswith("wharf_tls_cert_expiry_seconds")
        )
        assert float(line.split()[-1]) < -80_000  # expired a day ago
    finally:
        await b.stop()


# -- wharf ctl over HTTPS ----------------------------------------------------------------------


async def run_wharf(*args: str) -> tuple[int, str, str]:
    script = Path(sys.executable).parent / "wharf"
    found = str(script) if script.exists() else shutil.which("wharf")
    if found is None:
        pytest.skip("the wharf console script is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHARF_", "_WHARF"))}
    proc = await asyncio.create_subprocess_exec(
        found,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_ctl_tls_reload_over_https(broker: Broker, pki: Pki) -> None:
    url = f"https://127.0.0.1:{broker.https_port}"
    code, out, err = await run_wharf("ctl", "--url", url, "--cafile", pki.ca_file, "tls", "reload")
    assert code == 0, err
    assert "reloaded" in out
    code, out, err = await run_wharf("ctl", "--url", url, "tls", "show")  # system CAs only
    assert code == 1 and "--cafile" in err, err


async def test_connections_api_says_which_came_over_tls(broker: Broker, pki: Pki) -> None:
    secure = await wharf.connect(tls_url(broker, pki), timeout=TIMEOUT_S)
    plain = await wharf.connect(f"wharf://guest:guest@127.0.0.1:{broker.port}")
    try:
        status, body = await asyncio.to_thread(
            https_get, broker.https_port, "/api/connections", pki
        )
        assert status == 200 and len(body) == 2
        by_tls = {c["tls"]: c for c in body}
        over_tls, not_tls = by_tls[True], by_tls[False]
        assert over_tls["tls_version"] in ("TLSv1.2", "TLSv1.3")
        assert isinstance(over_tls["cipher"], str) and over_tls["cipher"]
        assert "tls_version" not in not_tls and "cipher" not in not_tls
    finally:
        await secure.close()
        await plain.close()
