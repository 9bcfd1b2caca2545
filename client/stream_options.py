"""``subscribe()``'s defaults (Kafka's consumer defaults) and argument checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from wharf.protocol.errors import InvalidArgument

from .stream_buffer import TopicPartition

DEFAULT_SESSION_TIMEOUT_S: Final = 45.0
DEFAULT_HEARTBEAT_INTERVAL_S: Final = 3.0
DEFAULT_REBALANCE_TIMEOUT_S: Final = 60.0
DEFAULT_AUTO_COMMIT_INTERVAL_S: Final = 5.0
DEFAULT_FETCH_MAX_BYTES: Final = 50 * 1024 * 1024
DEFAULT_MAX_PARTITION_FETCH_BYTES: Final = 1024 * 1024
DEFAULT_FETCH_MAX_WAIT_S: Final = 0.5
OFFSET_RESETS: Final = ("earliest", "latest", "none")
STRATEGIES: Final = ("range", "roundrobin", "sticky")
READ_UNCOMMITTED: Final = "read_uncommitted"
READ_COMMITTED: Final = "read_committed"
ISOLATION_LEVELS: Final = (READ_UNCOMMITTED, READ_COMMITTED)

# ``on_assign``/``on_revoke``: called with the partitions; may return an awaitable.
Listener = Callable[[list[TopicPartition]], object]


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """A stream's settings, as checked by ``stream_options``.  Times in seconds."""

    topics: list[str]
    group: str | None
    auto_offset_reset: str
    enable_auto_commit: bool  # False without a group
    auto_commit_interval: float
    strategy: str
    instance_id: str | None
    session_timeout: float
    heartbeat_interval: float
    rebalance_timeout: float
    fetch_max_bytes: int
    max_partition_fetch_bytes: int
    fetch_max_wait: float
    partitions: list[TopicPartition] | None  # manual assignment, deduplicated
    on_assign: Listener | None
    on_revoke: Listener | None
    isolation_level: str = "read_uncommitted"


def stream_options(
    topics: str | Sequence[str],
    *,
    group: str | None = None,
    auto_offset_reset: str = "latest",
    enable_auto_commit: bool = True,
    auto_commit_interval: float = DEFAULT_AUTO_COMMIT_INTERVAL_S,
    strategy: str = "range",
    instance_id: str | None = None,
    session_timeout: float = DEFAULT_SESSION_TIMEOUT_S,
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL_S,
    rebalance_timeout: float = DEFAULT_REBALANCE_TIMEOUT_S,
    fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES,
    max_partition_fetch_bytes: int = DEFAULT_MAX_PARTITION_FETCH_BYTES,
    fetch_max_wait: float = DEFAULT_FETCH_MAX_WAIT_S,
    partitions: Sequence[TopicPartition] | None = None,
    on_assign: Listener | None = None,
    on_revoke: Listener | None = None,
    isolation_level: str = "read_uncommitted",
) -> StreamOptions:
    """Check ``subscribe()``'s arguments (``InvalidArgument`` when one is wrong)."""
    names = [topics] if isinstance(topics, str) else list(topics)
    if not names or not all(isinstance(t, str) and t for t in names):
        raise InvalidArgument("subscribe() needs one or more topic names")
    if auto_offset_reset not in OFFSET_RESETS:
        raise InvalidArgument(f"auto_offset_reset must be one of {', '.join(OFFSET_RESETS)}")
    if strategy not in STRATEGIES:
        raise InvalidArgument(f"strategy must be one of {', '.join(STRATEGIES)}")
    if group is not None and not group:
        raise InvalidArgument("group must be a non-empty name (or None)")
    if instance_id is not None and (group is None or partitions is not None):
        raise InvalidArgument("instance_id (static membership) needs a group subscription")
    if not 0 < heartbeat_interval < session_timeout:
        raise InvalidArgument("heartbeat_interval must be > 0 and below session_timeout")
    if rebalance_timeout <= 0 or auto_commit_interval <= 0 or fetch_max_wait < 0:
        raise InvalidArgument(
            "rebalance_timeout and auto_commit_interval must be > 0, fetch_max_wait >= 0"
        )
    if fetch_max_bytes < 1 or max_partition_fetch_bytes < 1:
        raise InvalidArgument("fetch_max_bytes and max_partition_fetch_bytes must be >= 1")
    if isolation_level not in ISOLATION_LEVELS:
        raise InvalidArgument(f"isolation_level must be one of {', '.join(ISOLATION_LEVELS)}")
    tps = None
    if partitions is not None:
        tps = []
        for tp in partitions:
            topic, partition = tp
            if topic not in names or not isinstance(partition, int) or partition < 0:
                raise InvalidArgument(
                    f"partition {tp!r} must be (topic, number >= 0) of a subscribed topic"
                )
            if (topic, partition) not in tps:
                tps.append((topic, partition))
        if not tps:
            raise InvalidArgument("partitions, when given, must name at least one partition")
    return StreamOptions(
        names,
        group,
        auto_offset_reset,
        enable_auto_commit and group is not None,
        auto_commit_interval,
        strategy,
        instance_id,
        session_timeout,
        heartbeat_interval,
        rebalance_timeout,
        fetch_max_bytes,
        max_partition_fetch_bytes,
        fetch_max_wait,
        tps,
        on_assign,
        on_revoke,
        isolation_level,
    )
