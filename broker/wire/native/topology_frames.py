"""Native-protocol frames that change definitions: exchanges, queues, server-side policies.

``TopologyFrames`` is a mixin of the broker's ``Connection`` (connection.py): its
handlers join the connection's dispatch table (``_topology_frame_handlers``) as bound
methods, so these frames are dispatched like every other one.  The definitions
themselves live in the broker's ``Topology`` (topology.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from wharf.protocol import frames as F
from wharf.protocol.errors import InvalidArgument

from ...core.policies.registry import make_policy
from ...security.audit import AuditEvent, policy_fields

if TYPE_CHECKING:
    from ...core.session import CoreSession
    from ...core.topology import Topology
    from ...core.vhosts import VirtualHost
    from .broker_api import BrokerApi
    from .connection import Connection


class TopologyFrames:
    """Mixin of ``Connection``: EXCHANGE_*, QUEUE_* and POLICY_* frames."""

    # Provided by Connection.
    broker: BrokerApi
    topology: Topology
    virtual_host: VirtualHost
    core: CoreSession
    username: str
    user_tags: tuple[str, ...]
    peer: str

    if TYPE_CHECKING:

        def _ok(self, rid: int, result: dict[str, Any] | None = None) -> None: ...

    def _actor(self) -> dict[str, str]:
        """Who made a change, for its audit line."""
        return {
            "actor": self.username,
            "peer": self.peer,
            "protocol": "native",
            "vhost": self.virtual_host.name,
        }

    def _topology_frame_handlers(self) -> dict[int, Callable[[Any], None]]:
        """This connection's handlers of the frames above, by frame type."""
        return {
            F.EXCHANGE_DECLARE: self._on_exchange_declare,
            F.EXCHANGE_DELETE: self._on_exchange_delete,
            F.EXCHANGE_BIND: self._on_exchange_bind,
            F.EXCHANGE_UNBIND: self._on_exchange_unbind,
            F.QUEUE_DECLARE: self._on_queue_declare,
            F.QUEUE_BIND: self._on_queue_bind,
            F.QUEUE_UNBIND: self._on_queue_unbind,
            F.QUEUE_PURGE: self._on_queue_purge,
            F.QUEUE_DELETE: self._on_queue_delete,
            F.QUEUE_REPLAY: self._on_queue_replay,
            F.POLICY_SET: self._on_policy_set,
            F.POLICY_DELETE: self._on_policy_delete,
            F.POLICY_LIST: self._on_policy_list,
        }

    def _owner(self) -> Connection:
        """This connection, which owns its exclusive queues."""
        return cast("Connection", self)

    # -- exchanges -----------------------------------------------------------------

    def _on_exchange_declare(self, f: F.ExchangeDeclare) -> None:
        self.core.declare_exchange(
            f.name,
            f.type,
            durable=f.durable,
            auto_delete=f.auto_delete,
            internal=f.internal,
            passive=f.passive,
            arguments=f.arguments,
        )
        self._ok(f.request_id)

    def _on_exchange_delete(self, f: F.ExchangeDelete) -> None:
        self.core.delete_exchange(f.name, f.if_unused)
        self._ok(f.request_id)

    def _on_exchange_bind(self, f: F.ExchangeBind) -> None:
        self.core.bind_exchange(f.destination, f.source, f.routing_key, f.arguments)
        self._ok(f.request_id)

    def _on_exchange_unbind(self, f: F.ExchangeUnbind) -> None:
        self.core.unbind_exchange(f.destination, f.source, f.routing_key, f.arguments)
        self._ok(f.request_id)

    # -- queues --------------------------------------------------------------------

    def _on_queue_declare(self, f: F.QueueDeclare) -> None:
        owner = self._owner()
        q = self.core.declare_queue(
            f.name,
            owner=owner,
            durable=f.durable,
            exclusive=f.exclusive,
            auto_delete=f.auto_delete,
            passive=f.passive,
            arguments=f.arguments,
        )
        self._ok(
            f.request_id,
            {"queue": q.name, "messages": q.ready_count, "consumers": q.consumer_count},
        )

    def _on_queue_bind(self, f: F.QueueBind) -> None:
        self.core.bind_queue(f.queue, f.exchange, f.routing_key, f.arguments, self._owner())
        self._ok(f.request_id)

    def _on_queue_unbind(self, f: F.QueueUnbind) -> None:
        self.core.unbind_queue(f.queue, f.exchange, f.routing_key, f.arguments, self._owner())
        self._ok(f.request_id)

    def _on_queue_purge(self, f: F.QueuePurge) -> None:
        q = self.core.queue_to_purge(f.queue, self._owner())
        result = {"messages": q.purge()}
        store = self.virtual_host.store
        if q.persist and store is not None and not store.idle:
            # Answer once the purge's ack records are on disk, like a confirm.
            store.after_commit(lambda: self._ok(f.request_id, result))
            return
        self._ok(f.request_id, result)

    def _on_queue_delete(self, f: F.QueueDelete) -> None:
        n = self.core.delete_queue(f.queue, self._owner(), f.if_unused, f.if_empty)
        self._ok(f.request_id, {"messages": n})

    def _on_queue_replay(self, f: F.QueueReplay) -> None:
        if f.limit < 0 or f.max_deaths < 0:
            raise InvalidArgument("limit and max_deaths must be >= 0")
        moved = self.core.replay(f.queue, self._owner(), f.target, f.reason, f.limit, f.max_deaths)
        result = {"moved": moved}
        store = self.virtual_host.store
        if store is not None and not store.idle:
            # Answer once the moves are on disk.
            store.after_commit(lambda: self._ok(f.request_id, result))
            return
        self._ok(f.request_id, result)

    # -- server-side policies ------------------------------------------------------

    def _on_policy_set(self, f: F.PolicySet) -> None:
        policy = make_policy(f.name, f.pattern, f.definition, f.priority, f.apply_to)
        self._ok(f.request_id, {"created": self.core.set_policy(policy)})
        self.broker.audit.event(AuditEvent.POLICY_SET, **self._actor(), **policy_fields(policy))

    def _on_policy_delete(self, f: F.PolicyDelete) -> None:
        self.core.delete_policy(f.name)
        self._ok(f.request_id)
        self.broker.audit.event(AuditEvent.POLICY_DELETED, **self._actor(), policy=f.name)

    def _on_policy_list(self, f: F.PolicyList) -> None:
        self._ok(f.request_id, {"policies": [p.describe() for p in self.topology.policies.all()]})
