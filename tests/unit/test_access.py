"""The permission model (core/access.py): RabbitMQ's regex semantics, topic
authorisation, the operation table and the persisted records."""

from __future__ import annotations

import pytest

from wharf.broker.core.access import (
    FULL_ACCESS,
    OPERATIONS,
    AccessControl,
    Actor,
    Permission,
    TopicPermission,
)
from wharf.broker.core.session import CoreSession
from wharf.broker.core.topology import Topology
from wharf.protocol.errors import AccessRefused, InvalidArgument

APP = Actor("app", ())


def test_regexes_are_searched_not_anchored_as_in_rabbitmq() -> None:
    p = Permission("orders", r"^orders\.", ".*")
    assert p.allows("configure", "orders.eu")
    assert p.allows("configure", "old-orders")  # unanchored: write ^...$ to anchor
    assert p.allows("write", "orders.eu") and not p.allows("write", "old-orders")
    assert p.allows("read", "anything")


def test_the_empty_regex_matches_nothing() -> None:
    p = Permission("", "", "")
    for perm in ("configure", "write", "read"):
        assert not p.allows(perm, "q") and not p.allows(perm, "amq.default")


def test_bad_or_huge_regexes_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="invalid regular expression"):
        Permission("(", "", "")
    with pytest.raises(InvalidArgument, match="at most"):
        Permission("a" * 5000, "", "")


def test_topic_permissions_expand_username_and_vhost() -> None:
    tp = TopicPermission("events", r"^{username}\.", "^{vhost}$", "app", "/")
    assert tp.allows("write", "app.created") and not tp.allows("write", "bob.created")
    assert tp.allows("read", "/") and not tp.allows("read", "x")


def test_check_uses_rabbitmq_wording_and_the_default_exchange_name() -> None:
    ac = AccessControl()
    ac.set_permission("/", "app", Permission("", "^amq\\.default$", ""))
    ac.check(APP, "write", "exchange", "")  # the default exchange is amq.default
    with pytest.raises(AccessRefused) as err:
        ac.check(APP, "read", "queue", "q1")
    assert err.value.message == "read access to queue 'q1' in vhost '/' refused for user 'app'"
    assert err.value.details == {
        "kind": "queue",
        "name": "q1",
        "permission": "read",
        "vhost": "/",
    }


def test_no_entry_means_no_vhost_unless_implicit_and_administrators_pass() -> None:
    ac = AccessControl()
    with pytest.raises(AccessRefused, match="access to vhost '/' refused for user 'app'"):
        ac.check_vhost(APP)
    ac.check_vhost(Actor("root", ("administrator",)))
    ac.implicit_full = lambda user: user == "app"
    ac.check_vhost(APP)
    assert ac.permission("/", "app") is FULL_ACCESS
    assert ac.clear_permission("/", "app")  # an explicit clear beats the implicit access
    with pytest.raises(AccessRefused):
        ac.check_vhost(APP)


def test_visibility_follows_rabbitmq_management_tags() -> None:
    ac = AccessControl()
    ac.set_permission("a", "app", Permission("^$", "^$", "^$"))  # any entry makes a visible
    for tags in [(), ("management",), ("policymaker",)]:
        actor = Actor("app", tags, "b")  # the actor's own vhost does not matter
        assert ac.visible_vhosts(actor, ["/", "a", "b"]) == ["a"]
    for tags in [("monitoring",), ("administrator",)]:
        assert ac.visible_vhosts(Actor("app", tags), ["/", "a", "b"]) == ["/", "a", "b"]
    ac.implicit_full = lambda user: user == "app"  # config-file users see "/" too
    assert ac.visible_vhosts(APP, ["/", "a", "b"]) == ["/", "a"]
    ac.clear_permission("a", "app")
    assert not ac.can_see_vhost(APP, "a")
    assert ac.can_see_connection(APP, "app") and not ac.can_see_connection(APP, "guest")
    assert ac.can_see_connection(Actor("mon", ("monitoring",)), "guest")


def test_a_refused_vhost_is_counted_only_when_it_exists() -> None:
    ac = AccessControl()
    with pytest.raises(AccessRefused, match="access to vhost 'b' refused for user 'app'"):
        ac.check_vhost_visible(Actor("app", ("management",), "b"))
    for i in range(3):  # names from request paths must not grow the counters
        with pytest.raises(AccessRefused):
            ac.check_vhost_visible(Actor("app", ("management",), f"nope{i}"), exists=False)
    assert ac.denied == {("b", "vhost"): 1}
    ac.check_vhost_visible(Actor("mon", ("monitoring",), "b"))


def test_the_operation_table_matches_rabbitmq() -> None:
    def needs(op: str) -> set[tuple[str, str, str]]:
        return {(n.permission, n.kind, n.arg) for n in OPERATIONS[op]}

    assert needs("queue.bind") == {("write", "queue", "queue"), ("read", "exchange", "exchange")}
    assert needs("exchange.bind") == {
        ("write", "exchange", "destination"),
        ("read", "exchange", "source"),
    }
    assert needs("queue.purge") == {("read", "queue", "queue")}
    assert needs("basic.publish") == {("write", "exchange", "exchange")}
    assert needs("topic.produce") == {("write", "topic", "topic")}
    assert needs("group.commit") == {("read", "group", "group")}
    assert needs("queue.declare.passive") == set()


def test_authorize_checks_every_need_and_tags() -> None:
    ac = AccessControl()
    ac.set_permission("/", "app", Permission(".*", "^q", "^ex"))
    ac.authorize(APP, "queue.bind", queue="q1", exchange="ex1")
    with pytest.raises(AccessRefused, match="read access to exchange 'other'"):
        ac.authorize(APP, "queue.bind", queue="q1", exchange="other")
    with pytest.raises(AccessRefused, match="policymaker"):
        ac.authorize(APP, "policy.set")
    ac.authorize(Actor("app", ("policymaker",)), "policy.set")


def test_topic_authorisation_without_an_entry_allows_everything() -> None:
    ac = AccessControl()
    assert ac.topic_allowed(APP, "write", "events", "any.key")
    ac.set_topic_permission("/", "app", "events", "^eu\\.", "")
    assert ac.topic_allowed(APP, "write", "events", "eu.x")
    assert not ac.topic_allowed(APP, "write", "events", "us.x")
    assert not ac.topic_allowed(APP, "read", "events", "eu.x")
    assert ac.topic_allowed(APP, "write", "other", "us.x")  # another exchange: no entry


def test_records_round_trip_and_bad_records_are_skipped() -> None:
    ac = AccessControl()
    ac.set_permission("/", "app", Permission("a", "b", "c"))
    ac.clear_permission("/", "gone")
    ac.set_topic_permission("/", "app", "events", "^w", "^r")
    doc = ac.records()
    doc["permissions"].append({"user": "bad", "vhost": "/", "configure": "("})
    doc["permissions"].append("junk")
    again = AccessControl()
    errors = again.load(doc, [])
    assert len(errors) == 2
    assert again.records() == ac.records()


def test_data_from_before_permissions_gives_runtime_users_full_access() -> None:
    ac = AccessControl()
    assert ac.load({"users": []}, ["old"]) == []
    assert ac.permission("/", "old") is FULL_ACCESS
    assert ac.permission("/", "new") is None


def test_publish_decisions_are_cached_until_the_permissions_change() -> None:
    ac = AccessControl()
    ac.set_permission("/", "app", Permission("", ".*", ""))
    session = CoreSession(APP, ac, Topology())
    session.check_publish("", "k")
    session.check_publish("", "k")  # cached
    ac.set_permission("/", "app", Permission("", "^orders", ""))
    with pytest.raises(AccessRefused, match="write access to exchange 'amq.default'"):
        session.check_publish("", "k")
    ac.set_permission("/", "app", Permission("", ".*", ""))
    session.check_publish("", "k")
