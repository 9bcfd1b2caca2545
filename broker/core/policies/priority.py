"""Ready messages of a priority queue (x-max-priority).

One FIFO deque per priority level plus a heap of requeued messages ordered by
(-priority, position): the next message is the highest priority, oldest first, and a
requeued message goes back to its place within its priority, as in RabbitMQ.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..queues import Message


def message_priority(properties: dict[str, object] | None, max_priority: int) -> int:
    """0..max_priority; none = 0, above the maximum = the maximum (RabbitMQ)."""
    if not properties:
        return 0
    p = properties.get("priority")
    if type(p) is not int or p <= 0:
        return 0
    return min(p, max_priority)


class PriorityReady:
    __slots__ = ("levels", "requeued", "count", "max_priority", "top")

    def __init__(self, max_priority: int) -> None:
        self.max_priority = max_priority
        self.levels: list[deque[Message]] = [deque() for _ in range(max_priority + 1)]
        self.requeued: list[tuple[int, int, Message]] = []
        self.count = 0
        self.top = -1  # highest non-empty level, -1 when all are empty

    def __len__(self) -> int:
        return self.count

    def append(self, msg: Message) -> None:
        p = message_priority(msg.properties, self.max_priority)
        self.levels[p].append(msg)
        self.count += 1
        if p > self.top:
            self.top = p

    def extend(self, msgs: list[Message], properties: dict[str, object] | None) -> None:
        """Messages that share ``properties`` (one publish batch)."""
        p = message_priority(properties, self.max_priority)
        self.levels[p].extend(msgs)
        self.count += len(msgs)
        if p > self.top:
            self.top = p

    def push_requeued(self, msg: Message) -> None:
        p = message_priority(msg.properties, self.max_priority)
        heapq.heappush(self.requeued, (-p, msg.position, msg))
        self.count += 1

    def _top_level(self) -> int:
        p = self.top
        levels = self.levels
        while p >= 0 and not levels[p]:
            p -= 1
        self.top = p
        return p

    def head(self) -> Message | None:
        """The message that would be delivered next."""
        p = self._top_level()
        if self.requeued:
            rp, rpos, rmsg = self.requeued[0]
            if p < 0 or (rp, rpos) < (-p, self.levels[p][0].position):
                return rmsg
        return self.levels[p][0] if p >= 0 else None

    def pop(self) -> Message | None:
        p = self._top_level()
        if self.requeued:
            rp, rpos, rmsg = self.requeued[0]
            if p < 0 or (rp, rpos) < (-p, self.levels[p][0].position):
                heapq.heappop(self.requeued)
                self.count -= 1
                return rmsg
        if p < 0:
            return None
        self.count -= 1
        return self.levels[p].popleft()

    def pop_lowest(self) -> Message | None:
        """Drop-head for a full priority queue: the oldest message of the lowest priority."""
        for level in self.levels:
            if level:
                self.count -= 1
                return level.popleft()
        if self.requeued:
            # Only requeued messages left: drop the lowest-priority, oldest one.
            worst = max(self.requeued, key=lambda e: (e[0], -e[1]))
            self.requeued.remove(worst)
            heapq.heapify(self.requeued)
            self.count -= 1
            return worst[2]
        return None

    def heads(self) -> Iterator[Message]:
        """The head of every level (TTL expiry looks only at heads)."""
        for level in self.levels:
            if level:
                yield level[0]
        if self.requeued:
            yield self.requeued[0][2]

    def remove(self, msg: Message) -> None:
        """Remove a head returned by ``heads()``."""
        if self.requeued and self.requeued[0][2] is msg:
            heapq.heappop(self.requeued)
        else:
            self.levels[message_priority(msg.properties, self.max_priority)].popleft()
        self.count -= 1

    def __iter__(self) -> Iterator[Message]:
        for _, _, m in self.requeued:
            yield m
        for level in reversed(self.levels):
            yield from level

    def clear(self) -> None:
        for level in self.levels:
            level.clear()
        self.requeued.clear()
        self.count = 0
