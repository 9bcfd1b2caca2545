"""Prometheus metrics read from the broker's plain counters at scrape time.

The hot path never calls prometheus_client: queues and connections keep plain ints and
``BrokerCollector.collect()`` turns them into metric families when /metrics is scraped.
Scrapes run on the event loop thread (see http.py), so the reads need no locking.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sized
from typing import Any, Final, NamedTuple, Protocol

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class QueueStats(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def ready_count(self) -> int: ...
    @property
    def unacked_count(self) -> int: ...
    @property
    def consumer_count(self) -> int: ...


class BrokerStats(Protocol):
    """Monotonic message counters kept as plain ints by the broker."""

    @property
    def published(self) -> int: ...
    @property
    def delivered(self) -> int: ...
    @property
    def acked(self) -> int: ...
    @property
    def redelivered(self) -> int: ...
    @property
    def unroutable(self) -> int: ...
    @property
    def rejected(self) -> int: ...


class MetricsBroker(Protocol):
    """What the collector reads; read-only properties so plain attributes satisfy it."""

    @property
    def connections(self) -> Sized: ...
    @property
    def exchanges(self) -> Sized: ...
    @property
    def queues(self) -> Mapping[str, QueueStats]: ...
    @property
    def stats(self) -> BrokerStats: ...


class _Space(NamedTuple):
    """One vhost's state as the collector reads it (a stand-in broker without vhosts
    is one space named "/")."""

    name: str
    queues: list[Any]
    logs: Any
    groups: Any
    transactions: Any
    store: Any
    cleaner: Any
    connections: int
    dead_letter_cycles: int


# (metric name without _total, BrokerStats attribute, help)
_COUNTERS: Final = (
    ("wharf_messages_published", "published", "Messages accepted from publishers."),
    ("wharf_messages_delivered", "delivered", "Messages delivered to consumers (and GET)."),
    ("wharf_messages_acked", "acked", "Deliveries acknowledged by consumers."),
    ("wharf_messages_redelivered", "redelivered", "Messages delivered again after requeue."),
    ("wharf_messages_unroutable", "unroutable", "Published messages that matched no queue."),
    ("wharf_messages_nacked", "rejected", "Deliveries nacked or rejected by consumers."),
)
_QUEUE_GAUGES: Final = (
    ("wharf_queue_messages_ready", "Messages ready for delivery, per queue."),
    ("wharf_queue_messages_unacked", "Messages delivered and not yet acked, per queue."),
    ("wharf_queue_consumers", "Consumers attached, per queue."),
)

# Per log partition: (describe()["offsets"] key, metric name, help).  The latest offset
# grows by one per record appended: rate() of it is the produce rate in records/s.
_PARTITION_GAUGES: Final = (
    ("earliest", "wharf_topic_partition_earliest_offset", "First offset still stored."),
    (
        "latest",
        "wharf_topic_partition_latest_offset",
        "End of what readers can fetch (records of acks=fsynced producers once fsynced).",
    ),
    ("log_end", "wharf_topic_partition_log_end_offset", "Offset the next record will get."),
    ("bytes", "wharf_topic_partition_bytes", "Bytes in the partition's segment files."),
    ("segments", "wharf_topic_partition_segments", "Segment files of the partition."),
)


class BrokerCollector:
    """A prometheus_client custom collector over a duck-typed broker."""

    def __init__(self, broker: MetricsBroker) -> None:
        self._broker = broker

    def describe(self) -> Iterator[Metric]:
        # Lets the registry check names without calling collect() on a half-built broker.
        totals, per_queue, counters = self._families()
        yield from totals.values()
        yield from per_queue
        yield from counters

    def _spaces(self) -> list[_Space]:
        """Every vhost (core/vhosts.py), or the broker itself as "/"."""
        broker = self._broker
        vhosts = getattr(broker, "vhosts", None)
        if vhosts is None:
            topology = getattr(broker, "topology", None)
            return [
                _Space(
                    "/",
                    list(broker.queues.values()),
                    getattr(broker, "logs", None),
                    getattr(broker, "groups", None),
                    getattr(broker, "transactions", None),
                    getattr(broker, "store", None),
                    getattr(broker, "log_cleaner", None),
                    len(broker.connections),
                    topology.dead_letter_cycles if topology is not None else 0,
                )
            ]
        return [
            _Space(
                v.name,
                list(v.topology.queues.values()),
                v.logs,
                v.groups,
                v.transactions,
                v.store,
                v.log_cleaner,
                len(v.clients),
                v.topology.dead_letter_cycles,
            )
            for v in vhosts
        ]

    def collect(self) -> Iterator[Metric]:
        broker = self._broker
        totals, per_queue, counters = self._families()
        ready, unacked, consumers = per_queue
        spaces = self._spaces()
        consumer_sum = 0
        for space in spaces:
            for q in space.queues:
                labels = [q.name, space.name]
                ready.add_metric(labels, q.ready_count)
                unacked.add_metric(labels, q.unacked_count)
                consumers.add_metric(labels, q.consumer_count)
                consumer_sum += q.consumer_count
        totals["connections"].add_metric([], len(broker.connections))
        exchanges = getattr(broker, "vhosts", None)
        if exchanges is None:
            totals["exchanges"].add_metric([], len(broker.exchanges))
        else:
            totals["exchanges"].add_metric([], sum(len(v.topology.exchanges) for v in exchanges))
        totals["queues"].add_metric([], sum(len(sp.queues) for sp in spaces))
        totals["consumers"].add_metric([], consumer_sum)
        stats = broker.stats
        for family, (_, attr, _) in zip(counters, _COUNTERS, strict=True):
            family.add_metric([], getattr(stats, attr))
        alarm = GaugeMetricFamily(
            "wharf_alarm",
            "1 while a resource alarm is raised (memory and disk block publishers; fds "
            "means the broker is out of file descriptors).",
            labels=["resource"],
        )
        raised: set[str] = getattr(broker, "alarms", set())
        for resource in ("memory", "disk"):
            alarm.add_metric([resource], 1 if resource in raised else 0)
        alarm.add_metric(["fds"], 1 if getattr(broker, "fd_alarm", False) else 0)
        yield alarm
        monitor = getattr(broker, "monitor", None)
        if monitor is not None:
            yield GaugeMetricFamily(
                "wharf_open_fds", "File descriptors open at the last check.", monitor.fds_open
            )
            yield GaugeMetricFamily(
                "wharf_fd_limit", "Soft open-file limit (0 = none).", monitor.fds_limit
            )
        yield from self._memory_metrics()
        yield from self._tls_metrics()
        yield from self._http_metrics()
        yield from self._access_metrics()
        yield from self._quota_metrics()
        yield from self._auth_metrics()
        yield from self._policy_metrics(spaces)
        yield from self._topic_metrics(spaces)
        yield from self._group_metrics(spaces)
        yield from self._transaction_metrics(spaces)
        if getattr(broker, "vhosts", None) is not None:
            per_vhost = GaugeMetricFamily(
                "wharf_vhost_connections",
                "Authenticated client connections, per vhost.",
                labels=["vhost"],
            )
            for space in spaces:
                per_vhost.add_metric([space.name], space.connections)
            yield per_vhost
        yield _protocol_connections(broker.connections)
        yield from _protocol_counters(broker.stats)
        # The message stores and log cleaners of every vhost, summed.
        stores = [sp.store for sp in spaces if sp.store is not None]
        if stores:
            yield GaugeMetricFamily(
                "wharf_store_bytes", "Bytes in message store segments.",
                value=sum(st.disk_bytes() for st in stores),
            )  # fmt: skip
            yield CounterMetricFamily(
                "wharf_store_fsyncs", "fsync calls of the message store.",
                value=sum(st.fsyncs for st in stores),
            )  # fmt: skip
            yield GaugeMetricFamily(
                "wharf_store_failed",
                "1 once a message store write or fsync failed: persistent publishing has "
                "stopped until a restart (the reason is in /readyz).",
                value=1 if any(st.failed is not None for st in stores) else 0,
            )
            yield GaugeMetricFamily(
                "wharf_store_open_fds",
                "File descriptors the message store holds (write fds and paging read fds).",
                value=sum(st.open_fds() for st in stores),
            )
            yield GaugeMetricFamily(
                "wharf_store_segments", "Segment files of the message store.",
                value=sum(len(st.segments) for st in stores),
            )  # fmt: skip
        cleaners = [sp.cleaner for sp in spaces if sp.cleaner is not None]
        if cleaners:  # compaction of log topics
            yield CounterMetricFamily(
                "wharf_log_cleaner_runs",
                "Compaction passes completed over a log topic partition.",
                value=sum(c.runs for c in cleaners),
            )
            yield CounterMetricFamily(
                "wharf_log_cleaner_bytes_removed",
                "Bytes of log segments removed by compaction.",
                value=sum(c.bytes_removed for c in cleaners),
            )
        yield from totals.values()
        yield from per_queue
        yield from counters

    def _tls_metrics(self) -> Iterator[Metric]:
        """The certificate's expiry, handshakes running, refused and failed on the TLS
        listeners (docs/security.md)."""
        tls = getattr(self._broker, "tls", None)
        if tls is None:
            return
        yield GaugeMetricFamily(
            "wharf_tls_cert_expiry_seconds",
            "Seconds until the TLS certificate in use expires; negative once it has.",
            value=tls.expiry_seconds(),
        )
        listener = getattr(self._broker, "tls_listener", None)
        if listener is not None:
            yield CounterMetricFamily(
                "wharf_tls_handshake_failures",
                "TLS handshakes on the native TLS port that failed or timed out.",
                value=listener.failures,
            )
        http = getattr(self._broker, "http_server", None)
        listeners = {
            "native": listener,
            "https": None if http is None else http.tls_listener,
            "amqps": getattr(self._broker, "amqps_listener", None),
        }
        running = GaugeMetricFamily(
            "wharf_tls_handshakes_in_progress",
            "TLS handshakes running, by listener (native: tls_port, https: https_port, "
            "amqps: amqps_port).",
            labels=["listener"],
        )
        refused = CounterMetricFamily(
            "wharf_tls_handshakes_refused",
            "Sockets of a TLS listener closed at once because its handshake cap was full "
            "(reason total: max_unauthenticated_connections or http_max_connections; "
            "per_address: max_unauthenticated_per_address or "
            "http_max_connections_per_address).",
            labels=["listener", "reason"],
        )
        for name, found in listeners.items():
            if found is None:
                continue
            running.add_metric([name], found.handshaking)
            refused.add_metric([name, "total"], found.refused_total)
            refused.add_metric([name, "per_address"], found.refused_per_address)
        yield running
        yield refused

    def _http_metrics(self) -> Iterator[Metric]:
        """The admin plane's connection caps (http/limits.py), HTTP and HTTPS together."""
        http = getattr(self._broker, "http_server", None)
        if http is None:
            return
        caps = http.caps
        yield GaugeMetricFamily(
            "wharf_http_connections",
            "HTTP and HTTPS connections open (admitted by the caps; this scrape's own "
            "connection is one of them).",
            value=caps.open,
        )
        refused = CounterMetricFamily(
            "wharf_http_connections_refused",
            "HTTP and HTTPS sockets answered 503 and closed at once, by the cap that was "
            "full (total: http_max_connections; per_address: "
            "http_max_connections_per_address).",
            labels=["reason"],
        )
        refused.add_metric(["total"], caps.refused_total)
        refused.add_metric(["per_address"], caps.refused_per_address)
        yield refused

    def _access_metrics(self) -> Iterator[Metric]:
        """Refused operations (core/access.py), by vhost and resource kind."""
        access = getattr(self._broker, "access", None)
        if access is None:
            return
        denied = CounterMetricFamily(
            "wharf_access_denied",
            "Operations refused by permissions, by vhost and kind (queue, exchange, topic, "
            "group, routing_key; vhost: a refused login; tag: a missing user tag).",
            labels=["vhost", "kind"],
        )
        for (vhost, kind), n in sorted(access.denied.items()):
            denied.add_metric([vhost, kind], n)
        yield denied

    def _quota_metrics(self) -> Iterator[Metric]:
        """Throttle time of users over a byte-rate quota (core/quotas.py keeps it)."""
        limits = getattr(self._broker, "user_limits", None)
        if limits is None:
            return
        throttled = CounterMetricFamily(
            "wharf_throttle_seconds",
            "Seconds connections were held back for users over a byte-rate quota, by user "
            "and direction (produce: publish and produce; consume: deliveries and fetch).",
            labels=["user", "direction"],
        )
        for (user, direction), seconds in sorted(limits.throttle_seconds.items()):
            throttled.add_metric([user, direction], seconds)
        yield throttled

    def _auth_metrics(self) -> Iterator[Metric]:
        """Refused logins by mechanism (security/auth.py keeps the counts)."""
        authenticator = getattr(self._broker, "authenticator", None)
        if authenticator is None:
            return
        failures = CounterMetricFamily(
            "wharf_auth_failures",
            "Refused logins, by mechanism (PLAIN: native protocol, BASIC: HTTP API, LOGIN: web UI)",
            labels=["mechanism"],
        )
        counts: dict[str, int] = {
            "SCRAM-SHA-256": 0,
            "PLAIN": 0,
            "EXTERNAL": 0,
            "BASIC": 0,
            "LOGIN": 0,
            **authenticator.failures_by_mechanism,
        }
        for mechanism, count in sorted(counts.items()):
            failures.add_metric([mechanism], count)
        yield failures

    def _memory_metrics(self) -> Iterator[Metric]:
        """What the memory alarm compares (docs/operations.md, "Memory alarm")."""
        broker = self._broker
        breakdown = getattr(broker, "memory_breakdown", None)
        if breakdown is not None:
            accounted = GaugeMetricFamily(
                "wharf_memory_accounted_bytes",
                "Memory the broker accounts for, by kind; the memory alarm compares the sum.",
                labels=["kind"],
            )
            for kind, value in breakdown().items():
                accounted.add_metric([kind], value)
            yield accounted
        monitor = getattr(broker, "monitor", None)
        if monitor is not None:
            yield GaugeMetricFamily(
                "wharf_memory_high_watermark_bytes",
                "Accounted memory at which the memory alarm is raised.",
                value=monitor.memory_limit_bytes,
            )
            yield GaugeMetricFamily(
                "wharf_memory_rss_bytes",
                "Resident set size at the last resource check (a backstop for the alarm).",
                value=monitor.rss_bytes,
            )
        for name, attr, doc in (
            (
                "wharf_connections_unauthenticated",
                "unauthenticated",
                "Connections not yet logged in.",
            ),
            ("wharf_receive_buffered_bytes", "buffered_bytes", "Bytes of partly received frames."),
        ):
            value = getattr(broker, attr, None)
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)
        pauses = getattr(broker, "budget_pauses", None)
        if pauses is not None:
            yield CounterMetricFamily(
                "wharf_receive_budget_pauses",
                "Times a connection's reading was paused for receive_buffer_budget_bytes.",
                value=pauses,
            )
        trimmer = getattr(broker, "trimmer", None)
        if trimmer is not None:
            yield CounterMetricFamily(
                "wharf_memory_trims", "malloc_trim calls giving memory back.", value=trimmer.trims
            )

    def _policy_metrics(self, spaces: list[_Space]) -> Iterator[Metric]:
        q_labels = ["queue", "vhost"]
        dead = CounterMetricFamily(
            "wharf_queue_messages_dead_lettered",
            "Messages dead-lettered from a queue, by reason.",
            labels=["queue", "reason", "vhost"],
        )
        expired = CounterMetricFamily(
            "wharf_queue_messages_expired", "Messages that expired (TTL).", labels=q_labels
        )
        dropped = CounterMetricFamily(
            "wharf_queue_messages_dropped",
            "Messages dropped without a dead-letter exchange (max-length, rejection).",
            labels=q_labels,
        )
        duplicates = CounterMetricFamily(
            "wharf_queue_duplicates_dropped",
            "Publishes not enqueued because the queue accepted their message_id within its "
            "x-dedup-window-ms (confirmed as duplicates).",
            labels=q_labels,
        )
        paged = GaugeMetricFamily(
            "wharf_queue_messages_paged", "Ready messages kept on disk.", labels=q_labels
        )
        delayed = GaugeMetricFamily(
            "wharf_queue_messages_delayed",
            "Messages waiting for a delayed retry.",
            labels=q_labels,
        )
        retried = CounterMetricFamily(
            "wharf_queue_messages_retried",
            "Messages held back for a delayed retry (nack delay or x-retry-delays).",
            labels=q_labels,
        )
        for space in spaces:
            vhost = space.name
            for q in space.queues:
                for reason, n in getattr(q, "stats_dead_lettered", {}).items():
                    dead.add_metric([q.name, reason, vhost], n)
                labels = [q.name, vhost]
                expired.add_metric(labels, getattr(q, "stats_expired", 0))
                dropped.add_metric(labels, getattr(q, "stats_dropped", 0))
                paged.add_metric(labels, getattr(q, "paged_count", 0))
                delayed.add_metric(labels, getattr(q, "delayed_count", 0))
                retried.add_metric(labels, getattr(q, "stats_retried", 0))
                duplicates.add_metric(labels, getattr(q, "stats_duplicates", 0))
        yield duplicates
        yield delayed
        yield retried
        yield dead
        yield expired
        yield dropped
        yield paged
        if getattr(self._broker, "topology", None) is not None:
            yield CounterMetricFamily(
                "wharf_dead_letter_cycles_dropped",
                "Dead-lettered messages dropped to break a cycle with no rejection.",
                value=sum(sp.dead_letter_cycles for sp in spaces),
            )

    def _topic_metrics(self, spaces: list[_Space]) -> Iterator[Metric]:
        """Log topics: one sample per partition from the registry's describe()."""
        found = [
            (sp.name, t) for sp in spaces if sp.logs is not None for t in sp.logs.topics.values()
        ]
        count = GaugeMetricFamily("wharf_topics", "Log topics.", value=len(found))
        partitions = GaugeMetricFamily(
            "wharf_topic_partitions", "Partitions of a log topic.", labels=["topic", "vhost"]
        )
        part_labels = ["topic", "partition", "vhost"]
        families = {
            key: GaugeMetricFamily(name, help_text, labels=part_labels)
            for key, name, help_text in _PARTITION_GAUGES
        }
        waiting = GaugeMetricFamily(
            "wharf_topic_partition_fetches_waiting",
            "Long-poll fetches parked at the end of the partition until a record comes.",
            labels=part_labels,
        )
        lso_lag = GaugeMetricFamily(
            "wharf_topic_partition_lso_lag",
            "High watermark minus last stable offset: records read_committed consumers "
            "cannot see yet because a transaction is open.",
            labels=part_labels,
        )
        for vhost, topic in found:
            info = topic.describe()
            partitions.add_metric([info["name"], vhost], info["partitions"])
            for p in info["offsets"]:
                labels = [info["name"], str(p["partition"]), vhost]
                for key, family in families.items():
                    family.add_metric(labels, p.get(key, 0))
                lso_lag.add_metric(labels, p["latest"] - p.get("last_stable", p["latest"]))
            for part in topic.partitions:
                waiting.add_metric([info["name"], str(part.number), vhost], part.waiting_fetches)
        yield count
        yield partitions
        yield from families.values()
        yield waiting
        yield lso_lag
        logs = next((sp.logs for sp in spaces if sp.logs is not None), None)
        if logs is not None:
            handles = logs.handles  # one budget shared by every vhost's topics
            yield GaugeMetricFamily(
                "wharf_log_segment_read_handles",
                "Read fds of closed log segments held open (at most log_max_open_segments).",
                value=len(handles),
            )
            yield CounterMetricFamily(
                "wharf_log_fd_exhausted",
                "Times the log layer found no free file descriptor (EMFILE/ENFILE).",
                value=handles.fd_errors_total,
            )

    def _group_metrics(self, spaces: list[_Space]) -> Iterator[Metric]:
        """Consumer groups: lag and committed offset per partition, members, rebalances."""
        with_groups = [sp for sp in spaces if sp.groups is not None]
        if not with_groups:
            return
        labels = ["group", "topic", "partition", "vhost"]
        lag = GaugeMetricFamily(
            "wharf_group_lag",
            "Records between a group's committed offset (or the earliest offset when it "
            "has none) and the partition's latest offset.",
            labels=labels,
        )
        committed = GaugeMetricFamily(
            "wharf_group_committed_offset",
            "A group's committed offset (the next offset it reads).",
            labels=labels,
        )
        members = GaugeMetricFamily(
            "wharf_group_members", "Members of a consumer group.", labels=["group", "vhost"]
        )
        rebalances = CounterMetricFamily(
            "wharf_group_rebalances",
            "Generations formed by a consumer group.",
            labels=["group", "vhost"],
        )
        for space in with_groups:
            groups = space.groups
            for group, topic, partition, offset, behind in groups.lag_rows():
                row = [group, topic, str(partition), space.name]
                lag.add_metric(row, behind)
                if offset >= 0:
                    committed.add_metric(row, offset)
            for group, count, formed in groups.group_rows():
                members.add_metric([group, space.name], count)
                rebalances.add_metric([group, space.name], formed)
        yield lag
        yield committed
        yield members
        yield rebalances

    @staticmethod
    def _transaction_metrics(spaces: list[_Space]) -> Iterator[Metric]:
        """The transaction coordinators: open transactions and how they ended."""
        found = [sp for sp in spaces if sp.transactions is not None]
        if not found:
            return
        labels = ["vhost"]
        open_now = GaugeMetricFamily(
            "wharf_transactions_open",
            "Transactions begun and not yet completed (committed or aborted).",
            labels=labels,
        )
        ended = [
            CounterMetricFamily(name, help_text, labels=labels)
            for name, help_text in (
                ("wharf_transactions_committed", "Transactions committed."),
                (
                    "wharf_transactions_aborted",
                    "Transactions aborted (by the producer, a timeout, fencing or an operator).",
                ),
                (
                    "wharf_transactions_timed_out",
                    "Transactions the coordinator aborted "
                    "because they were open past their transaction_timeout_ms.",
                ),
            )
        ]
        for sp in found:
            txns = sp.transactions
            open_now.add_metric([sp.name], txns.open_count)
            for family, n in zip(ended, (txns.commits, txns.aborts, txns.timeouts), strict=True):
                family.add_metric([sp.name], n)
        yield open_now
        yield from ended

    @staticmethod
    def _families() -> tuple[
        dict[str, GaugeMetricFamily], list[GaugeMetricFamily], list[CounterMetricFamily]
    ]:
        totals = {
            "connections": GaugeMetricFamily("wharf_connections", "Open client connections."),
            "exchanges": GaugeMetricFamily("wharf_exchanges", "Declared exchanges."),
            "queues": GaugeMetricFamily("wharf_queues", "Declared queues."),
            "consumers": GaugeMetricFamily("wharf_consumers", "Consumers across all queues."),
        }
        per_queue = [GaugeMetricFamily(n, h, labels=["queue", "vhost"]) for n, h in _QUEUE_GAUGES]
        counters = [CounterMetricFamily(n, h, labels=[]) for n, _, h in _COUNTERS]
        return totals, per_queue, counters


def build_registry(broker: MetricsBroker) -> CollectorRegistry:
    """A fresh registry: the broker's metrics plus process, platform and GC metrics."""
    registry = CollectorRegistry()
    registry.register(BrokerCollector(broker))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


# The wire protocols a connection may speak (core/clients.py ClientConnection.protocol).
PROTOCOLS: Final = ("native", "amqp")
# (metric name without _total, ProtocolStats attribute, help): the message counters of
# _COUNTERS per wire protocol.  The unlabelled totals stay as they are (they also count
# the HTTP API's publishes).
_PROTOCOL_COUNTERS: Final = (
    ("wharf_protocol_messages_published", "published", "Messages accepted from publishers"),
    ("wharf_protocol_messages_delivered", "delivered", "Messages delivered to consumers and GET"),
    ("wharf_protocol_messages_acked", "acked", "Deliveries acknowledged by consumers"),
    ("wharf_protocol_messages_redelivered", "redelivered", "Messages delivered again"),
    ("wharf_protocol_messages_nacked", "rejected", "Deliveries nacked or rejected"),
)


def _protocol_counters(stats: Any) -> Iterator[Metric]:
    """The message counters per wire protocol (native / amqp), read from the broker's
    per-protocol counters (core/deliveries.py ProtocolStats); every protocol present."""
    protocols: Mapping[str, Any] = getattr(stats, "protocols", None) or {}
    for name, attr, help_text in _PROTOCOL_COUNTERS:
        family = CounterMetricFamily(
            name, f"{help_text}, per wire protocol: native or amqp.", labels=["protocol"]
        )
        for protocol in PROTOCOLS:
            counters = protocols.get(protocol)
            family.add_metric([protocol], getattr(counters, attr, 0) if counters else 0)
        yield family


def _protocol_connections(connections: Sized) -> GaugeMetricFamily:
    """Client connections by wire protocol, every protocol always present (0 included),
    as RabbitMQ's management shows connections by protocol."""
    family = GaugeMetricFamily(
        "wharf_protocol_connections",
        "Client connections (logged in or not), per wire protocol: native or amqp.",
        labels=["protocol"],
    )
    counts = dict.fromkeys(PROTOCOLS, 0)
    values = connections.values() if isinstance(connections, Mapping) else ()
    for conn in values:
        protocol = str(getattr(conn, "protocol", "native"))
        counts[protocol] = counts.get(protocol, 0) + 1
    for protocol, n in counts.items():
        family.add_metric([protocol], n)
    return family
