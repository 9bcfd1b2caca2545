"""The transaction rules of a produced batch (logs/transactions.py ``admit_produce``):
decided once in the logs core for every way in; the native adapter only translates the
refusal into an ERROR frame (or a log line for an unanswered plain batch)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from wharf.broker.logs.transactions import admit_produce
from wharf.protocol.errors import InvalidArgument, InvalidTxnState


class FakeCoordinator:
    """Records what admit_produce asks of the coordinator."""

    def __init__(self, wait: asyncio.Future[None] | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.wait = wait
        self.transactional_pids: set[int] = set()

    def before_produce(
        self, producer_id: int, epoch: int, topic: str, partition: int
    ) -> asyncio.Future[None] | None:
        self.calls.append(("before_produce", producer_id, epoch, topic, partition))
        return self.wait

    def check_plain_produce(self, producer_id: int) -> None:
        self.calls.append(("check_plain_produce", producer_id))
        if producer_id in self.transactional_pids:
            raise InvalidTxnState("transactional producer")


def admit(coordinator: FakeCoordinator | None, **kw: Any) -> asyncio.Future[None] | None:
    args: dict[str, Any] = dict(
        producer_id=7, producer_epoch=0, topic="t", partition=0, acks="written"
    )
    args.update(kw)
    transactional = args.pop("transactional", True)
    return admit_produce(cast(Any, coordinator), transactional=transactional, **args)


@pytest.mark.parametrize(
    ("coordinator", "kw", "text"),
    [
        (FakeCoordinator(), {"producer_id": -1}, "needs its producer id and epoch"),
        (None, {}, "not available before the broker started"),
        (FakeCoordinator(), {"acks": "none"}, "needs acks 'written' or 'fsynced'"),
        (FakeCoordinator(), {"partition": -1}, "and a partition number"),
    ],
)
def test_a_transactional_batch_is_refused_without_what_a_transaction_needs(
    coordinator: FakeCoordinator | None, kw: dict[str, Any], text: str
) -> None:
    with pytest.raises(InvalidArgument, match=text):
        admit(coordinator, **kw)
    assert coordinator is None or coordinator.calls == []


async def test_a_transactional_batch_joins_its_transaction_through_the_coordinator() -> None:
    assert admit(FakeCoordinator(), acks="fsynced") is None
    wait: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    coordinator = FakeCoordinator(wait)
    assert admit(coordinator, partition=3) is wait
    assert coordinator.calls == [("before_produce", 7, 0, "t", 3)]


def test_plain_batches_of_a_transactional_producer_are_refused_others_pass() -> None:
    coordinator = FakeCoordinator()
    coordinator.transactional_pids.add(7)
    with pytest.raises(InvalidTxnState):
        admit(coordinator, transactional=False)
    assert admit(coordinator, transactional=False, producer_id=8, acks="none") is None
    assert admit(coordinator, transactional=False, producer_id=-1, partition=-1) is None
    assert admit(None, transactional=False) is None
    assert coordinator.calls == [("check_plain_produce", 7), ("check_plain_produce", 8)]
