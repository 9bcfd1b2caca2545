"""The topology: exchanges, queues and the bindings between them, and routing.

Log topics can be binding destinations too (``TopicTarget``, docs/logs.md); the topic
registry owns the topics, the topology only their bindings.

One owner for all definitions.  Connections call these methods; nothing else
mutates exchanges, queues or bindings.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from wharf.protocol.errors import (
    AccessRefused,
    NotFound,
    PreconditionFailed,
    WharfError,
)

from .exchanges import Binding, Exchange, TopicTarget
from .names import check_name_length
from .policies.deadletter import is_cycle, with_death
from .policies.queue_types import (
    check_exchange_equivalent,
    check_queue_declare,
    check_queue_equivalent,
    locked,
)
from .policies.registry import Policy, PolicyRegistry, effective_arguments, effective_limits
from .publish import Publisher
from .queues import Message, Queue, QueueOwner
from .routed import sync_in_background

if TYPE_CHECKING:
    from ..logs import TopicRegistry
    from ..store.segments import MessageStore

DEFAULT_EXCHANGE: Final = ""
DEFAULT_EXCHANGE_REFUSED: Final = "operation not permitted on the default exchange"
# Pre-declared exchanges, as in RabbitMQ.
STANDARD_EXCHANGES: Final = (
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)
# A timer may fire a hair before its deadline by the monotonic clock: this much later.
EXPIRY_SLACK_S: Final = 0.001
# How many exchange hops (e2e bindings, alternate exchanges) one publish may follow.
MAX_ROUTE_HOPS: Final = 32

log = logging.getLogger("wharf.topology")


def _check_name(kind: str, name: str) -> None:
    check_name_length(f"{kind} name", name)


class Topology:
    __slots__ = (
        "exchanges",
        "queues",
        "default_exchange",
        "store",
        "on_change",
        "_loading",
        "memory_budget_bytes",
        "dead_letter_cycles",
        "policies",
        "topics",
        "topic_targets",
        "publisher",
        "_owned",
        "_expiry_timers",
        "check_new_queue",
    )

    def __init__(self) -> None:
        # Set by the broker: the message store for durable queues, and a callback that
        # persists the durable definitions after each change.
        self.store: MessageStore | None = None
        self.on_change: Callable[[], None] | None = None
        self._loading = False
        self.memory_budget_bytes: int | None = None
        # Dead-lettered messages dropped because they would close a cycle (metrics).
        self.dead_letter_cycles = 0
        # Server-side policies (policies/registry.py): limits applied by queue-name pattern.
        self.policies = PolicyRegistry()
        # Log topics (set by the broker) and the bound ones, as binding destinations.
        self.topics: TopicRegistry | None = None
        self.topic_targets: dict[str, TopicTarget] = {}
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        self.default_exchange = Exchange(DEFAULT_EXCHANGE, "direct", durable=True)
        self.exchanges[DEFAULT_EXCHANGE] = self.default_exchange
        # The one publish path (publish.py): the wire, HTTP, dead-lettering and replay.
        self.publisher = Publisher(self)
        # Exclusive queues by the session that owns them (deleted with it).
        self._owned: dict[QueueOwner, list[Queue]] = {}
        # x-expires: one timer per queue that may expire, at its deadline.
        self._expiry_timers: dict[str, asyncio.TimerHandle] = {}
        # Raises when no more queues may be created (the vhost's max-queues, vhosts.py).
        self.check_new_queue: Callable[[], None] | None = None
        for name, kind in STANDARD_EXCHANGES:
            self.exchanges[name] = Exchange(name, kind, durable=True)

    # -- routing -------------------------------------------------------------------

    def route(
        self,
        exchange: Exchange,
        routing_key: str,
        headers: dict[str, Any] | None,
        topics: list[TopicTarget] | None = None,
    ) -> list[Queue]:
        """Queues a message published to ``exchange`` reaches, each once.  Log topics
        it reaches are appended to ``topics`` (left out when None; they still count as
        routed, so the alternate exchange is not used)."""
        if exchange is self.default_exchange:
            q = self.queues.get(routing_key)
            return [q] if q is not None else []
        dests = exchange.match(routing_key, headers)
        if dests and exchange.alternate is None and all(type(d) is Queue for d in dests):
            return dests
        out: list[Queue] = []
        self._route_into(exchange, routing_key, headers, out, topics, set(), 0)
        return out

    def _route_into(
        self,
        exchange: Exchange,
        routing_key: str,
        headers: dict[str, Any] | None,
        out: list[Queue],
        topics: list[TopicTarget] | None,
        visited: set[int],
        hops: int,
    ) -> bool:
        """Append matching queues to ``out`` (topics to ``topics``); True if anything
        matched (for AE)."""
        if id(exchange) in visited or hops > MAX_ROUTE_HOPS:
            return False
        visited.add(id(exchange))
        matched = False
        for dest in exchange.match(routing_key, headers):
            kind = type(dest)
            if kind is Queue:
                matched = True
                if dest not in out:
                    out.append(dest)
            elif kind is TopicTarget:
                matched = True
                if topics is not None and dest not in topics:
                    topics.append(dest)
            elif self._route_into(dest, routing_key, headers, out, topics, visited, hops + 1):
                matched = True
        if not matched and exchange.alternate is not None:
            alt = self.exchanges.get(exchange.alternate)
            if alt is not None:
                matched = self._route_into(
                    alt, routing_key, headers, out, topics, visited, hops + 1
                )
        return matched

    # -- exchanges -----------------------------------------------------------------

    def declare_exchange(
        self,
        name: str,
        type_: str,
        *,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        passive: bool,
        arguments: dict[str, Any] | None,
    ) -> Exchange:
        _check_name("exchange", name)
        if name == DEFAULT_EXCHANGE:
            # As RabbitMQ: a passive declare of the default exchange is refused too.
            raise AccessRefused(DEFAULT_EXCHANGE_REFUSED, details={"exchange": name})
        existing = self.exchanges.get(name)
        if passive:
            if name == DEFAULT_EXCHANGE:
                # RabbitMQ refuses every exchange method on it, a passive declare too.
                raise AccessRefused(
                    "operation not permitted on the default exchange", details={"exchange": ""}
                )
            if existing is None:
                raise NotFound(f"no exchange '{name}'", details={"exchange": name})
            return existing
        if existing is not None:
            # As RabbitMQ: an equivalent redeclare succeeds, amq.* ones included.
            check_exchange_equivalent(
                name,
                (existing.type, existing.durable, existing.auto_delete, existing.internal),
                existing.arguments,
                type_=type_,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=arguments or {},
            )
            return existing
        if name.startswith("amq."):
            raise AccessRefused(
                f"exchange name '{name}' contains reserved prefix 'amq.*'",
                details={"exchange": name},
            )
        ex = Exchange(
            name,
            type_,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
        )
        self.exchanges[name] = ex
        if durable:
            self._changed()
        return ex

    def _changed(self) -> None:
        if self.on_change is not None and not self._loading:
            self.on_change()

    def get_exchange(self, name: str) -> Exchange:
        ex = self.exchanges.get(name)
        if ex is None:
            raise NotFound(f"no exchange '{name}'", details={"exchange": name})
        return ex

    def delete_exchange(self, name: str, if_unused: bool) -> None:
        if name == DEFAULT_EXCHANGE:
            raise AccessRefused(DEFAULT_EXCHANGE_REFUSED, details={"exchange": name})
        if name.startswith("amq."):
            raise AccessRefused(
                f"deletion of system exchange '{name}' not allowed", details={"exchange": name}
            )
        ex = self.get_exchange(name)
        if if_unused and ex.bindings:
            raise PreconditionFailed(
                f"exchange '{name}' in use", details={"exchange": name, "reason": "in_use"}
            )
        for b in list(ex.bindings):
            self._remove_binding(b, cascade=False)
        for b in list(ex.incoming):
            self._remove_binding(b, cascade=True)
        del self.exchanges[name]
        if ex.durable:
            self._changed()

    # -- queues --------------------------------------------------------------------

    def declare_queue(
        self,
        name: str,
        *,
        owner: QueueOwner,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        passive: bool,
        arguments: dict[str, Any] | None,
    ) -> Queue:
        _check_name("queue", name)
        if passive:
            q = self.get_queue(name, owner)
            return q
        if not name:
            name = "amq.gen-" + secrets.token_urlsafe(16)
        elif name.startswith("amq."):
            raise AccessRefused(
                f"queue name '{name}' contains reserved prefix 'amq.*'", details={"queue": name}
            )
        args = arguments or {}
        existing = self.queues.get(name)
        if existing is not None:
            self._check_access(existing, owner)
            existing.last_used = time.monotonic()
            self.arm_queue_expiry(existing)
            check_queue_equivalent(
                name,
                existing.arguments,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=args,
                was=(existing.durable, existing.exclusive, existing.auto_delete),
            )
            return existing
        check_queue_declare(
            name, durable=durable, exclusive=exclusive, auto_delete=auto_delete, arguments=args
        )
        if self.check_new_queue is not None:
            self.check_new_queue()
        q = Queue(
            name,
            durable=durable,
            exclusive_owner=owner if exclusive else None,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        q.on_unused = self._queue_unused
        q.on_idle = self.arm_queue_expiry
        self.queues[name] = q
        self.apply_policy(q)
        self.arm_queue_expiry(q)
        # Exclusive queues go with their connection, so never outlive a restart.
        self.attach_store(q, secrets.randbits(62) + 1, persist=durable and not exclusive)
        if exclusive:
            self._owned.setdefault(owner, []).append(q)
        if q.persist:
            self._changed()
        return q

    def release_owner(self, owner: QueueOwner) -> None:
        """``owner`` ended: delete the exclusive queues it still has."""
        for q in self._owned.pop(owner, ()):
            if self.queues.get(q.name) is q:
                self.delete_queue_object(q)

    def attach_store(self, q: Queue, uid: int, *, persist: bool) -> None:
        q.dead_letter = self._dead_letter
        q.uid = uid
        q.store = self.store
        q.persist = persist and self.store is not None
        if self.memory_budget_bytes is not None:
            q.memory_budget_bytes = self.memory_budget_bytes

    def _queue_unused(self, queue: Queue) -> None:
        if self.queues.get(queue.name) is queue:
            self.delete_queue_object(queue)

    @staticmethod
    def _check_access(queue: Queue, conn: QueueOwner) -> None:
        owner = queue.exclusive_owner
        if owner is not None and owner is not conn:
            raise locked(queue.name)

    def get_queue(self, name: str, conn: QueueOwner | None = None) -> Queue:
        q = self.queues.get(name)
        if q is None:
            raise NotFound(f"no queue '{name}'", details={"queue": name})
        if conn is not None:
            self._check_access(q, conn)
        return q

    def delete_queue(self, name: str, conn: QueueOwner, if_unused: bool, if_empty: bool) -> int:
        q = self.get_queue(name, conn)
        if if_unused and q.consumer_count:
            raise PreconditionFailed(f"queue '{name}' in use", details={"queue": name})
        if if_empty and q.ready_count:
            raise PreconditionFailed(f"queue '{name}' not empty", details={"queue": name})
        return self.delete_queue_object(q)

    def delete_queue_object(self, q: Queue) -> int:
        timer = self._expiry_timers.get(q.name)
        if timer is not None and self.queues.get(q.name) is q:
            timer.cancel()
            del self._expiry_timers[q.name]
        n = q.purge()
        q.drop_delayed()
        q.deleted = True
        self.queues.pop(q.name, None)
        for b in list(q.bindings):
            self._remove_binding(b, cascade=True)
        for c in list(q.consumers):
            c.sink.server_cancel(c, 404, f"queue '{q.name}' was deleted")
        owner = q.exclusive_owner
        if owner is not None:
            owned = self._owned.get(owner)
            if owned is not None and q in owned:
                owned.remove(q)
                if not owned:
                    del self._owned[owner]
        if q.persist:
            self._changed()
        return n

    # -- policies ------------------------------------------------------------------

    def _dead_letter(self, queue: Queue, msgs: list[Message], reason: str) -> None:
        """Route messages that died in ``queue`` through its dead-letter exchange.

        The copies are enqueued before the caller settles the originals, so both land
        in the same store commit, copies first: a crash can duplicate, never lose.
        """
        limits = queue.limits
        name = limits.dead_letter_exchange
        ex = self.exchanges.get(name) if name is not None else None
        if ex is None:
            return  # as RabbitMQ: a missing dead-letter exchange drops the message
        now_ms = int(time.time() * 1000)
        publisher = self.publisher
        for m in msgs:
            routing_key = limits.dead_letter_routing_key or m.routing_key
            props = with_death(
                m.properties,
                queue=queue.name,
                reason=reason,
                exchange=m.exchange,
                routing_key=m.routing_key,
                now_ms=now_ms,
            )

            def accept(target: Queue, props: dict[str, Any] = props) -> bool:
                if is_cycle(props, target.name):
                    self.dead_letter_cycles += 1
                    return False
                return True

            try:
                res = publisher.route(
                    ex, ex.name, routing_key, props, (m.body,), accept=accept, count=False
                )
            except WharfError as exc:
                log.warning("dead-lettering via exchange '%s' failed: %s", ex.name, exc)
                continue
            if res.log_parts:  # nothing waits for it; a failure is logged
                sync_in_background(res.log_parts, "dead-lettered messages")

    # -- server-side policies (policies/registry.py) ----------------------------------
    # A queue's limits are its x-arguments merged with the one policy matching its name.
    # Queues read their limits at use time, so a change applies to existing queues without
    # a redeclare; message TTLs are stamped at enqueue (messages already in the queue keep
    # theirs), and a lowered max-length takes effect on the queue's next enqueue.

    def purge_dedup_windows(self) -> int:
        """On the broker's tick: forget the ids whose deduplication window ended (a queue
        nobody publishes to would keep them otherwise); how many went."""
        now_ms = int(time.time() * 1000)
        return sum(q.dedup.purge(now_ms) for q in self.queues.values() if q.dedup is not None)

    def apply_policy(self, q: Queue) -> None:
        limits = effective_limits(q.arguments, self.policies.match(q.name))
        if limits != q.limits:
            q.limits = limits
            if q.consumers:
                q.schedule_dispatch()

    def _apply_policies(self) -> None:
        for q in self.queues.values():
            self.apply_policy(q)

    def set_policy(self, policy: Policy) -> bool:
        """Add or replace a policy and apply it to existing queues; True if new."""
        created = self.policies.put(policy)
        self._apply_policies()
        self._changed()
        return created

    def delete_policy(self, name: str) -> Policy:
        policy = self.policies.delete(name)
        self._apply_policies()
        self._changed()
        return policy

    def policy_view(self, q: Queue) -> dict[str, Any]:
        """The policy applying to ``q`` (name or None) and its effective arguments."""
        policy = self.policies.match(q.name)
        return {
            "policy": policy.name if policy is not None else None,
            "effective_arguments": effective_arguments(q.arguments, policy),
        }

    def replay(
        self,
        source: Queue,
        target: str | None,
        reason: str | None,
        limit: int,
        max_deaths: int,
    ) -> int:
        """Move dead-lettered messages from ``source`` back to where they died (DLQ replay).

        Copies are enqueued before the originals are settled, in one store commit.
        """
        if target is not None and target not in self.queues:
            raise NotFound(f"no queue '{target}'", details={"queue": target})
        # Checked before anything is taken out of ``source``: enqueueing cannot fail then.
        publisher = self.publisher
        publisher.check_store()

        def last_death(m: Message) -> dict[str, Any]:
            deaths = ((m.properties or {}).get("headers") or {}).get("x-death") or []
            first = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
            return first

        def destination(m: Message) -> Queue | None:
            name = target
            if name is None:
                headers = (m.properties or {}).get("headers") or {}
                name = headers.get("x-last-death-queue") or last_death(m).get("queue")
            q = self.queues.get(name) if isinstance(name, str) else None
            return q if q is not source else None

        def select(m: Message) -> bool:
            death = last_death(m)
            if reason is not None and death.get("reason") != reason:
                return False
            count = death.get("count", 0)
            if max_deaths and isinstance(count, int) and count > max_deaths:
                return False
            return destination(m) is not None

        moved = source.extract(select, limit)
        for m in moved:
            dest = destination(m)
            assert dest is not None
            publisher.route(
                None, m.exchange, m.routing_key, m.properties, (m.body,), queues=[dest], count=False
            )
        for m in moved:
            source.forget(m)
        return len(moved)

    def arm_queue_expiry(self, q: Queue) -> None:
        """x-expires on time, as RabbitMQ's queue timer: a timer at the queue's deadline
        (use moves the deadline later; the timer then arms itself again), so a queue
        does not outlive its x-expires by up to a tick. The tick still checks them all."""
        ttl = q.limits.expires_ms
        if ttl is None or q.deleted or q.name in self._expiry_timers:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (recovery before start): the tick expires it
            return
        delay = max(0.0, q.last_used + ttl / 1000.0 - time.monotonic())
        self._expiry_timers[q.name] = loop.call_later(
            delay + EXPIRY_SLACK_S, self._on_expiry_timer, q
        )

    def _on_expiry_timer(self, q: Queue) -> None:
        if self._expiry_timers.get(q.name) is not None:
            del self._expiry_timers[q.name]
        if self.queues.get(q.name) is not q or q.consumers:
            return  # deleted, or in use: losing its last consumer arms it again
        ttl = q.limits.expires_ms
        if ttl is None:
            return
        if (time.monotonic() - q.last_used) * 1000 >= ttl:
            self.delete_queue_object(q)
        else:
            self.arm_queue_expiry(q)

    def expire_unused_queues(self) -> None:
        """x-expires: delete queues unused (no consumers, no get, no redeclare) that long."""
        now = time.monotonic()
        for q in list(self.queues.values()):
            ttl = q.limits.expires_ms
            if ttl is not None and not q.consumers and (now - q.last_used) * 1000 >= ttl:
                self.delete_queue_object(q)

    # -- bindings ------------------------------------------------------------------

    @staticmethod
    def check_binding_source(source_name: str) -> None:
        """As RabbitMQ: the default exchange takes part in no binding (checked before
        the queue is looked up, so the refusal is the same whether it exists or not)."""
        if source_name == DEFAULT_EXCHANGE:
            raise AccessRefused(DEFAULT_EXCHANGE_REFUSED, details={"exchange": ""})

    def bind(
        self,
        destination: Queue | Exchange | TopicTarget,
        source_name: str,
        routing_key: str,
        arguments: dict[str, Any] | None,
    ) -> None:
        if source_name == DEFAULT_EXCHANGE or destination is self.default_exchange:
            raise AccessRefused(DEFAULT_EXCHANGE_REFUSED, details={"exchange": ""})
        check_name_length("routing key", routing_key)
        source = self.get_exchange(source_name)
        binding = Binding(source, destination, routing_key, arguments)
        if source.add_binding(binding):
            if isinstance(destination, Exchange):
                destination.incoming.append(binding)
            else:
                destination.bindings.append(binding)
            if isinstance(destination, TopicTarget):
                self.topic_targets[destination.name] = destination
            if self._is_durable_binding(binding):
                self._changed()

    @staticmethod
    def _is_durable_binding(binding: Binding) -> bool:
        dest = binding.destination
        if isinstance(dest, TopicTarget):
            return bool(binding.source.durable)  # topics are always durable
        dest_durable = dest.persist if isinstance(dest, Queue) else dest.durable
        return bool(binding.source.durable and dest_durable)

    def unbind(
        self,
        destination: Queue | Exchange | TopicTarget,
        source_name: str,
        routing_key: str,
        arguments: dict[str, Any] | None,
    ) -> None:
        self.check_binding_source(source_name)
        if destination is self.default_exchange:
            raise AccessRefused(DEFAULT_EXCHANGE_REFUSED, details={"exchange": ""})
        source = self.get_exchange(source_name)
        binding = source.find_binding(destination, routing_key, arguments)
        if binding is None:
            # RabbitMQ answers unbind of a missing binding with success.
            return
        self._remove_binding(binding, cascade=True)

    def _remove_binding(self, binding: Binding, *, cascade: bool) -> None:
        source = binding.source
        source.remove_binding(binding)
        dest = binding.destination
        holder = dest.incoming if isinstance(dest, Exchange) else dest.bindings
        if binding in holder:
            holder.remove(binding)
        if (
            isinstance(dest, TopicTarget)
            and not dest.bindings
            and self.topic_targets.get(dest.name) is dest
        ):
            del self.topic_targets[dest.name]
        if self._is_durable_binding(binding):
            self._changed()
        # Auto-delete exchanges go when their last binding (as source) goes.
        if (
            cascade
            and source.auto_delete
            and not source.bindings
            and self.exchanges.get(source.name) is source
        ):
            self.delete_exchange(source.name, if_unused=False)

    def bindings_of(self) -> list[dict[str, Any]]:
        return [b.describe() for ex in self.exchanges.values() for b in ex.bindings]

    # -- topic bindings (log topics as destinations; docs/logs.md) -------------------

    def attach_topics(self, registry: TopicRegistry) -> None:
        """Called by the broker once topics are recovered, before definitions load."""
        self.topics = registry
        registry.on_topic_deleted.append(self.topic_deleted)

    def _topic_registry(self) -> TopicRegistry:
        if self.topics is None:
            raise NotFound("log topics are not available")
        return self.topics

    def topic_destination(self, topic: str) -> TopicTarget:
        """Log topic ``topic`` as a binding destination (404 if there is no such topic).
        ``bind`` registers it; an unbound one matches no binding."""
        self._topic_registry().get(topic)
        target = self.topic_targets.get(topic)
        return target if target is not None else TopicTarget(topic)

    def bind_topic(
        self,
        topic: str,
        source_name: str,
        routing_key: str,
        arguments: dict[str, Any] | None,
    ) -> None:
        """Bind log topic ``topic`` to exchange ``source_name`` (404 if either is
        missing).  Idempotent, like queue bindings."""
        self.bind(self.topic_destination(topic), source_name, routing_key, arguments)

    def unbind_topic(
        self,
        topic: str,
        source_name: str,
        routing_key: str,
        arguments: dict[str, Any] | None,
    ) -> None:
        self.unbind(self.topic_destination(topic), source_name, routing_key, arguments)

    def topic_deleted(self, topic: str) -> None:
        """A log topic was deleted: its bindings go with it."""
        target = self.topic_targets.pop(topic, None)
        if target is None:
            return
        for b in list(target.bindings):
            self._remove_binding(b, cascade=True)

    # -- durable definitions ---------------------------------------------------------

    def durable_definitions(self) -> dict[str, Any]:
        exchanges = [
            ex.describe()
            for ex in self.exchanges.values()
            if ex.durable and ex.name != DEFAULT_EXCHANGE and not ex.name.startswith("amq.")
        ]
        queues = [
            {**q.describe_definition(), "uid": q.uid} for q in self.queues.values() if q.persist
        ]
        bindings = [
            b.describe()
            for ex in self.exchanges.values()
            for b in ex.bindings
            if self._is_durable_binding(b)
        ]
        return {
            "exchanges": exchanges,
            "queues": queues,
            "bindings": bindings,
            "policies": self.policies.records(),
        }

    def load_definitions(self, doc: dict[str, Any]) -> None:
        """Re-create durable definitions at start-up (before clients connect)."""
        self._loading = True
        try:
            for problem in self.policies.load(doc.get("policies") or []):
                log.warning("definitions: policy skipped: %s", problem)
            for e in doc["exchanges"]:
                if e["name"] not in self.exchanges:
                    self.exchanges[e["name"]] = Exchange(
                        e["name"],
                        e["type"],
                        durable=True,
                        auto_delete=e.get("auto_delete", False),
                        internal=e.get("internal", False),
                        arguments=e.get("arguments"),
                    )
            for qd in doc["queues"]:
                q = Queue(
                    qd["name"],
                    durable=True,
                    auto_delete=qd.get("auto_delete", False),
                    arguments=qd.get("arguments"),
                )
                q.on_unused = self._queue_unused
                q.on_idle = self.arm_queue_expiry
                self.queues[q.name] = q
                self.apply_policy(q)
                self.attach_store(q, int(qd["uid"]), persist=True)
            for b in doc["bindings"]:
                if b["destination_type"] == "topic":
                    self._load_topic_binding(b)
                    continue
                dest: Queue | Exchange | None = (
                    self.queues.get(b["destination"])
                    if b["destination_type"] == "queue"
                    else self.exchanges.get(b["destination"])
                )
                if dest is not None and b["source"] in self.exchanges:
                    self.bind(dest, b["source"], b["routing_key"], b.get("arguments"))
        finally:
            self._loading = False

    def _load_topic_binding(self, b: dict[str, Any]) -> None:
        topic = b["destination"]
        try:
            self._topic_registry().get(topic)
        except NotFound:
            # The topic is gone (deleted, or its directory was removed): so is the binding.
            log.warning(
                "definitions: binding of exchange '%s' to missing log topic '%s' dropped",
                b["source"],
                topic,
            )
            return
        if b["source"] in self.exchanges:
            self.bind_topic(topic, b["source"], b["routing_key"], b.get("arguments"))
