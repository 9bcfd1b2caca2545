"""Topic settings: names, defaults and checks (Kafka's topic configs, with underscores).

A topic keeps only the settings it overrides in ``<topic dir>/topic.json``
(``{"config": {...}}``, written atomically); ``describe`` shows every effective value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from wharf.protocol.errors import InvalidArgument, WharfError

MIN_SEGMENT_BYTES: Final = 1024
MAX_SEGMENT_BYTES: Final = 2**31 - 1
MAX_MS: Final = 2**63 - 1
TIMESTAMP_TYPES: Final = ("create_time", "log_append_time")
CLEANUP_POLICIES: Final = ("delete", "compact", "compact,delete")


@dataclass(frozen=True, slots=True)
class TopicConfig:
    retention_ms: int = 604_800_000  # -1: keep forever
    retention_bytes: int = -1  # per partition; -1: no limit
    segment_bytes: int = 1_073_741_824
    segment_ms: int = 604_800_000
    timestamp_type: str = "create_time"
    cleanup_policy: str = "delete"
    min_cleanable_dirty_ratio: float = 0.5
    delete_retention_ms: int = 86_400_000

    @property
    def deletes(self) -> bool:
        return "delete" in self.cleanup_policy

    @property
    def compacts(self) -> bool:
        return "compact" in self.cleanup_policy

    @property
    def log_append_time(self) -> bool:
        return self.timestamp_type == "log_append_time"

    def to_map(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_changes(self, changes: Mapping[str, Any]) -> TopicConfig:
        """A copy with ``changes`` applied; 400 naming the first bad key or value."""
        clean: dict[str, Any] = {}
        for key, value in changes.items():
            check = _CHECKS.get(key)
            if check is None:
                raise InvalidArgument(
                    f"unknown topic setting {key!r}; known: {', '.join(sorted(_CHECKS))}",
                    details={"config": key},
                )
            clean[key] = check(key, value)
        return dataclasses.replace(self, **clean)


DEFAULTS: Final = TopicConfig()


def overrides(config: TopicConfig) -> dict[str, Any]:
    """The settings that differ from the defaults (what topic.json keeps)."""
    base = DEFAULTS.to_map()
    return {k: v for k, v in config.to_map().items() if base[k] != v}


def _bad(key: str, value: Any, want: str) -> WharfError:
    return InvalidArgument(
        f"topic setting {key}={value!r} is invalid: {want}",
        details={"config": key},
    )


def _int(low: int, high: int = MAX_MS) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if type(value) is not int or not low <= value <= high:
            raise _bad(key, value, f"an integer {low}..{high}")
        return value

    return check


def _choice(options: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if isinstance(value, str):
            norm = ",".join(sorted(p.strip() for p in value.split(",")))
            if norm in options:
                return norm
        raise _bad(key, value, f"one of {', '.join(repr(o) for o in options)}")

    return check


def _ratio(key: str, value: Any) -> float:
    if type(value) not in (int, float) or not 0.0 <= value <= 1.0:
        raise _bad(key, value, "a number 0..1")
    return float(value)


_CHECKS: Final[dict[str, Callable[[str, Any], Any]]] = {
    "retention_ms": _int(-1),
    "retention_bytes": _int(-1),
    "segment_bytes": _int(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
    "segment_ms": _int(1),
    "timestamp_type": _choice(TIMESTAMP_TYPES),
    "cleanup_policy": _choice(CLEANUP_POLICIES),
    "min_cleanable_dirty_ratio": _ratio,
    "delete_retention_ms": _int(0),
}
assert set(_CHECKS) == {f.name for f in dataclasses.fields(TopicConfig)}
