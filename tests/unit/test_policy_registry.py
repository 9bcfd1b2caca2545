"""Server-side policies as pure logic: matching, precedence, validation, merging."""

from __future__ import annotations

from typing import Any

import pytest

from wharf.broker.core.policies.arguments import parse_queue_arguments
from wharf.broker.core.policies.registry import (
    MAX_POLICIES,
    PolicyRegistry,
    effective_arguments,
    effective_limits,
    make_policy,
    policy_from_record,
    validate_definition,
)
from wharf.protocol.errors import InvalidArgument, NotFound, ResourceError


def _registry(*policies: tuple[str, str, int]) -> PolicyRegistry:
    reg = PolicyRegistry()
    for name, pattern, priority in policies:
        reg.put(make_policy(name, pattern, {"max-length": 10}, priority))
    return reg


# -- matching -----------------------------------------------------------------------------------


def test_pattern_is_searched_not_fully_matched_as_in_rabbitmq() -> None:
    p = make_policy("p", "orders", {"max-length": 1})
    assert p.matches("orders") and p.matches("eu.orders.new")
    anchored = make_policy("a", r"^orders\.", {"max-length": 1})
    assert anchored.matches("orders.new") and not anchored.matches("eu.orders.new")
    assert make_policy("all", "", {"max-length": 1}).matches("anything")


def test_highest_priority_wins_and_only_one_policy_applies() -> None:
    reg = _registry(("low", "^q", 0), ("high", "^q", 5), ("other", "^x", 100))
    match = reg.match("q1")
    assert match is not None and match.name == "high"
    assert reg.match("zzz") is None


def test_equal_priorities_go_to_the_first_name() -> None:
    reg = _registry(("b", "q", 1), ("a", "q", 1), ("c", "q", 1))
    match = reg.match("q")
    assert match is not None and match.name == "a"


def test_replace_and_delete_change_the_match() -> None:
    reg = _registry(("p", "^q", 0), ("r", "^q", 1))
    assert not reg.put(make_policy("r", "^nomatch$", {"max-length": 1}, 1))  # replaced
    match = reg.match("q")
    assert match is not None and match.name == "p"
    reg.delete("p")
    assert reg.match("q") is None
    with pytest.raises(NotFound):
        reg.delete("p")
    with pytest.raises(NotFound):
        reg.get("p")


def test_the_number_of_policies_is_bounded() -> None:
    reg = PolicyRegistry()
    for i in range(MAX_POLICIES):
        reg.put(make_policy(f"p{i}", "x", {"max-length": 1}))
    with pytest.raises(ResourceError):
        reg.put(make_policy("one-more", "x", {"max-length": 1}))
    reg.put(make_policy("p0", "y", {"max-length": 2}))  # replacing is fine at the limit


def test_records_round_trip_and_bad_records_are_skipped() -> None:
    reg = _registry(("a", "^a", 3), ("b", "^b", 0))
    records = reg.records()
    assert records[0] == {
        "name": "a",
        "pattern": "^a",
        "definition": {"max-length": 10},
        "priority": 3,
        "apply-to": "queues",
    }
    other = PolicyRegistry()
    skipped = other.load([*records, {"name": "bad", "pattern": "(", "definition": {}}])
    assert len(skipped) == 1 and "pattern" in skipped[0]
    assert other.records() == records


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("definition", "key"),
    [
        ({"message-ttl": -1}, "message-ttl"),
        ({"message-ttl": "10"}, "message-ttl"),
        ({"max-length": True}, "max-length"),
        ({"expires": 0}, "expires"),
        ({"delivery-limit": 1.5}, "delivery-limit"),
        ({"max-length-bytes": 2**64}, "max-length-bytes"),
        ({"overflow": "drop-tail"}, "overflow"),
        ({"dead-letter-exchange": 5}, "dead-letter-exchange"),
        ({"dead-letter-routing-key": None}, "dead-letter-routing-key"),
        ({"ha-mode": "all"}, "ha-mode"),
        ({"x-max-length": 5}, "x-max-length"),
        ({}, "definition"),
        ([], "definition"),
    ],
)
def test_bad_definitions_are_refused_naming_the_key(definition: Any, key: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_definition(definition)
    assert info.value.details["argument"] == key
    assert key in info.value.message


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "n" * 256}, "name"),
        ({"pattern": "(unclosed"}, "pattern"),
        ({"pattern": 5}, "pattern"),
        ({"priority": "1"}, "priority"),
        ({"priority": 2**40}, "priority"),
        ({"apply_to": "exchanges"}, "apply-to"),
        ({"apply_to": "all"}, "apply-to"),
    ],
)
def test_bad_policy_fields_are_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"name": "p", "pattern": ".", "definition": {"max-length": 1}}
    args.update(kwargs)
    with pytest.raises(InvalidArgument) as info:
        make_policy(**args)
    assert info.value.details["argument"] == field


def test_policy_from_record_needs_an_object() -> None:
    with pytest.raises(InvalidArgument):
        policy_from_record(["p", ".", {}])
    with pytest.raises(InvalidArgument):
        policy_from_record({"pattern": ".", "definition": {"max-length": 1}})  # no name


def test_every_supported_key_is_accepted() -> None:
    definition = {
        "dead-letter-exchange": "dlx",
        "dead-letter-routing-key": "dead",
        "message-ttl": 0,
        "expires": 1,
        "max-length": 0,
        "max-length-bytes": 0,
        "overflow": "reject-publish-dlx",
        "delivery-limit": 3,
    }
    assert validate_definition(definition) == definition


# -- precedence --------------------------------------------------------------------------------


def _policy(**definition: Any) -> Any:
    return make_policy("p", ".", {k.replace("_", "-"): v for k, v in definition.items()})


@pytest.mark.parametrize(
    ("argument", "key", "field"),
    [
        ("x-message-ttl", "message_ttl", "message_ttl_ms"),
        ("x-expires", "expires", "expires_ms"),
        ("x-max-length", "max_length", "max_length"),
        ("x-max-length-bytes", "max_length_bytes", "max_length_bytes"),
        ("x-delivery-limit", "delivery_limit", "delivery_limit"),
    ],
)
def test_for_limits_the_lower_of_policy_and_argument_wins(
    argument: str, key: str, field: str
) -> None:
    assert getattr(effective_limits({argument: 5}, _policy(**{key: 50})), field) == 5
    assert getattr(effective_limits({argument: 50}, _policy(**{key: 5})), field) == 5
    assert getattr(effective_limits({}, _policy(**{key: 7})), field) == 7
    assert getattr(effective_limits({argument: 9}, None), field) == 9


def test_for_other_keys_the_queue_argument_wins_when_set() -> None:
    policy = _policy(
        dead_letter_exchange="policy-dlx",
        dead_letter_routing_key="policy-key",
        overflow="reject-publish",
    )
    own = {
        "x-dead-letter-exchange": "own-dlx",
        "x-dead-letter-routing-key": "own-key",
        "x-overflow": "drop-head",
    }
    limits = effective_limits(own, policy)
    assert limits.dead_letter_exchange == "own-dlx"
    assert limits.dead_letter_routing_key == "own-key"
    assert limits.overflow == "drop-head"  # explicitly set, even though it is the default
    limits = effective_limits({}, policy)
    assert limits.dead_letter_exchange == "policy-dlx"
    assert limits.dead_letter_routing_key == "policy-key"
    assert limits.overflow == "reject-publish"


def test_effective_arguments_keep_the_rest_and_leave_the_input_alone() -> None:
    own = {"x-max-priority": 5, "x-custom": "kept", "x-max-length": 3}
    merged = effective_arguments(own, _policy(max_length=10, message_ttl=1000))
    assert merged == {
        "x-max-priority": 5,
        "x-custom": "kept",
        "x-max-length": 3,
        "x-message-ttl": 1000,
    }
    assert own == {"x-max-priority": 5, "x-custom": "kept", "x-max-length": 3}
    assert effective_limits(own, None) == parse_queue_arguments(own)
