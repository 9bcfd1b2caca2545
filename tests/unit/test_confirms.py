"""Publisher confirms of one connection (broker/wire/native/confirms.py), with fake
collaborators: what is confirmed or nacked, in which order, and when the store is asked."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from wharf.broker.wire.native.confirms import Confirms
from wharf.protocol import frames as F
from wharf.protocol.errors import ResourceError, WharfError


@dataclass
class Fakes:
    frames: list[F.Frame] = field(default_factory=list)
    errors: list[tuple[int, WharfError]] = field(default_factory=list)
    flushes: int = 0
    store_waits: int = 0
    durable: int = 0
    publish_nacked: int = 0

    def confirms(self, loop: asyncio.AbstractEventLoop) -> Confirms:
        return Confirms(
            send_frame=self.frames.append,
            send_error=lambda rid, exc: self.errors.append((rid, exc)),
            schedule_flush=self._flush,
            loop=loop,
            await_store=self._await_store,
            durable_batch=lambda: self.durable,
            stats=self,
        )

    def _flush(self) -> None:
        self.flushes += 1

    def _await_store(self) -> None:
        self.store_waits += 1


async def test_a_transient_publish_is_ready_at_the_next_flush() -> None:
    fakes = Fakes()
    confirms = fakes.confirms(asyncio.get_running_loop())
    confirms.published(1, 3, 0, None)
    confirms.published(4, 2, 0, None)
    assert fakes.flushes == 2
    assert fakes.store_waits == 0
    assert confirms.take_ready() == 5
    assert confirms.take_ready() == 0


async def test_without_a_sequence_number_nothing_is_confirmed() -> None:
    fakes = Fakes()
    confirms = fakes.confirms(asyncio.get_running_loop())
    confirms.published(0, 10, 7, None)
    assert confirms.take_ready() == 0
    assert confirms.waiting == 0
    assert fakes.store_waits == 0


async def test_publishes_after_a_persistent_one_wait_for_it() -> None:
    fakes = Fakes()
    confirms = fakes.confirms(asyncio.get_running_loop())
    confirms.published(1, 1, 0, None)
    confirms.published(2, 1, 5, None)  # waits for store batch 5
    confirms.published(3, 1, 0, None)  # transient, but after a waiting one
    assert fakes.store_waits == 1
    assert confirms.take_ready() == 1
    assert confirms.waiting == 2
    fakes.durable = 4
    assert confirms.store_committed(4) is True
    assert confirms.take_ready() == 0
    fakes.durable = 5
    assert confirms.store_committed(5) is False
    assert confirms.take_ready() == 3
    assert fakes.frames == []


async def test_a_failed_store_batch_nacks_its_publishes_in_order() -> None:
    fakes = Fakes()
    confirms = fakes.confirms(asyncio.get_running_loop())
    confirms.published(1, 2, 8, None)
    confirms.published(3, 1, 9, None)
    assert confirms.store_committed(-8) is True
    assert fakes.frames == [
        F.PublishNack(0, 1, ResourceError.code, "message store write failed"),
        F.PublishNack(0, 2, ResourceError.code, "message store write failed"),
    ]
    assert fakes.publish_nacked == 2
    fakes.durable = 9
    assert confirms.store_committed(9) is False
    assert confirms.take_ready() == 3


async def test_an_unnumbered_nack_is_an_error() -> None:
    fakes = Fakes()
    confirms = fakes.confirms(asyncio.get_running_loop())
    exc = ResourceError("full")
    confirms.nack(0, 4, exc)
    assert fakes.errors == [(0, exc)]
    assert fakes.frames == []
    assert fakes.publish_nacked == 4


async def test_duplicates_go_out_with_the_confirm_that_covers_them() -> None:
    fakes = Fakes()
    confirms = fakes.confirms(asyncio.get_running_loop())
    confirms.published(1, 1, 0, None, 1)  # a duplicate, nothing to wait for
    confirms.published(2, 3, 5, None, 2)  # seqs 3 and 4 duplicates, waits for batch 5
    confirms.published(5, 1, 0, None)
    assert confirms.take_ready_with_duplicates() == (1, [1])
    assert confirms.take_ready_with_duplicates() == (0, None)
    fakes.durable = 5
    confirms.store_committed(5)
    assert confirms.take_ready_with_duplicates() == (5, [3, 4])
    # AMQP takes plain confirms: the flags are dropped, not kept for later.
    confirms.published(6, 1, 0, None, 1)
    assert confirms.take_ready() == 6
    confirms.published(7, 1, 0, None)
    assert confirms.take_ready_with_duplicates() == (7, None)


async def test_a_nacked_batch_reports_no_duplicates() -> None:
    fakes = Fakes()
    confirms = fakes.confirms(asyncio.get_running_loop())
    confirms.published(1, 2, 5, None, 1)
    confirms.store_committed(-5)
    assert confirms.take_ready_with_duplicates() == (0, None)
    assert [f.seq for f in fakes.frames if isinstance(f, F.PublishNack)] == [1, 2]
