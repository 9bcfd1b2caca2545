"""The management HTTP API under /api (JSON, RabbitMQ-management-like shapes).

http.py parses requests and hands every ``/api`` request to ``ManagementApi.handle``; this
module authenticates (HTTP basic or a web UI session: api_auth.py), routes, validates and
answers.
Log topics and consumer groups are answered by api_logs.py, the request plumbing is in
api_core.py.  docs/management.md is the user-facing reference; ``GET /api/openapi.json``
(openapi.py) describes every endpoint.

Rules:

* Every request (but the login) needs HTTP basic credentials of a broker user, or the web
  UI's session cookie and, for changes, its CSRF token (same users, loopback rule and
  failure slowdown as the native protocol) with one of the tags administrator,
  monitoring, policymaker or management (as RabbitMQ's management plugin; ``whoami`` and
  the OpenAPI document need none).  Listings are open to those users, filtered to what
  the core says each may see (``AccessControl.can_see_vhost``, ``can_see_connection``);
  a path naming a vhost the user may not see is refused (403).  Changes to
  resources, publishing and the peek (``POST /api/queues/{vhost}/{name}/get``, a
  basic.get) are decided by the core's permission table (core/access.py) through a
  ``CoreSession``, as on the native protocol; users, permissions, user limits,
  connections and TLS need the ``administrator`` tag, reads included.  Resource paths
  name the vhost first (``%2F`` for the default "/"), as RabbitMQ's.
* Names are percent-encoded path segments; the default exchange is ``amq.default``.
* Errors are ``{"error": message, "code": wharf code}`` with the HTTP status from
  ``http_status``; no input makes a handler raise past ``handle`` (500 + a log line).
* Exclusive queues belong to their connection: shown, but not changed (409).
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from wharf.protocol.errors import (
    AccessRefused,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    WharfError,
)

from ..core.access import MANAGEMENT_TAGS
from ..core.exchanges import TopicTarget
from ..core.policies.registry import (  # server-side policies
    PRIORITY_MAX,
    PRIORITY_MIN,
    make_policy,
)
from ..core.routed import sync_in_background
from ..core.vhosts import VirtualHost, check_vhost_name, vhost_metadata
from ..security.audit import AuditEvent, policy_fields
from ..security.users import (
    ADMINISTRATOR_TAG,
    MAX_PASSWORD_CHARS,
    UserError,
    check_password_hash,
    check_tags,
    check_user_name,
)
from .api_auth import LOGIN_PATH, ApiAuth
from .api_core import (
    INTERNAL_ERROR_CODE,
    JSON_CONTENT_TYPE,
    MAX_PEEK_BODY_BYTES,
    MAX_PEEK_COUNT,
    METHOD_NOT_ALLOWED_CODE,
    MSGPACK_INT_MAX,
    ApiError,
    Call,
    EncodedJson,
    Result,
    Route,
    dump_json,
    http_status,
    query_flag,
    route,
    vhost_parameter,
    visible_vhosts,
)
from .api_limits import UserLimitsApi  # per-user limits and quotas
from .api_logs import LogsApi  # log topics and consumer groups
from .api_paging import PAGE_QUERY, list_answer
from .api_perms import PermissionsApi  # permissions and topic permissions
from .openapi import openapi_document

if TYPE_CHECKING:
    from ..core.clients import ClientConnection
    from ..core.exchanges import Exchange
    from ..core.queues import Queue, QueueOwner
    from ..core.session import CoreSession
    from ..security.users import StoredUser
    from .api_broker import ApiBroker

log = logging.getLogger("wharf.api")
T = TypeVar("T")

DEFAULT_EXCHANGE_ALIAS: Final = "amq.default"
# DELETE /api/connections/{name}: RabbitMQ's header for the close's reply text.
CLOSE_REASON_HEADER: Final = "X-Reason"
DEFAULT_CLOSE_REASON: Final = "closed by operator"
# AMQP's reply-text is a short string (255 bytes, with "CONNECTION_FORCED - " before it).
MAX_CLOSE_REASON_CHARS: Final = 200
# The overview's totals walk every queue and connection: on a broker with at least this
# many of them together a walk is reused for this long (seconds) by the next overviews
# (open UI tabs poll it); ManagementApi._cached.
OVERVIEW_CACHE_MIN_OBJECTS: Final = 1_000
OVERVIEW_CACHE_TTL_S: Final = 1.0
# Cached walks at most (a few per distinct set of vhosts users see).
OVERVIEW_CACHE_KEYS: Final = 256


def wharf_version() -> str:
    try:
        return version("wharf")
    except PackageNotFoundError:
        return "unknown"


# Endpoints any authenticated user may call, whatever its tags.
_OPEN_PATHS: Final = frozenset({("whoami",), ("openapi.json",), ("auth", "logout")})

# Stands in for "a connection" where topology methods check exclusive-queue ownership: it
# owns nothing, so exclusive queues raise ResourceLocked and nothing is ever owned by it.
_OPERATOR: Final = cast("QueueOwner", object())


def api_routes() -> list[Route]:
    """The route table without a broker (the handlers are bound but never called): what
    the OpenAPI document is generated from, for tests and tools."""
    return ManagementApi(cast("ApiBroker", None)).routes


def build_api(broker: object) -> ManagementApi | None:
    """The API for a full broker; None for stand-ins without topology (HTTP unit tests)."""
    if not hasattr(broker, "topology") or not hasattr(broker, "authenticator"):
        return None
    return ManagementApi(cast("ApiBroker", broker))


class ManagementApi:
    def __init__(self, broker: ApiBroker) -> None:
        self.broker = broker
        self.version = wharf_version()
        # Basic auth and the web UI's sessions (api_auth.py); None: the route table alone.
        self.auth = ApiAuth(cast("ApiBroker | None", broker))
        # The overview's walks over queues and connections: (monotonic time, result).
        self._overview_cache: dict[tuple[str, ...], tuple[float, Any]] = {}
        self._openapi: EncodedJson | None = None  # GET /api/openapi.json, encoded once
        self.routes: list[Route] = [
            route(
                "GET /overview",
                self.overview,
                "200 Overview - Broker version, totals, counters, alarms, listeners.",
            ),
            route("GET /whoami", self.whoami, "200 WhoAmI - The authenticated user."),
            Route(
                "POST",
                LOGIN_PATH,
                self.login_elsewhere,
                doc=(
                    "200 Login LoginRequest Log in (web UI): sets the wharf_session cookie; "
                    "needs no credentials. Also takes an HTML form."
                ),
            ),
            route(
                "POST /auth/logout",
                self.auth.logout,
                "200 Empty - End the caller's web UI session and delete its cookie.",
            ),
            route("GET /openapi.json", self.openapi, "200 - - This document."),
            *self._vhost_routes(),
            route(
                "GET /queues",
                self.list_queues,
                "200 [Queue] - All queues, all vhosts.",
                query=PAGE_QUERY,
            ),
            route(
                "GET /queues/{vhost}",
                self.list_queues,
                "200 [Queue] - A vhost's.",
                query=PAGE_QUERY,
            ),
            route("GET /queues/{vhost}/{name}", self.get_queue, "200 Queue - One queue."),
            route(
                "PUT /queues/{vhost}/{name}",
                self.put_queue,
                "201 Queue QueueDeclare Declare a queue.",
            ),
            route(
                "DELETE /queues/{vhost}/{name}",
                self.delete_queue,
                "200 MessageCount - Delete a queue.",
                query=("if_unused", "if_empty"),
            ),
            route(
                "GET /queues/{vhost}/{name}/bindings",
                self.queue_bindings,
                "200 [Binding] - Bindings to a queue, the default exchange's included.",
            ),
            route(
                "DELETE /queues/{vhost}/{name}/contents",
                self.purge_queue,
                "200 MessageCount - Purge ready messages.",
            ),
            route(
                "POST /queues/{vhost}/{name}/get",
                self.peek_queue,
                "200 [PeekedMessage] PeekRequest Peek without consuming.",
            ),
            route(
                "POST /queues/{vhost}/{name}/replay",
                self.replay_queue,
                "200 Moved ReplayRequest Move dead-lettered messages back where they died.",
            ),
            route(
                "GET /exchanges",
                self.list_exchanges,
                "200 [Exchange] - All exchanges, all vhosts.",
                query=PAGE_QUERY,
            ),
            route(
                "GET /exchanges/{vhost}",
                self.list_exchanges,
                "200 [Exchange] - A vhost's exchanges.",
                query=PAGE_QUERY,
            ),
            route(
                "GET /exchanges/{vhost}/{name}",
                self.get_exchange,
                "200 Exchange - One exchange (amq.default: the default).",
            ),
            route(
                "PUT /exchanges/{vhost}/{name}",
                self.put_exchange,
                "201 Exchange ExchangeDeclare Declare an exchange.",
            ),
            route(
                "DELETE /exchanges/{vhost}/{name}",
                self.delete_exchange,
                "200 Empty - Delete an exchange.",
                query=("if_unused",),
            ),
            route(
                "GET /exchanges/{vhost}/{name}/bindings/source",
                self.exchange_source_bindings,
                "200 [Binding] - Bindings from an exchange (to queues, exchanges, topics).",
            ),
            route(
                "GET /exchanges/{vhost}/{name}/bindings/destination",
                self.exchange_destination_bindings,
                "200 [Binding] - Bindings to an exchange (from other exchanges).",
            ),
            route(
                "POST /exchanges/{vhost}/{name}/publish",
                self.publish,
                "200 Routed Publish Publish a test message.",
            ),
            route("GET /bindings", self.list_bindings, "200 [Binding] - All bindings, all vhosts."),
            route(
                "GET /bindings/{vhost}", self.list_bindings, "200 [Binding] - A vhost's bindings."
            ),
            route("POST /bindings/{vhost}", self.add_binding, "201 Binding Binding Bind."),
            route(
                "DELETE /bindings/{vhost}",
                self.remove_binding,
                "200 Binding Binding Unbind (404 if not bound).",
            ),
            route(
                "GET /connections",
                self.list_connections,
                "200 [Connection] - Client connections.",
                query=PAGE_QUERY,
            ),
            route(
                "GET /connections/{name}", self.get_connection, "200 Connection - One connection."
            ),
            route(
                "GET /connections/{name}/channels",
                self.connection_channels,
                "200 [Channel] - A connection's channels (native: its one session).",
                query=PAGE_QUERY,
            ),
            route(
                "GET /channels",
                self.list_channels,
                "200 [Channel] - Channels of every connection the user may see.",
                query=PAGE_QUERY,
            ),
            route(
                "DELETE /connections/{name}",
                self.close_connection,
                "200 Empty - Close a connection (320).",
                admin=True,
            ),
            route(
                "GET /consumers", self.list_consumers, "200 [Consumer] - All consumers, all vhosts."
            ),
            route(
                "GET /consumers/{vhost}",
                self.list_consumers,
                "200 [Consumer] - A vhost's consumers.",
            ),
            route(
                "GET /users",
                self.list_users,
                "200 [User] - Users (administrators only).",
                admin=True,
            ),
            route(
                "GET /users/{name}",
                self.get_user,
                "200 User - One user (administrators only).",
                admin=True,
            ),
            route(
                "PUT /users/{name}",
                self.put_user,
                "201 User UserPut Create or change a user.",
                admin=True,
            ),
            route(
                "DELETE /users/{name}",
                self.delete_user,
                "200 UserDeleted - Delete a user, close its connections.",
                admin=True,
            ),
            # server-side policies
            route(
                "GET /policies",
                self.list_policies,
                "200 [Policy] - Server-side queue policies, all vhosts.",
            ),
            route(
                "GET /policies/{vhost}", self.list_policies, "200 [Policy] - A vhost's policies."
            ),
            route("GET /policies/{vhost}/{name}", self.get_policy, "200 Policy - One policy."),
            route(
                "PUT /policies/{vhost}/{name}",
                self.put_policy,
                (
                    "201 Policy PolicyPut Create or replace a policy; applies to existing "
                    "queues at once."
                ),
            ),
            route(
                "DELETE /policies/{vhost}/{name}",
                self.delete_policy,
                "200 Empty - Delete a policy; its queues fall back to their own arguments.",
            ),
            *LogsApi(broker).routes(),  # log topics and consumer groups
            *PermissionsApi(broker).routes(),
            *UserLimitsApi(broker).routes(),
            # TLS (docs/security.md)
            route(
                "GET /tls",
                self.get_tls,
                "200 Tls - The TLS certificate in use (administrators only).",
                admin=True,
            ),
            route(
                "POST /tls/reload",
                self.reload_tls,
                "200 Tls - Reload the TLS certificate, key and CA for new connections.",
                admin=True,
            ),
        ]

    # -- entry point ---------------------------------------------------------------------

    async def handle(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        peer_host: str,
        *,
        tls: bool = False,
    ) -> tuple[int, str, bytes, dict[str, str]]:
        """Answer one /api request: (status, content type, body, extra headers); ``tls``:
        it came over HTTPS (basic credentials in clear are refused from non-loopback
        addresses otherwise, unless allow_plain_without_tls)."""
        reply_headers: dict[str, str] = {}
        try:
            status, result = await self._dispatch(
                method, path, query, headers, body, peer_host, tls, reply_headers
            )
            return status, JSON_CONTENT_TYPE, dump_json(result), reply_headers
        except ApiError as exc:
            return self._error(exc.status, exc.code, exc.message, exc.headers)
        except WharfError as exc:
            return self._error(http_status(exc.code), exc.code, exc.message)
        except UserError as exc:
            return self._error(400, InvalidArgument.code, str(exc))
        except Exception:
            log.exception("management API: %s %s failed", method, path)
            msg = "internal error; the broker logged it"
            return self._error(500, INTERNAL_ERROR_CODE, msg)

    @staticmethod
    def _error(
        status: int, code: int, message: str, headers: dict[str, str] | None = None
    ) -> tuple[int, str, bytes, dict[str, str]]:
        body = dump_json({"error": message, "code": code})
        return status, JSON_CONTENT_TYPE, body, headers or {}

    async def _dispatch(
        self,
        method: str,
        path: str,
        raw_query: str,
        headers: Mapping[str, str],
        body: bytes,
        peer_host: str,
        tls: bool,
        reply_headers: dict[str, str],
    ) -> Result:
        segments = path[len("/api/") :].split("/") if path.startswith("/api/") else []
        if method == "POST" and tuple(segments) == LOGIN_PATH:  # the one route without a user
            return await self.auth.login(headers, body, peer_host, tls, reply_headers)
        user, session = await self.auth.authenticate(method, headers, peer_host, tls)
        if method == "HEAD":
            method = "GET"  # http.py drops the body
        matched: Route | None = None
        params: list[str] = []
        allowed: list[str] = []
        for candidate in self.routes:
            found = candidate.match(segments)
            if found is None:
                continue
            allowed.append(candidate.method)
            if candidate.method == method:
                matched, params = candidate, found
        if matched is None:
            if allowed:
                raise ApiError(
                    405,
                    METHOD_NOT_ALLOWED_CODE,
                    f"method {method} not allowed here",
                    {"Allow": ", ".join(sorted(set(allowed)))},
                )
            raise ApiError(404, NotFound.code, f"no such API endpoint: {path}")
        if matched.admin and not user.is_administrator:
            denied = Call(user, [], {}, b"", peer_host).actor()
            self.broker.audit.event(AuditEvent.ACCESS_DENIED, **denied, tag=ADMINISTRATOR_TAG)
            raise AccessRefused(f"user {user.name!r} needs the administrator tag for this request")
        if matched.path not in _OPEN_PATHS and MANAGEMENT_TAGS.isdisjoint(user.tags):
            denied = Call(user, [], {}, b"", peer_host).actor()
            self.broker.audit.event(AuditEvent.ACCESS_DENIED, **denied, tag="management")
            raise AccessRefused(
                f"user {user.name!r} needs one of the tags {', '.join(sorted(MANAGEMENT_TAGS))} "
                "to use the management API"
            )
        try:
            names = [urllib.parse.unquote(p, errors="strict") for p in params]
            query = dict(urllib.parse.parse_qsl(raw_query, keep_blank_values=True, errors="strict"))
        except UnicodeDecodeError:
            raise InvalidArgument("path or query is not valid percent-encoded UTF-8") from None
        if any(not n for n in names):
            raise InvalidArgument("names in the path must not be empty")
        for key in query:
            if key not in matched.query:
                raise InvalidArgument(f"unknown query parameter {key!r}")
        call = Call(user, names, query, body, peer_host, headers, session, tls, reply_headers)
        vhost = vhost_parameter(matched.path, names)
        if vhost is not None:
            # A vhost the user may not see is refused before anything in it is looked up
            # (403, whatever the method; RabbitMQ's is_authorized_vhost).
            self.broker.access.check_vhost_visible(
                call.core_actor(vhost), exists=vhost in self.broker.vhosts
            )
        return await matched.handler(call)

    # -- overview ------------------------------------------------------------------------

    async def overview(self, call: Call) -> Result:
        b = self.broker
        stats = b.stats
        # Totals over what the user may see (core/access.py): its vhosts, its connections.
        vhosts = visible_vhosts(b, call)
        connections = self._cached(
            ("connections of", call.user.name), lambda: len(self._visible_connections(call))
        )
        actor = call.core_actor()
        names = tuple(v.name for v in vhosts)
        if b.access.sees_everything(actor):
            consumers = self._cached(("all consumers",), lambda: b.consumer_count)
        else:
            seen = set(names)
            consumers = self._cached(
                ("consumers", *names),
                lambda: sum(
                    len(c.all_consumers()) for c in b.connections.values() if c.vhost in seen
                ),
            )
        # Every counter the broker keeps (its stats object's COUNTERS), not a copied list.
        counters: tuple[str, ...] = getattr(type(stats), "COUNTERS", ())
        return 200, {
            "product": "wharf",
            "version": self.version,
            "ready": b.ready,
            "object_totals": {
                "connections": connections,
                "queues": sum(len(v.topology.queues) for v in vhosts),
                "exchanges": sum(len(v.topology.exchanges) for v in vhosts),
                "consumers": consumers,
                "topics": sum(len(v.logs.topics) for v in vhosts if v.logs is not None),
                "vhosts": len(vhosts),
            },
            "queue_totals": self._cached(
                ("queue_totals", *names), lambda: self._queue_totals(vhosts)
            ),
            "message_stats": {name: int(getattr(stats, name, 0)) for name in counters},
            "alarms": sorted(b.alarms),
            # What the memory alarm compares with memory_high_watermark, by kind.
            "memory": {
                "accounted": self._cached(("memory",), b.memory_breakdown),
                "high_watermark_bytes": b.monitor.memory_limit_bytes if b.monitor else 0,
                "rss_bytes": b.monitor.rss_bytes if b.monitor else 0,
            },
            "listeners": b.listeners(),
            "node": self._node(),
            # Log topics of the vhosts the user may see, totals since start.
            "log_stats": {
                key: sum(getattr(v.logs, key) for v in vhosts if v.logs is not None)
                for key in _LOG_STATS
            },
        }

    def _cached(self, key: tuple[str, ...], compute: Callable[[], T]) -> T:
        """``compute()``, reused for ``OVERVIEW_CACHE_TTL_S`` on a big broker.

        The overview's totals walk every queue and connection; with 10,000 queues that
        is tens of milliseconds, and every open UI tab asks every few seconds.  On a
        broker with at least ``OVERVIEW_CACHE_MIN_OBJECTS`` queues and connections a
        walk is reused by the overviews of the next second (the figures may be that
        old); a small broker answers exact figures every time.
        """
        now = time.monotonic()
        cached = self._overview_cache.get(key)
        if cached is not None and now - cached[0] < OVERVIEW_CACHE_TTL_S:
            return cast("T", cached[1])
        value = compute()
        b = self.broker
        size = len(b.connections) + sum(len(v.topology.queues) for v in b.vhosts)
        if size >= OVERVIEW_CACHE_MIN_OBJECTS:
            if len(self._overview_cache) >= OVERVIEW_CACHE_KEYS:
                self._overview_cache.clear()  # the vhost sets of many users: start again
            self._overview_cache[key] = (now, value)
        return value

    @staticmethod
    def _queue_totals(vhosts: list[VirtualHost]) -> dict[str, int]:
        """Ready, unacked and delayed messages over the queues of ``vhosts``."""
        ready = unacked = delayed = 0
        for v in vhosts:
            for q in v.topology.queues.values():
                ready += q.ready_count
                unacked += q.unacked_count
                delayed += q.delayed_count
        return {"messages_ready": ready, "messages_unacked": unacked,
                "messages_delayed": delayed}  # fmt: skip

    def _node(self) -> dict[str, int]:
        """The process: what the resource monitor measured at its last check (about
        once a second) and the message stores' fsyncs (every vhost's, as /metrics)."""
        b = self.broker
        monitor = b.monitor
        return {
            "uptime_s": int(b.uptime_s),
            "disk_free_bytes": monitor.disk_free_bytes if monitor else 0,
            "disk_free_limit_bytes": monitor.disk_free_limit_bytes if monitor else 0,
            "fsyncs_total": sum(v.store.fsyncs for v in b.vhosts if v.store is not None),
            "fd_used": monitor.fds_open if monitor else 0,
            "fd_limit": monitor.fds_limit if monitor else 0,
        }

    async def get_tls(self, call: Call) -> Result:
        if self.broker.tls is None:
            raise PreconditionFailed("TLS is not configured (tls_cert_file, tls_key_file)")
        return 200, self.broker.tls.describe()

    async def reload_tls(self, call: Call) -> Result:
        # A failed reload answers 409 with the reason; the old certificate stays in use.
        return 200, self.broker.reload_tls(call.actor())

    async def whoami(self, call: Call) -> Result:
        answer: dict[str, Any] = {"name": call.user.name, "tags": list(call.user.tags)}
        if call.session is not None:  # the web UI reloads its CSRF token from here
            answer["csrf_token"] = call.session.csrf_token
        return 200, answer

    async def login_elsewhere(self, call: Call) -> Result:
        raise AssertionError("POST /api/auth/login is answered before authentication")

    async def openapi(self, call: Call) -> Result:
        # The same for the process's life; every web UI tab reads it when it opens
        # (180 kB: tens of milliseconds to build and encode each time).
        if self._openapi is None:
            self._openapi = EncodedJson(dump_json(openapi_document(self.version, self.routes)))
        return 200, self._openapi

    # -- vhosts (RabbitMQ's /api/vhosts and /api/vhost-limits) -----------------------------

    def _vhost_routes(self) -> list[Route]:
        return [
            route("GET /vhosts", self.list_vhosts, "200 [Vhost] - Virtual hosts."),
            route("GET /vhosts/{name}", self.get_vhost, "200 Vhost - One vhost."),
            route(
                "PUT /vhosts/{name}",
                self.put_vhost,
                "201 Vhost VhostPut Create a vhost (or change its description and tags).",
                admin=True,
            ),
            route(
                "DELETE /vhosts/{name}",
                self.delete_vhost,
                (
                    "200 VhostDeleted - Delete a vhost: closes its connections, deletes "
                    "everything in it and its permissions (not the default vhost /)."
                ),
                admin=True,
            ),
            route(
                "GET /vhosts/{name}/connections",
                self.list_vhost_connections,
                "200 [Connection] - A vhost's connections.",
            ),
            route(
                "GET /vhost-limits",
                self.list_vhost_limits,
                "200 [VhostLimits] - The limits of every vhost that has some.",
            ),
            route(
                "GET /vhost-limits/{vhost}",
                self.list_vhost_limits,
                "200 [VhostLimits] - One vhost's limits.",
            ),
            route(
                "PUT /vhost-limits/{vhost}/{name}",
                self.put_vhost_limit,
                (
                    "200 Empty VhostLimitPut Set max-connections, max-queues or max-topics "
                    "(a negative value removes it)."
                ),
                admin=True,
            ),
            route(
                "DELETE /vhost-limits/{vhost}/{name}",
                self.delete_vhost_limit,
                "200 Empty - Remove a vhost limit.",
                admin=True,
            ),
        ]

    def _vhost(self, call: Call) -> VirtualHost:
        """The vhost named by the request's first path parameter (404 if none)."""
        return self.broker.vhosts.get(call.params[0])

    def _vhosts(self, call: Call) -> list[VirtualHost]:
        """Listings: every vhost the user may see (no parameter), or the one named."""
        return visible_vhosts(self.broker, call)

    async def list_vhosts(self, call: Call) -> Result:
        return 200, [v.describe() for v in self._vhosts(call)]

    async def get_vhost(self, call: Call) -> Result:
        return 200, self._vhost(call).describe()

    async def put_vhost(self, call: Call) -> Result:
        name = call.params[0]
        check_vhost_name(name)
        f = call.json(("description", "tags", "default_queue_type", "tracing"))
        f.flag("tracing")  # RabbitMQ's field, accepted; Wharf has no message tracing
        metadata = vhost_metadata(f.doc)
        created = self.broker.add_vhost(VirtualHost(name, **metadata), call.actor())
        return (201 if created else 200), self.broker.vhosts.get(name).describe()

    async def delete_vhost(self, call: Call) -> Result:
        closed = await self.broker.delete_vhost(call.params[0], call.actor())
        return 200, {"connections_closed": closed}

    async def list_vhost_connections(self, call: Call) -> Result:
        vhost = self._vhost(call)
        actor = call.core_actor()
        access = self.broker.access
        return 200, [
            c.describe()
            for c in vhost.clients.values()
            if access.can_see_connection(actor, c.username)
        ]

    async def list_vhost_limits(self, call: Call) -> Result:
        visible = {v.name for v in self._vhosts(call)}
        return 200, [d for d in self.broker.vhosts.describe_limits() if d["vhost"] in visible]

    async def put_vhost_limit(self, call: Call) -> Result:
        vhost, limit = call.params
        f = call.json(("value",))
        if "value" not in f.doc:
            raise InvalidArgument("field 'value' is required", details={"argument": "value"})
        self.broker.vhosts.set_limit(vhost, limit, f.doc["value"])
        self.broker.audit.event(
            AuditEvent.VHOST_LIMIT_SET, **call.actor(), vhost=vhost, limit=limit,
            value=f.doc["value"],
        )  # fmt: skip
        return 200, {}

    async def delete_vhost_limit(self, call: Call) -> Result:
        vhost, limit = call.params
        if not self.broker.vhosts.clear_limit(vhost, limit):
            raise NotFound(f"vhost '{vhost}' has no limit '{limit}'")
        self.broker.audit.event(
            AuditEvent.VHOST_LIMIT_CLEARED, **call.actor(), vhost=vhost, limit=limit
        )
        return 200, {}

    # -- queues --------------------------------------------------------------------------

    def _queue(self, call: Call, *, change: bool = False) -> Queue:
        return self._vhost(call).topology.get_queue(call.params[1], _OPERATOR if change else None)

    @staticmethod
    def _describe_queue(vhost: VirtualHost, q: Queue) -> dict[str, Any]:
        # + "policy" and "effective_arguments" (server-side policies)
        return {**q.describe(), "vhost": vhost.name, **vhost.topology.policy_view(q)}

    async def list_queues(self, call: Call) -> Result:
        items = [(v, q) for v in self._vhosts(call) for q in v.topology.queues.values()]
        return 200, list_answer(
            call.query,
            items,
            lambda vq: self._describe_queue(*vq),
            lambda vq: vq[1].name,
            _QUEUE_SORT_KEYS,
        )

    async def get_queue(self, call: Call) -> Result:
        return 200, self._describe_queue(self._vhost(call), self._queue(call))

    async def put_queue(self, call: Call) -> Result:
        vhost = self._vhost(call)
        name = call.params[1]
        f = call.json(("durable", "auto_delete", "exclusive", "arguments"))
        if f.flag("exclusive"):
            raise InvalidArgument("exclusive queues belong to a connection: declare them there")
        arguments = f.obj("arguments")
        existed = name in vhost.topology.queues
        q = core_session(self.broker, call).declare_queue(
            name,
            owner=_OPERATOR,
            durable=f.flag("durable"),
            exclusive=False,
            auto_delete=f.flag("auto_delete"),
            passive=False,
            arguments=arguments,
        )
        return (200 if existed else 201), {**q.describe(), "vhost": vhost.name}

    async def delete_queue(self, call: Call) -> Result:
        n = core_session(self.broker, call).delete_queue(
            call.params[1],
            _OPERATOR,
            query_flag(call.query, "if_unused"),
            query_flag(call.query, "if_empty"),
        )
        return 200, {"messages": n}

    async def purge_queue(self, call: Call) -> Result:
        queue = core_session(self.broker, call).queue_to_purge(call.params[1], _OPERATOR)
        return 200, {"messages": queue.purge()}

    async def replay_queue(self, call: Call) -> Result:
        """DLQ replay: move dead-lettered messages back to where they died."""
        f = call.json(("target", "reason", "limit", "max_deaths"))
        target = f.text("target", "") or None
        reason = f.text("reason", "") or None
        limit = f.integer("limit", 0, 0, MSGPACK_INT_MAX)
        max_deaths = f.integer("max_deaths", 0, 0, MSGPACK_INT_MAX)
        moved = core_session(self.broker, call).replay(
            call.params[1], _OPERATOR, target, reason, limit, max_deaths
        )
        store = self._vhost(call).store
        if store is not None:
            await store.flush()  # answer once the moves are on disk
        return 200, {"moved": moved}

    async def peek_queue(self, call: Call) -> Result:
        # Reading bodies is basic.get: read permission on the queue.
        queue = core_session(self.broker, call).queue_to_read(call.params[1], None, "basic.get")
        f = call.json(("count", "encoding", "truncate"))
        count = f.integer("count", 1, 1, MAX_PEEK_COUNT)
        encoding = f.text("encoding", "auto")
        if encoding not in ("auto", "base64"):
            raise InvalidArgument("field 'encoding' must be 'auto' or 'base64'")
        truncate = f.integer("truncate", 0, 0, MSGPACK_INT_MAX) or None
        messages = queue.peek(count)
        out: list[dict[str, Any]] = []
        total = 0
        for m in messages:
            body = m.body
            size = len(body)
            if truncate is not None:
                body = body[:truncate]
            if out and total + len(body) > MAX_PEEK_BODY_BYTES:
                break
            total += len(body)
            payload, payload_encoding = _encode_payload(body, encoding)
            out.append(
                {
                    "payload": payload,
                    "payload_encoding": payload_encoding,
                    "payload_bytes": size,
                    "exchange": m.exchange,
                    "routing_key": m.routing_key,
                    "properties": m.properties or {},
                    "redelivered": m.delivery_count > 0,
                    "delivery_count": m.delivery_count,
                }
            )
        return 200, out

    # -- exchanges -----------------------------------------------------------------------

    @staticmethod
    def _exchange_name(name: str) -> str:
        return "" if name == DEFAULT_EXCHANGE_ALIAS else name

    def _exchange(self, call: Call) -> Exchange:
        topology = self._vhost(call).topology
        return topology.get_exchange(self._exchange_name(call.params[1]))

    async def list_exchanges(self, call: Call) -> Result:
        items = [(v, ex) for v in self._vhosts(call) for ex in v.topology.exchanges.values()]
        return 200, list_answer(
            call.query,
            items,
            lambda ve: {**ve[1].describe(), "vhost": ve[0].name},
            lambda ve: ve[1].name or DEFAULT_EXCHANGE_ALIAS,
            _EXCHANGE_SORT_KEYS,
        )

    async def get_exchange(self, call: Call) -> Result:
        return 200, {**self._exchange(call).describe(), "vhost": call.params[0]}

    async def put_exchange(self, call: Call) -> Result:
        vhost = self._vhost(call)
        name = self._exchange_name(call.params[1])
        f = call.json(("type", "durable", "auto_delete", "internal", "arguments"))
        existed = name in vhost.topology.exchanges
        ex = core_session(self.broker, call).declare_exchange(
            name,
            f.text("type"),
            durable=f.flag("durable"),
            auto_delete=f.flag("auto_delete"),
            internal=f.flag("internal"),
            passive=False,
            arguments=f.obj("arguments"),
        )
        return (200 if existed else 201), {**ex.describe(), "vhost": vhost.name}

    async def delete_exchange(self, call: Call) -> Result:
        name = self._exchange_name(call.params[1])
        core_session(self.broker, call).delete_exchange(name, query_flag(call.query, "if_unused"))
        return 200, {}

    async def publish(self, call: Call) -> Result:
        vhost = self._vhost(call)
        ex = self._exchange(call)
        f = call.json(("routing_key", "payload", "payload_encoding", "properties"))
        routing_key = f.text("routing_key", "")
        encoding = f.text("payload_encoding", "string")
        text = f.text("payload")
        if encoding == "string":
            body = text.encode("utf-8")
        elif encoding == "base64":
            try:
                body = base64.b64decode(text, validate=True)
            except (ValueError, binascii.Error):
                raise InvalidArgument("payload is not valid base64") from None
        else:
            raise InvalidArgument("field 'payload_encoding' must be 'string' or 'base64'")
        props = f.obj("properties")
        # The core's publish path (core/publish.py), as the native protocol's PUBLISH;
        # a resource alarm refuses (the native protocol stops reading instead).
        publisher = vhost.topology.publisher
        publisher.check_alarms()
        res = core_session(self.broker, call).publish(ex.name, routing_key, props or None, (body,))
        if res.log_parts:  # nothing waits for the fsync; a failure is logged
            sync_in_background(res.log_parts, "HTTP publish")
        # RabbitMQ's shape ({"routed": bool}); a full queue's refusal (x-overflow
        # reject-publish), which the native protocol nacks, adds "refused": true; a
        # duplicate (x-dedup-window-ms: the queue accepted its message_id within the
        # window, nothing enqueued) adds "duplicate": true.
        if res.refused:
            return 200, {"routed": res.routed, "refused": True}
        if res.duplicates:
            return 200, {"routed": res.routed, "duplicate": True}
        return 200, {"routed": res.routed}

    # -- bindings ------------------------------------------------------------------------

    _BINDING_FIELDS: Final = (
        "source",
        "destination",
        "destination_type",
        "routing_key",
        "arguments",
    )

    def _binding_args(
        self, call: Call, *, unbind: bool = False
    ) -> tuple[Queue | Exchange | TopicTarget, str, str, dict[str, Any]]:
        f = call.json(self._BINDING_FIELDS)
        source = self._exchange_name(f.text("source"))
        dest_name = f.text("destination")
        dest_type = f.text("destination_type", "queue")
        routing_key = f.text("routing_key", "")
        topology = self._vhost(call).topology
        dest: Queue | Exchange | TopicTarget
        if dest_type in ("queue", "exchange", "topic"):
            name = self._exchange_name(dest_name) if dest_type == "exchange" else dest_name
            session = core_session(self.broker, call)
            session.authorize_binding(dest_type, name, source, routing_key, unbind=unbind)
        if dest_type == "queue":
            dest = topology.get_queue(dest_name, _OPERATOR)
        elif dest_type == "exchange":
            dest = topology.get_exchange(self._exchange_name(dest_name))
        elif dest_type == "topic":
            dest = topology.topic_destination(dest_name)
        else:
            raise InvalidArgument("field 'destination_type' must be 'queue', 'exchange' or 'topic'")
        return dest, source, routing_key, f.obj("arguments")

    @staticmethod
    def _describe_binding(
        dest: Queue | Exchange | TopicTarget,
        source: str,
        routing_key: str,
        arguments: dict[str, Any],
    ) -> dict[str, Any]:
        from ..core.queues import Queue

        kind = (
            "queue"
            if isinstance(dest, Queue)
            else "topic"
            if isinstance(dest, TopicTarget)
            else "exchange"
        )
        return {
            "source": source,
            "destination": dest.name,
            "destination_type": kind,
            "routing_key": routing_key,
            "arguments": arguments,
        }

    async def list_bindings(self, call: Call) -> Result:
        return 200, [
            {**b, "vhost": v.name} for v in self._vhosts(call) for b in v.topology.bindings_of()
        ]

    async def queue_bindings(self, call: Call) -> Result:
        """RabbitMQ's answer: the default exchange's implicit binding first."""
        vhost = self._vhost(call)
        queue = self._queue(call)
        implicit = {
            "source": "",
            "destination": queue.name,
            "destination_type": "queue",
            "routing_key": queue.name,
            "arguments": {},
        }
        found = [
            b.describe()
            for ex in vhost.topology.exchanges.values()
            for b in ex.bindings
            if b.destination is queue
        ]
        return 200, [{**b, "vhost": vhost.name} for b in (implicit, *found)]

    async def exchange_source_bindings(self, call: Call) -> Result:
        ex = self._exchange(call)
        return 200, [{**b.describe(), "vhost": call.params[0]} for b in ex.bindings]

    async def exchange_destination_bindings(self, call: Call) -> Result:
        vhost = self._vhost(call)
        ex = self._exchange(call)
        return 200, [
            {**b.describe(), "vhost": vhost.name}
            for src in vhost.topology.exchanges.values()
            for b in src.bindings
            if b.destination is ex
        ]

    async def add_binding(self, call: Call) -> Result:
        dest, source, routing_key, arguments = self._binding_args(call)
        topology = self._vhost(call).topology
        src = topology.exchanges.get(source)
        existed = src is not None and src.find_binding(dest, routing_key, arguments) is not None
        topology.bind(dest, source, routing_key, arguments)
        return (200 if existed else 201), self._describe_binding(
            dest, source, routing_key, arguments
        )

    async def remove_binding(self, call: Call) -> Result:
        dest, source, routing_key, arguments = self._binding_args(call, unbind=True)
        topology = self._vhost(call).topology
        src = topology.get_exchange(source)
        if src.find_binding(dest, routing_key, arguments) is None:
            raise NotFound("no such binding")
        topology.unbind(dest, source, routing_key, arguments)
        return 200, self._describe_binding(dest, source, routing_key, arguments)

    # -- connections and consumers -------------------------------------------------------

    # Connections of every protocol, through the registry interface (core/clients.py).

    def _visible_connections(self, call: Call) -> list[ClientConnection]:
        """Every connection for administrator and monitoring, else the user's own
        (core/access.py)."""
        actor = call.core_actor()
        access = self.broker.access
        return [
            c
            for c in self.broker.connections.values()
            if access.can_see_connection(actor, c.username)
        ]

    def _connection(self, call: Call) -> ClientConnection:
        """The connection the path names, among those the user may see (another user's
        is answered as missing: its name is not confirmed)."""
        name = call.params[0]
        for conn in self._visible_connections(call):
            if conn.name == name:
                return conn
        raise NotFound(f"no connection '{name}'", details={"connection": name})

    async def list_connections(self, call: Call) -> Result:
        return 200, list_answer(
            call.query,
            self._visible_connections(call),
            lambda c: c.describe(),
            lambda c: c.name,
            _CONNECTION_SORT_KEYS,
        )

    async def get_connection(self, call: Call) -> Result:
        return 200, self._connection(call).describe()

    async def close_connection(self, call: Call) -> Result:
        conn = self._connection(call)
        # RabbitMQ's X-Reason header: the text of the close the client gets (native
        # ERROR 320, AMQP connection.close 320 "CONNECTION_FORCED - <reason>").
        raw = call.headers.get(CLOSE_REASON_HEADER, "").strip()
        if len(raw) > MAX_CLOSE_REASON_CHARS or not raw.isprintable():
            raise InvalidArgument(
                f"header {CLOSE_REASON_HEADER} must be printable text of at most "
                f"{MAX_CLOSE_REASON_CHARS} characters",
                details={"argument": CLOSE_REASON_HEADER},
            )
        reason = raw or DEFAULT_CLOSE_REASON
        log.info("%s: closed by operator %r: %s", conn.name, call.user.name, reason)
        self.broker.audit.event(
            AuditEvent.CONNECTION_FORCED, **call.actor(), connection=conn.name,
            user=conn.username, vhost=conn.vhost, reason=reason,
        )  # fmt: skip
        conn.shutdown(reason)
        return 200, {}

    async def connection_channels(self, call: Call) -> Result:
        conn = self._connection(call)
        return 200, list_answer(call.query, conn.describe_channels(), dict, _channel_name, {})

    async def list_channels(self, call: Call) -> Result:
        # A connection has few channels: describing them all is cheap next to the
        # connections themselves, so paging happens on the descriptions.
        items = [ch for c in self._visible_connections(call) for ch in c.describe_channels()]
        return 200, list_answer(call.query, items, dict, _channel_name, {})

    async def list_consumers(self, call: Call) -> Result:
        # Every consumer in the vhosts the user may see, other users' included (RabbitMQ).
        names = {v.name for v in self._vhosts(call)}
        return 200, [
            {
                "consumer_tag": c.tag,
                "queue": c.queue.name,
                "vhost": conn.vhost,
                "connection": conn.name,
                "prefetch": c.prefetch,
                "no_ack": c.no_ack,
                "exclusive": c.exclusive,
                "unacked": c.unacked,
                "arguments": c.arguments,
            }
            for conn in self.broker.connections.values()
            if conn.vhost in names
            for c in conn.all_consumers()
        ]

    # -- users ---------------------------------------------------------------------------

    @staticmethod
    def _describe_user(u: StoredUser) -> dict[str, Any]:
        return {"name": u.name, "tags": list(u.tags), "source": u.source}

    async def list_users(self, call: Call) -> Result:
        return 200, [self._describe_user(u) for u in self.broker.authenticator.users.all()]

    async def get_user(self, call: Call) -> Result:
        u = self.broker.authenticator.users.get(call.params[0])
        if u is None:
            raise NotFound(f"no user '{call.params[0]}'")
        return 200, self._describe_user(u)

    async def put_user(self, call: Call) -> Result:
        name = call.params[0]
        check_user_name(name)
        f = call.json(("password", "password_hash", "tags"))
        password = f.opt_text("password")
        password_hash = f.opt_text("password_hash")
        if password is not None and password_hash is not None:
            raise InvalidArgument("give password or password_hash, not both")
        raw_tags = f.doc.get("tags")
        store = self.broker.authenticator.users
        existing = store.get(name)
        tags: list[str]
        if "tags" not in f.doc:  # an explicit null is no list: refused below, as documented
            tags = list(existing.tags) if existing is not None else []
        elif isinstance(raw_tags, str):
            tags = [t.strip() for t in raw_tags.split(",") if t.strip()]
        elif isinstance(raw_tags, list) and all(isinstance(t, str) for t in raw_tags):
            tags = list(raw_tags)
        else:
            raise InvalidArgument("field 'tags' must be a list of strings or 'a,b'")
        clean_tags = check_tags(tags)
        if existing is None and password is None and password_hash is None:
            raise NotFound(f"no user {name!r}: give password or password_hash to create it")
        if password is not None:
            if not password or len(password) > MAX_PASSWORD_CHARS:
                raise InvalidArgument(f"password must be 1..{MAX_PASSWORD_CHARS} characters")
        elif password_hash is not None:
            check_password_hash(password_hash)
        keeps_admin = ADMINISTRATOR_TAG in clean_tags
        self._check_not_last_admin(name, keeps_admin=keeps_admin)
        scram: str | None = None
        if password is not None:
            # Both credentials of the password: scrypt for PLAIN, and SCRAM-SHA-256.
            password_hash, scram = await self.broker.authenticator.hash_credentials(password)
            self._check_not_last_admin(name, keeps_admin=keeps_admin)  # changed meanwhile?
        created = store.put(name, password_hash, clean_tags, scram)
        u = store.get(name)
        assert u is not None
        self.broker.audit.event(**user_change(call, existing, u, password_hash is not None))
        return (201 if created else 200), self._describe_user(u)

    async def delete_user(self, call: Call) -> Result:
        name = call.params[0]
        store = self.broker.authenticator.users
        if name not in store:
            raise NotFound(f"no user '{name}'")
        self._check_not_last_admin(name, keeps_admin=False)
        store.delete(name)
        self.broker.access.forget_user(name)  # a new user by that name starts with none
        self.broker.user_limits.forget_user(name)
        self.broker.audit.event(AuditEvent.USER_DELETED, **call.actor(), user=name)
        closed = 0
        for conn in list(self.broker.connections.values()):
            if conn.username == name:  # "" until authenticated
                conn.shutdown(f"user {name!r} was deleted")
                closed += 1
        return 200, {"connections_closed": closed}

    # -- server-side policies (policies/registry.py) ---------------------------------------

    async def list_policies(self, call: Call) -> Result:
        return 200, [
            {**p.describe(), "vhost": v.name}
            for v in self._vhosts(call)
            for p in v.topology.policies.all()
        ]

    async def get_policy(self, call: Call) -> Result:
        policy = self._vhost(call).topology.policies.get(call.params[1])
        return 200, {**policy.describe(), "vhost": call.params[0]}

    async def put_policy(self, call: Call) -> Result:
        f = call.json(("pattern", "definition", "priority", "apply-to"))
        if "definition" not in f.doc:
            raise InvalidArgument(
                "field 'definition' is required", details={"argument": "definition"}
            )
        policy = make_policy(
            call.params[1],
            f.text("pattern"),
            f.doc["definition"],
            f.integer("priority", 0, PRIORITY_MIN, PRIORITY_MAX),
            f.text("apply-to", "queues"),
        )
        created = core_session(self.broker, call).set_policy(policy)
        self.broker.audit.event(
            AuditEvent.POLICY_SET, **call.actor(), vhost=call.params[0], **policy_fields(policy)
        )
        return (201 if created else 200), {**policy.describe(), "vhost": call.params[0]}

    async def delete_policy(self, call: Call) -> Result:
        core_session(self.broker, call).delete_policy(call.params[1])
        self.broker.audit.event(
            AuditEvent.POLICY_DELETED, **call.actor(), vhost=call.params[0], policy=call.params[1]
        )
        return 200, {}

    def _check_not_last_admin(self, name: str, *, keeps_admin: bool) -> None:
        if keeps_admin:
            return
        admins = self.broker.authenticator.users.administrators()
        if admins == [name]:
            raise PreconditionFailed(
                f"user {name!r} is the last administrator; create another one first"
            )


# Sort keys of list fields answered without describing each item (api_paging.py).
_QUEUE_SORT_KEYS: Final[dict[str, Callable[[tuple[VirtualHost, Queue]], Any]]] = {
    "name": lambda vq: vq[1].name,
    "vhost": lambda vq: vq[0].name,
    "durable": lambda vq: vq[1].durable,
    "auto_delete": lambda vq: vq[1].auto_delete,
    "exclusive": lambda vq: vq[1].exclusive,
    "messages_ready": lambda vq: vq[1].ready_count,
    "messages_unacked": lambda vq: vq[1].unacked_count,
    "consumers": lambda vq: vq[1].consumer_count,
    "message_stats.publish": lambda vq: vq[1].stats_published,
    "message_stats.deliver_get": lambda vq: vq[1].stats_delivered + vq[1].stats_got,
    "message_stats.ack": lambda vq: vq[1].stats_acked,
}
_EXCHANGE_SORT_KEYS: Final[dict[str, Callable[[tuple[VirtualHost, Exchange]], Any]]] = {
    "name": lambda ve: ve[1].name,
    "vhost": lambda ve: ve[0].name,
    "type": lambda ve: ve[1].type,
    "durable": lambda ve: ve[1].durable,
    "auto_delete": lambda ve: ve[1].auto_delete,
    "internal": lambda ve: ve[1].internal,
}
_CONNECTION_SORT_KEYS: Final[dict[str, Callable[[ClientConnection], Any]]] = {
    "name": lambda c: c.name,
    "user": lambda c: c.username,
    "vhost": lambda c: c.vhost,
    "protocol": lambda c: c.protocol,
    "peer": lambda c: c.peer,
    "channels": lambda c: c.channels,
}


_LOG_STATS: Final = ("records_produced", "records_fetched", "bytes_produced", "bytes_fetched")


def _channel_name(ch: dict[str, Any]) -> str:
    return str(ch["name"])


def core_session(broker: ApiBroker, call: Call) -> CoreSession:
    """The core as the request's user may use it on the vhost the path names (its first
    parameter): the same decisions as the native protocol's (core/access.py)."""
    return broker.session(call.core_actor(call.params[0]))


def _encode_payload(body: bytes, encoding: str) -> tuple[str, str]:
    if encoding == "auto":
        try:
            return body.decode("utf-8"), "string"
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), "base64"


def user_change(
    call: Call, before: StoredUser | None, after: StoredUser, password_given: bool
) -> dict[str, Any]:
    """The audit line of a user PUT: created, or what changed (never the password)."""
    if before is None:
        return {"kind": AuditEvent.USER_CREATED, **call.actor(), "user": after.name,
                "tags": list(after.tags)}  # fmt: skip
    return {
        "kind": AuditEvent.USER_UPDATED,
        **call.actor(),
        "user": after.name,
        "tags": list(after.tags),
        "previous_tags": list(before.tags),
        "password_changed": password_given and before.password_hash != after.password_hash,
    }
