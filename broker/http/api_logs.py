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

from typing import TYPE_CHECKING, Any, Final

from wharf.protocol.errors import InvalidArgument, ResourceError

from ..logs.group_model import RESET_TARGETS
from ..logs.topics import MAX_PARTITIONS
from .api_core import Call, Result, Route, visible_vhosts

if TYPE_CHECKING:
    from ..core.vhosts import VirtualHost
    from ..logs import TopicRegistry
    from ..logs.groups import GroupCoordinator
    from ..logs.transactions import TransactionCoordinator
    from .api_broker import ApiBroker

DEFAULT_PARTITIONS: Final = 1  # as Kafka's num.partitions
# Partitions named in one reset-offsets request.
MAX_RESET_PARTITIONS: Final = MAX_PARTITIONS
# Offsets and epoch-ms timestamps are signed 64-bit, as in Kafka.
MAX_RESET_VALUE: Final = 2**63 - 1


class LogsApi:
    """Handlers for /api/topics, /api/groups and /api/transactions."""

    def __init__(self, broker: ApiBroker) -> None:
        self.broker = broker

    def routes(self) -> list[Route]:
        r = Route
        return [
            r(
                "GET",
                ("topics",),
                self.list_topics,
                doc="200 [Topic] - All log topics, all vhosts.",
            ),
            r(
                "GET",
                ("topics", "{vhost}"),
                self.list_topics,
                doc="200 [Topic] - A vhost's log topics.",
            ),
            r(
                "GET",
                ("topics", "{vhost}", "{name}"),
                self.get_topic,
                doc="200 Topic - One topic: settings, offsets and size per partition.",
            ),
            r(
                "PUT",
                ("topics", "{vhost}", "{name}"),
                self.put_topic,
                doc="201 Topic TopicPut Create a topic (200: exists with this partition count).",
            ),
            r(
                "PATCH",
                ("topics", "{vhost}", "{name}"),
                self.alter_topic,
                doc="200 Topic TopicAlter Grow the partition count and/or change settings.",
            ),
            r(
                "DELETE",
                ("topics", "{vhost}", "{name}"),
                self.delete_topic,
                doc="200 Empty - Delete a topic and its records.",
            ),
            r(
                "GET",
                ("groups",),
                self.list_groups,
                doc=(
                    "200 [GroupSummary] - Consumer groups with members or committed offsets, "
                    "all vhosts."
                ),
            ),
            r(
                "GET",
                ("groups", "{vhost}"),
                self.list_groups,
                doc="200 [GroupSummary] - A vhost's consumer groups.",
            ),
            r(
                "GET",
                ("groups", "{vhost}", "{name}"),
                self.get_group,
                doc=(
                    "200 Group - Members, assignment, committed and latest offset, lag per "
                    "partition."
                ),
            ),
            r(
                "DELETE",
                ("groups", "{vhost}", "{name}"),
                self.delete_group,
                doc="200 Empty - Delete a group without members and its committed offsets.",
            ),
            r(
                "POST",
                ("groups", "{vhost}", "{name}", "reset-offsets"),
                self.reset_offsets,
                doc=(
                    "200 OffsetsReset ResetOffsets Move committed offsets of a group without "
                    "members."
                ),
            ),
            r(
                "GET",
                ("transactions",),
                self.list_transactions,
                doc="200 [Transaction] - Transactional ids the coordinators know, all vhosts.",
            ),
            r(
                "GET",
                ("transactions", "{vhost}"),
                self.list_transactions,
                doc="200 [Transaction] - A vhost's transactional ids.",
            ),
            r(
                "GET",
                ("transactions", "{vhost}", "{name}"),
                self.get_transaction,
                doc=(
                    "200 Transaction - One transactional id: producer id, epoch, state, "
                    "partitions and groups of its open transaction, age."
                ),
            ),
            r(
                "POST",
                ("transactions", "{vhost}", "{name}", "abort"),
                self.abort_transaction,
                doc=(
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
        return 200, [
            {**t, "vhost": v.name}
            for v in self._vhosts(call)
            for t in self._topics_of(v).describe_all()
        ]

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
        return 200, [
            {**g, "vhost": v.name} for v in self._vhosts(call) for g in self._groups_of(v).list()
        ]

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
        f = call.json(("topic", "to", "value", "partitions"))
        topic = f.text("topic")
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
        result, synced = groups.reset_offsets(group, topic, to, value, partitions)
        await synced
        offsets = [{"topic": t, "partition": p, "offset": o} for t, p, o in result["offsets"]]
        return 200, {"group": group, "topic": topic, "offsets": offsets}

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
