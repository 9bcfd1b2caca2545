"""Server-side queue policies (RabbitMQ's): limits set by name pattern, not by each declare.

A policy is a name, a regular expression matched against queue names with ``re.search``
(so ``^orders\\.`` anchors, ``orders`` matches anywhere), a priority and a definition map
that uses RabbitMQ's policy keys.  At most one policy applies to a queue: the matching one
with the highest priority; equal priorities go to the policy whose name sorts first.

The effective value of each setting merges the policy with the queue's own ``x-``
arguments, as RabbitMQ does: for the limits in ``LOWER_WINS`` the lower value wins; for
the others the queue argument wins when it is set, else the policy's value applies.

This module is pure logic (no I/O, no asyncio); topology.py owns the registry, applies the
effective limits to queues and persists the policies with the definitions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from wharf.protocol.errors import InvalidArgument, NotFound, ResourceError, WharfError

from .arguments import MAX_DEDUP_WINDOW_MS, OVERFLOW_MODES, QueueLimits, parse_queue_arguments

MAX_POLICIES: Final = 1000
MAX_POLICY_NAME_CHARS: Final = 255
# Patterns are run against every queue name on each declare and policy change: keep them
# short enough to read (they come from administrators only).
MAX_PATTERN_CHARS: Final = 1000
PRIORITY_MIN: Final = -(2**31)
PRIORITY_MAX: Final = 2**31 - 1
APPLY_TO_QUEUES: Final = "queues"

# policy key -> queue argument it stands for
POLICY_KEYS: Final[dict[str, str]] = {
    "dead-letter-exchange": "x-dead-letter-exchange",
    "dead-letter-routing-key": "x-dead-letter-routing-key",
    "message-ttl": "x-message-ttl",
    "expires": "x-expires",
    "max-length": "x-max-length",
    "max-length-bytes": "x-max-length-bytes",
    "overflow": "x-overflow",
    "delivery-limit": "x-delivery-limit",
    "dedup-window-ms": "x-dedup-window-ms",
}
# Limits where the lower of policy and queue argument applies.
LOWER_WINS: Final = frozenset(
    {"x-message-ttl", "x-expires", "x-max-length", "x-max-length-bytes", "x-delivery-limit"}
)
# Smallest allowed value of each integer key (same bounds as the queue arguments).
_INT_MINIMUM: Final[dict[str, int]] = {
    "message-ttl": 0,
    "expires": 1,
    "max-length": 0,
    "max-length-bytes": 0,
    "delivery-limit": 0,
    "dedup-window-ms": 1,
}
_INT_MAXIMUM: Final = 2**63 - 1
# Keys with their own upper bound (the queue argument's).
_INT_MAXIMUM_OF: Final[dict[str, int]] = {"dedup-window-ms": MAX_DEDUP_WINDOW_MS}


def int_bounds(key: str) -> tuple[int, int]:
    """The allowed range of an integer policy key (the API's schema shows it)."""
    return _INT_MINIMUM[key], _INT_MAXIMUM_OF.get(key, _INT_MAXIMUM)


def _bad(message: str, key: str) -> WharfError:
    return InvalidArgument(message, details={"argument": key})


def validate_definition(definition: Any) -> dict[str, Any]:
    """A checked copy of a policy definition; InvalidArgument naming the bad key."""
    if not isinstance(definition, dict):
        raise _bad("policy definition must be an object", "definition")
    if not definition:
        raise _bad(
            f"policy definition is empty; set at least one of: {', '.join(POLICY_KEYS)}",
            "definition",
        )
    out: dict[str, Any] = {}
    for key, value in definition.items():
        if key not in POLICY_KEYS:
            raise _bad(
                f"policy definition key {key!r} is not supported; "
                f"supported keys: {', '.join(POLICY_KEYS)}",
                str(key),
            )
        if key in _INT_MINIMUM:
            lo = _INT_MINIMUM[key]
            hi = _INT_MAXIMUM_OF.get(key, _INT_MAXIMUM)
            if type(value) is not int or not lo <= value <= hi:
                bound = f">= {lo}" if hi == _INT_MAXIMUM else f"{lo}..{hi}"
                raise _bad(
                    f"policy definition key {key!r} must be an integer {bound}, got {value!r}",
                    key,
                )
        elif key == "overflow":
            if value not in OVERFLOW_MODES:
                raise _bad(
                    f"policy definition key 'overflow' must be one of "
                    f"{', '.join(OVERFLOW_MODES)}, got {value!r}",
                    key,
                )
        elif not isinstance(value, str):
            raise _bad(f"policy definition key {key!r} must be a string, got {value!r}", key)
        out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    pattern: str
    definition: dict[str, Any]
    priority: int = 0
    apply_to: str = APPLY_TO_QUEUES
    regex: re.Pattern[str] = field(compare=False, repr=False, default=re.compile(""))

    def matches(self, queue_name: str) -> bool:
        return self.regex.search(queue_name) is not None

    def describe(self) -> dict[str, Any]:
        """The management API's and the definitions file's shape (RabbitMQ's keys)."""
        return {
            "name": self.name,
            "pattern": self.pattern,
            "definition": dict(self.definition),
            "priority": self.priority,
            "apply-to": self.apply_to,
        }


def make_policy(
    name: str,
    pattern: str,
    definition: Any,
    priority: int = 0,
    apply_to: str = APPLY_TO_QUEUES,
) -> Policy:
    """A validated policy; InvalidArgument (400) naming the bad field otherwise."""
    if not isinstance(name, str) or not name or len(name) > MAX_POLICY_NAME_CHARS:
        raise _bad(f"policy name must be 1..{MAX_POLICY_NAME_CHARS} characters", "name")
    if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_CHARS:
        raise _bad(
            f"policy pattern must be a string of at most {MAX_PATTERN_CHARS} chars", "pattern"
        )
    try:
        regex = re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise _bad(
            f"policy pattern {pattern!r} is not a valid regular expression: {exc}", "pattern"
        ) from None
    if type(priority) is not int or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise _bad(f"policy priority must be an integer {PRIORITY_MIN}..{PRIORITY_MAX}", "priority")
    if apply_to != APPLY_TO_QUEUES:
        raise _bad(
            f"policy apply-to must be 'queues' (policies apply to queues only), got {apply_to!r}",
            "apply-to",
        )
    return Policy(name, pattern, validate_definition(definition), priority, apply_to, regex)


def policy_from_record(record: Any) -> Policy:
    """A policy from its ``describe()`` shape (definitions file, API body)."""
    if not isinstance(record, dict):
        raise _bad("a policy must be an object", "policy")
    return make_policy(
        record.get("name"),  # type: ignore[arg-type]  # checked by make_policy
        record.get("pattern"),  # type: ignore[arg-type]
        record.get("definition"),
        record.get("priority", 0),
        record.get("apply-to", APPLY_TO_QUEUES),
    )


def effective_arguments(arguments: dict[str, Any], policy: Policy | None) -> dict[str, Any]:
    """The queue's arguments with the policy merged in (RabbitMQ precedence)."""
    if policy is None:
        return dict(arguments)
    merged = dict(arguments)
    for key, value in policy.definition.items():
        arg = POLICY_KEYS[key]
        own = arguments.get(arg)
        if own is None or (arg in LOWER_WINS and type(own) is int and value < own):
            merged[arg] = value
    return merged


def effective_limits(arguments: dict[str, Any], policy: Policy | None) -> QueueLimits:
    """Limits for a queue declared with ``arguments`` (already validated) under ``policy``."""
    return parse_queue_arguments(effective_arguments(arguments, policy))


class PolicyRegistry:
    """Policies by name; which one applies to a queue name."""

    __slots__ = ("_by_name", "_ranked")

    def __init__(self) -> None:
        self._by_name: dict[str, Policy] = {}
        # Highest priority first, then by name: the first match applies.
        self._ranked: list[Policy] = []

    def __len__(self) -> int:
        return len(self._by_name)

    def _rank(self) -> None:
        self._ranked = sorted(self._by_name.values(), key=lambda p: (-p.priority, p.name))

    def get(self, name: str) -> Policy:
        policy = self._by_name.get(name)
        if policy is None:
            raise NotFound(f"no policy '{name}'", details={"policy": name})
        return policy

    def all(self) -> list[Policy]:
        return sorted(self._by_name.values(), key=lambda p: p.name)

    def put(self, policy: Policy) -> bool:
        """Add or replace; True if it is new."""
        created = policy.name not in self._by_name
        if created and len(self._by_name) >= MAX_POLICIES:
            raise ResourceError(
                f"too many policies (limit {MAX_POLICIES}); delete unused ones first",
                details={"policy": policy.name},
            )
        self._by_name[policy.name] = policy
        self._rank()
        return created

    def delete(self, name: str) -> Policy:
        policy = self.get(name)
        del self._by_name[name]
        self._rank()
        return policy

    def match(self, queue_name: str) -> Policy | None:
        for policy in self._ranked:
            if policy.matches(queue_name):
                return policy
        return None

    def records(self) -> list[dict[str, Any]]:
        return [p.describe() for p in self.all()]

    def load(self, records: Iterable[Any]) -> list[str]:
        """Replace all policies from stored records; returns a message per skipped record."""
        self._by_name.clear()
        skipped: list[str] = []
        for record in records:
            try:
                policy = policy_from_record(record)
            except InvalidArgument as exc:
                skipped.append(exc.message)
                continue
            self._by_name[policy.name] = policy
        self._rank()
        return skipped
