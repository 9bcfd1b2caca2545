"""Consumer groups: the state of a group and its members, limits, request checks.

The coordinator (groups.py) owns the objects; nothing here does I/O or keeps time.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from wharf.protocol.errors import InvalidArgument

from .assignors import STRATEGIES

EMPTY: Final = "Empty"
PREPARING: Final = "PreparingRebalance"
STABLE: Final = "Stable"
DEAD: Final = "Dead"

MAX_GROUP_NAME_CHARS: Final = 255
MAX_INSTANCE_ID_CHARS: Final = 255
MAX_CLIENT_ID_CHARS: Final = 64
MAX_SUBSCRIBED_TOPICS: Final = 10_000
# As Kafka's offset.metadata.max.bytes.
MAX_OFFSET_METADATA_CHARS: Final = 4096
MAX_REBALANCE_TIMEOUT_MS: Final = 86_400_000
# Member ids of static members replaced by a newer instance, kept per group so that the
# old incarnation is told it was fenced (414) instead of rejoining (411); oldest dropped.
MAX_FENCED_MEMBERS: Final = 1000
RESET_TARGETS: Final = ("earliest", "latest", "offset", "timestamp")

TopicPartitions = dict[str, list[int]]


class Member:
    __slots__ = (
        "member_id",
        "instance_id",
        "client_id",
        "client_host",
        "conn_id",
        "topics",
        "strategy",
        "session_timeout_ms",
        "rebalance_timeout_ms",
        "owned",
        "assignment",
        "generation",
        "deadline",
        "join",
        "timer",
    )

    def __init__(self, member_id: str, instance_id: str | None, client_id: str) -> None:
        self.member_id = member_id
        self.instance_id = instance_id
        self.client_id = client_id
        self.client_host = ""
        self.conn_id = 0
        self.topics: tuple[str, ...] = ()
        self.strategy = ""
        self.session_timeout_ms = 0
        self.rebalance_timeout_ms = 0
        self.owned: TopicPartitions = {}  # what the member says it holds (sticky)
        self.assignment: TopicPartitions = {}
        self.generation = -1  # the generation it was last assigned in
        self.deadline = 0.0  # loop time its session ends without a heartbeat
        self.join: asyncio.Future[dict[str, Any]] | None = None  # pending GROUP_JOIN
        self.timer: asyncio.TimerHandle | None = None

    @property
    def joining(self) -> bool:
        return self.join is not None and not self.join.done()


class Group:
    def __init__(self, name: str, now_ms: int) -> None:
        self.name = name
        self.state = EMPTY
        self.generation = 0
        self.strategy = ""
        self.leader: str | None = None
        self.members: dict[str, Member] = {}  # in join order
        self.instances: dict[str, str] = {}  # static instance id -> member id
        self.fenced: dict[str, str] = {}  # replaced static member id -> instance id
        self.rebalance_started = 0.0
        self.rebalance_deadline = 0.0  # members not rejoined by then are removed
        self.initial_until = 0.0  # initial rebalance delay of a group that was Empty
        self.timer: asyncio.TimerHandle | None = None
        self.partition_counts: dict[str, int] = {}  # of subscribed topics, last assignment
        self.empty_since_ms = now_ms
        self.rebalances = 0

    def subscribed(self) -> set[str]:
        return {t for m in self.members.values() for t in m.topics}


def check_group_name(group: Any) -> None:
    if not isinstance(group, str) or not 1 <= len(group) <= MAX_GROUP_NAME_CHARS:
        raise InvalidArgument(f"group must be 1..{MAX_GROUP_NAME_CHARS} characters")


def check_topics(topics: Any) -> tuple[str, ...]:
    if (
        not isinstance(topics, (list, tuple))
        or not topics
        or len(topics) > MAX_SUBSCRIBED_TOPICS
        or not all(isinstance(t, str) and t for t in topics)
    ):
        raise InvalidArgument(
            f"topics must be a non-empty array of at most {MAX_SUBSCRIBED_TOPICS} topic names"
        )
    return tuple(sorted(set(topics)))


def check_owned(owned: Any) -> TopicPartitions:
    if owned is None:
        return {}
    bad = InvalidArgument("owned must be an array of [topic, [partition, ...]]")
    if not isinstance(owned, (list, tuple)):
        raise bad
    out: TopicPartitions = {}
    for entry in owned:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise bad
        topic, parts = entry
        if not isinstance(topic, str) or not isinstance(parts, (list, tuple)):
            raise bad
        if not all(type(p) is int and p >= 0 for p in parts):
            raise bad
        out.setdefault(topic, []).extend(parts)
    return out


def check_join(
    group: Any,
    topics: Any,
    instance_id: str | None,
    strategy: str,
    session_timeout_ms: int,
    rebalance_timeout_ms: int,
    owned: Any,
    session_bounds_ms: tuple[int, int],
) -> tuple[tuple[str, ...], TopicPartitions]:
    """Check a GROUP_JOIN; returns the subscription (sorted, unique) and ``owned``."""
    check_group_name(group)
    subscription = check_topics(topics)
    owned_map = check_owned(owned)
    if strategy not in STRATEGIES:
        raise InvalidArgument(
            f"unknown assignment strategy {strategy!r}; use one of {', '.join(STRATEGIES)}"
        )
    lo, hi = session_bounds_ms
    if not lo <= session_timeout_ms <= hi:
        raise InvalidArgument(
            f"session_timeout_ms {session_timeout_ms} is outside the broker's bounds {lo}..{hi} "
            "(group_min_session_timeout_ms, group_max_session_timeout_ms)",
            details={"min": lo, "max": hi},
        )
    if not 1 <= rebalance_timeout_ms <= MAX_REBALANCE_TIMEOUT_MS:
        raise InvalidArgument(f"rebalance_timeout_ms must be 1..{MAX_REBALANCE_TIMEOUT_MS}")
    if instance_id is not None and not 1 <= len(instance_id) <= MAX_INSTANCE_ID_CHARS:
        raise InvalidArgument(f"instance_id must be 1..{MAX_INSTANCE_ID_CHARS} characters")
    return subscription, owned_map


def check_offset_entries(offsets: Any) -> list[tuple[str, int, int, str | None]]:
    """Check the entries of an OFFSET_COMMIT: ``[topic, partition, offset, metadata]``."""
    if not isinstance(offsets, (list, tuple)):
        raise InvalidArgument("offsets must be an array of [topic, partition, offset, metadata]")
    out = []
    for i, entry in enumerate(offsets):
        if not isinstance(entry, (list, tuple)) or len(entry) < 3:
            raise InvalidArgument(f"offsets[{i}] must be [topic, partition, offset, metadata]")
        topic, partition, offset = entry[0], entry[1], entry[2]
        metadata = entry[3] if len(entry) > 3 else None
        if not isinstance(topic, str) or type(partition) is not int or type(offset) is not int:
            raise InvalidArgument(f"offsets[{i}]: topic str, partition int, offset int")
        if offset < 0:
            raise InvalidArgument(
                f"offsets[{i}]: offset {offset} must be >= 0 (the next offset to read)"
            )
        if metadata is not None and (
            not isinstance(metadata, str) or len(metadata) > MAX_OFFSET_METADATA_CHARS
        ):
            raise InvalidArgument(
                f"offsets[{i}]: metadata must be a string of at most "
                f"{MAX_OFFSET_METADATA_CHARS} characters, or nil"
            )
        out.append((topic, partition, offset, metadata))
    return out
