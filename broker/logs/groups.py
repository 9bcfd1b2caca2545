"""The consumer-group coordinator: membership, generations, assignments, offsets.

Kafka's classic group protocol, except that the broker computes the assignment
(assignors.py) instead of a leader member.  One state machine per group::

    Empty --join--> PreparingRebalance --all joined / timeout--> Stable
    Stable --join, leave, session timeout, subscription or partitions change--> Preparing
    Preparing --no members left--> Empty;  Empty without offsets --> Dead (forgotten)

A GROUP_JOIN is answered when the next generation forms.  A join to an Empty group
waits ``group_initial_rebalance_delay_ms`` (each new joiner extends the wait, up to the
rebalance timeout) so members starting together get one assignment.  In
PreparingRebalance the group waits until every member has rejoined; members that have
not when the rebalance timeout passes are removed.  Then the assignment is computed,
the generation bumped, every pending join answered, and the group is Stable.

Membership lives in memory: after a broker restart members get 411 and rejoin.
Committed offsets live in the offsets log (offsets.py) and survive restarts.

Timers: one per group while it prepares a rebalance, one per member for its session
(re-armed lazily: a heartbeat only moves the member's deadline).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wharf.protocol.errors import (
    FencedInstanceId,
    IllegalGeneration,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    RebalanceInProgress,
    UnknownMember,
    WharfError,
)

from .assignors import assign
from .group_model import (
    DEAD,
    EMPTY,
    MAX_CLIENT_ID_CHARS,
    MAX_FENCED_MEMBERS,
    PREPARING,
    RESET_TARGETS,
    STABLE,
    Group,
    Member,
    check_group_name,
    check_join,
    check_offset_entries,
)
from .offsets import WILDCARD, Change, Committed, OffsetsLog

if TYPE_CHECKING:
    from ..config import Settings
    from .partition import Partition
    from .topics import Topic, TopicRegistry

log = logging.getLogger("wharf.groups")


class GroupCoordinator:
    """Owns every consumer group and the offsets log.  Handlers call it synchronously;
    calls that answer later return futures."""

    def __init__(self, topics: TopicRegistry, directory: Path, settings: Settings) -> None:
        self.topics = topics
        self.settings = settings
        self.offsets = OffsetsLog(directory)
        self.groups: dict[str, Group] = {}
        self._by_conn: dict[int, set[tuple[str, str]]] = {}
        self._expiring: set[str] = set()
        self._loop = asyncio.get_running_loop()
        topics.on_topic_deleted.append(self.topic_deleted)

    # -- membership ------------------------------------------------------------------

    def join(
        self,
        group: str,
        topics: Any,
        member_id: str,
        instance_id: str | None,
        strategy: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        owned: Any,
        *,
        client_id: str = "",
        client_host: str = "",
        conn_id: int = 0,
    ) -> asyncio.Future[dict[str, Any]]:
        s = self.settings
        subscription, owned_map = check_join(
            group,
            topics,
            instance_id,
            strategy,
            session_timeout_ms,
            rebalance_timeout_ms,
            owned,
            (s.group_min_session_timeout_ms, s.group_max_session_timeout_ms),
        )
        g = self.groups.get(group)
        members = g.members if g is not None else {}
        static_id = None
        if g is not None and instance_id is not None:
            static_id = g.instances.get(instance_id)
        for other in members.values():
            if other.member_id not in (member_id, static_id) and other.strategy != strategy:
                raise InvalidArgument(
                    f"group '{group}' uses the {other.strategy!r} strategy; every member must "
                    f"ask for the same one (got {strategy!r})",
                    details={"strategy": other.strategy},
                )
        if member_id:
            g, m = self._member(group, member_id)
            if instance_id is not None and static_id is not None and static_id != member_id:
                raise _fenced(group, member_id, instance_id)
            if instance_id is not None and static_id != member_id:
                raise UnknownMember(
                    f"member '{member_id}' is not instance '{instance_id}' of group '{group}'; "
                    "join again with an empty member id",
                    details={"group": group},
                )
        elif g is not None and static_id is not None:
            m = self._replace_static(g, g.members[static_id], client_id)
        else:
            if g is None:
                g = self.groups[group] = Group(group, int(time.time() * 1000))
            m = self._add_member(g, instance_id, client_id)
        fut: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._bind_conn(g, m, conn_id)
        m.client_host = client_host
        m.session_timeout_ms = session_timeout_ms
        m.rebalance_timeout_ms = rebalance_timeout_ms
        if owned_map and m.generation < 0:
            m.owned = owned_map
        changed = m.topics != subscription or m.strategy != strategy
        m.topics = subscription
        m.strategy = strategy
        if g.state == STABLE and not changed and m.generation == g.generation:
            # Nothing to rebalance for: a member (or a static member's new incarnation)
            # asking again gets the current generation and its assignment.
            self._touch(g, m)
            fut.set_result(self._join_reply(g, m))
            return fut
        if m.joining:
            assert m.join is not None
            m.join.set_exception(RebalanceInProgress("superseded by a newer join request"))
        m.join = fut
        fut.add_done_callback(_retrieve)
        if g.state != PREPARING:
            reason = "a member joined" if m.generation < 0 else "a member changed subscription"
            self._prepare(g, reason)
        else:
            self._extend(g, m)
        self._maybe_complete(g)
        return fut

    def _add_member(self, g: Group, instance_id: str | None, client_id: str) -> Member:
        prefix = (client_id or "member")[:MAX_CLIENT_ID_CHARS]
        m = Member(f"{prefix}-{uuid.uuid4()}", instance_id, client_id)
        g.members[m.member_id] = m
        if instance_id is not None:
            g.instances[instance_id] = m.member_id
        return m

    def _replace_static(self, g: Group, old: Member, client_id: str) -> Member:
        """A static member came back with an empty member id: the same slot (and its
        assignment) under a new member id; the old id is fenced."""
        old_id = old.member_id
        prefix = (client_id or "member")[:MAX_CLIENT_ID_CHARS]
        new_id = f"{prefix}-{uuid.uuid4()}"
        del g.members[old_id]
        self._unbind_conn(g, old)
        assert old.instance_id is not None
        g.fenced[old_id] = old.instance_id
        if len(g.fenced) > MAX_FENCED_MEMBERS:
            del g.fenced[next(iter(g.fenced))]
        old.member_id = new_id
        old.client_id = client_id
        g.members[new_id] = old
        g.instances[old.instance_id] = new_id
        if g.leader == old_id:
            g.leader = new_id
        if old.joining:
            assert old.join is not None
            old.join.set_exception(_fenced(g.name, old_id, old.instance_id))
            old.join = None
        log.info(
            "group %s: static member %s rejoined as %s (was %s)",
            g.name,
            old.instance_id,
            new_id,
            old_id,
        )
        return old

    def heartbeat(self, group: str, member_id: str, generation: int) -> None:
        g, m = self._member(group, member_id)
        if generation != g.generation:
            raise IllegalGeneration(
                f"generation {generation} of group '{group}' is over (now {g.generation}); "
                "join again",
                details={"generation": g.generation},
            )
        self._touch(g, m)
        if g.state == PREPARING:
            raise RebalanceInProgress(
                f"group '{group}' is rebalancing; join again to get a new assignment"
            )

    def leave(self, group: str, member_id: str) -> None:
        g, m = self._member(group, member_id)
        self._remove(g, m, "a member left")

    def connection_closed(self, conn_id: int) -> None:
        """Dynamic members of a closed connection leave at once; static ones stay until
        their session times out."""
        for group, member_id in sorted(self._by_conn.pop(conn_id, ())):
            g = self.groups.get(group)
            m = g.members.get(member_id) if g is not None else None
            if g is not None and m is not None and m.instance_id is None:
                m.conn_id = 0
                self._remove(g, m, "a member's connection closed")

    def _member(self, group: str, member_id: str) -> tuple[Group, Member]:
        g = self.groups.get(group)
        m = g.members.get(member_id) if g is not None else None
        if g is not None and m is None and member_id in g.fenced:
            raise _fenced(group, member_id, g.fenced[member_id])
        if g is None or m is None:
            raise UnknownMember(
                f"member '{member_id}' is not in group '{group}' (it was removed, fenced or "
                "the broker restarted); join again with an empty member id",
                details={"group": group},
            )
        return g, m

    def _bind_conn(self, g: Group, m: Member, conn_id: int) -> None:
        if m.conn_id == conn_id:
            return
        self._unbind_conn(g, m)
        m.conn_id = conn_id
        if conn_id:
            self._by_conn.setdefault(conn_id, set()).add((g.name, m.member_id))

    def _unbind_conn(self, g: Group, m: Member) -> None:
        members = self._by_conn.get(m.conn_id)
        if members is not None:
            members.discard((g.name, m.member_id))
            if not members:
                del self._by_conn[m.conn_id]

    def _remove(self, g: Group, m: Member, reason: str) -> None:
        del g.members[m.member_id]
        if m.instance_id is not None and g.instances.get(m.instance_id) == m.member_id:
            del g.instances[m.instance_id]
        self._unbind_conn(g, m)
        if m.timer is not None:
            m.timer.cancel()
            m.timer = None
        if m.joining:
            assert m.join is not None
            m.join.set_exception(UnknownMember(f"removed from group '{g.name}': {reason}"))
        if g.leader == m.member_id:
            g.leader = None
        log.info("group %s: member %s removed (%s)", g.name, m.member_id, reason)
        if not g.members:
            self._become_empty(g)
        elif g.state == STABLE:
            self._prepare(g, reason)
        else:
            self._maybe_complete(g)

    def _become_empty(self, g: Group) -> None:
        if g.timer is not None:
            g.timer.cancel()
            g.timer = None
        if g.state != EMPTY:
            g.generation += 1
        g.state = EMPTY
        g.leader = None
        g.partition_counts = {}
        g.empty_since_ms = int(time.time() * 1000)
        if g.name not in self.offsets.groups:
            self._forget(g)

    def _forget(self, g: Group) -> None:
        if self.groups.get(g.name) is g and not g.members:
            g.state = DEAD
            del self.groups[g.name]

    # -- sessions --------------------------------------------------------------------

    def _touch(self, g: Group, m: Member) -> None:
        m.deadline = self._loop.time() + m.session_timeout_ms / 1000
        if m.timer is not None and m.timer.when() > m.deadline:
            m.timer.cancel()  # the member asked for a shorter session
            m.timer = None
        if m.timer is None:
            m.timer = self._loop.call_at(m.deadline, self._session_check, g, m)

    def _session_check(self, g: Group, m: Member) -> None:
        m.timer = None
        if g.members.get(m.member_id) is not m:
            return
        now = self._loop.time()
        if m.joining:
            # Waiting for the generation to form: the rebalance timeout governs it.
            m.deadline = now + m.session_timeout_ms / 1000
        if now < m.deadline:
            m.timer = self._loop.call_at(m.deadline, self._session_check, g, m)
            return
        self._remove(g, m, f"no heartbeat within session_timeout_ms={m.session_timeout_ms}")

    # -- rebalancing -----------------------------------------------------------------

    def _prepare(self, g: Group, reason: str) -> None:
        now = self._loop.time()
        was_empty = g.state == EMPTY
        g.state = PREPARING
        g.rebalance_started = now
        g.rebalance_deadline = now + self._rebalance_timeout_s(g)
        g.initial_until = now
        if was_empty:
            delay = self.settings.group_initial_rebalance_delay_ms / 1000
            g.initial_until = min(now + delay, g.rebalance_deadline)
        log.info(
            "group %s: preparing rebalance of generation %d (%s)", g.name, g.generation, reason
        )
        self._arm(g)

    def _extend(self, g: Group, m: Member) -> None:
        """A member joined while the group prepares: a later rebalance timeout counts,
        and during the initial delay a new member extends the wait."""
        now = self._loop.time()
        g.rebalance_deadline = max(
            g.rebalance_deadline, g.rebalance_started + self._rebalance_timeout_s(g)
        )
        if m.generation < 0 and now < g.initial_until:
            delay = self.settings.group_initial_rebalance_delay_ms / 1000
            g.initial_until = min(now + delay, g.rebalance_deadline)
            self._arm(g)

    def _rebalance_timeout_s(self, g: Group) -> float:
        return max((m.rebalance_timeout_ms for m in g.members.values()), default=0) / 1000

    def _arm(self, g: Group) -> None:
        if g.timer is not None:
            g.timer.cancel()
        now = self._loop.time()
        at = g.initial_until if now < g.initial_until else g.rebalance_deadline
        g.timer = self._loop.call_at(at, self._rebalance_timer, g)

    def _rebalance_timer(self, g: Group) -> None:
        g.timer = None
        if self.groups.get(g.name) is not g or g.state != PREPARING:
            return
        if self._loop.time() >= g.rebalance_deadline:
            late = [m for m in g.members.values() if not m.joining]
            for m in late:
                if g.members.get(m.member_id) is m and g.state == PREPARING:
                    self._remove(g, m, "did not rejoin within the rebalance timeout")
            if g.state != PREPARING:
                return
        self._maybe_complete(g)
        if g.state == PREPARING and g.timer is None:
            self._arm(g)

    def _maybe_complete(self, g: Group) -> None:
        if g.state != PREPARING:
            return
        if self._loop.time() < g.initial_until:
            return
        if all(m.joining for m in g.members.values()):
            self._complete(g)

    def _complete(self, g: Group) -> None:
        members = list(g.members.values())
        if not members:
            self._become_empty(g)
            return
        strategy = members[0].strategy
        counts = self._partition_counts(g.subscribed())
        previous = {m.member_id: (m.assignment if m.generation >= 0 else m.owned) for m in members}
        result = assign(
            strategy,
            {m.member_id: m.topics for m in members},
            {t: n for t, n in counts.items() if n > 0},
            previous,
        )
        if g.timer is not None:
            g.timer.cancel()
            g.timer = None
        g.generation += 1
        g.strategy = strategy
        g.partition_counts = counts
        if g.leader not in g.members:
            g.leader = members[0].member_id
        g.state = STABLE
        g.rebalances += 1
        for m in members:
            m.assignment = result[m.member_id]
            m.generation = g.generation
            m.owned = {}
            self._touch(g, m)
            fut, m.join = m.join, None
            if fut is not None and not fut.done():
                fut.set_result(self._join_reply(g, m))
        log.info(
            "group %s: generation %d with %d members (%s)",
            g.name,
            g.generation,
            len(members),
            strategy,
        )

    def _join_reply(self, g: Group, m: Member) -> dict[str, Any]:
        return {
            "member_id": m.member_id,
            "generation": g.generation,
            "assignment": [[t, list(ps)] for t, ps in sorted(m.assignment.items())],
            "strategy": g.strategy,
            "members": len(g.members),
            "leader": g.leader,
        }

    def _topic(self, name: str) -> Topic | None:
        try:
            return self.topics.get(name)
        except NotFound:
            return None

    def _partition(self, topic: str, partition: int) -> Partition:
        """The partition, or 404 naming what exists."""
        parts = self.topics.get(topic).partitions
        if not 0 <= partition < len(parts):
            raise NotFound(
                f"topic '{topic}' has no partition {partition} (it has {len(parts)})",
                details={"partitions": len(parts)},
            )
        return parts[partition]

    def _partition_counts(self, topics: set[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in sorted(topics):
            topic = self._topic(t)
            out[t] = len(topic.partitions) if topic is not None else 0
        return out

    # -- offsets ---------------------------------------------------------------------

    def commit(
        self, group: str, member_id: str, generation: int, offsets: Any
    ) -> asyncio.Future[None]:
        """Queue committed offsets; the future is done once they are fsynced."""
        entries = self.check_commit(group, member_id, generation, offsets)
        now_ms = int(time.time() * 1000)
        changes: list[Change] = [
            ((group, t, p), (off, meta, now_ms)) for t, p, off, meta in entries
        ]
        return self.offsets.commit(changes)

    def check_commit(
        self, group: str, member_id: str, generation: int, offsets: Any
    ) -> list[tuple[str, int, int, str | None]]:
        """The checks of a commit (also of a transaction's send_offsets): the
        ``(topic, partition, offset, metadata)`` entries, or the error."""
        check_group_name(group)
        g = self.groups.get(group)
        if member_id == "" and generation == -1:
            if g is not None and g.members:
                raise UnknownMember(
                    f"group '{group}' has members: commit as a member of its current "
                    "generation (standalone commits need a group without members)",
                    details={"group": group},
                )
        else:
            g, m = self._member(group, member_id)
            if generation != g.generation:
                raise IllegalGeneration(
                    f"commit from generation {generation} of group '{group}', which is now at "
                    f"{g.generation}: the partitions may have moved; join again",
                    details={"generation": g.generation},
                )
            self._touch(g, m)
        entries = check_offset_entries(offsets)
        for t, p, _, _ in entries:
            self._partition(t, p)  # 404 when unknown
        return entries

    def fetch_offsets(self, group: str, topics: Any) -> dict[str, Any]:
        if topics is not None and (
            not isinstance(topics, (list, tuple)) or not all(isinstance(t, str) for t in topics)
        ):
            raise InvalidArgument("topics must be an array of topic names, or nil for all")
        wanted = None if topics is None else set(topics)
        committed = self.offsets.committed(group)
        return {
            "offsets": [
                [t, p, c.offset, c.metadata]
                for (t, p), c in sorted(committed.items())
                if wanted is None or t in wanted
            ]
        }

    def reset_offsets(
        self,
        group: str,
        topic: str,
        to: str,
        value: int | None,
        partitions: Any,
        *,
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], asyncio.Future[None]]:
        """Move committed offsets of a group without members; returns the result and a
        future done once it is fsynced.  ``dry_run``: only compute the new positions
        (allowed while the group has members, since nothing changes)."""
        check_group_name(group)
        if not dry_run:
            self._check_no_members(group, "reset its offsets")
        if to not in RESET_TARGETS:
            raise InvalidArgument(f"reset to must be one of {', '.join(RESET_TARGETS)}, got {to!r}")
        if to in ("offset", "timestamp") and (value is None or value < 0):
            raise InvalidArgument(f"reset to {to} needs a value >= 0")
        if partitions is None:
            numbers = list(range(len(self.topics.get(topic).partitions)))
        elif isinstance(partitions, (list, tuple)) and all(type(p) is int for p in partitions):
            numbers = sorted(set(partitions))
        else:
            raise InvalidArgument("partitions must be an array of partition numbers, or nil")
        now_ms = int(time.time() * 1000)
        result: list[list[Any]] = []
        changes: list[Change] = []
        for p in numbers:
            part = self._partition(topic, p)
            if to == "earliest":
                offset = part.earliest
            elif to == "latest":
                offset = part.high_watermark
            elif to == "offset":
                assert value is not None
                offset = min(max(value, part.earliest), part.high_watermark)
            else:
                assert value is not None
                offset = self.topics.offset_for_timestamp(topic, p, value)
            result.append([topic, p, offset])
            changes.append(((group, topic, p), (offset, None, now_ms)))
        if dry_run:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return {"offsets": result}, done
        return {"offsets": result}, self.offsets.commit(changes)

    def _check_no_members(self, group: str, what: str) -> None:
        g = self.groups.get(group)
        if g is not None and g.members:
            raise PreconditionFailed(
                f"group '{group}' has {len(g.members)} members; stop them to {what} "
                "(as Kafka's NON_EMPTY_GROUP)",
                details={"members": len(g.members)},
            )

    # -- groups as a whole -----------------------------------------------------------

    def list_groups(self) -> list[dict[str, Any]]:
        names = set(self.groups) | set(self.offsets.groups)
        out = []
        for name in sorted(names):
            g = self.groups.get(name)
            out.append(
                {
                    "group": name,
                    "state": g.state if g is not None else EMPTY,
                    "members": len(g.members) if g is not None else 0,
                    "generation": g.generation if g is not None else 0,
                    "strategy": g.strategy if g is not None else "",
                }
            )
        return out

    def describe(self, group: str) -> dict[str, Any]:
        g = self.groups.get(group)
        committed = self.offsets.committed(group)
        if g is None and not committed:
            raise NotFound(f"no consumer group '{group}'", details={"group": group})
        members = list(g.members.values()) if g is not None else []
        return {
            "group": group,
            "state": g.state if g is not None else EMPTY,
            "generation": g.generation if g is not None else 0,
            "strategy": g.strategy if g is not None else "",
            "leader": g.leader if g is not None else None,
            "members": [
                {
                    "member_id": m.member_id,
                    "instance_id": m.instance_id,
                    "client_id": m.client_id,
                    "client_host": m.client_host,
                    "topics": list(m.topics),
                    "assignment": [[t, list(ps)] for t, ps in sorted(m.assignment.items())],
                }
                for m in members
            ],
            "offsets": [
                {"topic": t, "partition": p, "committed": c, "latest": latest, "lag": lag}
                for t, p, c, latest, lag in self._lag_rows(group, members, committed)
            ],
        }

    def _lag_rows(
        self, group: str, members: list[Member], committed: dict[tuple[str, int], Committed]
    ) -> Iterator[tuple[str, int, int, int, int]]:
        keys = set(committed)
        for m in members:
            keys.update((t, p) for t, ps in m.assignment.items() for p in ps)
        for t, p in sorted(keys):
            topic = self._topic(t)
            if topic is None or p >= len(topic.partitions):
                continue
            part = topic.partitions[p]
            latest = part.high_watermark
            c = committed.get((t, p))
            if c is None:
                yield t, p, -1, latest, max(0, latest - part.earliest)
            else:
                yield t, p, c.offset, latest, max(0, latest - c.offset)

    def delete(self, group: str) -> asyncio.Future[None]:
        """Delete a group without members and its committed offsets (tombstones)."""
        check_group_name(group)
        self._check_no_members(group, "delete it")
        g = self.groups.get(group)
        if g is None and group not in self.offsets.groups:
            raise NotFound(f"no consumer group '{group}'", details={"group": group})
        if g is not None:
            self._forget(g)
        log.info("group %s: deleted", group)
        return self.offsets.commit([((group, "", WILDCARD), None)])

    # -- topics and time -------------------------------------------------------------

    def topic_deleted(self, topic: str) -> None:
        """Drop committed offsets of a deleted topic; rebalance groups subscribed to it."""
        self.offsets.commit([(("", topic, WILDCARD), None)]).add_done_callback(_retrieve)
        for g in list(self.groups.values()):
            if g.state == STABLE and topic in g.subscribed():
                self._prepare(g, f"subscribed topic '{topic}' was deleted")

    def tick(self) -> None:
        """Periodic checks (~1/s): partition counts of subscribed topics, offset expiry."""
        for g in list(self.groups.values()):
            if g.state == STABLE and self._partition_counts(g.subscribed()) != g.partition_counts:
                self._prepare(g, "the partitions of a subscribed topic changed")
            elif (
                g.state == EMPTY
                and g.name not in self.offsets.groups
                and g.name not in self._expiring
            ):
                self._forget(g)  # its offsets went with a deleted topic
        self._expire_offsets(int(time.time() * 1000))

    def _expire_offsets(self, now_ms: int) -> None:
        retention = self.settings.offsets_retention_ms
        for name, last in list(self.offsets.last_commit.items()):
            if name in self._expiring:
                continue
            g = self.groups.get(name)
            if g is not None and g.members:
                continue
            since = max(last, g.empty_since_ms if g is not None else 0)
            if now_ms - since < retention:
                continue
            log.info(
                "group %s: committed offsets expired (no members for %d ms)", name, now_ms - since
            )
            self._expiring.add(name)
            fut = self.offsets.commit([((name, "", WILDCARD), None)])
            fut.add_done_callback(functools.partial(self._expired, name))

    def _expired(self, name: str, fut: asyncio.Future[None]) -> None:
        self._expiring.discard(name)
        fut.exception()
        g = self.groups.get(name)
        if g is not None and not g.members and name not in self.offsets.groups:
            self._forget(g)

    # -- metrics (read by broker/metrics.py at scrape time) ---------------------------

    def lag_rows(self) -> Iterator[tuple[str, str, int, int, int]]:
        """(group, topic, partition, committed, lag) of every committed offset and
        assigned partition."""
        names = set(self.groups) | set(self.offsets.groups)
        for name in sorted(names):
            g = self.groups.get(name)
            members = list(g.members.values()) if g is not None else []
            for t, p, c, _, lag in self._lag_rows(name, members, self.offsets.committed(name)):
                yield name, t, p, c, lag

    def group_rows(self) -> Iterator[tuple[str, int, int]]:
        """(group, members, rebalances) of the groups with membership state."""
        for name in sorted(self.groups):
            g = self.groups[name]
            yield name, len(g.members), g.rebalances

    async def close(self) -> None:
        for g in self.groups.values():
            if g.timer is not None:
                g.timer.cancel()
            for m in g.members.values():
                if m.timer is not None:
                    m.timer.cancel()
                if m.joining:
                    assert m.join is not None
                    m.join.cancel()
        self.groups.clear()
        self._by_conn.clear()
        await self.offsets.close()

    # The management API and ctl call ``coordinator.list()`` and ``describe()``.
    list = list_groups


def _fenced(group: str, member_id: str, instance_id: str) -> WharfError:
    """A static member's older incarnation: a newer one joined with its instance id
    (Kafka's FENCED_INSTANCE_ID).  It must stop, not rejoin and take the slot back."""
    return FencedInstanceId(
        f"member '{member_id}' of group '{group}' was replaced by a newer member with "
        f"instance_id '{instance_id}'; two consumers must not share an instance_id",
        details={"group": group, "instance_id": instance_id},
    )


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen (a pending join whose connection is gone)."""
    if not fut.cancelled():
        fut.exception()
