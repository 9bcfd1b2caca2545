"""TLS for the listeners: the server ``SSLContext``, its reload, the certificate's expiry.

One :class:`ServerTls` serves every TLS listener (the native ``tls_port`` and HTTPS).  Its
``front`` context is the one the listeners hand to asyncio; an SNI callback on it (OpenSSL
calls it for every ClientHello, with or without a server name) switches each new
connection to ``current``, the context built by the last successful load.  A reload
(SIGHUP, ``POST /api/tls/reload``) builds a whole new context first and swaps it in only
when it loaded, so a bad file never leaves the listeners half configured, and connections
already open keep the certificate they were opened with.

What the settings ask for (``tls_client_auth``, ``tls_min_version``, ``tls_ciphers``)
stays as the broker started; a reload re-reads the files (certificate, key, CA).

The certificate's ``notAfter`` is read from the PEM file with a small DER walk (the
standard library decodes peer certificates only); validity layout (RFC 5280)::

    Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    tbsCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber INTEGER,
                                  signature SEQUENCE, issuer SEQUENCE,
                                  validity SEQUENCE { notBefore Time, notAfter Time }, ... }
    Time ::= UTCTime (tag 0x17, YYMMDDHHMMSSZ) | GeneralizedTime (0x18, YYYYMMDDHHMMSSZ)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import calendar
import errno
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger("wharf.tls")

CLIENT_AUTH_MODES: Final = ("none", "optional", "required")
TLS_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# A certificate this close to its notAfter is reported at start and reload as a warning.
EXPIRY_WARNING_S: Final = 14 * 86_400

_VERIFY_MODES: Final = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
_PEM_CERT_RE: Final = re.compile(
    r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL
)
_DER_SEQUENCE: Final = 0x30
_DER_VERSION: Final = 0xA0  # [0] EXPLICIT version
_DER_UTC_TIME: Final = 0x17
_DER_GENERALIZED_TIME: Final = 0x18


class TlsError(ValueError):
    """A TLS setting or file is unusable; the message names the setting and the file."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """What a server context is built from (the ``tls_*`` settings)."""

    cert_file: str
    key_file: str
    ca_file: str | None = None
    client_auth: str = "none"
    min_version: str = "1.2"
    ciphers: str | None = None


def parse_min_version(value: str) -> ssl.TLSVersion:
    """``"1.2"`` or ``"1.3"`` (also ``"TLSv1.2"``) as an ``ssl.TLSVersion``."""
    key = value.strip().lower().removeprefix("tlsv")
    try:
        return TLS_VERSIONS[key]
    except KeyError:
        raise TlsError(
            f"tls_min_version: expected one of {', '.join(TLS_VERSIONS)}, got {value!r}"
        ) from None


def _der_item(buf: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, contents, position after the item) of the DER item at ``pos``."""
    tag = buf[pos]
    length = buf[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(buf[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(buf):
        raise ValueError("truncated DER item")
    return tag, buf[pos:end], end


def _der_time(tag: int, raw: bytes) -> float:
    text = raw.decode("ascii")
    if tag == _DER_UTC_TIME:
        # RFC 5280: YY >= 50 is 19YY, else 20YY.
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != _DER_GENERALIZED_TIME:
        raise ValueError(f"unexpected time tag {tag:#x}")
    parsed = time.strptime(text.rstrip("Z")[:14], "%Y%m%d%H%M%S")
    return float(calendar.timegm(parsed))


def cert_not_after(pem: str) -> float:
    """The ``notAfter`` (Unix seconds) of the first certificate in PEM text."""
    match = _PEM_CERT_RE.search(pem)
    if match is None:
        raise ValueError("no PEM certificate (-----BEGIN CERTIFICATE-----) found")
    der = base64.b64decode("".join(match.group(1).split()), validate=True)
    tag, cert, _ = _der_item(der, 0)
    if tag != _DER_SEQUENCE:
        raise ValueError("not a DER certificate")
    tag, tbs, _ = _der_item(cert, 0)
    if tag != _DER_SEQUENCE:
        raise ValueError("not a DER certificate")
    pos = 0
    fields: list[tuple[int, bytes]] = []
    while len(fields) < 5:
        tag, value, pos = _der_item(tbs, pos)
        if not fields and tag == _DER_VERSION:
            continue
        fields.append((tag, value))
    validity = fields[3][1]
    _, _, after = _der_item(validity, 0)
    tag, raw, _ = _der_item(validity, after)
    return _der_time(tag, raw)


def _read_text(setting: str, path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        raise TlsError(f"{setting}: no such file {path!r}") from None
    except OSError as exc:
        raise TlsError(f"{setting}: cannot read {path!r}: {exc.strerror or exc}") from None


def _encrypted_key(*_: Any) -> str:
    # Called by OpenSSL only for an encrypted key; without it, OpenSSL would prompt on the
    # terminal of a broker that may have none.
    raise TlsError("encrypted")


def build_server_context(files: TlsFiles) -> tuple[ssl.SSLContext, float]:
    """A server context from ``files`` and the certificate's notAfter (Unix seconds).

    Raises :class:`TlsError` naming the setting: a missing or unreadable file, a file that
    is no PEM certificate or key, a key that does not match the certificate, an encrypted
    key, a bad version or cipher string, client certificates asked for without a CA.
    """
    min_version = parse_min_version(files.min_version)
    if files.client_auth not in _VERIFY_MODES:
        raise TlsError(
            f"tls_client_auth: expected one of {', '.join(CLIENT_AUTH_MODES)}, "
            f"got {files.client_auth!r}"
        )
    if files.client_auth != "none" and files.ca_file is None:
        raise TlsError(
            f"tls_client_auth = {files.client_auth!r} needs tls_ca_file: the CA that signs "
            "the client certificates"
        )
    try:
        not_after = cert_not_after(_read_text("tls_cert_file", files.cert_file))
    except (ValueError, IndexError, binascii.Error) as exc:
        if isinstance(exc, TlsError):
            raise
        raise TlsError(
            f"tls_cert_file: {files.cert_file!r} is not a PEM certificate ({exc})"
        ) from None
    key_text = _read_text("tls_key_file", files.key_file)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = min_version
    ctx.options |= ssl.OP_NO_COMPRESSION
    if files.ciphers is not None:
        try:
            ctx.set_ciphers(files.ciphers)
        except ssl.SSLError:
            raise TlsError(
                f"tls_ciphers: no cipher matches {files.ciphers!r} (an OpenSSL cipher list, "
                "e.g. 'ECDHE+AESGCM'; it applies to TLS 1.2, TLS 1.3 suites are fixed)"
            ) from None
    try:
        ctx.load_cert_chain(files.cert_file, files.key_file, password=_encrypted_key)
    except TlsError:
        raise TlsError(
            f"tls_key_file: {files.key_file!r} is encrypted; Wharf needs an unencrypted "
            "PEM key (readable by the broker only)"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(
                f"tls_key_file: {files.key_file!r} is not the key of the certificate in "
                f"tls_cert_file {files.cert_file!r}"
            ) from None
        if "PRIVATE KEY" not in key_text:
            raise TlsError(
                f"tls_key_file: {files.key_file!r} is not a PEM private key ({exc.reason})"
            ) from None
        raise TlsError(
            f"cannot load tls_cert_file {files.cert_file!r} with tls_key_file "
            f"{files.key_file!r}: {exc.reason or exc}"
        ) from None
    ctx.verify_mode = _VERIFY_MODES[files.client_auth]
    if files.ca_file is not None:
        _read_text("tls_ca_file", files.ca_file)
        try:
            ctx.load_verify_locations(cafile=files.ca_file)
        except ssl.SSLError as exc:
            raise TlsError(
                f"tls_ca_file: {files.ca_file!r} holds no usable PEM certificate "
                f"({exc.reason or exc})"
            ) from None
    return ctx, not_after


def check_files(files: TlsFiles) -> None:
    """Raise :class:`TlsError` if a server context cannot be built from ``files``."""
    build_server_context(files)


class ServerTls:
    """The TLS state of a running broker: the listeners' context, reloadable."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.current, self.not_after = build_server_context(files)
        self.front = self.current
        self.front.sni_callback = self._select_context
        self.loaded_at = time.time()
        self.reloads = 0
        self.last_error: str | None = None
        self.report_expiry()

    def _select_context(
        self, sslobj: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        current = self.current
        if current is not ctx:
            sslobj.context = current  # the last loaded certificate, key and CA

    def reload(self) -> None:
        """Load the files again for new connections; on failure the old context stays,
        and the :class:`TlsError` is raised (and kept in ``last_error``)."""
        try:
            ctx, not_after = build_server_context(self.files)
        except TlsError as exc:
            self.last_error = str(exc)
            log.error("TLS reload failed, the previous certificate stays in use: %s", exc)
            raise
        self.current, self.not_after = ctx, not_after
        self.loaded_at = time.time()
        self.reloads += 1
        self.last_error = None
        log.info(
            "TLS certificate reloaded from %s (valid until %s)",
            self.files.cert_file,
            _utc(not_after),
        )
        self.report_expiry()

    def expiry_seconds(self, now: float | None = None) -> float:
        """Seconds until the certificate expires; negative once it has."""
        return self.not_after - (time.time() if now is None else now)

    def report_expiry(self) -> None:
        left = self.expiry_seconds()
        cert = self.files.cert_file
        if left <= 0:
            log.error(
                "TLS certificate %s expired at %s (%.0f s ago): clients will refuse it; "
                "replace it and reload (SIGHUP or `wharf ctl tls reload`)",
                cert,
                _utc(self.not_after),
                -left,
            )
        elif left < EXPIRY_WARNING_S:
            log.warning(
                "TLS certificate %s expires at %s (in %.1f days)",
                cert,
                _utc(self.not_after),
                left / 86_400,
            )

    def describe(self) -> dict[str, Any]:
        f = self.files
        return {
            "cert_file": os.fspath(f.cert_file),
            "key_file": os.fspath(f.key_file),
            "ca_file": f.ca_file,
            "client_auth": f.client_auth,
            "min_version": f.min_version,
            "not_after": _utc(self.not_after),
            "expiry_seconds": int(self.expiry_seconds()),
            "loaded_at": _utc(self.loaded_at),
            "reloads": self.reloads,
            "last_error": self.last_error,
        }


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# -- accepting TLS connections -------------------------------------------------------------

# Handshake failures are logged one per connection up to this many per interval, then
# counted only (a scanner or a flood must not fill the log).
FAILURE_LOG_BURST: Final = 20
FAILURE_LOG_INTERVAL_S: Final = 60.0
ACCEPT_BACKLOG: Final = 1024
# After an accept failed for want of fds or memory, accepting resumes after this long.
ACCEPT_PAUSE_S: Final = 1.0
_ACCEPT_RETRY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# OpenSSL's reasons for a first record that is no TLS at all.
_NOT_TLS_REASONS: Final = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE"}
)


def describe_handshake_error(exc: BaseException) -> str:
    """A log-friendly reason for a failed server-side TLS handshake."""
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _NOT_TLS_REASONS or reason.startswith("WRONG_VERSION"):
            return f"the client does not speak TLS ({reason}): a plain wharf:// client?"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"client certificate refused ({exc.verify_message})"
        if "CERTIFICATE" in reason:
            return f"client certificate refused ({reason})"
        return reason or str(exc)
    if isinstance(exc, TimeoutError | ConnectionAbortedError) and "taking longer" in str(exc):
        return "TLS handshake not completed within handshake_timeout_ms"
    return str(exc) or type(exc).__name__


class TlsListener:
    """A native TLS listener: its own accept loop, a TLS handshake per socket, then the
    connection is the protocol ``app_factory`` made at accept time (so its handshake
    deadline, ``handshake_timeout_ms``, covers the TLS handshake too).

    Not ``create_server(ssl=...)``: there a failed handshake (plain bytes, a refused client
    certificate, a timeout) closes the socket without a word to the application.  Here
    ``connect_accepted_socket`` raises it, so the failure is logged with the peer address
    and counted.  Each handshake uses the context of the last successful load (reload).
    At most ``max_handshaking`` handshakes run at once, and at most ``max_per_address``
    from one peer address (so one flooding address cannot hold every slot); sockets beyond
    either cap are closed at once, before a byte of them is read.
    """

    def __init__(
        self,
        tls: ServerTls,
        app_factory: Callable[[], asyncio.BaseProtocol],
        handshake_timeout_s: float,
        max_handshaking: int,
        name: str = "native",
        max_per_address: int | None = None,
    ) -> None:
        self.tls = tls
        self.app_factory = app_factory
        self.handshake_timeout_s = handshake_timeout_s
        self.max_handshaking = max_handshaking
        self.max_per_address = max_handshaking if max_per_address is None else max_per_address
        self.name = name
        self.port = 0
        self.handshaking = 0
        # Counters for /metrics: handshakes that failed or timed out, and sockets closed
        # at once because max_handshaking (total) or max_per_address were running.
        self.failures = 0
        self.refused_total = 0
        self.refused_per_address = 0
        # Handshakes running per peer address (an entry goes when its count drops to 0).
        self._handshaking_by_address: dict[str, int] = {}
        self._sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._backlog = ACCEPT_BACKLOG
        self._log_window_start = 0.0
        self._logged_in_window = 0

    async def start(self, host: str, port: int, backlog: int = ACCEPT_BACKLOG) -> int:
        """Listen on every address of ``host``; returns the bound port (0: one the OS
        picks, the same for every address)."""
        loop = asyncio.get_running_loop()
        self._backlog = backlog
        infos = await loop.getaddrinfo(
            host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        try:
            for family, kind, proto, _name, address in infos:
                sock = socket.socket(family, kind, proto)
                self._sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if self.port:
                    address = (address[0], self.port, *address[2:])
                sock.bind(address)
                sock.listen(backlog)
                sock.setblocking(False)
                self.port = sock.getsockname()[1]
        except BaseException:
            self._close_sockets()
            raise
        for sock in self._sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)
        return self.port

    def close(self) -> None:
        """Stop accepting; handshakes in progress are abandoned."""
        self._close_sockets()
        for task in list(self._tasks):
            task.cancel()

    def _close_sockets(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            if sock.fileno() >= 0:
                loop.remove_reader(sock.fileno())
                sock.close()
        self._sockets.clear()

    def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self._backlog):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY_ERRNOS:
                    # Out of fds or memory: stop accepting for a moment, as asyncio does.
                    log.error(
                        "TLS listener: accept failed (%s); not accepting for %.0f s",
                        exc.strerror or exc,
                        ACCEPT_PAUSE_S,
                    )
                    loop.remove_reader(sock.fileno())
                    loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting, sock)
                return  # ECONNABORTED and the like: the peer gave up
            host = str(addr[0]) if isinstance(addr, tuple) else str(addr)
            held = self._handshaking_by_address.get(host, 0)
            if self.handshaking >= self.max_handshaking:
                self.refused_total += 1
                conn.close()
                continue
            if held >= self.max_per_address:
                self.refused_per_address += 1
                conn.close()
                continue
            self.handshaking += 1
            self._handshaking_by_address[host] = held + 1
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
            task = loop.create_task(self._handshake(conn, host, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _resume_accepting(self, sock: socket.socket) -> None:
        if sock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock)

    @property
    def refused(self) -> int:
        """Sockets closed at once over either cap."""
        return self.refused_total + self.refused_per_address

    async def _handshake(self, conn: socket.socket, host: str, peer: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            app = self.app_factory()  # its handshake deadline starts now
            await loop.connect_accepted_socket(
                lambda: app,
                conn,
                ssl=self.tls.current,
                ssl_handshake_timeout=self.handshake_timeout_s,
            )
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception as exc:  # OSError, ssl.SSLError, the handshake timeout
            self.note_failure(peer, exc)
            conn.close()  # a no-op when the failed transport closed it already
        finally:
            self.handshaking -= 1
            left = self._handshaking_by_address.get(host, 0) - 1
            if left > 0:
                self._handshaking_by_address[host] = left
            else:
                self._handshaking_by_address.pop(host, None)

    def note_failure(self, peer: str, exc: BaseException) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._log_window_start > FAILURE_LOG_INTERVAL_S:
            self._log_window_start = now
            if self._logged_in_window > FAILURE_LOG_BURST:
                log.warning(
                    "%d more TLS handshake failures on the %s TLS listener were not logged",
                    self._logged_in_window - FAILURE_LOG_BURST,
                    self.name,
                )
            self._logged_in_window = 0
        self._logged_in_window += 1
        if self._logged_in_window <= FAILURE_LOG_BURST:
            log.warning(
                "TLS handshake from %s on the %s TLS listener failed: %s; closed",
                peer,
                self.name,
                describe_handshake_error(exc),
            )
