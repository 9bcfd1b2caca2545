"""Direct reply-to in the core publish path (core/replies.py, core/publish.py), without
sockets: a publish to the default exchange with a reply name goes to its consumer, never
to a queue, and is unroutable when the consumer is gone or closing."""

from __future__ import annotations

from typing import Any

import pytest

from wharf.broker.core.replies import REPLY_TO_PREFIX, REPLY_TO_QUEUE, ReplyRegistry
from wharf.broker.core.topology import Topology
from wharf.protocol.errors import InvalidArgument


class FakeReplyConsumer:
    def __init__(self) -> None:
        self.closing = False
        self.got: list[tuple[str, dict[str, Any] | None, list[bytes]]] = []

    def deliver_replies(
        self, name: str, props: dict[str, Any] | None, bodies: list[bytes] | tuple[bytes, ...]
    ) -> None:
        self.got.append((name, props, list(bodies)))


def test_registry_names_are_unique_and_go_with_their_consumer() -> None:
    reg = ReplyRegistry()
    a, b = FakeReplyConsumer(), FakeReplyConsumer()
    na, nb = reg.register(a), reg.register(b)
    assert na != nb and na.startswith(REPLY_TO_PREFIX) and len(reg) == 2
    assert reg.get(na) is a and reg.get(nb) is b
    a.closing = True
    assert reg.get(na) is None  # a closing session gets no more replies
    reg.unregister(nb)
    reg.unregister(nb)  # twice is harmless
    assert reg.get(nb) is None and len(reg) == 1
    assert reg.get(REPLY_TO_QUEUE) is None


def test_publish_to_a_reply_name_reaches_the_consumer_not_a_queue() -> None:
    publisher = Topology().publisher
    consumer = FakeReplyConsumer()
    name = publisher.replies.register(consumer)
    props = {"correlation_id": "c1"}
    res = publisher.publish("", name, props, [b"one", b"two"], "guest")
    assert consumer.got == [(name, props, [b"one", b"two"])]
    assert res.routed and not res.unroutable and res.queues == 0
    assert res.store_batch == 0 and res.log_parts is None  # a confirm waits for nothing
    assert publisher.stats.published == 2 and publisher.stats.unroutable == 0
    # Another exchange with that routing key is ordinary routing.
    res = publisher.publish("amq.direct", name, None, [b"x"], "guest")
    assert res.unroutable and len(consumer.got) == 1
    publisher.replies.unregister(name)
    res = publisher.publish("", name, None, [b"late"], "guest")
    assert res.unroutable and not res.routed and len(consumer.got) == 1
    assert publisher.stats.unroutable == 2


def test_a_reply_is_checked_like_any_publish() -> None:
    publisher = Topology().publisher
    consumer = FakeReplyConsumer()
    name = publisher.replies.register(consumer)
    with pytest.raises(InvalidArgument):
        publisher.publish("", name, {"priority": 999}, [b"x"], "guest")
    assert consumer.got == []
