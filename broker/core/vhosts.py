"""Virtual hosts: isolated namespaces, each the one owner of its own state.

A ``VirtualHost`` holds everything a namespace has, as RabbitMQ's vhosts: its topology
(exchanges with their own ``amq.*`` and default exchange, queues, bindings, policies),
its message store, its log topics, their cleaner and its consumer groups, and its
limits.  Nothing routes across vhosts: a publish only sees its own vhost's topology.
``VirtualHosts`` is the registry the broker owns (``Broker.vhosts``).

Data layout: the default vhost "/" keeps the layout Wharf had before vhosts, in the
data directory's root (``messages/``, ``logs/``, ``logs-internal/``, the topology in
``definitions.json``), so an existing data directory opens unchanged.  Every other vhost
has the same layout under ``vhosts/<dir name>/`` (``dir_name``: the percent-encoded name;
a long one is cut and made unique with a hash).  The list of vhosts and their limits is
durable in the root ``definitions.json`` (``records``/``load_records``); a vhost's
topology is in its own directory's ``definitions.json``.

Limits (RabbitMQ's vhost limits, plus Wharf's ``max-topics``): ``max-connections`` is
checked by the broker when a connection authenticates, ``max-queues`` by the topology
when a queue is created, ``max-topics`` by the topic registry when a topic is created
(both through hooks set here, so every way in gets the same answer).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from wharf.protocol.errors import (
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    ResourceError,
    WharfError,
)

from ..logs import TopicRegistry
from ..logs.cleaner import LogCleaner
from ..logs.groups import GroupCoordinator
from ..logs.transactions import TransactionCoordinator
from ..store.definitions import save_definitions
from ..store.recovery import Recovered, drop_unknown_queues, recover
from ..store.segments import MessageStore
from .access import DEFAULT_VHOST
from .paging import PagedRow
from .queues import MESSAGE_OVERHEAD_BYTES, Message, Queue
from .topology import Topology

if TYPE_CHECKING:
    from ..config import Settings
    from ..logs.handles import SegmentHandles
    from .clients import ClientConnection

log = logging.getLogger("wharf.vhosts")

VHOSTS_DIR: Final = "vhosts"
MAX_VHOST_NAME_CHARS: Final = 255
# Directory names longer than this are cut and suffixed with a hash (NAME_MAX is 255).
MAX_DIR_NAME_CHARS: Final = 200
DIR_HASH_CHARS: Final = 16
MAX_DESCRIPTION_CHARS: Final = 1_024
MAX_VHOST_TAGS: Final = 32
# Tags given as RabbitMQ's "a,b" text: at most this long (MAX_VHOST_TAGS one-letter tags).
MAX_VHOST_TAGS_TEXT_CHARS: Final = 2 * MAX_VHOST_TAGS
MAX_VHOSTS: Final = 10_000

MAX_CONNECTIONS: Final = "max-connections"
MAX_QUEUES: Final = "max-queues"
MAX_TOPICS: Final = "max-topics"
LIMIT_NAMES: Final = (MAX_CONNECTIONS, MAX_QUEUES, MAX_TOPICS)
# As RabbitMQ: a limit value is a non-negative integer (0: nothing allowed); a negative
# value removes the limit.
MAX_LIMIT_VALUE: Final = 2**31 - 1

DEFAULT_QUEUE_TYPE: Final = "classic"
QUEUE_TYPES: Final = ("classic",)


def dir_name(name: str) -> str:
    """The directory of vhost ``name`` under ``vhosts/``: percent-encoded (``/`` and
    ``.`` included, so never a path or ``..``); too long a name is cut and gets ``+``
    and a hash, which percent-encoding never produces, so two names never share one."""
    encoded = urllib.parse.quote(name, safe="").replace(".", "%2E")
    if len(encoded) <= MAX_DIR_NAME_CHARS:
        return encoded
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:DIR_HASH_CHARS]
    return f"{encoded[: MAX_DIR_NAME_CHARS - DIR_HASH_CHARS - 1]}+{digest}"


def check_vhost_name(name: str) -> None:
    # Any characters (as RabbitMQ): the directory name is percent-encoded (``dir_name``).
    if not name or len(name) > MAX_VHOST_NAME_CHARS:
        raise InvalidArgument(f"a vhost name is 1..{MAX_VHOST_NAME_CHARS} characters")


def check_limit(name: str, value: Any) -> int | None:
    """The value to keep for limit ``name`` (None: no limit), or InvalidArgument."""
    if name not in LIMIT_NAMES:
        raise InvalidArgument(
            f"unknown vhost limit {name!r}; expected one of: {', '.join(LIMIT_NAMES)}",
            details={"limit": name},
        )
    if type(value) is not int or value > MAX_LIMIT_VALUE:
        raise InvalidArgument(
            f"the value of vhost limit {name!r} must be an integer up to {MAX_LIMIT_VALUE} "
            "(negative: no limit)",
            details={"limit": name},
        )
    return None if value < 0 else value


class VirtualHost:
    """One namespace: its topology, store, log topics, groups and limits."""

    def __init__(
        self,
        name: str,
        *,
        description: str = "",
        tags: tuple[str, ...] = (),
        default_queue_type: str = DEFAULT_QUEUE_TYPE,
    ) -> None:
        self.name = name
        self.description = description
        self.tags = tags
        self.default_queue_type = default_queue_type
        self.topology = Topology()
        self.topology.check_new_queue = self._check_new_queue
        self.limits: dict[str, int] = {}
        self.path: Path | None = None  # set by ``open``
        self.store: MessageStore | None = None
        self.logs: TopicRegistry | None = None
        self.log_cleaner: LogCleaner | None = None
        self.groups: GroupCoordinator | None = None
        self.transactions: TransactionCoordinator | None = None
        # Writing the acks of transactions recovered in PrepareCommit (restore).
        self._recovery_tasks: set[asyncio.Future[None]] = set()
        # Authenticated client connections on this vhost, any protocol (registry id ->
        # connection): max-connections, deletion and the per-vhost connection metric.
        self.clients: dict[int, ClientConnection] = {}
        self.deleted = False

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_VHOST

    def describe(self) -> dict[str, Any]:
        """RabbitMQ's shape of ``GET /api/vhosts/{name}`` (the fields Wharf has)."""
        queues = self.topology.queues.values()
        return {
            "name": self.name,
            "description": self.description,
            "tags": list(self.tags),
            "default_queue_type": self.default_queue_type,
            "metadata": {"description": self.description, "tags": list(self.tags)},
            "messages_ready": sum(q.ready_count for q in queues),
            "messages_unacknowledged": sum(q.unacked_count for q in queues),
            "queues": len(self.topology.queues),
            "topics": len(self.logs.topics) if self.logs is not None else 0,
            "connections": len(self.clients),
            "limits": dict(self.limits),
        }

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "tags": list(self.tags),
            "default_queue_type": self.default_queue_type,
            "limits": dict(self.limits),
        }

    # -- limits ----------------------------------------------------------------------

    def _check_new_queue(self) -> None:
        limit = self.limits.get(MAX_QUEUES)
        if limit is not None and len(self.topology.queues) >= limit:
            raise PreconditionFailed(
                f"queue limit in vhost '{self.name}' ({limit}) is reached",
                details={"vhost": self.name, "limit": MAX_QUEUES, "value": limit},
            )

    def _check_new_topic(self) -> None:
        limit = self.limits.get(MAX_TOPICS)
        logs = self.logs
        if limit is not None and logs is not None and len(logs.topics) >= limit:
            raise PreconditionFailed(
                f"topic limit in vhost '{self.name}' ({limit}) is reached",
                details={"vhost": self.name, "limit": MAX_TOPICS, "value": limit},
            )

    def connection_limit_error(self, joining: int) -> WharfError | None:
        """The refusal of connection ``joining`` over max-connections (None: admitted)."""
        limit = self.limits.get(MAX_CONNECTIONS)
        if limit is None:
            return None
        others = len(self.clients) - (1 if joining in self.clients else 0)
        if others < limit:
            return None
        return ResourceError(
            f"connection limit in vhost '{self.name}' ({limit}) is reached",
            details={"vhost": self.name, "limit": MAX_CONNECTIONS, "value": limit},
        )

    # -- opening and closing ---------------------------------------------------------

    def open(
        self, path: Path, settings: Settings, handles: SegmentHandles, definitions: dict[str, Any]
    ) -> Recovered:
        """Open the vhost's store, topics and groups under ``path`` and load
        ``definitions`` (its topology); returns what the store recovered, whose
        messages ``restore`` puts back once the broker has loaded its own records."""
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        msg_dir = path / "messages"
        msg_dir.mkdir(exist_ok=True)
        store = MessageStore(
            msg_dir,
            segment_bytes=settings.segment_bytes,
            fsync_interval_ms=settings.fsync_interval_ms,
        )
        self.store = store
        topology = self.topology
        topology.store = store
        self.logs = TopicRegistry(
            path / "logs",
            retention_check_interval_ms=settings.log_retention_check_interval_ms,
            max_batch_bytes=settings.max_message_bytes,
            handles=handles,
        )
        self.logs.check_new_topic = self._check_new_topic
        topology.attach_topics(self.logs)  # topic bindings load with the definitions
        self.log_cleaner = LogCleaner(self.logs, settings.log_cleaner_interval_ms)
        self.groups = GroupCoordinator(self.logs, path / "logs-internal" / "offsets", settings)
        # Completes or aborts the transactions a crash left open (markers, offsets).
        self.transactions = TransactionCoordinator(
            self.logs,
            self.groups,
            path / "logs-internal" / "transactions",
            default_timeout_ms=settings.transaction_timeout_ms,
            max_timeout_ms=settings.transaction_max_timeout_ms,
        )
        topology.memory_budget_bytes = settings.queue_memory_budget_bytes
        topology.load_definitions(definitions)
        return recover(msg_dir)

    def restore(self, rec: Recovered) -> tuple[int, int, int]:
        """Put the recovered messages back into the durable queues and open the store
        for appends; returns (durable queues, messages, messages of deleted queues)."""
        store = self.store
        assert store is not None
        by_uid = {q.uid: q for q in self.topology.queues.values() if q.persist}
        dropped = drop_unknown_queues(rec, set(by_uid))
        store.adopt(rec.segments)
        acked = self._take_recovered_acks(rec)
        restored = 0
        for uid, q in by_uid.items():
            restored += self._restore_queue(q, rec, uid)
        store.open_for_append(rec.segments)
        for q in by_uid.values():
            q.start_expiry()
            q.start_delays()
        if acked:
            self._ack_recovered(acked)
        elif self.transactions is not None and self.transactions.recovered_acks:
            self.transactions.recovered_acks_applied()  # nothing left to ack
        return len(by_uid), restored, dropped

    async def recovery_done(self) -> None:
        """Wait for what ``restore`` left running (the acks of recovered transactions)."""
        while self._recovery_tasks:
            await asyncio.gather(*list(self._recovery_tasks))

    def _take_recovered_acks(self, rec: Recovered) -> list[tuple[int, int, Any]]:
        """Messages a transaction recovered in PrepareCommit acked (logs/transactions.py,
        core/transactions.py ``TransactionAcks``): taken out before the queues are
        rebuilt.  Returns (queue uid, position, segment) of each."""
        txns = self.transactions
        if txns is None or not txns.recovered_acks:
            return []
        out = []
        for uid, positions in txns.recovered_acks.items():
            stored = rec.messages.get(uid)
            if not stored:
                continue  # acked for good before the crash, or its queue is gone
            for pos in sorted(positions):
                r = stored.pop(pos, None)
                if r is not None:
                    out.append((uid, pos, r.segment))
        return out

    def _ack_recovered(self, acked: list[tuple[int, int, Any]]) -> None:
        """Write the ACKS records of ``acked``; once fsynced, the transactions that held
        them are CompleteCommit in the transaction log too (until then a crash redoes
        this)."""
        store, txns = self.store, self.transactions
        assert store is not None and txns is not None
        for uid, pos, seg in acked:
            store.settle(uid, pos, seg)
        log.info("vhost '%s': acked %d messages of committed transactions", self.name, len(acked))

        async def complete() -> None:
            await store.flush()
            await txns.recovered_acks_applied()

        task = asyncio.ensure_future(complete())
        self._recovery_tasks.add(task)
        task.add_done_callback(self._recovery_tasks.discard)

    def _restore_queue(self, q: Queue, rec: Recovered, uid: int) -> int:
        """Rebuild one durable queue: the head in memory, the rest as paged index rows."""
        store = self.store
        assert store is not None
        stored = rec.messages.get(uid, {})
        delivered_up_to = rec.delivered.get(uid, -1)
        budget = q.memory_budget_bytes
        used = 0
        head: list[Message] = []
        paging = False
        cache: tuple[int, int, Any] = (-1, -1, None)
        delayed = rec.delayed.get(uid, {})
        now_ms = int(time.time() * 1000)
        for pos in sorted(stored):
            r = stored[pos]
            dc = r.delivery_count
            if pos <= delivered_up_to and dc < 1:
                dc = 1  # handed out before the restart: redelivered next time
            due = delayed.get(pos, 0)
            if due > now_ms:
                # Still waiting for a delayed retry: index row only, released when due.
                q.restore_delayed(
                    PagedRow(
                        pos, r.segment.number, r.offset, r.index, dc, r.size, True, r.expires_at
                    ),
                    due,
                )
                continue
            used += r.size + MESSAGE_OVERHEAD_BYTES
            if q.pages and (paging or used > budget):
                paging = True
                q.restore_paged_row(
                    PagedRow(
                        pos, r.segment.number, r.offset, r.index, dc, r.size, True, r.expires_at
                    )
                )
                continue
            if cache[0] != r.segment.number or cache[1] != r.offset:
                cache = (r.segment.number, r.offset, store.read_record(r.segment.number, r.offset))
            payload = cache[2]
            m = Message(payload[2], payload[3], payload[4], payload[5][r.index], pos)
            m.delivery_count = dc
            m.seg = r.segment
            m.persisted = True
            m.expires_at = r.expires_at
            head.append(m)
        q.restore(head, rec.max_position.get(uid, -1) + 1)
        q.max_delivered = delivered_up_to
        q.restore_dedup(rec.dedup.get(uid, {}), now_ms)
        return len(stored)

    def save_definitions(self) -> None:
        """A non-default vhost's topology, in its own directory (the default vhost's is
        in the root document, which the broker writes)."""
        if self.path is not None and not self.deleted:
            save_definitions(self.path, self.topology.durable_definitions())

    def start(self) -> None:
        if self.logs is not None:
            self.logs.start()  # log retention timer
        if self.log_cleaner is not None:
            self.log_cleaner.start()  # log compaction

    def tick(self) -> None:
        self.topology.expire_unused_queues()
        self.topology.purge_dedup_windows()
        if self.groups is not None:
            try:
                self.groups.tick()
            except Exception:
                log.exception("vhost '%s': consumer groups: periodic check failed", self.name)
        if self.transactions is not None:
            try:
                self.transactions.tick()
            except Exception:
                log.exception("vhost '%s': transactions: periodic check failed", self.name)

    def drop_topology(self) -> None:
        """Deletion: delete every queue (their consumers are told, as on a queue
        delete) so nothing holds the vhost's objects."""
        topology = self.topology
        topology.on_change = None
        for q in list(topology.queues.values()):
            topology.delete_queue_object(q)


class VirtualHosts:
    """The registry of vhosts (name -> ``VirtualHost``); "/" always exists."""

    def __init__(self) -> None:
        self._by_name: dict[str, VirtualHost] = {DEFAULT_VHOST: VirtualHost(DEFAULT_VHOST)}
        # Told of a vhost added at run time (the broker wires its publisher and store).
        self.on_change: Callable[[], None] | None = None

    @property
    def default(self) -> VirtualHost:
        return self._by_name[DEFAULT_VHOST]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[VirtualHost]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def find(self, name: str) -> VirtualHost | None:
        return self._by_name.get(name)

    def get(self, name: str) -> VirtualHost:
        """The vhost, or NotFound with RabbitMQ's wording."""
        vhost = self._by_name.get(name)
        if vhost is None:
            raise NotFound(f"vhost '{name}' not found", details={"vhost": name})
        return vhost

    def path_of(self, data_dir: Path, name: str) -> Path:
        return data_dir if name == DEFAULT_VHOST else data_dir / VHOSTS_DIR / dir_name(name)

    def add(self, vhost: VirtualHost) -> None:
        if vhost.name not in self._by_name and len(self._by_name) >= MAX_VHOSTS:
            raise ResourceError(f"vhost limit {MAX_VHOSTS} reached")
        self._by_name[vhost.name] = vhost

    def remove(self, name: str) -> VirtualHost:
        vhost = self.get(name)
        if vhost.is_default:
            raise PreconditionFailed(
                "the default vhost '/' cannot be deleted: its data is the data directory's "
                "root, and clients that name no vhost use it",
                details={"vhost": name},
            )
        del self._by_name[name]
        vhost.deleted = True
        return vhost

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- limits ----------------------------------------------------------------------

    def set_limit(self, name: str, limit: str, value: Any) -> None:
        vhost = self.get(name)
        checked = check_limit(limit, value)
        if checked is None:
            vhost.limits.pop(limit, None)
        else:
            vhost.limits[limit] = checked
        self.changed()

    def clear_limit(self, name: str, limit: str) -> bool:
        vhost = self.get(name)
        check_limit(limit, 0)
        found = vhost.limits.pop(limit, None) is not None
        if found:
            self.changed()
        return found

    def describe_limits(self, name: str | None = None) -> list[dict[str, Any]]:
        """RabbitMQ's shape: ``[{"vhost": name, "value": {"max-queues": 10}}]``, vhosts
        without limits left out."""
        vhosts = [self.get(name)] if name is not None else list(self)
        return [{"vhost": v.name, "value": dict(v.limits)} for v in vhosts if v.limits]

    # -- persistence (the root definitions.json "vhosts") ----------------------------

    def records(self) -> list[dict[str, Any]]:
        return [v.record() for v in sorted(self._by_name.values(), key=lambda v: v.name)]

    def load_records(self, records: Any) -> list[str]:
        """Create the vhosts of saved records (not opened yet); a message per record
        skipped.  No records (a document written before vhosts): just "/"."""
        errors: list[str] = []
        for i, rec in enumerate(records if isinstance(records, list) else []):
            try:
                vhost = vhost_from_record(rec)
            except InvalidArgument as exc:
                errors.append(f"vhosts[{i}] ignored: {exc.message}")
                continue
            if vhost.is_default:
                d = self.default
                d.description, d.tags = vhost.description, vhost.tags
                d.default_queue_type, d.limits = vhost.default_queue_type, vhost.limits
            else:
                self._by_name[vhost.name] = vhost
        return errors


def vhost_from_record(rec: Any) -> VirtualHost:
    """A vhost from its saved record or a PUT body with ``name`` added."""
    if not isinstance(rec, dict):
        raise InvalidArgument("expected an object")
    name = rec.get("name")
    if not isinstance(name, str):
        raise InvalidArgument("'name' must be a string")
    check_vhost_name(name)
    vhost = VirtualHost(name, **vhost_metadata(rec))
    limits = rec.get("limits") or {}
    if not isinstance(limits, dict):
        raise InvalidArgument("'limits' must be an object")
    for limit, value in limits.items():
        checked = check_limit(limit, value)
        if checked is not None:
            vhost.limits[limit] = checked
    return vhost


def vhost_metadata(doc: dict[str, Any]) -> dict[str, Any]:
    """description, tags and default_queue_type from a record or a PUT body (RabbitMQ
    takes tags as a list or a comma-separated string)."""
    description = doc.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidArgument(f"'description' must be a string of <= {MAX_DESCRIPTION_CHARS}")
    raw_tags = doc.get("tags", [])
    if isinstance(raw_tags, str) and len(raw_tags) <= MAX_VHOST_TAGS_TEXT_CHARS:
        raw_tags = [t.strip() for t in raw_tags.split(",") if t.strip()]
    if (
        not isinstance(raw_tags, list)
        or len(raw_tags) > MAX_VHOST_TAGS
        or not all(isinstance(t, str) and 0 < len(t) <= MAX_VHOST_NAME_CHARS for t in raw_tags)
    ):
        raise InvalidArgument(
            f"'tags' must be a list of at most {MAX_VHOST_TAGS} strings, or 'a,b' of at most "
            f"{MAX_VHOST_TAGS_TEXT_CHARS} characters"
        )
    queue_type = doc.get("default_queue_type", DEFAULT_QUEUE_TYPE)
    if queue_type not in QUEUE_TYPES:
        raise InvalidArgument(
            f"'default_queue_type' must be one of: {', '.join(QUEUE_TYPES)} "
            "(declare quorum queues with x-queue-type=quorum)"
        )
    return {"description": description, "tags": tuple(raw_tags), "default_queue_type": queue_type}


def remove_data(path: Path) -> None:
    """Delete a deleted vhost's directory (in a worker thread: it may be large)."""
    shutil.rmtree(path, ignore_errors=True)
