"""A small HTTP/1.1 server for /metrics, /healthz, /readyz and /api (no dependencies).

Only what probes, Prometheus and the management API (api.py) need: keep-alive,
Content-Length bodies (kept up to MAX_API_BODY_BYTES for /api, discarded elsewhere).
Every request head (request line + headers) must arrive within HEAD_TIMEOUT_S and fit in
MAX_HEAD_BYTES; anything malformed gets a 4xx and the connection is closed.  A bad client
only ever costs its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .metrics import MetricsBroker, build_registry

if TYPE_CHECKING:
    from .api import ManagementApi

log = logging.getLogger(__name__)

MAX_HEAD_BYTES: Final = 8 * 1024
MAX_HEADER_COUNT: Final = 100
MAX_BODY_BYTES: Final = 64 * 1024  # request bodies are read and discarded
MAX_API_BODY_BYTES: Final = 1024 * 1024  # management API: bodies are kept for the handler
API_PREFIX: Final = "/api"
HEAD_TIMEOUT_S: Final = 10.0  # also how long an idle keep-alive connection is kept
WRITE_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 5.0

JSON_CONTENT_TYPE: Final = "application/json"
ALLOWED_METHODS: Final = ("GET", "HEAD")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REASONS: Final = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class HttpBroker(MetricsBroker, Protocol):
    """``ready`` is True while the broker accepts clients.  An optional ``stopping``
    attribute (True during shutdown) makes /readyz say "stopping" instead of "starting"."""

    @property
    def ready(self) -> bool: ...


class _BadRequest(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        keep_alive: bool,
        query: str = "",
        body: bytes = b"",
    ) -> None:
        self.method = method
        self.path = path  # as sent: still percent-encoded
        self.headers = headers
        self.keep_alive = keep_alive
        self.query = query
        self.body = body  # only kept for /api requests


def _is_api(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


# Open connections per server (writer -> handler task), so stop_http_server can close idle
# keep-alive connections: asyncio.Server.close() on 3.11 leaves them open, and on 3.12+
# wait_closed() waits for them.  Weak keys: a server that is dropped takes its entry along.
_CONNECTIONS: weakref.WeakKeyDictionary[
    asyncio.Server, dict[asyncio.StreamWriter, asyncio.Task[Any]]
]
_CONNECTIONS = weakref.WeakKeyDictionary()


async def start_http_server(broker: HttpBroker, host: str, port: int) -> asyncio.Server:
    """Listen on host:port (0 = any free port) and serve the broker's HTTP endpoints.

    Stop it with ``await stop_http_server(server)``, which also closes idle keep-alive
    connections; a plain ``server.close()`` leaves those open for up to HEAD_TIMEOUT_S.
    """
    from .api import build_api  # api.py imports the broker; only a full broker gets /api

    registry = build_registry(broker)
    api = build_api(broker)
    connections: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            connections[writer] = task
        try:
            await _serve_connection(broker, registry, reader, writer, api)
        finally:
            connections.pop(writer, None)

    server = await asyncio.start_server(on_connection, host, port, limit=MAX_HEAD_BYTES)
    _CONNECTIONS[server] = connections
    return server


async def stop_http_server(server: asyncio.Server, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop listening, close open (including idle keep-alive) connections, and wait for
    them up to ``timeout_s`` in all."""
    server.close()
    connections = _CONNECTIONS.pop(server, {})
    for writer in list(connections):
        writer.close()
    tasks = list(connections.values())
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            if tasks:
                await asyncio.wait(tasks)
            await server.wait_closed()


async def _serve_connection(
    broker: HttpBroker,
    registry: CollectorRegistry,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    api: ManagementApi | None = None,
) -> None:
    peer = writer.get_extra_info("peername")
    peer_host = str(peer[0]) if isinstance(peer, tuple) else ""
    try:
        keep_alive = True
        while keep_alive:
            try:
                async with asyncio.timeout(HEAD_TIMEOUT_S):
                    request = await _read_request(reader, writer if api is not None else None)
                if request is None:
                    return  # clean EOF between requests
            except _BadRequest as exc:
                await _send(writer, exc.status, _json({"error": exc.detail}), keep_alive=False)
                return
            except TimeoutError:
                return  # idle keep-alive connection or a slow client: just close
            if api is not None and _is_api(request.path):
                status, content_type, body, extra = await api.handle(
                    request.method,
                    request.path,
                    request.query,
                    request.headers,
                    request.body,
                    peer_host,
                )
            else:
                status, content_type, body, extra = _route(broker, registry, request)
            keep_alive = request.keep_alive
            if request.method == "HEAD":
                await _send(writer, status, body, keep_alive, content_type, extra, head=True)
            else:
                await _send(writer, status, body, keep_alive, content_type, extra)
    except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
        pass  # the client went away; nothing to report
    except Exception:
        log.exception("unexpected error in HTTP connection handler")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None = None
) -> _Request | None:
    """Read one request head and its body (kept for /api when ``writer`` is given, else
    discarded); None on EOF before any byte."""
    lines: list[bytes] = []
    total = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if not lines and not exc.partial:
                return None
            raise _BadRequest(400, "request ended before the end of its headers") from None
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, f"request head exceeds {MAX_HEAD_BYTES} bytes") from None
        total += len(line)
        if total > MAX_HEAD_BYTES:
            raise _BadRequest(431, f"request head exceeds {MAX_HEAD_BYTES} bytes")
        line = line.rstrip(b"\r\n")
        if not line:
            if not lines:
                continue  # RFC 9112 2.2: ignore empty lines before the request line
            break
        lines.append(line)
        if len(lines) > MAX_HEADER_COUNT + 1:
            raise _BadRequest(431, f"more than {MAX_HEADER_COUNT} headers")
    method, path, query, version = _parse_request_line(lines[0])
    headers = _parse_headers(lines[1:])
    body = b""
    if writer is not None and _is_api(path):
        body = await _read_api_body(reader, writer, headers, version)
    else:
        await _discard_body(reader, headers)
    connection = headers.get("connection", "").lower()
    # HTTP/1.1 keeps the connection open unless asked not to; HTTP/1.0 only if asked to.
    keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
    return _Request(method, path, headers, keep_alive, query, body)


def _parse_request_line(line: bytes) -> tuple[str, str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if version.startswith(b"HTTP/"):
            raise _BadRequest(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        raise _BadRequest(400, "malformed request line")
    try:
        path, _, query = target.decode("ascii").partition("?")
    except UnicodeDecodeError:
        raise _BadRequest(400, "request target is not ASCII") from None
    return method.decode("ascii"), path, query, version.decode("ascii")


def _parse_headers(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise _BadRequest(400, "malformed header line")
        key = name.decode("ascii").lower()
        text = value.strip().decode("latin-1")
        if key == "content-length" and key in headers and headers[key] != text:
            raise _BadRequest(400, "conflicting Content-Length headers")
        if key in headers and key != "content-length":
            text = f"{headers[key]}, {text}"  # repeated headers combine (RFC 9110 5.3)
        headers[key] = text
    return headers


def _content_length(headers: Mapping[str, str], limit: int) -> int:
    """The request body's length (0 without one); 4xx if it is malformed or over ``limit``."""
    if "transfer-encoding" in headers:
        raise _BadRequest(501, "Transfer-Encoding request bodies are not supported")
    raw = headers.get("content-length", "0")
    # "²".isdigit() is True and int() refuses over 4300 digits: check before converting.
    if not (raw.isascii() and raw.isdigit()):
        raise _BadRequest(400, "invalid Content-Length")
    if len(raw.lstrip("0")) > len(str(limit)) or int(raw) > limit:
        raise _BadRequest(413, f"request body exceeds {limit} bytes")
    return int(raw)


async def _discard_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> None:
    length = _content_length(headers, MAX_BODY_BYTES)
    if length:
        try:
            await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise _BadRequest(400, "request body shorter than Content-Length") from None


async def _read_api_body(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    headers: Mapping[str, str],
    version: str,
) -> bytes:
    length = _content_length(headers, MAX_API_BODY_BYTES)
    if not length:
        return b""
    if version == "HTTP/1.1" and "100-continue" in headers.get("expect", "").lower():
        # curl sends this for bodies over 1 KiB and would otherwise wait a second.
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise _BadRequest(400, "request body shorter than Content-Length") from None


_Response = tuple[int, str, bytes, dict[str, str]]


def _route(broker: HttpBroker, registry: CollectorRegistry, request: _Request) -> _Response:
    if request.path not in ("/metrics", "/healthz", "/readyz"):
        return 404, JSON_CONTENT_TYPE, _json({"error": "not found", "path": request.path}), {}
    if request.method not in ALLOWED_METHODS:
        body = _json({"error": f"method {request.method} not allowed"})
        return 405, JSON_CONTENT_TYPE, body, {"Allow": ", ".join(ALLOWED_METHODS)}
    if request.path == "/healthz":
        return 200, JSON_CONTENT_TYPE, _json({"status": "ok"}), {}
    if request.path == "/readyz":
        store = getattr(broker, "store", None)
        failed = getattr(store, "failed", None)
        if broker.ready and failed is not None:
            # Persistent publishing has stopped until a restart: an outage, not a blip.
            body = _json({"status": "failed", "reason": f"message store: {failed}"})
            return 503, JSON_CONTENT_TYPE, body, {}
        if broker.ready and getattr(broker, "fd_alarm", False):
            # Out of file descriptors: new connections and log segments fail.
            body = _json({"status": "blocked", "alarms": ["fds"]})
            return 503, JSON_CONTENT_TYPE, body, {}
        alarms = sorted(getattr(broker, "alarms", ()) or ())
        if broker.ready and alarms:
            # Serving, but publishers are blocked: not ready for more publishing load.
            body = _json({"status": "blocked", "alarms": alarms})
            return 503, JSON_CONTENT_TYPE, body, {}
        if broker.ready:
            return 200, JSON_CONTENT_TYPE, _json({"status": "ready"}), {}
        stopping = bool(getattr(broker, "stopping", False))
        return 503, JSON_CONTENT_TYPE, _json({"status": "stopping" if stopping else "starting"}), {}
    try:
        body = generate_latest(registry)
    except Exception:
        log.exception("collecting metrics failed")
        return 500, JSON_CONTENT_TYPE, _json({"error": "collecting metrics failed"}), {}
    return 200, CONTENT_TYPE_LATEST, body, {}


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode("utf-8")


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    keep_alive: bool,
    content_type: str = JSON_CONTENT_TYPE,
    extra: Mapping[str, str] | None = None,
    *,
    head: bool = False,
) -> None:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    lines.extend(f"{k}: {v}" for k, v in (extra or {}).items())
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not head:
        writer.write(body)
    async with asyncio.timeout(WRITE_TIMEOUT_S):
        await writer.drain()
