"""One actor's way into the core: every definition change, publish and queue read checked
against the permission table (access.py) before it reaches the topology.

A protocol adapter makes one ``CoreSession`` per authenticated connection (the native
wire) or per request (HTTP) and calls it instead of ``Topology`` directly, so both ways
in get the same decision.  Operations of log topics and consumer groups, which go
through the logs layer's own request objects, are checked with ``authorize`` and the
operation's name from ``access.OPERATIONS``.

Publishing is the hot path: the decision per exchange (and per routing key under topic
permissions) is cached until the permissions change (``AccessControl.generation``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from .access import MAX_CACHED_DECISIONS, READ, WRITE, AccessControl, Actor

if TYPE_CHECKING:
    from .exchanges import Exchange, TopicTarget
    from .policies.registry import Policy
    from .publish import PublishResult
    from .queues import Queue, QueueOwner
    from .topology import Topology

TOPIC_EXCHANGE_TYPE: Final = "topic"


class CoreSession:
    """The core as ``actor`` sees it; denied operations raise ``AccessRefused`` (403) and
    change nothing."""

    __slots__ = (
        "actor",
        "access",
        "topology",
        "_generation",
        "_publish_ok",
        "_topic_ok",
        "_topic_checked",
    )

    def __init__(self, actor: Actor, access: AccessControl, topology: Topology) -> None:
        self.actor = actor
        self.access = access
        self.topology = topology
        self._generation = -1
        # Allowed publishes only (a denial is decided again, to raise with its wording):
        # exchange names, and (exchange, routing key) under topic permissions.
        self._publish_ok: dict[str, bool] = {}
        self._topic_ok: dict[tuple[str, str], bool] = {}
        self._topic_checked = False  # the actor has topic permissions on its vhost

    def authorize(self, operation: str, **names: str) -> None:
        self.access.authorize(self.actor, operation, **names)

    def check_vhost(self) -> None:
        self.access.check_vhost(self.actor)

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
        self.authorize("exchange.declare.passive" if passive else "exchange.declare", exchange=name)
        alternate = (arguments or {}).get("alternate-exchange")
        if not passive and isinstance(alternate, str):
            self.authorize("exchange.declare.alternate", exchange=name, alternate=alternate)
        return self.topology.declare_exchange(
            name,
            type_,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            passive=passive,
            arguments=arguments,
        )

    def delete_exchange(self, name: str, if_unused: bool) -> None:
        self.authorize("exchange.delete", exchange=name)
        self.topology.delete_exchange(name, if_unused)

    def authorize_binding(
        self, kind: str, destination: str, source: str, routing_key: str, *, unbind: bool = False
    ) -> None:
        """Raise unless the actor may (un)bind ``destination`` (a ``kind``: queue, exchange
        or topic) to exchange ``source`` with ``routing_key``."""
        verb = "unbind" if unbind else "bind"
        if kind == "exchange":
            self.authorize(f"exchange.{verb}", destination=destination, source=source)
        else:
            self.authorize(f"{kind}.{verb}", **{kind: destination, "exchange": source})
        if not unbind:
            # Topic authorisation: binding to a topic exchange is read on the binding key.
            ex = self.topology.exchanges.get(source)
            if ex is not None and ex.type == TOPIC_EXCHANGE_TYPE:
                self.access.check_topic(self.actor, READ, source, routing_key)

    def bind_exchange(
        self, destination: str, source: str, routing_key: str, arguments: dict[str, Any] | None
    ) -> None:
        self.authorize_binding("exchange", destination, source, routing_key)
        dest = self.topology.get_exchange(destination)
        self.topology.bind(dest, source, routing_key, arguments)

    def unbind_exchange(
        self, destination: str, source: str, routing_key: str, arguments: dict[str, Any] | None
    ) -> None:
        self.authorize_binding("exchange", destination, source, routing_key, unbind=True)
        dest = self.topology.get_exchange(destination)
        self.topology.unbind(dest, source, routing_key, arguments)

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
        # A server-named queue is checked as "amq.gen-" (its name is not known yet).
        self.authorize(
            "queue.declare.passive" if passive else "queue.declare", queue=name or "amq.gen-"
        )
        dead_letter = (arguments or {}).get("x-dead-letter-exchange")
        if not passive and isinstance(dead_letter, str):
            self.authorize(
                "queue.declare.dead_letter", queue=name or "amq.gen-", dead_letter=dead_letter
            )
        return self.topology.declare_queue(
            name,
            owner=owner,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            passive=passive,
            arguments=arguments,
        )

    def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str,
        arguments: dict[str, Any] | None,
        owner: QueueOwner | None,
    ) -> None:
        self.authorize_binding("queue", queue, exchange, routing_key)
        self.topology.check_binding_source(exchange)
        q = self.topology.get_queue(queue, owner)
        self.topology.bind(q, exchange, routing_key, arguments)

    def unbind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str,
        arguments: dict[str, Any] | None,
        owner: QueueOwner | None,
    ) -> None:
        self.authorize_binding("queue", queue, exchange, routing_key, unbind=True)
        self.topology.check_binding_source(exchange)
        q = self.topology.get_queue(queue, owner)
        self.topology.unbind(q, exchange, routing_key, arguments)

    def queue_to_purge(self, queue: str, owner: QueueOwner | None) -> Queue:
        self.authorize("queue.purge", queue=queue)
        return self.topology.get_queue(queue, owner)

    def delete_queue(self, queue: str, owner: QueueOwner, if_unused: bool, if_empty: bool) -> int:
        self.authorize("queue.delete", queue=queue)
        return self.topology.delete_queue(queue, owner, if_unused, if_empty)

    def replay(
        self,
        queue: str,
        owner: QueueOwner | None,
        target: str | None,
        reason: str | None,
        limit: int,
        max_deaths: int,
    ) -> int:
        if target is None:
            self.authorize("queue.replay", queue=queue)
        else:
            self.authorize("queue.replay", queue=queue, target=target)
        q = self.topology.get_queue(queue, owner)
        return self.topology.replay(q, target, reason, limit, max_deaths)

    def queue_to_read(self, queue: str, owner: QueueOwner | None, operation: str) -> Queue:
        """The queue to consume from or get (``operation`` "basic.consume"/"basic.get")."""
        self.authorize(operation, queue=queue)
        return self.topology.get_queue(queue, owner)

    # -- log topics bound to exchanges ---------------------------------------------

    def bind_topic(
        self, topic: str, exchange: str, routing_key: str, arguments: dict[str, Any] | None
    ) -> None:
        self.authorize_binding("topic", topic, exchange, routing_key)
        self.topology.bind_topic(topic, exchange, routing_key, arguments)

    def unbind_topic(
        self, topic: str, exchange: str, routing_key: str, arguments: dict[str, Any] | None
    ) -> None:
        self.authorize_binding("topic", topic, exchange, routing_key, unbind=True)
        self.topology.unbind_topic(topic, exchange, routing_key, arguments)

    def topic_destination(self, topic: str) -> TopicTarget:
        return self.topology.topic_destination(topic)

    # -- policies ------------------------------------------------------------------

    def set_policy(self, policy: Policy) -> bool:
        self.authorize("policy.set")
        return self.topology.set_policy(policy)

    def delete_policy(self, name: str) -> Policy:
        self.authorize("policy.delete")
        return self.topology.delete_policy(name)

    # -- publishing (the hot path) -------------------------------------------------

    def check_publish(self, exchange: str, routing_key: str) -> None:
        """Raise unless the actor may publish to ``exchange`` with ``routing_key``.

        Per publish frame: one int comparison and one dict lookup when allowed (the
        decisions are cached until the permissions change).
        """
        access = self.access
        if self._generation != access.generation:
            self._generation = access.generation
            self._publish_ok.clear()
            self._topic_ok.clear()
            self._topic_checked = access.has_topic_permissions(self.actor)
        if self._publish_ok.get(exchange) is not True:
            if not access.allowed(self.actor, WRITE, "exchange", exchange):
                self.authorize("basic.publish", exchange=exchange)  # raises, with the wording
            if len(self._publish_ok) >= MAX_CACHED_DECISIONS:
                self._publish_ok.clear()
            self._publish_ok[exchange] = True
        if self._topic_checked:
            self._check_topic_key(exchange, routing_key)

    def _check_topic_key(self, exchange: str, routing_key: str) -> None:
        key = (exchange, routing_key)
        if self._topic_ok.get(key) is True:
            return
        ex = self.topology.exchanges.get(exchange)
        if ex is not None and ex.type == TOPIC_EXCHANGE_TYPE:
            self.access.check_topic(self.actor, WRITE, exchange, routing_key)
        if len(self._topic_ok) >= MAX_CACHED_DECISIONS:
            self._topic_ok.clear()
        self._topic_ok[key] = True

    def publish(
        self,
        exchange: str,
        routing_key: str,
        props: dict[str, Any] | None,
        bodies: list[bytes] | tuple[bytes, ...],
    ) -> PublishResult:
        self.check_publish(exchange, routing_key)
        return self.topology.publisher.publish(
            exchange, routing_key, props, bodies, self.actor.user
        )
