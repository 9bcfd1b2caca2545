"""What the management API (api.py, api_logs.py) uses of the broker.

``server.Broker`` satisfies ``ApiBroker``; the HTTP plane names only this interface and
the core types behind it, so it imports neither server.py nor a wire module.  Client
connections are seen through the protocol-neutral ``ClientConnection``
(core/clients.py), whatever protocol they speak.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..alarms import ResourceMonitor
    from ..config import Settings
    from ..core.clients import ClientConnection
    from ..core.exchanges import Exchange
    from ..core.queues import Queue
    from ..core.topology import Topology
    from ..logs import TopicRegistry
    from ..logs.groups import GroupCoordinator
    from ..security.audit import AuditLog
    from ..security.auth import Authenticator
    from ..security.tls import ServerTls
    from ..store.segments import MessageStore
    from .metrics import BrokerStats


class ApiBroker(Protocol):
    """Read-only properties, so that plain attributes satisfy them too."""

    @property
    def settings(self) -> Settings: ...
    @property
    def topology(self) -> Topology: ...
    @property
    def authenticator(self) -> Authenticator: ...
    @property
    def audit(self) -> AuditLog: ...
    @property
    def stats(self) -> BrokerStats: ...
    @property
    def queues(self) -> Mapping[str, Queue]: ...
    @property
    def exchanges(self) -> Mapping[str, Exchange]: ...
    @property
    def connections(self) -> Mapping[int, ClientConnection]: ...
    @property
    def consumer_count(self) -> int: ...
    @property
    def store(self) -> MessageStore | None: ...
    @property
    def logs(self) -> TopicRegistry | None: ...
    @property
    def groups(self) -> GroupCoordinator | None: ...
    @property
    def monitor(self) -> ResourceMonitor | None: ...
    @property
    def alarms(self) -> set[str]: ...
    @property
    def ready(self) -> bool: ...
    @property
    def port(self) -> int: ...
    @property
    def http_port(self) -> int: ...
    @property
    def tls(self) -> ServerTls | None: ...
    def memory_breakdown(self) -> dict[str, int]: ...
    def listeners(self) -> list[dict[str, Any]]: ...
    def reload_tls(self) -> dict[str, Any]: ...
