"""The admin plane's HTTP server: /metrics, /healthz, /readyz and /api, on aiohttp.

aiohttp parses HTTP/1.1 (keep-alive, pipelining, chunked bodies, ``Expect: 100-continue``)
in the broker's own event loop: a ``web.AppRunner`` with one ``web.TCPSite``, started and
stopped by ``server.Broker``.  Why aiohttp is in docs/decisions.md.

With TLS configured the same application also listens for HTTPS (``https_port``): a second
asyncio server on the runner's request handler, with the broker's TLS context (whose SNI
callback picks the last reloaded certificate) and the TLS handshake bounded by
``handshake_timeout_ms`` (aiohttp's ``TCPSite`` takes no handshake timeout).

Limits: a request head must fit in MAX_HEAD_BYTES per line and MAX_HEADER_COUNT headers;
a connection that sends no complete request head within HEAD_TIMEOUT_S (also the idle
keep-alive time) is closed; bodies over MAX_API_BODY_BYTES (/api) or MAX_BODY_BYTES
(elsewhere, where they are discarded) get a 413 before they are read.  Malformed requests
get aiohttp's 4xx and their connection is closed; a bad client only ever costs its own
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from typing import Any, Final, Protocol

from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..alarms import Readiness
from .metrics import MetricsBroker, build_registry

log = logging.getLogger(__name__)

MAX_HEAD_BYTES: Final = 8 * 1024  # one request line or header field
MAX_HEADER_COUNT: Final = 100
MAX_BODY_BYTES: Final = 64 * 1024  # request bodies outside /api are discarded
MAX_API_BODY_BYTES: Final = 1024 * 1024  # management API: bodies are kept for the handler
API_PREFIX: Final = "/api"
HEAD_TIMEOUT_S: Final = 10.0  # a request head must arrive within this; also keep-alive idle
STOP_TIMEOUT_S: Final = 5.0

JSON_CONTENT_TYPE: Final = "application/json"
ALLOWED_METHODS: Final = ("GET", "HEAD")

_VERSIONS: Final = (HttpVersion10, HttpVersion11)

_Response = tuple[int, str, bytes, dict[str, str]]


class HttpBroker(MetricsBroker, Protocol):
    """What every HTTP endpoint outside /api reads: the metrics and the readiness."""

    def readiness(self) -> Readiness:
        """/readyz renders this (``Broker.readiness``, alarms.decide_readiness)."""
        ...


class HttpServer:
    """A running admin plane: the aiohttp runner, its HTTP site, and the HTTPS listener."""

    def __init__(
        self,
        runner: web.AppRunner,
        site: web.TCPSite,
        port: int,
        tls_server: asyncio.Server | None = None,
        tls_port: int = 0,
    ) -> None:
        self.runner = runner
        self.site = site
        self.port = port  # the bound port (useful when 0 was asked for)
        self.tls_server = tls_server
        self.tls_port = tls_port  # 0 without HTTPS


def _is_api(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def build_app(broker: HttpBroker) -> web.Application:
    """The aiohttp application serving the broker's HTTP endpoints."""
    from .api import build_api  # api.py imports the broker; only a full broker gets /api

    registry = build_registry(broker)
    api = build_api(broker)

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.version not in _VERSIONS:
            # aiohttp's parser answers HTTP/0.9 and 2.0 request lines as if they were 1.x.
            detail = "only HTTP/1.0 and HTTP/1.1 are supported"
            return await _refuse(request, 505, detail)
        path = request.rel_url.raw_path  # still percent-encoded, as the API expects
        is_api = api is not None and _is_api(path)
        limit = MAX_API_BODY_BYTES if is_api else MAX_BODY_BYTES
        length = request.content_length
        if length is not None and length > limit:
            # Refuse before reading: the rest of the body is not worth receiving.
            return await _refuse(request, 413, f"request body exceeds {limit} bytes")
        if api is not None and is_api:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:  # a chunked body over the limit
                return await _refuse(request, 413, f"request body exceeds {limit} bytes")
            peer = request.remote or ""
            result = await api.handle(
                request.method,
                path,
                request.rel_url.raw_query_string,
                request.headers,
                body,
                peer,
            )
        else:
            result = _route(broker, registry, request.method, path)
        status, content_type, body_out, extra = result
        return _reply(request, status, body_out, content_type, extra)

    app = web.Application(client_max_size=MAX_API_BODY_BYTES)
    # Every path, including ones with a percent-encoded newline ("." would not match it).
    app.router.add_route("*", r"/{tail:[\s\S]*}", handle)
    return app


class _RequestLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's request log: a malformed request is the client's fault, logged at INFO
    without a traceback (port scanners would fill the log at ERROR); anything else stays
    an error with its traceback."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.logger.info("%s: %s", str(msg) % args if args else msg, exc_info.message)
        else:
            self.logger.error(msg, *args, exc_info=exc_info, **kw)


def _handler_args() -> dict[str, Any]:
    return {
        "logger": _RequestLog(logging.getLogger(__name__ + ".requests")),
        "keepalive_timeout": HEAD_TIMEOUT_S,
        "max_line_size": MAX_HEAD_BYTES,
        "max_field_size": MAX_HEAD_BYTES,
        "max_headers": MAX_HEADER_COUNT,
        "access_log": None,  # requests are not logged, as before; errors are
        "handle_signals": False,  # the broker owns the signals
        "shutdown_timeout": STOP_TIMEOUT_S,
    }


def _error(detail: str) -> bytes:
    return _json({"error": detail})


def _reply(
    request: web.Request,
    status: int,
    body: bytes,
    content_type: str = JSON_CONTENT_TYPE,
    extra: dict[str, str] | None = None,
) -> web.Response:
    response = web.Response(status=status, body=body, headers=extra or {})
    response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = "no-store"
    return response


async def _refuse(request: web.Request, status: int, detail: str) -> web.Response:
    """Answer with a JSON error and close the connection at once.

    aiohttp would otherwise keep reading an unread body for up to its lingering time
    (10 s): a refused upload is not worth receiving.
    """
    response = _reply(request, status, _error(detail))
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.protocol is not None:
        request.protocol.force_close()  # the answer is flushed before the socket closes
    return response


async def start_http_server(
    broker: HttpBroker,
    host: str,
    port: int,
    *,
    https: tuple[int, ssl.SSLContext, float] | None = None,
) -> HttpServer:
    """Listen on host:port (0 = any free port) and serve the broker's HTTP endpoints;
    with ``https`` = (port, server context, TLS handshake timeout in s), HTTPS too.

    Stop it with ``await stop_http_server(server)``, which also closes idle keep-alive
    connections.
    """
    # The runner's own shutdown wait is bounded by the caller's budget in stop_http_server.
    runner = web.AppRunner(build_app(broker), **_handler_args())
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    tls_server: asyncio.Server | None = None
    try:
        await site.start()
        bound = int(runner.addresses[0][1]) if runner.addresses else port
        tls_port = 0
        if https is not None:
            https_port, context, handshake_timeout_s = https
            handler = runner.server
            assert handler is not None  # set by runner.setup()
            tls_server = await asyncio.get_running_loop().create_server(
                handler,
                host,
                https_port,
                ssl=context,
                ssl_handshake_timeout=handshake_timeout_s,
                reuse_address=True,
            )
            tls_port = int(tls_server.sockets[0].getsockname()[1])
    except BaseException:
        if tls_server is not None:
            tls_server.close()
        await runner.cleanup()
        raise
    return HttpServer(runner, site, bound, tls_server, tls_port)


async def stop_http_server(server: HttpServer, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop listening, close open (including idle keep-alive) connections, and wait for
    running handlers up to ``timeout_s`` in all."""
    if server.tls_server is not None:
        server.tls_server.close()  # its connections are the runner's; cleanup closes them
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, timeout_s)):
            await server.runner.cleanup()


def _route(broker: HttpBroker, registry: CollectorRegistry, method: str, path: str) -> _Response:
    if path not in ("/metrics", "/healthz", "/readyz"):
        return 404, JSON_CONTENT_TYPE, _json({"error": "not found", "path": path}), {}
    if method not in ALLOWED_METHODS:
        body = _json({"error": f"method {method} not allowed"})
        return 405, JSON_CONTENT_TYPE, body, {"Allow": ", ".join(ALLOWED_METHODS)}
    if path == "/healthz":
        return 200, JSON_CONTENT_TYPE, _json({"status": "ok"}), {}
    if path == "/readyz":
        return _render_readiness(broker.readiness())
    try:
        body = generate_latest(registry)
    except Exception:
        log.exception("collecting metrics failed")
        return 500, JSON_CONTENT_TYPE, _json({"error": "collecting metrics failed"}), {}
    return 200, CONTENT_TYPE_LATEST, body, {}


def _render_readiness(r: Readiness) -> _Response:
    """200 when ready, else 503; the body names the status, and the reason or the alarms."""
    body: dict[str, Any] = {"status": r.status}
    if r.reason is not None:
        body["reason"] = r.reason
    if r.alarms:
        body["alarms"] = list(r.alarms)
    return (200 if r.ready else 503), JSON_CONTENT_TYPE, _json(body), {}


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode("utf-8")
