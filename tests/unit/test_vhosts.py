"""Virtual hosts as pure logic: the SDK's URL path (RabbitMQ's URI spec), directory
names, limit values and the durable records (core/vhosts.py)."""

from __future__ import annotations

from typing import Any

import pytest

from wharf.broker.core.vhosts import (
    MAX_DIR_NAME_CHARS,
    VirtualHost,
    VirtualHosts,
    check_limit,
    dir_name,
)
from wharf.protocol.errors import InvalidArgument, NotFound, PreconditionFailed
from wharf.url import parse_url


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("wharf://u:p@host:5680", "/"),
        ("wharf://u:p@host:5680/", "/"),
        ("wharf://u:p@host:5680/orders", "orders"),
        ("wharf://u:p@host:5680/%2F", "/"),
        ("wharf://u:p@host:5680/%2Fx", "/x"),
        ("wharf://u:p@host:5680/a%2Fb", "a/b"),
        ("wharf://u:p@host:5680/caf%C3%A9", "café"),
        ("wharf://host/orders", "orders"),
        ("wharfs://u:p@host/orders?cafile=ca.pem", "orders"),
    ],
)
def test_url_path_names_the_vhost(url: str, vhost: str) -> None:
    assert parse_url(url).vhost == vhost


@pytest.mark.parametrize(
    "url", ["wharf://u:p@host:5680/a/b", "wharf://u:p@host:5680//", "wharf://h/%ff"]
)
def test_url_path_of_more_than_one_segment_is_refused(url: str) -> None:
    with pytest.raises(InvalidArgument, match="one path segment"):
        parse_url(url)


def test_dir_names_are_safe_and_distinct() -> None:
    assert dir_name("orders") == "orders"
    assert dir_name("/x") == "%2Fx"
    assert dir_name("..") == "%2E%2E"
    assert dir_name(".") == "%2E"
    long_a, long_b = "a" * 255, "a" * 254 + "b"
    assert len(dir_name(long_a)) <= MAX_DIR_NAME_CHARS
    assert dir_name(long_a) != dir_name(long_b)
    assert "/" not in dir_name("a/b/../c")


@pytest.mark.parametrize(("value", "kept"), [(0, 0), (10, 10), (-1, None), (-5, None)])
def test_limit_values(value: int, kept: int | None) -> None:
    assert check_limit("max-queues", value) == kept


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max-bogus", 1),
        ("max-queues", "1"),
        ("max-queues", 1.5),
        ("max-queues", True),
        ("max-queues", 2**40),
    ],
)
def test_bad_limits_are_refused(name: str, value: Any) -> None:
    with pytest.raises(InvalidArgument):
        check_limit(name, value)


def test_records_round_trip_and_default_cannot_be_removed() -> None:
    vhosts = VirtualHosts()
    vhosts.add(VirtualHost("orders", description="d", tags=("t",)))
    vhosts.set_limit("orders", "max-queues", 3)
    vhosts.set_limit("/", "max-connections", 7)
    records = vhosts.records()
    again = VirtualHosts()
    assert again.load_records(records) == []
    assert again.get("orders").limits == {"max-queues": 3}
    assert again.get("orders").description == "d"
    assert again.default.limits == {"max-connections": 7}
    with pytest.raises(PreconditionFailed):
        again.remove("/")
    with pytest.raises(NotFound, match="vhost 'nope' not found"):
        again.get("nope")
    assert again.load_records([{"name": 5}, "x"]) != []  # bad records are skipped, reported


def test_records_of_a_document_from_before_vhosts_give_just_the_default() -> None:
    vhosts = VirtualHosts()
    assert vhosts.load_records(None) == []
    assert [v.name for v in vhosts] == ["/"]


def test_max_queues_is_checked_by_the_topology() -> None:
    vhost = VirtualHost("v")
    vhost.limits["max-queues"] = 1
    owner: Any = object()
    kwargs: dict[str, Any] = {
        "owner": owner,
        "durable": False,
        "exclusive": False,
        "auto_delete": False,
        "passive": False,
        "arguments": None,
    }
    vhost.topology.declare_queue("a", **kwargs)
    vhost.topology.declare_queue("a", **kwargs)  # exists: not a new one
    with pytest.raises(PreconditionFailed, match=r"queue limit in vhost 'v' \(1\) is reached"):
        vhost.topology.declare_queue("b", **kwargs)
    assert list(vhost.topology.queues) == ["a"]
