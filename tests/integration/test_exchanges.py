"""Exchanges over TCP: routing by type, exchange-to-exchange bindings, alternate
exchanges, declare/delete rules and auto-delete, as a RabbitMQ user expects them.

Routing checks publish with confirms (so every message has been routed and enqueued
when ``publish`` returns) and then drain the queues with ``get``: no waiting needed.
"""

from __future__ import annotations

from typing import Any

import pytest

import wharf


async def drain(conn: wharf.Connection, queue: str) -> list[bytes]:
    """Every ready message of ``queue`` (taken with no_ack), in order."""
    bodies: list[bytes] = []
    while (msg := await conn.get(queue, no_ack=True)) is not None:
        bodies.append(msg.body)
    return bodies


async def declare_bound_queue(
    conn: wharf.Connection,
    queue: str,
    exchange: str,
    routing_key: str = "",
    arguments: dict[str, Any] | None = None,
) -> None:
    await conn.declare_queue(queue)
    await conn.bind_queue(queue, exchange, routing_key, arguments)


async def publish_keys(conn: wharf.Connection, exchange: str, keys: list[str]) -> None:
    """Publish one message per routing key; the body is the key itself."""
    for key in keys:
        await conn.publish(exchange, key, key.encode())


# -- routing -------------------------------------------------------------------------


async def test_default_exchange_routes_by_queue_name(conn: wharf.Connection) -> None:
    await conn.declare_queue("orders")
    await conn.declare_queue("invoices")

    await conn.publish("", "orders", b"o1")
    await conn.publish("", "invoices", b"i1")
    await conn.publish("", "no-such-queue", b"lost")  # confirmed and dropped

    msg = await conn.get("orders", no_ack=True)
    assert msg is not None
    assert (msg.body, msg.exchange, msg.routing_key) == (b"o1", "", "orders")
    assert await drain(conn, "orders") == []
    assert await drain(conn, "invoices") == [b"i1"]


async def test_direct_exchange_routes_on_exact_key(conn: wharf.Connection) -> None:
    await conn.declare_exchange("logs", "direct")
    await declare_bound_queue(conn, "errors", "logs", "error")
    await declare_bound_queue(conn, "infos", "logs", "info")
    await declare_bound_queue(conn, "all", "logs", "error")
    await conn.bind_queue("all", "logs", "info")

    await publish_keys(conn, "logs", ["error", "info", "debug", "error.x", "ERROR"])

    assert await drain(conn, "errors") == [b"error"]
    assert await drain(conn, "infos") == [b"info"]
    # Bound under two keys, the queue still gets each message once.
    assert await drain(conn, "all") == [b"error", b"info"]


async def test_queue_bound_twice_with_same_key_gets_one_copy(conn: wharf.Connection) -> None:
    await conn.declare_exchange("dup", "direct")
    await declare_bound_queue(conn, "q", "dup", "k")
    await conn.bind_queue("q", "dup", "k")  # binding is idempotent

    await conn.publish("dup", "k", b"once")

    assert await drain(conn, "q") == [b"once"]


async def test_fanout_ignores_routing_key(conn: wharf.Connection) -> None:
    await conn.declare_exchange("broadcast", "fanout")
    await declare_bound_queue(conn, "a", "broadcast", "")
    await declare_bound_queue(conn, "b", "broadcast", "some-key")
    await conn.bind_queue("b", "broadcast", "another-key")

    await publish_keys(conn, "broadcast", ["x", "", "y.z"])

    assert await drain(conn, "a") == [b"x", b"", b"y.z"]
    assert await drain(conn, "b") == [b"x", b"", b"y.z"]


async def test_topic_star_matches_exactly_one_word(conn: wharf.Connection) -> None:
    await conn.declare_exchange("t", "topic")
    await declare_bound_queue(conn, "q", "t", "stock.*.nyse")

    await publish_keys(
        conn, "t", ["stock.ibm.nyse", "stock.nyse", "stock.ibm.x.nyse", "stock.ibm.nyse.x"]
    )

    assert await drain(conn, "q") == [b"stock.ibm.nyse"]


async def test_topic_hash_matches_zero_or_more_words(conn: wharf.Connection) -> None:
    await conn.declare_exchange("t", "topic")
    await declare_bound_queue(conn, "tail", "t", "audit.#")
    await declare_bound_queue(conn, "middle", "t", "a.#.z")
    await declare_bound_queue(conn, "head", "t", "#.done")

    await publish_keys(
        conn, "t", ["audit", "audit.x", "audit.x.y", "auditx", "a.z", "a.b.c.z", "x.done", "done"]
    )

    assert await drain(conn, "tail") == [b"audit", b"audit.x", b"audit.x.y"]
    assert await drain(conn, "middle") == [b"a.z", b"a.b.c.z"]
    assert await drain(conn, "head") == [b"x.done", b"done"]


async def test_topic_empty_words_are_words(conn: wharf.Connection) -> None:
    await conn.declare_exchange("t", "topic")
    await declare_bound_queue(conn, "star", "t", "a.*.c")
    await declare_bound_queue(conn, "literal", "t", "a..c")
    await declare_bound_queue(conn, "trailing", "t", "a.*")

    await publish_keys(conn, "t", ["a..c", "a.b.c", "a.c", "a.", "a"])

    assert await drain(conn, "star") == [b"a..c", b"a.b.c"]
    assert await drain(conn, "literal") == [b"a..c"]
    assert await drain(conn, "trailing") == [b"a.c", b"a."]


async def test_topic_hash_alone_matches_every_key(conn: wharf.Connection) -> None:
    await conn.declare_exchange("t", "topic")
    await declare_bound_queue(conn, "everything", "t", "#")
    await declare_bound_queue(conn, "exact", "t", "a.b")

    keys = ["", "a", "a.b", "a.b.c", "..", "x.y.z.w"]
    await publish_keys(conn, "t", keys)

    assert await drain(conn, "everything") == [k.encode() for k in keys]
    assert await drain(conn, "exact") == [b"a.b"]


async def test_topic_queue_matched_by_several_patterns_gets_one_copy(
    conn: wharf.Connection,
) -> None:
    await conn.declare_exchange("t", "topic")
    await declare_bound_queue(conn, "q", "t", "a.*")
    await conn.bind_queue("q", "t", "#")
    await conn.bind_queue("q", "t", "a.b")

    await conn.publish("t", "a.b", b"m")

    assert await drain(conn, "q") == [b"m"]


async def publish_with_headers(
    conn: wharf.Connection, exchange: str, cases: dict[str, dict[str, Any] | None]
) -> None:
    for name, headers in cases.items():
        # The routing key is ignored by headers exchanges: use a misleading one.
        await conn.publish(exchange, "ignored", name.encode(), headers=headers)


async def test_headers_exchange_x_match_all(conn: wharf.Connection) -> None:
    await conn.declare_exchange("h", "headers")
    await declare_bound_queue(conn, "q", "h", "", {"x-match": "all", "format": "pdf", "n": 1})
    await declare_bound_queue(conn, "default-all", "h", "", {"format": "pdf", "n": 1})

    await publish_with_headers(
        conn,
        "h",
        {
            "both": {"format": "pdf", "n": 1},
            "both+extra": {"format": "pdf", "n": 1, "other": "x"},
            "one": {"format": "pdf"},
            "wrong-value": {"format": "pdf", "n": 2},
            "wrong-type": {"format": "pdf", "n": "1"},
            "none": None,
        },
    )

    assert await drain(conn, "q") == [b"both", b"both+extra"]
    # x-match defaults to all.
    assert await drain(conn, "default-all") == [b"both", b"both+extra"]


async def test_headers_exchange_x_match_any(conn: wharf.Connection) -> None:
    await conn.declare_exchange("h", "headers")
    await declare_bound_queue(conn, "q", "h", "", {"x-match": "any", "format": "pdf", "n": 1})

    await publish_with_headers(
        conn,
        "h",
        {
            "both": {"format": "pdf", "n": 1},
            "format": {"format": "pdf"},
            "n": {"n": 1, "format": "zip"},
            "neither": {"format": "zip", "n": 2},
            "none": None,
        },
    )

    assert await drain(conn, "q") == [b"both", b"format", b"n"]


async def test_headers_exchange_x_arguments_count_only_with_x_modes(
    conn: wharf.Connection,
) -> None:
    await conn.declare_exchange("h", "headers")
    args = {"x-tenant": "acme", "kind": "a"}
    await declare_bound_queue(conn, "all", "h", "", {"x-match": "all", **args})
    await declare_bound_queue(conn, "all-with-x", "h", "", {"x-match": "all-with-x", **args})
    await declare_bound_queue(conn, "any-x-only", "h", "", {"x-match": "any", "x-tenant": "acme"})
    await declare_bound_queue(
        conn, "any-with-x", "h", "", {"x-match": "any-with-x", "x-tenant": "acme"}
    )

    await publish_with_headers(
        conn,
        "h",
        {
            "kind-only": {"kind": "a"},
            "kind+tenant": {"kind": "a", "x-tenant": "acme"},
            "tenant-only": {"x-tenant": "acme"},
        },
    )

    # Plain all/any ignore binding arguments that start with x-.
    assert await drain(conn, "all") == [b"kind-only", b"kind+tenant"]
    assert await drain(conn, "any-x-only") == []
    # The -with-x modes match on them too.
    assert await drain(conn, "all-with-x") == [b"kind+tenant"]
    assert await drain(conn, "any-with-x") == [b"kind+tenant", b"tenant-only"]


async def test_headers_binding_argument_without_value_matches_presence(
    conn: wharf.Connection,
) -> None:
    await conn.declare_exchange("h", "headers")
    await declare_bound_queue(conn, "q", "h", "", {"x-match": "all", "flag": None})

    await publish_with_headers(
        conn,
        "h",
        {"str": {"flag": "x"}, "int": {"flag": 0}, "nil": {"flag": None}, "absent": {"a": 1}},
    )

    assert await drain(conn, "q") == [b"str", b"int", b"nil"]


async def test_headers_binding_with_bad_x_match_is_refused(conn: wharf.Connection) -> None:
    await conn.declare_exchange("h", "headers")
    await conn.declare_queue("q")

    with pytest.raises(wharf.InvalidArgument):
        await conn.bind_queue("q", "h", "", {"x-match": "most"})

    await conn.bind_queue("q", "h", "", {"x-match": "any", "k": "v"})  # still usable
    await conn.publish("h", "", b"m", headers={"k": "v"})
    assert await drain(conn, "q") == [b"m"]


async def test_exchange_to_exchange_binding(conn: wharf.Connection) -> None:
    await conn.declare_exchange("src", "topic")
    await conn.declare_exchange("dst", "fanout")
    await conn.bind_exchange("dst", "src", "eu.*")
    await declare_bound_queue(conn, "via-dst", "dst")
    # Reached both directly and through dst: still one copy.
    await declare_bound_queue(conn, "both", "dst")
    await conn.bind_queue("both", "src", "#")

    await publish_keys(conn, "src", ["eu.de", "us.ny"])

    assert await drain(conn, "via-dst") == [b"eu.de"]
    assert await drain(conn, "both") == [b"eu.de", b"us.ny"]

    await conn.unbind_exchange("dst", "src", "eu.*")
    await conn.publish("src", "eu.fr", b"after-unbind")
    assert await drain(conn, "via-dst") == []
    assert await drain(conn, "both") == [b"after-unbind"]


async def test_exchange_binding_cycle_delivers_once(conn: wharf.Connection) -> None:
    await conn.declare_exchange("a", "fanout")
    await conn.declare_exchange("b", "fanout")
    await conn.bind_exchange("b", "a")
    await conn.bind_exchange("a", "b")
    await declare_bound_queue(conn, "q", "b")

    await conn.publish("a", "", b"m")

    assert await drain(conn, "q") == [b"m"]


async def test_alternate_exchange_takes_unroutable_messages(conn: wharf.Connection) -> None:
    await conn.declare_exchange("ae", "fanout")
    await declare_bound_queue(conn, "unrouted", "ae")
    await conn.declare_exchange("main", "direct", arguments={"alternate-exchange": "ae"})
    await declare_bound_queue(conn, "routed", "main", "k")

    await publish_keys(conn, "main", ["k", "other"])
    # Routed through the alternate exchange counts as routed: mandatory does not raise.
    await conn.publish("main", "again", b"mandatory", mandatory=True)

    assert await drain(conn, "routed") == [b"k"]
    unrouted = await conn.get("unrouted", no_ack=True)
    assert unrouted is not None
    # The message keeps the exchange and routing key it was published with.
    assert (unrouted.body, unrouted.exchange, unrouted.routing_key) == (b"other", "main", "other")
    assert await drain(conn, "unrouted") == [b"mandatory"]


async def test_alternate_exchanges_chain(conn: wharf.Connection) -> None:
    await conn.declare_exchange("ae2", "fanout")
    await declare_bound_queue(conn, "last-resort", "ae2")
    await conn.declare_exchange("ae1", "direct", arguments={"alternate-exchange": "ae2"})
    await conn.declare_exchange("main", "direct", arguments={"alternate-exchange": "ae1"})

    await conn.publish("main", "k", b"m", mandatory=True)

    assert await drain(conn, "last-resort") == [b"m"]


async def test_alternate_exchange_that_routes_nowhere_is_unroutable(
    conn: wharf.Connection,
) -> None:
    await conn.declare_exchange("ae", "direct")  # no bindings
    await conn.declare_exchange("main", "direct", arguments={"alternate-exchange": "ae"})

    with pytest.raises(wharf.Unroutable):
        await conn.publish("main", "k", b"m", mandatory=True)


# -- declare ---------------------------------------------------------------------------


async def test_passive_declare(conn: wharf.Connection) -> None:
    with pytest.raises(wharf.NotFound):
        await conn.declare_exchange("missing", "direct", passive=True)

    await conn.declare_exchange("present", "topic")
    # Passive only checks existence: the other attributes are not compared.
    await conn.declare_exchange("present", "direct", passive=True)
    for name in ("amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"):
        await conn.declare_exchange(name, passive=True)


@pytest.mark.parametrize(
    "changed",
    [
        {"type": "fanout"},
        {"durable": True},
        {"auto_delete": True},
        {"internal": True},
        {"arguments": {"alternate-exchange": "elsewhere"}},
    ],
    ids=lambda c: next(iter(c)),
)
async def test_redeclare_with_different_attributes_fails_and_connection_survives(
    conn: wharf.Connection, changed: dict[str, Any]
) -> None:
    original: dict[str, Any] = {"type": "direct", "durable": False, "arguments": None}
    await conn.declare_exchange("ex", **original)
    await conn.declare_exchange("ex", **original)  # same attributes: fine

    with pytest.raises(wharf.PreconditionFailed) as info:
        await conn.declare_exchange("ex", **{**original, **changed})
    assert info.value.code == 406

    # The connection is still usable and the exchange unchanged.
    await declare_bound_queue(conn, "q", "ex", "k")
    await conn.publish("ex", "k", b"still-works")
    assert await drain(conn, "q") == [b"still-works"]


async def test_unknown_exchange_type_is_invalid(conn: wharf.Connection) -> None:
    with pytest.raises(wharf.InvalidArgument):
        await conn.declare_exchange("weird", "x-consistent-hash-ish")
    with pytest.raises(wharf.NotFound):
        await conn.declare_exchange("weird", passive=True)


async def test_amq_prefix_is_reserved(conn: wharf.Connection) -> None:
    with pytest.raises(wharf.AccessRefused):
        await conn.declare_exchange("amq.custom", "direct")
    with pytest.raises(wharf.AccessRefused):
        await conn.delete_exchange("amq.direct")
    # The pre-declared ones are there and route.
    await declare_bound_queue(conn, "q", "amq.direct", "k")
    await conn.publish("amq.direct", "k", b"m")
    assert await drain(conn, "q") == [b"m"]


async def test_default_exchange_cannot_be_deleted(conn: wharf.Connection) -> None:
    with pytest.raises(wharf.AccessRefused):
        await conn.delete_exchange("")
    await conn.declare_queue("q")
    await conn.publish("", "q", b"m")
    assert await drain(conn, "q") == [b"m"]


@pytest.mark.parametrize("durable", [False, True])
async def test_default_exchange_cannot_be_declared(conn: wharf.Connection, durable: bool) -> None:
    # SPEC "Topology frames": the default exchange cannot be declared (403), as in RabbitMQ.
    with pytest.raises(wharf.AccessRefused):
        await conn.declare_exchange("", "direct", durable=durable)


async def test_binding_to_the_default_exchange_is_refused(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")
    with pytest.raises(wharf.AccessRefused):
        await conn.bind_queue("q", "", "other-key")
    await conn.publish("", "other-key", b"not-for-q")
    await conn.publish("", "q", b"for-q")
    assert await drain(conn, "q") == [b"for-q"]


async def test_default_exchange_cannot_be_a_binding_destination(conn: wharf.Connection) -> None:
    # SPEC "Topology frames": the default exchange cannot be bound (403), either way
    # round, as in RabbitMQ ("operation not permitted on the default exchange").
    with pytest.raises(wharf.AccessRefused):
        await conn.bind_exchange("", "amq.fanout", "")


async def test_bind_to_missing_exchange_or_queue_is_not_found(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")
    await conn.declare_exchange("ex", "direct")
    with pytest.raises(wharf.NotFound):
        await conn.bind_queue("q", "missing", "k")
    with pytest.raises(wharf.NotFound):
        await conn.bind_queue("missing", "ex", "k")
    with pytest.raises(wharf.NotFound):
        await conn.bind_exchange("missing", "ex", "k")
    with pytest.raises(wharf.NotFound):
        await conn.bind_exchange("ex", "missing", "k")


# -- delete, unbind, auto-delete -------------------------------------------------------


async def test_delete_exchange(conn: wharf.Connection) -> None:
    await conn.declare_exchange("ex", "fanout")
    await declare_bound_queue(conn, "q", "ex")

    await conn.delete_exchange("ex")

    with pytest.raises(wharf.NotFound):
        await conn.declare_exchange("ex", passive=True)
    with pytest.raises(wharf.NotFound):
        await conn.delete_exchange("ex")
    # The bound queue survives its exchange.
    info = await conn.declare_queue("q", passive=True)
    assert info.name == "q"
    # A new exchange of the same name starts with no bindings.
    await conn.declare_exchange("ex", "fanout")
    await conn.publish("ex", "", b"m")
    assert await drain(conn, "q") == []


async def test_delete_exchange_if_unused(conn: wharf.Connection) -> None:
    await conn.declare_exchange("ex", "direct")
    await declare_bound_queue(conn, "q", "ex", "k")

    with pytest.raises(wharf.PreconditionFailed):
        await conn.delete_exchange("ex", if_unused=True)
    await conn.publish("ex", "k", b"still-bound")
    assert await drain(conn, "q") == [b"still-bound"]

    await conn.unbind_queue("q", "ex", "k")
    await conn.delete_exchange("ex", if_unused=True)
    with pytest.raises(wharf.NotFound):
        await conn.declare_exchange("ex", passive=True)


async def test_publish_to_missing_exchange_raises_not_found(conn: wharf.Connection) -> None:
    with pytest.raises(wharf.NotFound) as info:
        await conn.publish("nowhere", "k", b"m")
    assert info.value.code == 404

    await conn.declare_queue("q")
    await conn.publish("", "q", b"after")
    assert await drain(conn, "q") == [b"after"]


async def test_internal_exchange_only_reachable_through_bindings(conn: wharf.Connection) -> None:
    await conn.declare_exchange("inner", "fanout", internal=True)
    await conn.declare_exchange("outer", "fanout")
    await conn.bind_exchange("inner", "outer")
    await declare_bound_queue(conn, "q", "inner")

    with pytest.raises(wharf.AccessRefused):
        await conn.publish("inner", "", b"direct")
    await conn.publish("outer", "", b"via-outer")

    assert await drain(conn, "q") == [b"via-outer"]


async def test_unbind_queue(conn: wharf.Connection) -> None:
    await conn.declare_exchange("ex", "direct")
    await declare_bound_queue(conn, "q", "ex", "k")
    await conn.publish("ex", "k", b"bound")

    await conn.unbind_queue("q", "ex", "k")
    await conn.unbind_queue("q", "ex", "k")  # unbinding what is not bound is OK
    await conn.publish("ex", "k", b"unbound")

    assert await drain(conn, "q") == [b"bound"]


async def test_unbind_matches_arguments(conn: wharf.Connection) -> None:
    await conn.declare_exchange("h", "headers")
    await declare_bound_queue(conn, "q", "h", "", {"x-match": "any", "a": 1})
    await conn.bind_queue("q", "h", "", {"x-match": "any", "b": 2})

    await conn.unbind_queue("q", "h", "", {"x-match": "any", "a": 1})
    await conn.publish("h", "", b"a", headers={"a": 1})
    await conn.publish("h", "", b"b", headers={"b": 2})

    assert await drain(conn, "q") == [b"b"]


async def test_auto_delete_exchange_goes_with_its_last_unbind(conn: wharf.Connection) -> None:
    await conn.declare_exchange("ad", "fanout", auto_delete=True)
    await declare_bound_queue(conn, "q1", "ad")
    await declare_bound_queue(conn, "q2", "ad")

    await conn.unbind_queue("q1", "ad")
    await conn.declare_exchange("ad", passive=True)  # one binding left

    await conn.unbind_queue("q2", "ad")
    with pytest.raises(wharf.NotFound):
        await conn.declare_exchange("ad", passive=True)


async def test_auto_delete_exchange_goes_when_its_last_queue_is_deleted(
    conn: wharf.Connection,
) -> None:
    await conn.declare_exchange("ad", "fanout", auto_delete=True)
    await declare_bound_queue(conn, "q", "ad")

    await conn.delete_queue("q")

    with pytest.raises(wharf.NotFound):
        await conn.declare_exchange("ad", passive=True)


async def test_auto_delete_cascades_through_exchange_bindings(conn: wharf.Connection) -> None:
    await conn.declare_exchange("outer", "fanout", auto_delete=True)
    await conn.declare_exchange("inner", "fanout", auto_delete=True)
    await conn.bind_exchange("inner", "outer")
    await declare_bound_queue(conn, "q", "inner")

    await conn.delete_queue("q")  # inner loses its last binding, then outer its own

    with pytest.raises(wharf.NotFound):
        await conn.declare_exchange("inner", passive=True)
    with pytest.raises(wharf.NotFound):
        await conn.declare_exchange("outer", passive=True)


async def test_auto_delete_exchange_without_bindings_stays(conn: wharf.Connection) -> None:
    # As in RabbitMQ, auto-delete acts when the last binding is removed, not before
    # the first one exists.
    await conn.declare_exchange("ad", "fanout", auto_delete=True)
    await conn.declare_exchange("ad", "fanout", auto_delete=True, passive=True)
