"""The admin plane's HTTP server: /metrics, /healthz, /readyz and /api, on aiohttp.

aiohttp parses HTTP/1.1 (keep-alive, pipelining, chunked bodies, ``Expect: 100-continue``)
in the broker's own event loop: a ``web.AppRunner`` whose request handler serves an asyncio
server of our own (not ``web.TCPSite``: every socket passes limits.ConnectionCaps first),
started and stopped by ``server.Broker``.  Why aiohttp is in docs/decisions.md.

With TLS configured the same application also listens for HTTPS (``https_port``) on the
native TLS port's accept loop (security/tls.TlsListener): each handshake uses the last
reloaded certificate, is bounded by ``handshake_timeout_ms``, at most
``http_max_connections`` run at once, and failures are logged with the peer address.

Limits: a request head must fit in MAX_HEAD_BYTES per line and MAX_HEADER_COUNT headers;
a connection that sends no complete request head within the head timeout (the broker's
``handshake_timeout_ms``; also the idle keep-alive time) is closed, and an /api body must
arrive within the same time after its head; bodies over MAX_API_BODY_BYTES (/api) or
MAX_BODY_BYTES (elsewhere, where they are discarded) get a 413 before they are read.
Malformed requests get aiohttp's 4xx and their connection is closed; a bad client only ever
costs its own connection.  Connections are capped in total and per peer address
(limits.py); requests from browsers are checked for Host, Origin and Content-Type
(guards.py), and every answer carries guards.SECURITY_HEADERS.

The web UI's files (``/`` and ``/ui/...``, ui.py) are read once from the package and
served with their own Content-Security-Policy (scripts, styles and requests from the
broker's origin only, nothing inline) and ETags; the UI then talks to /api like any client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..alarms import Readiness
from ..security.tls import ServerTls, TlsListener
from .guards import (
    SECURITY_HEADERS,
    CrossSitePolicy,
    content_type_refusal,
    host_refusal,
    origin_refusal,
)
from .limits import ConnectionCaps
from .metrics import MetricsBroker, build_registry
from .ui import UiFiles

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger(__name__)

MAX_HEAD_BYTES: Final = 8 * 1024  # one request line or header field
MAX_HEADER_COUNT: Final = 100
MAX_BODY_BYTES: Final = 64 * 1024  # request bodies outside /api are discarded
MAX_API_BODY_BYTES: Final = 1024 * 1024  # management API: bodies are kept for the handler
API_PREFIX: Final = "/api"
LOGIN_PATH: Final = API_PREFIX + "/auth/login"
FORM_CONTENT_TYPE: Final = "application/x-www-form-urlencoded"
# Default head timeout: a request head must arrive within this; also keep-alive idle.
HEAD_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 5.0
# Wharf error codes in the JSON errors of the checks made here (protocol/errors.py).
ACCESS_REFUSED_CODE: Final = 403
INVALID_ARGUMENT_CODE: Final = 400

JSON_CONTENT_TYPE: Final = "application/json"
ALLOWED_METHODS: Final = ("GET", "HEAD")

_VERSIONS: Final = (HttpVersion10, HttpVersion11)

_Response = tuple[int, str, bytes, dict[str, str]]


class HttpBroker(MetricsBroker, Protocol):
    """What every HTTP endpoint outside /api reads: the metrics and the readiness."""

    def readiness(self) -> Readiness:
        """/readyz renders this (``Broker.readiness``, alarms.decide_readiness)."""
        ...


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """The admin plane's protections, from the broker's settings (:meth:`from_settings`)."""

    cross_site: CrossSitePolicy = field(default_factory=CrossSitePolicy.build)
    max_connections: int = 1_000
    max_connections_per_address: int = 100
    head_timeout_s: float | None = None  # None: HEAD_TIMEOUT_S

    @classmethod
    def from_settings(cls, settings: Settings, hostname: str | None = None) -> HttpOptions:
        policy = CrossSitePolicy.build(
            allowed_hosts=settings.http_allowed_hosts,
            allowed_origins=settings.http_allowed_origins,
            bind_hosts=(settings.http_bind_host,),
            hostname=socket.gethostname() if hostname is None else hostname,
        )
        return cls(
            cross_site=policy,
            max_connections=settings.http_max_connections,
            max_connections_per_address=settings.http_max_connections_per_address,
            head_timeout_s=settings.handshake_timeout_s,
        )


class HttpServer:
    """A running admin plane: the aiohttp runner, its HTTP listener, the HTTPS listener,
    and the connection caps they share."""

    def __init__(
        self,
        runner: web.AppRunner,
        server: asyncio.Server,
        port: int,
        caps: ConnectionCaps,
        tls_listener: TlsListener | None = None,
        tls_port: int = 0,
    ) -> None:
        self.runner = runner
        self.server = server
        self.port = port  # the bound port (useful when 0 was asked for)
        self.caps = caps
        self.tls_listener = tls_listener
        self.tls_port = tls_port  # 0 without HTTPS


def is_form(content_type: str | None) -> bool:
    if content_type is None:
        return False
    return content_type.partition(";")[0].strip().lower() == FORM_CONTENT_TYPE


def _is_api(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def build_app(broker: HttpBroker, options: HttpOptions | None = None) -> web.Application:
    """The aiohttp application serving the broker's HTTP endpoints."""
    from .api import build_api  # api.py imports the broker; only a full broker gets /api

    registry = build_registry(broker)
    api = build_api(broker)
    opts = HttpOptions() if options is None else options
    policy = opts.cross_site
    body_timeout_s = HEAD_TIMEOUT_S if opts.head_timeout_s is None else opts.head_timeout_s
    ui = UiFiles.load()

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.version not in _VERSIONS:
            # aiohttp's parser answers HTTP/0.9 and 2.0 request lines as if they were 1.x.
            detail = "only HTTP/1.0 and HTTP/1.1 are supported"
            return await _refuse(request, 505, detail)
        path = request.rel_url.raw_path  # still percent-encoded, as the API expects
        is_api = api is not None and _is_api(path)
        headers = request.headers
        if is_api:
            # Only /api is guarded: /metrics, /healthz and /readyz take no credentials and
            # change nothing, and scrapers reach them by any name (compose: "wharf:8680").
            host = headers.get("Host")
            refusal = host_refusal(policy, host) or origin_refusal(
                policy, request.method, headers.get("Origin"), host
            )
            if refusal is not None:
                return await _refuse(request, 403, refusal, ACCESS_REFUSED_CODE)
        limit = MAX_API_BODY_BYTES if is_api else MAX_BODY_BYTES
        length = request.content_length
        if length is not None and length > limit:
            # Refuse before reading: the rest of the body is not worth receiving.
            return await _refuse(request, 413, f"request body exceeds {limit} bytes")
        if is_api:
            # Before the body is read, too: a form post's body is not worth receiving.
            content_type = headers.get("Content-Type")
            refusal = content_type_refusal(request.method, request.body_exists, content_type)
            if refusal is not None and path == LOGIN_PATH and is_form(content_type):
                refusal = None  # the login also takes an HTML form (api_auth.py)
            if refusal is not None:
                return await _refuse(request, 415, refusal, INVALID_ARGUMENT_CODE)
        if api is not None and is_api:
            try:
                async with asyncio.timeout(body_timeout_s):
                    body = await request.read()
            except web.HTTPRequestEntityTooLarge:  # a chunked body over the limit
                return await _refuse(request, 413, f"request body exceeds {limit} bytes")
            except TimeoutError:  # a slow body holds a connection as a slow head would
                detail = f"request body not received within {body_timeout_s:g} s"
                return await _refuse(request, 408, detail)
            peer = request.remote or ""
            result = await api.handle(
                request.method,
                path,
                request.rel_url.raw_query_string,
                request.headers,
                body,
                peer,
                tls=request.secure,
            )
        elif ui.serves(path):
            return ui.reply(request.method, path, headers.get("If-None-Match"))
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


def _handler_args(head_timeout_s: float | None = None) -> dict[str, Any]:
    return {
        "logger": _RequestLog(logging.getLogger(__name__ + ".requests")),
        # aiohttp closes a connection that has no complete request head this long after
        # the accept (or after its last answer): the head timeout.
        "keepalive_timeout": HEAD_TIMEOUT_S if head_timeout_s is None else head_timeout_s,
        "max_line_size": MAX_HEAD_BYTES,
        "max_field_size": MAX_HEAD_BYTES,
        "max_headers": MAX_HEADER_COUNT,
        "access_log": None,  # requests are not logged, as before; errors are
        "handle_signals": False,  # the broker owns the signals
        "shutdown_timeout": STOP_TIMEOUT_S,
    }


def _error(detail: str, code: int | None = None) -> bytes:
    return _json({"error": detail} if code is None else {"error": detail, "code": code})


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
    response.headers.update(SECURITY_HEADERS)
    return response


async def _refuse(
    request: web.Request, status: int, detail: str, code: int | None = None
) -> web.Response:
    """Answer with a JSON error (``code``: the Wharf code, as /api errors carry) and close
    the connection at once.

    aiohttp would otherwise keep reading an unread body for up to its lingering time
    (10 s): a refused upload is not worth receiving.
    """
    response = _reply(request, status, _error(detail, code))
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
    https: tuple[int, ServerTls, float] | None = None,
    options: HttpOptions | None = None,
) -> HttpServer:
    """Listen on host:port (0 = any free port) and serve the broker's HTTP endpoints;
    with ``https`` = (port, the broker's TLS, TLS handshake timeout in s), HTTPS too.

    Stop it with ``await stop_http_server(server)``, which also closes idle keep-alive
    connections.
    """
    opts = HttpOptions() if options is None else options
    # The runner's own shutdown wait is bounded by the caller's budget in stop_http_server.
    runner = web.AppRunner(build_app(broker, opts), **_handler_args(opts.head_timeout_s))
    await runner.setup()
    handler = runner.server
    assert handler is not None  # set by runner.setup()
    # Not web.TCPSite: its server would take aiohttp's protocol factory, uncapped.
    caps = ConnectionCaps(opts.max_connections, opts.max_connections_per_address)
    factory = caps.protocol_factory(handler)
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    try:
        plain = await loop.create_server(factory, host, port, reuse_address=True)
        servers.append(plain)
        bound = int(plain.sockets[0].getsockname()[1])
        tls_listener: TlsListener | None = None
        tls_port = 0
        if https is not None:
            # The native TLS port's accept loop: at most http_max_connections handshakes
            # at once, http_max_connections_per_address from one address (further sockets
            # are closed), failures logged with the peer address;
            # a socket counts against the caps once its handshake is done.
            https_port, tls, handshake_timeout_s = https
            tls_listener = TlsListener(
                tls,
                factory,
                handshake_timeout_s,
                opts.max_connections,
                name="HTTPS",
                max_per_address=opts.max_connections_per_address,
            )
            tls_port = await tls_listener.start(host, https_port)
    except BaseException:
        for server in servers:
            server.close()
        if tls_listener is not None:
            tls_listener.close()
        await runner.cleanup()
        raise
    return HttpServer(runner, plain, bound, caps, tls_listener, tls_port)


async def stop_http_server(server: HttpServer, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop listening, close open (including idle keep-alive) connections, and wait for
    running handlers up to ``timeout_s`` in all."""
    server.server.close()  # its connections are the runner's; cleanup closes them
    if server.tls_listener is not None:
        server.tls_listener.close()  # and handshakes in progress
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
