"""Priority queues deliver highest priority first, FIFO within a priority (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wharf.broker.core.policies.priority import message_priority
from wharf.broker.core.queues import Message, Queue

MAX = 5


def _queue() -> Queue:
    return Queue("pq", arguments={"x-max-priority": MAX})


def test_priority_clamping() -> None:
    assert message_priority(None, MAX) == 0
    assert message_priority({"priority": 3}, MAX) == 3
    assert message_priority({"priority": 200}, MAX) == MAX
    assert message_priority({"priority": -1}, MAX) == 0


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("pub"), st.integers(min_value=0, max_value=9)),
            st.tuples(st.just("take"), st.just(0)),
            st.tuples(st.just("requeue"), st.just(0)),
        ),
        max_size=80,
    )
)
def test_delivery_order_respects_priority_then_fifo(ops: list[tuple[str, int]]) -> None:
    q = _queue()
    out: list[Message] = []
    for op, prio in ops:
        if op == "pub":
            q.enqueue_many("", "pq", {"priority": prio}, [b"x"])
        elif op == "take":
            m = q.take()
            if m is not None:
                out.append(m)
        elif out:
            q.requeue([out.pop(0)])
    order = []
    while (m := q.take()) is not None:
        order.append((-message_priority(m.properties, MAX), m.position))
    assert order == sorted(order)
    assert q.ready_count == 0


def test_requeued_message_keeps_its_place_within_its_priority() -> None:
    q = _queue()
    q.enqueue_many("", "pq", {"priority": 1}, [b"low-1", b"low-2"])
    q.enqueue_many("", "pq", {"priority": 4}, [b"high-1"])
    first = q.take()
    assert first is not None and first.body == b"high-1"
    second = q.take()
    assert second is not None and second.body == b"low-1"
    q.requeue([second])
    q.enqueue_many("", "pq", {"priority": 1}, [b"low-3"])
    bodies = []
    while (m := q.take()) is not None:
        bodies.append(m.body)
    assert bodies == [b"low-1", b"low-2", b"low-3"]
