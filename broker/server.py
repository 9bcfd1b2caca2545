"""The broker process: listeners, lifecycle, periodic checks, graceful shutdown.

Shutdown sequence (SIGTERM/SIGINT or ``Broker.stop``):
1. mark not ready (/readyz answers 503) and stop accepting connections;
2. every connection gets a fatal ERROR 320 "broker shutting down" after its pending
   frames (deliveries, confirms) and is closed;
3. wait for the sockets to drain, then abort the rest;
4. flush the message store, the offsets log and the log topics (waiting for worker
   threads still finishing segment rolls);
5. stop the HTTP listener and release the data directory.

Listeners: the plain native port (``port``; off with ``plain_port = 0``), the AMQP 0-9-1
port for RabbitMQ clients (``amqp_port``, wire/amqp/; off with ``amqp_port = 0``), and when a
certificate is configured the native TLS port, HTTPS and AMQP over TLS (``tls_port``,
``https_port``, ``amqps_port``), next to plain HTTP.  TLS connections are accepted by
``security/tls.py`` and handed to the same ``Connection`` (``AmqpConnection`` on
``amqps_port``) after their TLS handshake; SIGHUP (or ``POST /api/tls/reload``)
reloads the certificate, key and CA for new connections.

``shutdown_timeout_s`` is one budget for all of it: a deadline is set when shutdown starts
and every wait in steps 3-5 gets only what is left of it, so a slow stage shortens the
ones after it instead of adding its own timeout (a stage that cannot be cut short, like
an fsync already running, still finishes).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from wharf.protocol.errors import PreconditionFailed, ResourceError, WharfError

from .alarms import MemoryTrimmer, Readiness, ResourceMonitor, decide_readiness
from .config import Settings, configure_logging
from .core.access import DEFAULT_VHOST, AccessControl, Actor
from .core.clients import ServedConnection
from .core.deliveries import PROTOCOLS, ProtocolStats
from .core.queues import MESSAGE_OVERHEAD_BYTES, Queue
from .core.quotas import UserLimits
from .core.session import CoreSession
from .core.topology import Topology
from .core.vhosts import VHOSTS_DIR, VirtualHost, VirtualHosts, dir_name, remove_data
from .http.server import HttpOptions, HttpServer, start_http_server, stop_http_server
from .logs import TopicRegistry  # log topics
from .logs.cleaner import LogCleaner  # log compaction
from .logs.groups import GroupCoordinator
from .logs.handles import SegmentHandles
from .ports import busy_ports, busy_ports_message
from .security.audit import AuditEvent, AuditLog, audit_path
from .security.auth import Authenticator
from .security.tls import ServerTls, TlsError, TlsListener
from .security.users import SOURCE_RUNTIME
from .store.definitions import load_definitions, save_definitions
from .store.segments import MessageStore
from .wire.amqp.connection import AmqpConnection
from .wire.native.connection import Connection

if TYPE_CHECKING:
    from .http.api_broker import ApiBroker
    from .wire.amqp.broker_api import AmqpBrokerApi

log = logging.getLogger("wharf.server")

TICK_S: Final = 1.0
LISTEN_BACKLOG: Final = 1024
LOCK_FILE: Final = "LOCK"
# Paused readers are all resumed once partly received frames are back under this
# fraction of receive_buffer_budget_bytes.
RECEIVE_BUDGET_RESUME_FRACTION: Final = 0.5


class BrokerStats:
    """Broker-wide counters: plain ints, read by the metrics collector at scrape time.

    ``published`` and ``unroutable`` are counted by the core's publish path (every way
    in, the HTTP API included); the delivery counters only by the wire protocols'
    sessions, into ``protocols`` (core/deliveries.py ProtocolStats), and are summed here.
    """

    __slots__ = ("published", "unroutable", "publish_nacked", "protocols")
    # What the HTTP API's overview lists under message_stats.
    COUNTERS: Final = (
        "published",
        "delivered",
        "acked",
        "redelivered",
        "unroutable",
        "rejected",
        "publish_nacked",
    )

    def __init__(self) -> None:
        self.published = 0
        self.unroutable = 0
        self.publish_nacked = 0
        self.protocols: dict[str, ProtocolStats] = {p: ProtocolStats() for p in PROTOCOLS}

    @property
    def delivered(self) -> int:
        return sum(p.delivered for p in self.protocols.values())

    @property
    def redelivered(self) -> int:
        return sum(p.redelivered for p in self.protocols.values())

    @property
    def acked(self) -> int:
        return sum(p.acked for p in self.protocols.values())

    @property
    def rejected(self) -> int:
        return sum(p.rejected for p in self.protocols.values())


class DataDirLocked(WharfError):
    code = 506


class PortsBusy(WharfError):
    """A listening port cannot be bound; found before the data directory is touched."""

    code = 506


class TlsSetupError(WharfError):
    """The TLS certificate, key or CA cannot be loaded at start."""

    code = 506


class Broker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Virtual hosts (core/vhosts.py), each the owner of its topology, store, log
        # topics and groups; "/" always exists and is what ``topology``, ``store``,
        # ``logs`` and ``groups`` name for code that has no vhost.
        self.vhosts = VirtualHosts()
        # Client connections of every protocol (native and AMQP), by id.
        self.connections: dict[int, ServedConnection] = {}
        self.stats = BrokerStats()
        self._alarms: set[str] = set()
        self._created_at = time.monotonic()  # GET /api/overview's node.uptime_s
        self._wire_vhost(self.vhosts.default)
        # Read handles of closed log segments: one budget for every vhost's topics.
        self.segment_handles = SegmentHandles(settings.log_max_open_segments)
        # The audit log opens with the data directory (start); off until then.
        self.audit = AuditLog(None)
        self.authenticator = Authenticator(settings, audit=self.audit)
        # Permissions (core/access.py): config-file users and the built-in guest have full
        # access on "/" until an explicit entry says otherwise.
        self.access = AccessControl()
        self.access.implicit_full = self._has_implicit_access
        self.access.on_denied = self._audit_denial
        # Per-user limits and byte-rate quotas (core/quotas.py), durable with the users.
        self.user_limits = UserLimits()
        self.ready = False
        self.stopping = False
        self.port = settings.port if settings.plain_enabled else 0
        self.http_port = settings.http_port
        # TLS listeners (0 while TLS is not configured): native, then HTTPS.
        self.tls: ServerTls | None = None
        self.tls_listener: TlsListener | None = None
        self.tls_port = 0
        self.https_port = 0
        # The AMQP 0-9-1 listener (0 while off).
        self.amqp_port = 0
        self._amqp_server: asyncio.Server | None = None
        # AMQP over TLS (amqps_port): the same certificates as the native TLS listener.
        self.amqps_port = 0
        self.amqps_listener: TlsListener | None = None
        self._server: asyncio.Server | None = None
        self._http: HttpServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._lock_file: IO[str] | None = None
        self.data_path = settings.data_dir
        self._closed_waiters: set[asyncio.Future[None]] = set()
        self.monitor: ResourceMonitor | None = None
        # Connections whose confirms wait for their vhost's store group commit, by vhost.
        self._store_waiting: dict[str, set[ServedConnection]] = {}
        # Vhosts being deleted (their files are still going): not created again meanwhile.
        self._deleting: set[str] = set()
        self.trimmer = MemoryTrimmer()
        # Connections that have not authenticated yet: in total and per peer address
        # (an entry is removed when its count drops to zero).
        self.unauthenticated = 0
        self._unauthenticated_by_host: dict[str, int] = {}
        # Bytes of partly received frames across all connections (receive budget), the
        # connections paused for it (oldest first) and the one allowed to finish its
        # frame while the budget is exceeded, so that reading always makes progress.
        self.buffered_bytes = 0
        self._budget_paused: dict[int, Connection] = {}
        self._budget_reader: Connection | None = None
        self.budget_pauses = 0

    # -- the default vhost's state, for code that has no vhost ------------------------

    @property
    def topology(self) -> Topology:
        return self.vhosts.default.topology

    @property
    def store(self) -> MessageStore | None:
        return self.vhosts.default.store

    @property
    def logs(self) -> TopicRegistry | None:  # log topics, opened in _recover()
        return self.vhosts.default.logs

    @property
    def log_cleaner(self) -> LogCleaner | None:  # compaction of log topics
        return self.vhosts.default.log_cleaner

    @property
    def groups(self) -> GroupCoordinator | None:  # consumer groups, opened in _recover()
        return self.vhosts.default.groups

    @property
    def http_server(self) -> HttpServer | None:
        """The admin plane's listeners and their connection caps (read by /metrics)."""
        return self._http

    @property
    def queues(self) -> dict[str, Queue]:
        return self.topology.queues

    @property
    def exchanges(self) -> dict[str, Any]:
        return self.topology.exchanges

    @property
    def consumer_count(self) -> int:
        return sum(len(c.all_consumers()) for c in self.connections.values())

    # -- lifecycle -----------------------------------------------------------------

    def _lock_data_dir(self) -> None:
        data_dir = Path(self.settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        f = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the broker's lifetime
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise DataDirLocked(
                f"data directory {data_dir.resolve()} is in use by another Wharf broker "
                "(one broker per data directory)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock_file = f
        self.data_path = str(data_dir.resolve())

    def _recover(self) -> None:
        """Load durable definitions and messages of every vhost; runs before the native
        port opens.  The default vhost is the data directory's root (the layout from
        before vhosts); the root definitions.json also lists the vhosts, users and
        permissions."""
        data = Path(self.data_path)
        default = self.vhosts.default
        definitions = load_definitions(data)
        for error in self.vhosts.load_records(definitions.get("vhosts")):
            log.error("definitions: %s", error)
        recovered = [
            (default, default.open(data, self.settings, self.segment_handles, definitions))
        ]
        # Runtime users (management API) override the configured ones; see users.py.
        self.authenticator.users.load_runtime(definitions.get("users"))
        runtime_users = [
            u.name for u in self.authenticator.users.all() if u.source == SOURCE_RUNTIME
        ]
        for error in self.access.load(definitions, runtime_users):
            log.error("definitions: %s", error)
        for error in self.user_limits.load(definitions.get("user_limits")):
            log.error("definitions: %s", error)
        self._warn_unknown_vhost_dirs(data)
        for vhost in self.vhosts:
            if vhost.is_default:
                continue
            self._wire_vhost(vhost)
            path = self.vhosts.path_of(data, vhost.name)
            rec = vhost.open(path, self.settings, self.segment_handles, load_definitions(path))
            recovered.append((vhost, rec))
        for vhost, rec in recovered:
            queues, restored, dropped = vhost.restore(rec)
            self._watch_store(vhost)
            log.info(
                "vhost '%s': recovered %d durable queues, %d messages from %d segments "
                "(%d records) in %.3f s%s",
                vhost.name,
                queues,
                restored,
                len(rec.segments),
                rec.records,
                rec.seconds,
                f"; {dropped} messages of deleted queues dropped" if dropped else "",
            )
            self._watch_definitions(vhost)
        self.authenticator.users.on_change = self._save_definitions
        self.access.on_change = self._save_definitions
        self.vhosts.on_change = self._save_definitions
        self.user_limits.on_change = self._save_definitions
        self._save_definitions()

    def _warn_unknown_vhost_dirs(self, data: Path) -> None:
        """Directories under vhosts/ that no vhost owns (a delete cut short by a crash,
        or a record that could not be read): logged, never deleted at start."""
        root = data / VHOSTS_DIR
        if not root.is_dir():
            return
        known = {dir_name(v.name) for v in self.vhosts if not v.is_default}
        for entry in sorted(root.iterdir()):
            if entry.name not in known:
                log.warning(
                    "%s belongs to no vhost (a deleted one?); creating a vhost by that name "
                    "deletes it, or remove it by hand",
                    entry,
                )

    def _wire_vhost(self, vhost: VirtualHost) -> None:
        """What every vhost's publish path shares: the counters, limits and alarms."""
        publisher = vhost.topology.publisher
        publisher.stats = self.stats
        publisher.max_message_bytes = self.settings.max_message_bytes
        publisher.alarms = self._alarms

    def _watch_store(self, vhost: VirtualHost) -> None:
        store = vhost.store
        assert store is not None
        name = vhost.name
        store.listeners.append(lambda batch: self._store_committed(name, batch))

    def _watch_definitions(self, vhost: VirtualHost) -> None:
        if vhost.is_default:
            vhost.topology.on_change = self._save_definitions
        else:
            vhost.topology.on_change = vhost.save_definitions
            vhost.save_definitions()

    # -- vhosts at run time ------------------------------------------------------------

    def add_vhost(self, vhost: VirtualHost, actor: dict[str, Any] | None = None) -> bool:
        """Create ``vhost`` (True) or update the metadata of the one by its name."""
        if vhost.name in self._deleting:
            raise PreconditionFailed(
                f"vhost '{vhost.name}' is being deleted; create it again once that is done",
                details={"vhost": vhost.name},
            )
        existing = self.vhosts.find(vhost.name)
        if existing is not None:
            existing.description = vhost.description
            existing.tags = vhost.tags
            existing.default_queue_type = vhost.default_queue_type
            self.vhosts.changed()
            return False
        self.vhosts.add(vhost)
        self._wire_vhost(vhost)
        path = self.vhosts.path_of(Path(self.data_path), vhost.name)
        if path.exists():
            # Left by a delete that did not finish (crash): nothing in it is wanted.
            remove_data(path)
        try:
            rec = vhost.open(path, self.settings, self.segment_handles, load_definitions(path))
            vhost.restore(rec)
        except Exception:
            self.vhosts.remove(vhost.name)
            raise
        self._watch_store(vhost)
        self._watch_definitions(vhost)
        if self.ready:
            vhost.start()
        self.vhosts.changed()
        self.audit.event(AuditEvent.VHOST_CREATED, vhost=vhost.name, **(actor or {}))
        log.info("vhost '%s' created", vhost.name)
        return True

    async def delete_vhost(self, name: str, actor: dict[str, Any] | None = None) -> int:
        """Delete a vhost: close its connections, drop its topology, topics, groups,
        permissions and data directory.  Returns how many connections were closed."""
        vhost = self.vhosts.remove(name)  # refuses "/" and unknown names
        self.vhosts.changed()
        self._deleting.add(name)
        try:
            closed = 0
            for conn in list(vhost.clients.values()):
                conn.shutdown(f"vhost '{name}' was deleted")
                closed += 1
            vhost.drop_topology()
            self.access.forget_vhost(name)
            self._store_waiting.pop(name, None)
            await self._close_vhost(vhost, None)
            if vhost.path is not None:
                await asyncio.to_thread(remove_data, vhost.path)
        finally:
            self._deleting.discard(name)
        self.audit.event(AuditEvent.VHOST_DELETED, vhost=name, **(actor or {}))
        log.info("vhost '%s' deleted (%d connections closed)", name, closed)
        return closed

    async def _close_vhost(self, vhost: VirtualHost, deadline: float | None) -> None:
        """Flush and close a vhost's store, groups, cleaner and topics (by ``deadline``,
        loop time; None: no deadline)."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.settings.shutdown_timeout_s
        prefix = f"vhost '{vhost.name}': "
        if vhost.store is not None:
            if not await _before(deadline, vhost.store.flush()):
                log.error("%smessage store did not finish its last commit in time", prefix)
            vhost.store.close()
        if vhost.transactions is not None:  # transactions being committed or aborted
            if not await _before(deadline, vhost.transactions.close()):
                log.error("%stransactions did not complete in time", prefix)
            vhost.transactions = None
        if vhost.groups is not None:  # consumer groups: the last offset commits
            if not await _before(deadline, vhost.groups.close()):
                log.error("%sthe offsets log did not finish its last commit in time", prefix)
            vhost.groups = None
        if vhost.log_cleaner is not None:  # log compaction: abandon a running pass
            await _before(deadline, vhost.log_cleaner.close())
        if vhost.logs is not None:  # log topics
            vhost.logs.close()
            # Rolls finish in worker threads; a broker started next on this directory
            # (even in this process) must not find their files half written.
            await vhost.logs.wait_closed(max(0.0, deadline - loop.time()))
            vhost.logs = None

    def _has_implicit_access(self, user: str) -> bool:
        """Users of the config file and the built-in guest: full access on "/" unless an
        explicit permission entry replaces it (upgrades keep working; docs/security.md)."""
        users = self.authenticator.users
        return user in users and users.configured(user)

    def _audit_denial(self, actor: Actor, kind: str, error: WharfError) -> None:
        """Every refusal the core's permissions decide goes to the audit log."""
        self.audit.event(
            AuditEvent.ACCESS_DENIED,
            actor=actor.user,
            peer=actor.peer,
            protocol=actor.protocol,
            vhost=actor.vhost,
            resource_kind=kind,
            reason=error.message,
        )

    def session(self, actor: Actor) -> CoreSession:
        """The core as ``actor`` may use it, on the actor's vhost (every check in
        core/access.py); NotFound for a vhost that does not exist."""
        vhost = self.vhosts.get(actor.vhost)
        return CoreSession(actor, self.access, vhost.topology)

    def _save_definitions(self) -> None:
        definitions = self.topology.durable_definitions()  # the default vhost's
        definitions["users"] = self.authenticator.users.runtime_records()  # management API
        definitions.update(self.access.records())
        definitions["vhosts"] = self.vhosts.records()
        definitions["user_limits"] = self.user_limits.records()
        save_definitions(Path(self.data_path), definitions)

    @property
    def alarms(self) -> set[str]:
        """Raised resource alarms ("memory", "disk"); publishers are blocked while
        non-empty.  The core's publish path keeps them (core/publish.py)."""
        return self._alarms

    @alarms.setter
    def alarms(self, alarms: set[str]) -> None:
        self._alarms = alarms
        for vhost in self.vhosts:
            vhost.topology.publisher.alarms = alarms

    def await_store(self, conn: ServedConnection) -> None:
        """``conn`` has confirms waiting for a group commit of its vhost's store
        (``store_committed``)."""
        self._store_waiting.setdefault(conn.vhost, set()).add(conn)

    def stop_awaiting_store(self, conn: ServedConnection) -> None:
        """``conn`` closed: its waiting confirms are dropped."""
        waiting = self._store_waiting.get(conn.vhost)
        if waiting is not None:
            waiting.discard(conn)

    def _store_committed(self, vhost: str, batch: int) -> None:
        waiting = self._store_waiting.get(vhost)
        if not waiting:
            return
        for conn in list(waiting):
            if not conn.store_committed(batch):
                waiting.discard(conn)

    def _listeners_to_check(self) -> list[tuple[str, str, int]]:
        s = self.settings
        listeners = [("HTTP", s.http_bind_host, s.http_port)]
        if s.plain_enabled:
            listeners.insert(0, ("native protocol", s.host, s.port))
        if s.tls_enabled:
            listeners.append(("native TLS", s.host, s.tls_port))
            listeners.append(("HTTPS", s.http_bind_host, s.https_port))
        if s.amqp_enabled:
            listeners.append(("AMQP", s.host, s.amqp_port))
        if s.amqps_enabled:
            listeners.append(("AMQPS", s.host, s.amqps_port))
        return listeners

    def listeners(self) -> list[dict[str, Any]]:
        """The open listeners: protocol ("wharf", "wharfs", "amqp", "http", "https"), host,
        port."""
        s = self.settings
        out: list[dict[str, Any]] = []
        if s.plain_enabled:
            out.append({"protocol": "wharf", "host": s.host, "port": self.port})
        if self.tls is not None:
            out.append({"protocol": "wharfs", "host": s.host, "port": self.tls_port})
        if s.amqp_enabled:
            out.append({"protocol": "amqp", "host": s.host, "port": self.amqp_port})
        if self.amqps_listener is not None:
            out.append({"protocol": "amqps", "host": s.host, "port": self.amqps_port})
        out.append({"protocol": "http", "host": s.http_bind_host, "port": self.http_port})
        if self.tls is not None:
            out.append({"protocol": "https", "host": s.http_bind_host, "port": self.https_port})
        return out

    def reload_tls(self, who: dict[str, Any] | None = None) -> dict[str, Any]:
        """Reload the TLS certificate, key and CA for new connections (SIGHUP, the
        management API).  Raises PreconditionFailed when TLS is off or the files do not
        load; then the previous certificate stays in use.  ``who``: the audit fields of
        the request (actor, peer, protocol); None for SIGHUP."""
        tls = self.tls
        if tls is None:
            raise PreconditionFailed(
                "TLS is not configured (tls_cert_file, tls_key_file): nothing to reload"
            )
        source: dict[str, Any] = (
            who if who is not None else {"actor": None, "peer": None, "protocol": "signal"}
        )
        cert_file = os.fspath(tls.files.cert_file)
        try:
            tls.reload()
        except TlsError as exc:
            self.audit.event(
                AuditEvent.TLS_RELOAD_FAILED, **source, cert_file=cert_file, error=str(exc)
            )
            raise PreconditionFailed(
                f"TLS reload failed, the previous certificate stays in use: {exc}"
            ) from None
        described = tls.describe()
        self.audit.event(
            AuditEvent.TLS_RELOADED,
            **source,
            cert_file=cert_file,
            not_after=described["not_after"],
        )
        return described

    async def start(self) -> None:
        s = self.settings
        if s.tls_enabled:
            # Before the data directory, like the ports: a bad certificate changes nothing.
            try:
                self.tls = ServerTls(s.tls_files())
            except TlsError as exc:
                raise TlsSetupError(f"cannot start TLS: {exc}") from None
        # Before the data directory: a busy port must not leave a LOCK or new directories
        # behind, and the message names every busy port at once.
        busy = busy_ports(self._listeners_to_check())
        if busy:
            raise PortsBusy(busy_ports_message(busy))
        self._lock_data_dir()
        self.audit = AuditLog(
            audit_path(s.audit_log_file, self.data_path),
            max_bytes=s.audit_log_max_bytes,
            backups=s.audit_log_backups,
        )
        self.authenticator.audit = self.audit
        self._recover()
        for vhost in self.vhosts:
            # Acks of transactions recovered in PrepareCommit: durable before clients.
            await vhost.recovery_done()
        self.monitor = ResourceMonitor(
            self.data_path,
            s.memory_high_watermark,
            s.disk_free_limit_bytes,
            accounted_memory=self.accounted_memory,
            trimmer=self.trimmer,
            fd_errors=self._fd_errors,
            reclaimable_fds=self._reclaimable_fds,
        )
        self.check_resources()
        loop = asyncio.get_running_loop()
        http_host = s.http_host or s.host
        tls = self.tls
        https = None
        if tls is not None:
            https = (s.https_port, tls, s.handshake_timeout_s)
        self._http = await start_http_server(
            self, http_host, s.http_port, https=https, options=HttpOptions.from_settings(s)
        )
        self.http_port = self._http.port
        self.https_port = self._http.tls_port
        # Recovery happens before this point; the native ports open only when ready.
        if s.plain_enabled:
            self._server = await loop.create_server(
                lambda: Connection(self),
                s.host,
                s.port,
                backlog=LISTEN_BACKLOG,
                reuse_address=True,
            )
            self.port = self._server.sockets[0].getsockname()[1]
        if tls is not None:
            # Handshakes in progress are bounded like connections not yet logged in: in
            # total and per peer address.
            self.tls_listener = TlsListener(
                tls,
                lambda: Connection(self),
                s.handshake_timeout_s,
                s.max_unauthenticated_connections,
                max_per_address=s.max_unauthenticated_per_address,
            )
            self.tls_port = await self.tls_listener.start(s.host, s.tls_port, LISTEN_BACKLOG)
        if s.amqp_enabled:
            self._amqp_server = await loop.create_server(
                lambda: AmqpConnection(self),
                s.host,
                s.amqp_port,
                backlog=LISTEN_BACKLOG,
                reuse_address=True,
            )
            self.amqp_port = self._amqp_server.sockets[0].getsockname()[1]
        if tls is not None and s.amqps_enabled:
            # The native TLS listener's certificates, reload, client-auth and handshake
            # bounds; its own caps on handshakes in progress.
            self.amqps_listener = TlsListener(
                tls,
                lambda: AmqpConnection(self),
                s.handshake_timeout_s,
                s.max_unauthenticated_connections,
                name="AMQP",
                max_per_address=s.max_unauthenticated_per_address,
            )
            self.amqps_port = await self.amqps_listener.start(s.host, s.amqps_port, LISTEN_BACKLOG)
        self._ticker = loop.create_task(self._tick_loop())
        for vhost in self.vhosts:
            vhost.start()  # log retention and compaction timers
        self.ready = True
        log.info(
            "wharf ready: %s, data %s",
            ", ".join(f"{x['protocol']} {x['host']}:{x['port']}" for x in self.listeners()),
            self.data_path,
        )

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK_S)
            now = loop.time()
            self.check_resources()
            self.authenticator.tick()  # summary lines of rate-limited login failures
            self.trimmer.run_if_requested(loop)
            self.compact_store()
            for vhost in self.vhosts:
                vhost.tick()
            for conn in list(self.connections.values()):
                try:
                    conn.tick(now)
                except Exception:
                    log.exception("%s: periodic check failed", conn.name)

    def compact_store(self) -> int:
        """Copy the live messages out of a mostly-settled oldest segment so it can go.

        Runs on the tick, one segment per vhost store at a time; the old segment is
        deleted by the store once the copies are on disk.  Returns how many messages
        were copied.
        """
        moved = 0
        for vhost in self.vhosts:
            store = vhost.store
            old = store.compaction_candidate() if store is not None else None
            if store is None or old is None:
                continue
            copied = 0
            for q in list(vhost.topology.queues.values()):
                copied += q.relocate(old)
            for conn in list(self.connections.values()):
                if conn.vhost == vhost.name:
                    copied += conn.relocate(old)
            log.info(
                "vhost '%s': compacted segment %d: %d live messages of %d copied forward",
                vhost.name,
                old.number,
                copied,
                old.total,
            )
            moved += copied
        return moved

    def _fd_errors(self) -> int:
        stores = sum(v.store.fd_errors for v in self.vhosts if v.store is not None)
        return self.segment_handles.fd_errors_total + stores

    def _reclaimable_fds(self) -> int:
        return self.segment_handles.idle

    @property
    def fd_alarm(self) -> bool:
        return self.monitor is not None and self.monitor.fd_alarm

    def readiness(self) -> Readiness:
        """What /readyz reports: serving, and neither the store nor an alarm in the way."""
        failures = [
            (v.name, v.store.failed) for v in self.vhosts if v.store is not None and v.store.failed
        ]
        failure = None
        if failures:
            name, reason = failures[0]
            failure = reason if name == DEFAULT_VHOST else f"vhost '{name}': {reason}"
        return decide_readiness(
            serving=self.ready,
            stopping=self.stopping,
            store_failure=failure,
            fd_alarm=self.fd_alarm,
            alarms=self.alarms,
        )

    def check_resources(self) -> None:
        monitor = self.monitor
        if monitor is None or not monitor.check():
            return
        self.alarms = set(monitor.alarms)
        for conn in list(self.connections.values()):
            conn.set_blocked(self.alarms)

    # -- memory accounting (the memory alarm, /metrics, the HTTP overview) ----------------

    @property
    def uptime_s(self) -> float:
        """Seconds since the broker object was made (the process's start, near enough)."""
        return time.monotonic() - self._created_at

    def memory_breakdown(self) -> dict[str, int]:
        """Bytes the broker holds, by kind; computed on the tick and at scrape time."""
        queued = 0
        for vhost in self.vhosts:
            for q in vhost.topology.queues.values():
                # In-memory ready messages (bodies + per-message overhead); paged rows
                # are on disk.  Read from the queue's own counter.
                queued += q._head_bytes
        unacked = unacked_overhead = write_buffers = 0
        for conn in self.connections.values():
            unacked += conn.unacked_bytes
            unacked_overhead += conn.unacked_count
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                write_buffers += transport.get_write_buffer_size()
        return {
            "queued_messages": queued,
            "unacked_messages": unacked + unacked_overhead * MESSAGE_OVERHEAD_BYTES,
            "receive_buffers": self.buffered_bytes,
            "write_buffers": write_buffers,
        }

    def accounted_memory(self) -> int:
        return sum(self.memory_breakdown().values())

    # -- connection limits -----------------------------------------------------------------

    def connection_limit_error(self, joining: ServedConnection | None = None) -> WharfError | None:
        """The error for a connection over max_connections (authenticated ones count;
        ``joining``: the connection that has just authenticated, not counted itself)."""
        limit = self.settings.max_connections
        others = len(self.connections) - self.unauthenticated
        if joining is not None and joining.id in self.connections:
            others -= 1
        if others >= limit:
            return ResourceError(
                f"connection limit {limit} reached",
                details={"limit": "max_connections", "value": limit},
            )
        return None

    def admit_unauthenticated(self, conn: ServedConnection) -> WharfError | None:
        """Count a new connection as unauthenticated, or the error refusing it."""
        s = self.settings
        if self.unauthenticated >= s.max_unauthenticated_connections:
            return ResourceError(
                f"too many connections waiting to authenticate "
                f"(max_unauthenticated_connections={s.max_unauthenticated_connections})",
                details={
                    "limit": "max_unauthenticated_connections",
                    "value": s.max_unauthenticated_connections,
                },
            )
        host = conn.peer_host
        per_host = self._unauthenticated_by_host.get(host, 0)
        if per_host >= s.max_unauthenticated_per_address:
            return ResourceError(
                f"too many connections from {host} waiting to authenticate "
                f"(max_unauthenticated_per_address={s.max_unauthenticated_per_address})",
                details={
                    "limit": "max_unauthenticated_per_address",
                    "value": s.max_unauthenticated_per_address,
                },
            )
        self.unauthenticated += 1
        self._unauthenticated_by_host[host] = per_host + 1
        conn.counted_unauthenticated = True
        return None

    def release_unauthenticated(self, conn: ServedConnection) -> None:
        if not conn.counted_unauthenticated:
            return
        conn.counted_unauthenticated = False
        self.unauthenticated -= 1
        host = conn.peer_host
        left = self._unauthenticated_by_host.get(host, 0) - 1
        if left > 0:
            self._unauthenticated_by_host[host] = left
        else:
            self._unauthenticated_by_host.pop(host, None)

    # -- receive budget ----------------------------------------------------------------------

    def check_receive_budget(self, conn: Connection) -> None:
        """``conn``'s partly received bytes changed: pause or resume readers."""
        budget = self.settings.receive_buffer_budget_bytes
        if (
            self.buffered_bytes > budget
            and conn.buffered_bytes
            and not conn.budget_paused
            and not conn.closing
        ):
            reader = self._budget_reader
            if reader is None or reader.closing or not reader.buffered_bytes:
                self._budget_reader = conn
            elif reader is not conn:
                self._budget_paused[conn.id] = conn
                self.budget_pauses += 1
                conn.pause_for_budget()
        if conn is self._budget_reader and not conn.buffered_bytes:
            self._budget_reader = None
        if self._budget_paused:
            self._resume_budget_readers()

    def forget_budget_reader(self, conn: Connection) -> None:
        self._budget_paused.pop(conn.id, None)
        if self._budget_reader is conn:
            self._budget_reader = None
        if self._budget_paused:
            self._resume_budget_readers()

    def _resume_budget_readers(self) -> None:
        paused = self._budget_paused
        budget = self.settings.receive_buffer_budget_bytes
        if self.buffered_bytes <= budget * RECEIVE_BUDGET_RESUME_FRACTION:
            conns = list(paused.values())
            paused.clear()
            for c in conns:
                c.resume_for_budget()
            return
        if self._budget_reader is None:
            # The one allowed to finish its frame is done: the oldest paused goes next.
            first = next(iter(paused))
            conn = paused.pop(first)
            self._budget_reader = conn
            conn.resume_for_budget()

    def connection_closed(self, conn: ServedConnection) -> None:
        if not self.connections:
            for w in self._closed_waiters:
                if not w.done():
                    w.set_result(None)

    async def stop(self) -> None:
        """Graceful shutdown within ``shutdown_timeout_s`` in all: one deadline for every
        stage (drain, flush, close), each getting what the stages before it left."""
        if self.stopping:
            return
        self.stopping = True
        self.ready = False
        loop = asyncio.get_running_loop()
        budget_s = self.settings.shutdown_timeout_s
        deadline = loop.time() + budget_s
        log.info("shutting down: %d connections", len(self.connections))
        if self._server is not None:
            self._server.close()
        if self.tls_listener is not None:
            self.tls_listener.close()
        if self._amqp_server is not None:
            self._amqp_server.close()
        if self.amqps_listener is not None:
            self.amqps_listener.close()
        for conn in list(self.connections.values()):
            conn.shutdown("broker shutting down")
        if self.connections:
            waiter: asyncio.Future[None] = loop.create_future()
            self._closed_waiters.add(waiter)
            try:
                if not await _before(deadline, waiter):
                    log.warning(
                        "%d connections did not close in %.1f s; aborting them",
                        len(self.connections),
                        budget_s,
                    )
                    for conn in list(self.connections.values()):
                        if conn.transport is not None:
                            conn.transport.abort()
            finally:
                self._closed_waiters.discard(waiter)
        for vhost in self.vhosts:
            await self._close_vhost(vhost, deadline)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for server in (self._server, self._amqp_server):
            if server is not None:
                with contextlib.suppress(Exception):
                    await _before(deadline, server.wait_closed())
        if self._http is not None:
            await stop_http_server(self._http, max(0.0, deadline - loop.time()))
        self.authenticator.close()
        self.audit.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        log.info("stopped")


async def _before(deadline: float, aw: Awaitable[object]) -> bool:
    """Await ``aw`` until the loop time ``deadline``; False if it was cut off then.

    A coroutine starts even when the deadline has passed, so its cleanup (``finally``)
    runs up to its first wait before it is cancelled.
    """
    try:
        async with asyncio.timeout_at(deadline):
            await aw
    except TimeoutError:
        return False
    return True


async def serve(settings: Settings) -> int:
    broker = Broker(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_tls_on_sighup, broker)
    try:
        await broker.start()
    except (DataDirLocked, PortsBusy, TlsSetupError) as exc:
        log.error("%s", exc.message)
        return 1
    except OSError as exc:
        log.error("cannot start: %s", exc)
        await broker.stop()
        return 1
    await stop.wait()
    await broker.stop()
    return 0


def _reload_tls_on_sighup(broker: Broker) -> None:
    if broker.tls is None:
        log.info("SIGHUP: TLS is not configured, nothing to reload")
        return
    try:
        broker.reload_tls()  # logs success and failure itself
    except WharfError:
        pass  # the old certificate stays; security/tls.py logged why


def run(settings: Settings) -> int:
    """Run a broker until SIGTERM/SIGINT; returns the process exit code."""
    import uvloop

    configure_logging(settings.log_level, settings.log_format)
    return uvloop.run(serve(settings))


if TYPE_CHECKING:

    def _management_api_view(broker: Broker) -> ApiBroker:
        """Never called: makes mypy check that Broker is what the management API uses."""
        return broker

    def _amqp_view(broker: Broker) -> AmqpBrokerApi:
        """Never called: makes mypy check that Broker is what the AMQP listener uses."""
        return broker
