"""Management API endpoints for log topics, consumer groups and transactions
(docs/management.md).

Topics come from the broker's ``TopicRegistry`` (logs/topics.py), groups from its group
coordinator (logs/groups.py), transactions from its transaction coordinator
(logs/transactions.py); all answer plain dicts, which these handlers pass on with
little reshaping.  Same rules as the rest of the API (api.py): listings for the
management tags, changes decided by the core's permission table (core/access.py) as on
the native protocol.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from wharf.protocol.errors import InvalidArgument, ResourceError
from wharf.protocol.records import decode_records, read_header

from ..logs.group_model import RESET_TARGETS
from ..logs.topics import MAX_PARTITIONS
from .api_core import Call, Result, Route, query_int, route, visible_vhosts
from .api_paging import PAGE_QUERY, list_answer

if TYPE_CHECKING:
    from ..core.vhosts import VirtualHost
    from ..logs import TopicRegistry
    from ..logs.groups import GroupCoordinator
    from ..logs.topics import Topic
    from ..logs.transactions import TransactionCoordinator
    from .api_broker import ApiBroker

DEFAULT_PARTITIONS: Final = 1  # as Kafka's num.partitions
# Partitions named in one reset-offsets request.
MAX_RESET_PARTITIONS: Final = MAX_PARTITIONS
# Offsets and epoch-ms timestamps are signed 64-bit, as in Kafka.
MAX_RESET_VALUE: Final = 2**63 - 1
# GET /api/topics/{vhost}/{name}/records: records per answer, and a bound on the keys
# and values it carries (at least one record is answered, whatever its size).
DEFAULT_BROWSE_RECORDS: Final = 50
MAX_BROWSE_RECORDS: Final = 500
MAX_BROWSE_BYTES: Final = 8 * 1024 * 1024
# Bytes of stored batches read from the partition per step.
BROWSE_READ_BYTES: Final = 1024 * 1024
RECORDS_QUERY: Final = ("partition", "offset", "timestamp", "limit", "isolation_level")
# Browsing reads as a fetch with this isolation level does (docs/logs.md, transactions).
READ_UNCOMMITTED: Final = "read_uncommitted"
READ_COMMITTED: Final = "read_committed"
ISOLATION_LEVELS: Final = (READ_UNCOMMITTED, READ_COMMITTED)


class LogsApi:
    """Handlers for /api/topics, /api/groups and /api/transactions."""

    def __init__(self, broker: ApiBroker) -> None:
        self.broker = broker

    def routes(self) -> list[Route]:
        return [
            route(
                "GET /topics",
                self.list_topics,
                "200 [Topic] - All log topics, all vhosts.",
                query=PAGE_QUERY,
            ),
            route(
                "GET /topics/{vhost}",
                self.list_topics,
                "200 [Topic] - A vhost's log topics.",
                query=PAGE_QUERY,
            ),
            route(
                "GET /topics/{vhost}/{name}",
                self.get_topic,
                "200 Topic - One topic: settings, offsets and size per partition.",
            ),
            route(
                "PUT /topics/{vhost}/{name}",
                self.put_topic,
                "201 Topic TopicPut Create a topic (200: exists with this partition count).",
            ),
            route(
                "PATCH /topics/{vhost}/{name}",
                self.alter_topic,
                "200 Topic TopicAlter Grow the partition count and/or change settings.",
            ),
            route(
                "GET /topics/{vhost}/{name}/records",
                self.topic_records,
                (
                    "200 [TopicRecord] - Browse a partition's records from an offset or a "
                    "timestamp (read permission on the topic)."
                ),
                query=RECORDS_QUERY,
            ),
            route(
                "DELETE /topics/{vhost}/{name}",
                self.delete_topic,
                "200 Empty - Delete a topic and its records.",
            ),
            route(
                "GET /groups",
                self.list_groups,
                (
                    "200 [GroupSummary] - Consumer groups with members or committed offsets, "
                    "all vhosts."
                ),
                query=PAGE_QUERY,
            ),
            route(
                "GET /groups/{vhost}",
                self.list_groups,
                "200 [GroupSummary] - A vhost's consumer groups.",
                query=PAGE_QUERY,
            ),
            route(
                "GET /groups/{vhost}/{name}",
                self.get_group,
                (
                    "200 Group - Members, assignment, committed and latest offset, lag per "
                    "partition."
                ),
            ),
            route(
                "DELETE /groups/{vhost}/{name}",
                self.delete_group,
                "200 Empty - Delete a group without members and its committed offsets.",
            ),
            route(
                "POST /groups/{vhost}/{name}/reset-offsets",
                self.reset_offsets,
                (
                    "200 OffsetsReset ResetOffsets Move committed offsets of a group without "
                    "members."
                ),
            ),
            route(
                "GET /transactions",
                self.list_transactions,
                "200 [Transaction] - Transactional ids the coordinators know, all vhosts.",
            ),
            route(
                "GET /transactions/{vhost}",
                self.list_transactions,
                "200 [Transaction] - A vhost's transactional ids.",
            ),
            route(
                "GET /transactions/{vhost}/{name}",
                self.get_transaction,
                (
                    "200 Transaction - One transactional id: producer id, epoch, state, "
                    "partitions and groups of its open transaction, age."
                ),
            ),
            route(
                "POST /transactions/{vhost}/{name}/abort",
                self.abort_transaction,
                (
                    "200 Transaction - Abort the open transaction of a transactional id (as "
                    "on its timeout); answered once the abort markers are written."
                ),
            ),
        ]

    # -- topics --------------------------------------------------------------------------

    def _authorize(self, call: Call, operation: str, **names: str) -> None:
        self.broker.access.authorize(call.core_actor(call.params[0]), operation, **names)

    def _vhost(self, call: Call) -> VirtualHost:
        return self.broker.vhosts.get(call.params[0])

    def _vhosts(self, call: Call) -> list[VirtualHost]:
        return visible_vhosts(self.broker, call)

    @staticmethod
    def _topics_of(vhost: VirtualHost) -> TopicRegistry:
        logs = vhost.logs
        if logs is None:
            raise ResourceError("log topics are not available while the broker starts or stops")
        return logs

    def _topics(self, call: Call) -> TopicRegistry:
        return self._topics_of(self._vhost(call))

    async def list_topics(self, call: Call) -> Result:
        items: list[tuple[VirtualHost, Topic]] = []
        for v in self._vhosts(call):
            topics = self._topics_of(v).topics
            items += [(v, topics[name]) for name in sorted(topics)]
        return 200, list_answer(
            call.query,
            items,
            lambda vt: {**vt[1].describe(), "vhost": vt[0].name},
            lambda vt: vt[1].name,
            _TOPIC_SORT_KEYS,
        )

    async def get_topic(self, call: Call) -> Result:
        topic = self._topics(call).get(call.params[1]).describe()
        return 200, {**topic, "vhost": call.params[0]}

    async def put_topic(self, call: Call) -> Result:
        """Create a topic; 200 when it exists with the same partition count (and the
        settings given, if any)."""
        name = call.params[1]
        topics = self._topics(call)
        self._authorize(call, "topic.create", topic=name)
        f = call.json(("partitions", "config"))
        partitions = f.integer("partitions", DEFAULT_PARTITIONS, 1, MAX_PARTITIONS)
        result = topics.create(name, partitions, f.obj("config"))
        created = bool(result.pop("created", True))
        return (201 if created else 200), {**result, "vhost": call.params[0]}

    async def alter_topic(self, call: Call) -> Result:
        """Grow the partition count and/or change settings (given keys only)."""
        name = call.params[1]
        topics = self._topics(call)
        self._authorize(call, "topic.alter", topic=name)
        f = call.json(("partitions", "config"))
        if "partitions" not in f.doc and "config" not in f.doc:
            raise InvalidArgument("give 'partitions', 'config' or both")
        partitions = (
            f.integer("partitions", 0, 1, MAX_PARTITIONS) if "partitions" in f.doc else None
        )
        config = f.obj("config") if "config" in f.doc else None
        return 200, {**topics.alter(name, partitions, config), "vhost": call.params[0]}

    async def delete_topic(self, call: Call) -> Result:
        topics = self._topics(call)
        self._authorize(call, "topic.delete", topic=call.params[1])
        topics.delete(call.params[1])
        return 200, {}

    async def topic_records(self, call: Call) -> Result:
        """Records of one partition from ``offset`` (default: the earliest still stored;
        an offset before it starts there) or from the first record at or after
        ``timestamp``, as a consumer fetching them with ``isolation_level`` would see
        them: never the control records (transaction markers), and with read_committed
        nothing of an open or aborted transaction."""
        name = call.params[1]
        topics = self._topics(call)
        self._authorize(call, "topic.fetch", topic=name)
        q = call.query
        if "offset" in q and "timestamp" in q:
            raise InvalidArgument(
                "give 'offset' or 'timestamp', not both", details={"argument": "timestamp"}
            )
        part = topics.get(name).partition(query_int(q, "partition", 0, 0, MAX_PARTITIONS - 1))
        limit = query_int(q, "limit", DEFAULT_BROWSE_RECORDS, 1, MAX_BROWSE_RECORDS)
        isolation = q.get("isolation_level", READ_UNCOMMITTED)
        if isolation not in ISOLATION_LEVELS:
            raise InvalidArgument(
                f"query parameter 'isolation_level' must be {READ_UNCOMMITTED} or {READ_COMMITTED}",
                details={"argument": "isolation_level"},
            )
        committed = isolation == READ_COMMITTED
        if "timestamp" in q:
            offset = part.offset_for_timestamp(query_int(q, "timestamp", 0, 0, MAX_RESET_VALUE))[0]
        else:
            offset = query_int(q, "offset", part.earliest, 0, MAX_RESET_VALUE)
        offset = max(offset, part.earliest)
        out: list[dict[str, Any]] = []
        size = 0
        # The log layer leaves the batches of aborted transactions out of a read-committed
        # fetch and stops it at the last stable offset; the markers are for the reader
        # to skip, as the SDKs do.
        end = part.last_stable_offset if committed else part.high_watermark
        while len(out) < limit and size < MAX_BROWSE_BYTES and offset < end:
            batches = part.fetch(offset, BROWSE_READ_BYTES, committed=committed)
            if not batches:
                break  # a compacted gap at the end of the log
            for batch in batches:
                header = read_header(batch)
                if header.control:
                    offset = header.next_offset
                    continue
                for off, ts, key, value, headers in decode_records(batch, offset):
                    if len(out) >= limit or (out and size >= MAX_BROWSE_BYTES):
                        break
                    size += len(key or b"") + len(value or b"")
                    out.append(
                        {
                            "partition": part.number,
                            "offset": off,
                            "timestamp": ts,
                            "key": _browse_bytes(key),
                            "value": _browse_bytes(value),
                            "headers": headers,
                        }
                    )
                    offset = off + 1
                else:
                    offset = header.next_offset
                    continue
                break
        return 200, out

    # -- consumer groups -----------------------------------------------------------------

    @staticmethod
    def _groups_of(vhost: VirtualHost) -> GroupCoordinator:
        groups = vhost.groups
        if groups is None:
            raise ResourceError(
                "consumer groups are not available while the broker starts or stops"
            )
        return groups

    def _groups(self, call: Call) -> GroupCoordinator:
        return self._groups_of(self._vhost(call))

    async def list_groups(self, call: Call) -> Result:
        # The coordinator's summaries are small dicts already: sorted by their fields.
        items = [
            {**g, "vhost": v.name} for v in self._vhosts(call) for g in self._groups_of(v).list()
        ]
        return 200, list_answer(call.query, items, dict, lambda g: str(g["group"]), {})

    async def get_group(self, call: Call) -> Result:
        """The coordinator's description, each partition row with its member."""
        doc = self._groups(call).describe(call.params[1])
        owner = {
            (topic, p): m["member_id"]
            for m in doc["members"]
            for topic, partitions in m["assignment"]
            for p in partitions
        }
        for row in doc["offsets"]:
            row["member"] = owner.get((row["topic"], row["partition"]))
        return 200, {**doc, "vhost": call.params[0]}

    async def delete_group(self, call: Call) -> Result:
        groups = self._groups(call)
        self._authorize(call, "group.delete", group=call.params[1])
        await groups.delete(call.params[1])  # answered once the tombstones are fsynced
        return 200, {}

    async def reset_offsets(self, call: Call) -> Result:
        groups = self._groups(call)
        group = call.params[1]
        f = call.json(("topic", "to", "value", "partitions", "dry_run"))
        topic = f.text("topic")
        dry_run = f.flag("dry_run")
        self._authorize(call, "group.reset_offsets", group=group, topic=topic)
        to = f.text("to")
        if to not in RESET_TARGETS:
            raise InvalidArgument(
                f"field 'to' must be one of: {', '.join(RESET_TARGETS)}",
                details={"argument": "to"},
            )
        value = f.integer("value", 0, 0, MAX_RESET_VALUE) if "value" in f.doc else None
        if value is None and to in ("offset", "timestamp"):
            raise InvalidArgument(
                f"field 'value' is required with to={to!r} "
                + ("(the offset)" if to == "offset" else "(epoch milliseconds)"),
                details={"argument": "value"},
            )
        partitions = _partition_list(f.doc.get("partitions")) if "partitions" in f.doc else None
        result, synced = groups.reset_offsets(group, topic, to, value, partitions, dry_run=dry_run)
        await synced
        offsets = [{"topic": t, "partition": p, "offset": o} for t, p, o in result["offsets"]]
        return 200, {"group": group, "topic": topic, "offsets": offsets, "dry_run": dry_run}

    # -- transactions --------------------------------------------------------------------

    @staticmethod
    def _txns_of(vhost: VirtualHost) -> TransactionCoordinator:
        txns = vhost.transactions
        if txns is None:
            raise ResourceError("transactions are not available while the broker starts or stops")
        return txns

    def _txns(self, call: Call) -> TransactionCoordinator:
        return self._txns_of(self._vhost(call))

    async def list_transactions(self, call: Call) -> Result:
        return 200, [
            {**t, "vhost": v.name} for v in self._vhosts(call) for t in self._txns_of(v).list()
        ]

    async def get_transaction(self, call: Call) -> Result:
        return 200, {**self._txns(call).describe(call.params[1]), "vhost": call.params[0]}

    async def abort_transaction(self, call: Call) -> Result:
        """Write permission on the transactional id (Kafka's Write on a TransactionalId),
        or the administrator tag."""
        txns = self._txns(call)
        tid = call.params[1]
        self._authorize(call, "transaction.abort", transaction=tid)
        await txns.abort(tid)  # answered once the markers and the log record are fsynced
        return 200, {**txns.describe(tid), "vhost": call.params[0]}


_TOPIC_SORT_KEYS: Final[dict[str, Callable[[tuple[VirtualHost, Topic]], Any]]] = {
    "name": lambda vt: vt[1].name,
    "vhost": lambda vt: vt[0].name,
    "partitions": lambda vt: len(vt[1].partitions),
}


def _browse_bytes(data: bytes | None) -> dict[str, str | None] | None:
    """A record key or value for a browser: its text when it is UTF-8, and always its
    base64; None for a missing key or a tombstone's value."""
    if data is None:
        return None
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"text": text, "base64": base64.b64encode(data).decode("ascii")}


def _partition_list(raw: Any) -> list[int]:
    if (
        not isinstance(raw, list)
        or len(raw) > MAX_RESET_PARTITIONS
        or not all(type(p) is int and 0 <= p < MAX_PARTITIONS for p in raw)
    ):
        raise InvalidArgument(
            f"field 'partitions' must be a list of at most {MAX_RESET_PARTITIONS} partition "
            f"numbers 0..{MAX_PARTITIONS - 1}",
            details={"argument": "partitions"},
        )
    return raw
