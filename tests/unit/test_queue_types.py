"""Queue types and redeclare equivalence (core/policies/queue_types.py): pure rules with
RabbitMQ 3.10's texts."""

from __future__ import annotations

from typing import Any

import pytest

from wharf.broker.core.policies.queue_types import (
    check_queue_declare,
    check_queue_equivalent,
    queue_type_of,
    with_delivery_count,
)
from wharf.protocol.errors import WharfError

QUORUM = {"x-queue-type": "quorum"}


def _declare(**kw: Any) -> str:
    args = {"durable": True, "exclusive": False, "auto_delete": False, "arguments": {}}
    args.update(kw)
    return check_queue_declare("q", **args)


def test_types_and_the_default() -> None:
    assert _declare() == "classic"
    assert _declare(arguments={"x-queue-type": "classic"}) == "classic"
    assert _declare(arguments=QUORUM) == "quorum"
    assert queue_type_of({}) == "classic" and queue_type_of(QUORUM) == "quorum"


@pytest.mark.parametrize(
    ("kw", "code", "text"),
    [
        ({"durable": False}, 406, "invalid property 'non-durable' for queue 'q'"),
        ({"exclusive": True}, 406, "invalid property 'exclusive-owner' for queue 'q'"),
        (
            {"exclusive": True, "auto_delete": True, "durable": False},
            406,
            "invalid property 'auto-delete' for queue 'q'",
        ),
        (
            {"durable": False, "extra": {"x-max-priority": 2}},
            406,
            "invalid arg 'x-max-priority' for queue 'q' of queue type rabbit_quorum_queue",
        ),
    ],
)
def test_quorum_rules_in_rabbitmq_order(kw: dict[str, Any], code: int, text: str) -> None:
    extra = kw.pop("extra", {})
    with pytest.raises(WharfError) as info:
        _declare(arguments={**QUORUM, **extra}, **kw)
    assert (info.value.code, info.value.message) == (code, text)
    assert info.value.details["queue"] == "q"


def test_quorum_accepts_what_rabbitmq_accepts() -> None:
    ignored = {"x-quorum-initial-group-size": 3, "x-dead-letter-strategy": "at-least-once"}
    assert _declare(arguments={**QUORUM, **ignored, "x-delivery-limit": 2}) == "quorum"


def test_stream_and_unknown_types_are_refused() -> None:
    with pytest.raises(WharfError, match="use a log topic"):
        _declare(arguments={"x-queue-type": "stream"})
    with pytest.raises(WharfError) as info:
        _declare(arguments={"x-queue-type": "Quorum"})
    assert info.value.message.endswith(": \"unsupported queue type 'Quorum'\"")


def _equivalent(current: dict[str, Any], **kw: Any) -> None:
    args: dict[str, Any] = {"durable": True, "exclusive": False, "auto_delete": False}
    args.update(kw)
    args.setdefault("arguments", {})
    check_queue_equivalent("q", current, was=(True, False, False), **args)


def test_equivalence_texts() -> None:
    _equivalent({"x-message-ttl": 5}, arguments={"x-message-ttl": 5, "x-unknown": 1})
    _equivalent({}, arguments={"x-queue-type": "classic"})
    cases: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        ({}, {"durable": False}, "inequivalent arg 'durable' for queue 'q': received 'false' "
         "but current is 'true'"),
        ({"x-message-ttl": 5}, {"arguments": {"x-message-ttl": 6}},
         "inequivalent arg 'x-message-ttl' for queue 'q': received '6' but current is '5'"),
        ({"x-max-length": 2**40}, {},
         "inequivalent arg 'x-max-length' for queue 'q': received none but current is the "
         "value '1099511627776' of type 'long'"),
        (QUORUM, {},
         "inequivalent arg 'x-queue-type' for queue 'q': received none but current is the "
         "value 'quorum' of type 'longstr'"),
    ]  # fmt: skip
    for current, kw, text in cases:
        with pytest.raises(WharfError) as info:
            _equivalent(current, **kw)
        assert (info.value.code, info.value.message) == (406, text)
    with pytest.raises(WharfError) as info:
        _equivalent({}, exclusive=True)
    assert info.value.code == 405
    assert info.value.message.startswith("cannot obtain exclusive access to locked queue 'q'.")


def test_delivery_count_header_replaces_the_publishers_and_copies() -> None:
    props = {"headers": {"a": 1, "x-delivery-count": 7}, "priority": 2}
    out = with_delivery_count(props, 1)
    assert out == {"headers": {"a": 1, "x-delivery-count": 1}, "priority": 2}
    assert props["headers"] == {"a": 1, "x-delivery-count": 7}  # the stored copy unchanged
    assert with_delivery_count(None, 0) == {"headers": {"x-delivery-count": 0}}
