"""What the AMQP wire adapter uses of the broker process, as a small interface.

``server.Broker`` satisfies it structurally (mypy checks it where the listener is made),
so the wire layer does not import the server above it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..native.broker_api import WireStats

if TYPE_CHECKING:
    from wharf.protocol.errors import WharfError

    from ...config import Settings
    from ...core.access import AccessControl, Actor
    from ...core.clients import ServedConnection
    from ...core.quotas import UserLimits
    from ...core.session import CoreSession
    from ...core.topology import Topology
    from ...core.vhosts import VirtualHosts
    from ...security.audit import AuditLog
    from ...security.auth import Authenticator
    from ...store.segments import MessageStore


class AmqpBrokerApi(Protocol):
    """The broker as an AMQP connection uses it."""

    connections: dict[int, ServedConnection]

    @property
    def settings(self) -> Settings: ...

    @property
    def topology(self) -> Topology: ...

    @property
    def vhosts(self) -> VirtualHosts: ...

    @property
    def user_limits(self) -> UserLimits: ...

    @property
    def stats(self) -> WireStats: ...

    @property
    def authenticator(self) -> Authenticator: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def access(self) -> AccessControl: ...

    def session(self, actor: Actor) -> CoreSession: ...

    @property
    def store(self) -> MessageStore | None: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def alarms(self) -> set[str]: ...

    def connection_limit_error(
        self, joining: ServedConnection | None = None
    ) -> WharfError | None: ...

    def admit_unauthenticated(self, conn: ServedConnection) -> WharfError | None: ...

    def release_unauthenticated(self, conn: ServedConnection) -> None: ...

    def connection_closed(self, conn: ServedConnection) -> None: ...

    def await_store(self, conn: ServedConnection) -> None:
        """Call ``conn.store_committed(batch)`` after the store's next group commits."""
        ...

    def stop_awaiting_store(self, conn: ServedConnection) -> None: ...
