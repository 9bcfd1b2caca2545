"""Native-protocol frames of log topics, topic bindings and consumer groups (docs/logs.md).

``LogFrames`` is a mixin of the broker's ``Connection`` (connection.py): its handlers
join the connection's dispatch table (``_log_frame_handlers``) as bound methods, so
these frames are dispatched like every other one.  Topics come from the broker's
``TopicRegistry`` (topics.py), produce and fetch go through the connection's
``LogRequests`` (log_requests.py), groups through the ``GroupCoordinator`` (groups.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from wharf.protocol import frames as F
from wharf.protocol.errors import CommandInvalid, InternalError, ProtocolSyntaxError, WharfError

from ...core.transactions import TransactionAcks
from .log_requests import LogRequests

# Delivery tags in one TXN_ACK (as in one ACK_MANY: bounded work per frame).
MAX_TXN_ACK_TAGS: Final = 65_536

if TYPE_CHECKING:
    from ...config import Settings
    from ...core.deliveries import Deliveries
    from ...core.quotas import UserUsage
    from ...core.session import CoreSession
    from ...core.topology import Topology
    from ...core.vhosts import VirtualHost
    from ...logs.groups import GroupCoordinator
    from ...logs.topics import TopicRegistry
    from ...logs.transactions import TransactionCoordinator
    from .broker_api import BrokerApi


class LogFrames:
    """Mixin of ``Connection``: TOPIC_*, PRODUCE, FETCH, FETCH_MANY, LIST_OFFSETS,
    INIT_PRODUCER, TOPIC_BIND/UNBIND, GROUP_* and OFFSET_* frames."""

    # Provided by Connection.
    broker: BrokerApi
    topology: Topology
    virtual_host: VirtualHost
    core: CoreSession
    settings: Settings
    id: int
    name: str
    peer_host: str
    client_properties: dict[str, Any]
    usage: UserUsage | None
    deliveries: Deliveries
    # Log-topic produce acks and fetch long-polls (made at the first such request).
    _log_requests: LogRequests | None = None

    if TYPE_CHECKING:

        @property
        def closed(self) -> bool: ...

        def _ok(self, rid: int, result: dict[str, Any] | None = None) -> None: ...

        def send_error(self, request_id: int, exc: WharfError, *, fatal: bool = False) -> None: ...

        def _produced(self, usage: UserUsage, nbytes: int) -> None: ...

        def reply_fetched(
            self, rid: int, result: dict[str, Any], nbytes: Callable[[], int]
        ) -> None: ...

    def _log_frame_handlers(self) -> dict[int, Callable[[Any], None]]:
        """This connection's handlers of the frames above, by frame type."""
        return {
            F.TOPIC_CREATE: self._on_topic_create,
            F.TOPIC_DELETE: self._on_topic_delete,
            F.TOPIC_DESCRIBE: self._on_topic_describe,
            F.TOPIC_ALTER: self._on_topic_alter,
            F.PRODUCE: self._on_produce,
            F.FETCH: self._on_fetch,
            F.LIST_OFFSETS: self._on_list_offsets,
            F.FETCH_MANY: self._on_fetch_many,
            F.TOPIC_LIST: self._on_topic_list,
            F.INIT_PRODUCER: self._on_init_producer,
            F.TOPIC_BIND: self._on_topic_bind,
            F.TOPIC_UNBIND: self._on_topic_unbind,
            F.INIT_TRANSACTIONS: self._on_init_transactions,
            F.TXN_SEND_OFFSETS: self._on_txn_send_offsets,
            F.TXN_ACK: self._on_txn_ack,
            F.END_TXN: self._on_end_txn,
            F.GROUP_JOIN: self._on_group_join,
            F.GROUP_HEARTBEAT: self._on_group_heartbeat,
            F.GROUP_LEAVE: self._on_group_leave,
            F.OFFSET_COMMIT: self._on_offset_commit,
            F.OFFSET_FETCH: self._on_offset_fetch,
            F.GROUP_LIST: self._on_group_list,
            F.GROUP_DESCRIBE: self._on_group_describe,
            F.GROUP_DELETE: self._on_group_delete,
            F.GROUP_RESET_OFFSETS: self._on_group_reset_offsets,
        }

    def _logs_connection_lost(self) -> None:
        """The connection is gone: drop its waiting fetches and its group memberships."""
        if self._log_requests is not None:
            self._log_requests.close()
        groups = self.virtual_host.groups
        if groups is not None:
            groups.connection_closed(self.id)

    # -- log topics ----------------------------------------------------------------

    def _topics(self) -> TopicRegistry:
        logs = self.virtual_host.logs
        if logs is None:
            raise CommandInvalid("log topics are not available before the broker has started")
        return logs

    def _logs(self) -> LogRequests:
        requests = self._log_requests
        if requests is None:
            requests = self._log_requests = LogRequests(
                self._topics,
                self._ok,
                self.send_error,
                self.name,
                self.settings.max_frame_bytes,
                self.reply_fetched,
                lambda: self.virtual_host.transactions,
            )
        return requests

    def _on_topic_create(self, f: F.TopicCreate) -> None:
        self.core.authorize("topic.create", topic=f.name)
        self._ok(f.request_id, self._topics().create(f.name, f.partitions, f.config))

    def _on_topic_delete(self, f: F.TopicDelete) -> None:
        self.core.authorize("topic.delete", topic=f.name)
        self._topics().delete(f.name)
        self._ok(f.request_id)

    def _on_topic_describe(self, f: F.TopicDescribe) -> None:
        self._ok(f.request_id, self._topics().get(f.name).describe())

    def _on_topic_alter(self, f: F.TopicAlter) -> None:
        self.core.authorize("topic.alter", topic=f.name)
        self._ok(f.request_id, self._topics().alter(f.name, f.partitions, f.config))

    def _on_topic_list(self, f: F.TopicList) -> None:
        self._ok(f.request_id, {"topics": self._topics().describe_all()})

    def _on_produce(self, f: F.Produce) -> None:
        self.core.authorize("topic.produce", topic=f.topic)
        usage = self.usage
        if usage is not None and usage.produce is not None:
            self._produced(usage, len(f.payload))
        self._logs().produce(f)

    def _on_init_producer(self, f: F.InitProducer) -> None:
        self._logs().init_producer(f)

    def _on_fetch(self, f: F.Fetch) -> None:
        self.core.authorize("topic.fetch", topic=f.topic)
        self._logs().fetch(f)

    def _on_fetch_many(self, f: F.FetchMany) -> None:
        for entry in f.partitions:
            if isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], str):
                self.core.authorize("topic.fetch", topic=entry[0])
        self._logs().fetch_many(f)

    def _on_list_offsets(self, f: F.ListOffsets) -> None:
        self.core.authorize("topic.list_offsets", topic=f.topic)
        self._ok(f.request_id, self._topics().list_offsets(f.topic, f.partition, f.timestamp))

    # -- topic bindings (exchanges routing into log topics) ------------------------

    def _on_topic_bind(self, f: F.TopicBind) -> None:
        self._topics()
        self.core.bind_topic(f.topic, f.exchange, f.routing_key, f.arguments)
        self._ok(f.request_id)

    def _on_topic_unbind(self, f: F.TopicUnbind) -> None:
        self._topics()
        self.core.unbind_topic(f.topic, f.exchange, f.routing_key, f.arguments)
        self._ok(f.request_id)

    # -- transactions (transactions.py) --------------------------------------------

    def _txns(self) -> TransactionCoordinator:
        txns = self.virtual_host.transactions
        if txns is None:
            raise CommandInvalid("transactions are not available before the broker has started")
        return txns

    def _on_init_transactions(self, f: F.InitTransactions) -> None:
        self._ok_when_done(f.request_id, self._txns().init(f.transactional_id, f.timeout_ms))

    def _on_txn_send_offsets(self, f: F.TxnSendOffsets) -> None:
        self.core.authorize("group.commit", group=f.group)
        fut = self._txns().send_offsets(
            f.transactional_id,
            f.producer_id,
            f.producer_epoch,
            f.group,
            f.member_id,
            f.generation,
            f.offsets,
        )
        self._ok_when_done(f.request_id, fut, {})

    def _on_txn_ack(self, f: F.TxnAck) -> None:
        tags = f.delivery_tags
        if len(tags) > MAX_TXN_ACK_TAGS or not all(type(t) is int for t in tags):
            raise ProtocolSyntaxError(
                f"TxnAck.delivery_tags must be at most {MAX_TXN_ACK_TAGS} integers"
            )
        txns = self._txns()
        txns.check_work(f.transactional_id, f.producer_id, f.producer_epoch)
        held = TransactionAcks.hold(self.deliveries, self.topology.store, tags)
        fut = txns.add_acks(f.transactional_id, f.producer_id, f.producer_epoch, held)
        self._ok_when_done(f.request_id, fut, {})

    def _on_end_txn(self, f: F.EndTxn) -> None:
        fut = self._txns().end(f.transactional_id, f.producer_id, f.producer_epoch, f.commit)
        self._ok_when_done(f.request_id, fut, {"committed": f.commit})

    # -- consumer groups (groups.py) -----------------------------------------------

    def _groups(self) -> GroupCoordinator:
        groups = self.virtual_host.groups
        if groups is None:
            raise CommandInvalid("consumer groups are not available before the broker has started")
        return groups

    def _ok_when_done(
        self, rid: int, fut: asyncio.Future[Any], result: dict[str, Any] | None = None
    ) -> None:
        """Answer ``rid`` once ``fut`` is done: with its result (or ``result``) or error."""

        def done(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled():
                return
            exc = fut.exception()
            if self.closed:
                return
            if exc is None:
                self._ok(rid, result if result is not None else fut.result())
            elif isinstance(exc, WharfError):
                self.send_error(rid, exc)
            else:
                self.send_error(rid, InternalError("internal error; the broker logged it"))

        fut.add_done_callback(done)

    def _on_group_join(self, f: F.GroupJoin) -> None:
        self.core.authorize("group.join", group=f.group)
        for topic in f.topics:
            if isinstance(topic, str):
                self.core.authorize("topic.subscribe", topic=topic)
        client_id = self.client_properties.get("client_id")
        fut = self._groups().join(
            f.group,
            f.topics,
            f.member_id,
            f.instance_id,
            f.strategy,
            f.session_timeout_ms,
            f.rebalance_timeout_ms,
            f.owned,
            client_id=client_id if isinstance(client_id, str) else "",
            client_host=self.peer_host,
            conn_id=self.id,
        )
        self._ok_when_done(f.request_id, fut)

    def _on_group_heartbeat(self, f: F.GroupHeartbeat) -> None:
        self.core.authorize("group.heartbeat", group=f.group)
        self._groups().heartbeat(f.group, f.member_id, f.generation)
        self._ok(f.request_id)

    def _on_group_leave(self, f: F.GroupLeave) -> None:
        self.core.authorize("group.leave", group=f.group)
        self._groups().leave(f.group, f.member_id)
        self._ok(f.request_id)

    def _on_offset_commit(self, f: F.OffsetCommit) -> None:
        self.core.authorize("group.commit", group=f.group)
        fut = self._groups().commit(f.group, f.member_id, f.generation, f.offsets)
        self._ok_when_done(f.request_id, fut)

    def _on_offset_fetch(self, f: F.OffsetFetch) -> None:
        self.core.authorize("group.offsets", group=f.group)
        self._ok(f.request_id, self._groups().fetch_offsets(f.group, f.topics))

    def _on_group_list(self, f: F.GroupList) -> None:
        self._ok(f.request_id, {"groups": self._groups().list()})

    def _on_group_describe(self, f: F.GroupDescribe) -> None:
        self.core.authorize("group.describe", group=f.group)
        self._ok(f.request_id, self._groups().describe(f.group))

    def _on_group_delete(self, f: F.GroupDelete) -> None:
        self.core.authorize("group.delete", group=f.group)
        self._ok_when_done(f.request_id, self._groups().delete(f.group))

    def _on_group_reset_offsets(self, f: F.GroupResetOffsets) -> None:
        self.core.authorize("group.reset_offsets", group=f.group, topic=f.topic)
        result, fut = self._groups().reset_offsets(f.group, f.topic, f.to, f.value, f.partitions)
        self._ok_when_done(f.request_id, fut, result)
