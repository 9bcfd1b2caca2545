"""What the native wire adapter uses of the broker process, as a small interface.

The native ``Connection`` and its frame handlers see the broker (``server.Broker``)
only through ``BrokerApi``, so the wire layer does not import the server that sits above
it (pyproject.toml, the layers contract).  ``Broker`` satisfies it structurally; a test
or another listener could pass anything else that does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ...core.deliveries import ProtocolStats
from .confirms import NackStats

if TYPE_CHECKING:
    from wharf.protocol.errors import WharfError

    from ...alarms import MemoryTrimmer
    from ...config import Settings
    from ...core.access import AccessControl, Actor
    from ...core.clients import ServedConnection
    from ...core.quotas import UserLimits
    from ...core.session import CoreSession
    from ...core.topology import Topology
    from ...core.vhosts import VirtualHosts
    from ...logs.groups import GroupCoordinator
    from ...logs.topics import TopicRegistry
    from ...security.audit import AuditLog
    from ...security.auth import Authenticator
    from ...store.segments import MessageStore
    from .connection import Connection


class WireStats(NackStats, Protocol):
    """The broker-wide counters a connection updates (plain ints); its deliveries and
    publishes count into its protocol's ``ProtocolStats``."""

    @property
    def protocols(self) -> dict[str, ProtocolStats]: ...


class BrokerApi(Protocol):
    """The broker as a native connection uses it."""

    # Read by connections; the receive budget's total is also updated by them.
    buffered_bytes: int
    connections: dict[int, ServedConnection]

    @property
    def settings(self) -> Settings: ...

    @property
    def topology(self) -> Topology:
        """The default vhost's (a connection uses its own vhost's once logged in)."""
        ...

    @property
    def vhosts(self) -> VirtualHosts: ...

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
    def user_limits(self) -> UserLimits: ...

    @property
    def trimmer(self) -> MemoryTrimmer: ...

    @property
    def store(self) -> MessageStore | None: ...

    @property
    def logs(self) -> TopicRegistry | None: ...

    @property
    def groups(self) -> GroupCoordinator | None: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def alarms(self) -> set[str]:
        """Raised resource alarms; publishers are blocked while non-empty."""
        ...

    # -- connection limits ------------------------------------------------------------

    def connection_limit_error(self, joining: Connection | None = None) -> WharfError | None: ...

    def admit_unauthenticated(self, conn: Connection) -> WharfError | None: ...

    def release_unauthenticated(self, conn: Connection) -> None: ...

    def connection_closed(self, conn: Connection) -> None: ...

    # -- receive budget ---------------------------------------------------------------

    def check_receive_budget(self, conn: Connection) -> None: ...

    def forget_budget_reader(self, conn: Connection) -> None: ...

    # -- the message store's group commit (publisher confirms wait for it) ------------

    def await_store(self, conn: Connection) -> None:
        """Call ``conn.store_committed(batch)`` after the store's next group commits."""
        ...

    def stop_awaiting_store(self, conn: Connection) -> None: ...
