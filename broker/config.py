"""Broker settings: defaults, TOML file, ``WHARF_*`` environment variables, command line.

Precedence, lowest to highest::

    defaults  <  TOML file  <  WHARF_<FIELD> environment variables  <  command-line overrides

TOML shape (every key optional; sizes are integers in bytes)::

    host = "0.0.0.0"
    port = 5680
    max_message_bytes = 16777216
    loopback_users = ["guest"]

    [[users]]
    name = "app"
    password_hash = "scrypt$16384$8$1$<salt b64>$<hash b64>"   # from `wharf hash-password`
    tags = ["administrator"]

A ``[[users]]`` entry named ``guest`` replaces the built-in guest/guest user.  Unknown keys
and bad values raise :class:`ConfigError` naming the key and where it came from: a typo in
a config file should stop the broker, not be silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from .security.audit import DEFAULT_AUDIT_LOG_BACKUPS, DEFAULT_AUDIT_LOG_MAX_BYTES, audit_path
from .security.cert_login import CERT_LOGIN_MODES
from .security.passwords import parse_password_hash, parse_scram_credential
from .security.tls import CLIENT_AUTH_MODES, TlsError, TlsFiles, check_files, parse_min_version

MIB: Final = 1024 * 1024

DEFAULT_HOST: Final = "0.0.0.0"
DEFAULT_PORT: Final = 5680
DEFAULT_HTTP_PORT: Final = 8680
# As RabbitMQ's 5671 next to 5672: the TLS listeners sit one above the plain ones.
DEFAULT_TLS_PORT: Final = 5681
DEFAULT_HTTPS_PORT: Final = 8681
# RabbitMQ's port: AMQP 0-9-1 clients connect unchanged (0 turns the listener off).
DEFAULT_AMQP_PORT: Final = 5672
# RabbitMQ's AMQP-over-TLS port; open when TLS is configured (0 turns it off).
DEFAULT_AMQPS_PORT: Final = 5671
DEFAULT_TLS_MIN_VERSION: Final = "1.2"
DEFAULT_DATA_DIR: Final = "./data"
DEFAULT_LOG_LEVEL: Final = "info"
DEFAULT_LOG_FORMAT: Final = "human"
# RabbitMQ 3.x's max_message_size (128 MiB): AMQP clients' own suites publish 20-22 MB
# bodies.  A native message travels in one frame: the frame limit leaves room for the
# PUBLISH frame's exchange, routing key and properties around the body.
DEFAULT_MAX_MESSAGE_BYTES: Final = 128 * MIB
DEFAULT_MAX_FRAME_BYTES: Final = DEFAULT_MAX_MESSAGE_BYTES + 4 * MIB
DEFAULT_MAX_CONNECTIONS: Final = 10_000
DEFAULT_MAX_CONSUMERS_PER_CONNECTION: Final = 1_024
DEFAULT_HEARTBEAT_S: Final = 60
# Like RabbitMQ's consumer_timeout: a delivery unacked this long is requeued (code 408).
DEFAULT_ACK_TIMEOUT_MS: Final = 1_800_000
# TLS handshake, Wharf handshake and authentication, from the TCP accept, on every listener.
DEFAULT_HANDSHAKE_TIMEOUT_MS: Final = 10_000
# Connections that have not authenticated yet, in total and from one peer address.
DEFAULT_MAX_UNAUTHENTICATED_CONNECTIONS: Final = 1_000
DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS: Final = 100
# Partly received frames across all connections; beyond it reading pauses.
DEFAULT_RECEIVE_BUFFER_BUDGET_BYTES: Final = 256 * MIB
DEFAULT_SHUTDOWN_TIMEOUT_S: Final = 10.0
DEFAULT_FSYNC_INTERVAL_MS: Final = 0
DEFAULT_SEGMENT_BYTES: Final = 64 * MIB
DEFAULT_MEMORY_HIGH_WATERMARK: Final = 0.4
DEFAULT_QUEUE_MEMORY_BUDGET_BYTES: Final = 128 * MIB
DEFAULT_DISK_FREE_LIMIT_BYTES: Final = 50_000_000
# As Kafka's log.cleaner.backoff.ms: how often the log cleaner looks for work.
DEFAULT_LOG_CLEANER_INTERVAL_MS: Final = 15_000
# Read fds of closed log segments, broker-wide (broker/logs/handles.py).
DEFAULT_LOG_MAX_OPEN_SEGMENTS: Final = 256
# As Kafka's log.retention.check.interval.ms.
DEFAULT_LOG_RETENTION_CHECK_INTERVAL_MS: Final = 300_000
# HTTP listeners (http_port, https_port): connections open at once, in total and from one
# peer address; over either, a new socket gets a 503 and is closed (docs/security.md).
DEFAULT_HTTP_MAX_CONNECTIONS: Final = 1_000
DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS: Final = 100
# A web UI session ends after this long without a request (broker/http/sessions.py).
DEFAULT_HTTP_SESSION_IDLE_TIMEOUT_S: Final = 1800
MAX_HTTP_SESSION_IDLE_TIMEOUT_S: Final = 86_400
# Consumer groups, as Kafka's group.initial.rebalance.delay.ms,
# group.min/max.session.timeout.ms and offsets.retention.minutes.
DEFAULT_GROUP_INITIAL_REBALANCE_DELAY_MS: Final = 3_000
DEFAULT_GROUP_MIN_SESSION_TIMEOUT_MS: Final = 6_000
DEFAULT_GROUP_MAX_SESSION_TIMEOUT_MS: Final = 1_800_000
DEFAULT_OFFSETS_RETENTION_MS: Final = 7 * 86_400_000
# Transactions (as Kafka's transaction.timeout.ms and transaction.max.timeout.ms).
DEFAULT_TRANSACTION_TIMEOUT_MS: Final = 60_000
DEFAULT_TRANSACTION_MAX_TIMEOUT_MS: Final = 900_000

# The frame length prefix is a u32; nothing larger can be framed.
MAX_FRAME_BYTES_LIMIT: Final = 2**32 - 1
MIN_FRAME_BYTES: Final = 4 * 1024
MAX_HEARTBEAT_S: Final = 65_535

ENV_PREFIX: Final = "WHARF_"
# WHARF_* variables that are not settings: read by other commands (ctl, bench), by the
# test harness, or by click's shell completion.  Never reported as typos of a setting.
OTHER_ENV_VARS: Final = frozenset(
    {"WHARF_CONFIG", "WHARF_HTTP_URL", "WHARF_URL", "WHARF_USER", "WHARF_PASSWORD"}
)
OTHER_ENV_PREFIXES: Final = ("WHARF_TEST_",)
# How alike a word must be to a known key (difflib ratio, 0..1) to be offered as "did you
# mean".  An unknown WHARF_* variable is an error only when it is this close to a setting's
# variable: other tools may have their own WHARF_* variables, a typo should not be ignored.
SUGGEST_CUTOFF: Final = 0.6
ENV_TYPO_CUTOFF: Final = 0.75
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS: Final = ("human", "json")


class ConfigError(ValueError):
    """A configuration key is unknown or has a bad value; the message names the key."""


def suggest_key(key: str, known: Iterable[str], *, cutoff: float = SUGGEST_CUTOFF) -> str | None:
    """The known key closest to ``key`` (a probable typo of it), or None."""
    matches = difflib.get_close_matches(key.lower(), list(known), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def unknown_key_message(where: str, key: str, known: Iterable[str]) -> str:
    """The error text for an unknown key, with a "did you mean" hint when one is close.

    ``unknown_key_message("wharf.toml", "prot", keys)`` ->
    ``"wharf.toml: unknown key 'prot' (did you mean 'port'?)"``.
    """
    guess = suggest_key(key, known)
    hint = f" (did you mean {guess!r}?)" if guess is not None else ""
    return f"{where}: unknown key {key!r}{hint}"


def misspelt_env_vars(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """(variable, the setting variable it is probably a typo of) for each WHARF_* variable
    that is no setting but is close to one, in name order."""
    keys = {key.upper() for key in (*_CHECKS, *_ALIASES)}
    found: list[tuple[str, str]] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in OTHER_ENV_VARS:
            continue
        if name.startswith(OTHER_ENV_PREFIXES):
            continue
        rest = name[len(ENV_PREFIX) :]
        if rest in keys:
            continue
        guess = suggest_key(rest, (k.lower() for k in keys), cutoff=ENV_TYPO_CUTOFF)
        if guess is not None:
            found.append((name, ENV_PREFIX + guess.upper()))
    return found


@dataclass(slots=True)
class UserConfig:
    name: str
    password_hash: str
    tags: list[str] = field(default_factory=list)
    # The SCRAM-SHA-256 credential (`wharf hash-password --scram`); without it the user
    # gets one in memory at its first PLAIN login after each start (docs/security.md).
    scram_sha_256: str | None = None


@dataclass(slots=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # The plain native listener; ``port`` by another name (next to tls_port), except that
    # 0 turns the plain listener off (``port = 0`` lets the OS pick one).  None: ``port``.
    plain_port: int | None = None
    http_host: str | None = None  # None: same as host
    http_port: int = DEFAULT_HTTP_PORT
    # TLS (docs/security.md): the TLS listeners (native tls_port, HTTPS https_port) open
    # when a certificate and its key are configured.
    tls_port: int = DEFAULT_TLS_PORT
    https_port: int = DEFAULT_HTTPS_PORT
    # The AMQP 0-9-1 listener (docs/amqp.md); 0 turns it off (it has no "any port").
    amqp_port: int = DEFAULT_AMQP_PORT
    # AMQP 0-9-1 over TLS, with the tls_* certificates and client-auth; open when TLS is
    # configured, 0 turns it off.
    amqps_port: int = DEFAULT_AMQPS_PORT
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_ca_file: str | None = None
    tls_client_auth: str = "none"
    tls_min_version: str = DEFAULT_TLS_MIN_VERSION
    tls_ciphers: str | None = None
    data_dir: str = DEFAULT_DATA_DIR
    log_level: str = DEFAULT_LOG_LEVEL
    log_format: str = DEFAULT_LOG_FORMAT
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_consumers_per_connection: int = DEFAULT_MAX_CONSUMERS_PER_CONNECTION
    heartbeat_s: int = DEFAULT_HEARTBEAT_S
    ack_timeout_ms: int = DEFAULT_ACK_TIMEOUT_MS
    # TLS handshake + Wharf handshake + AUTH must be done this long after the TCP accept
    # (``handshake_timeout_s``, its older name in seconds, is still read).
    handshake_timeout_ms: int = DEFAULT_HANDSHAKE_TIMEOUT_MS
    # Before authentication (docs/operations.md, "Connection limits"): these do not
    # count against max_connections, and frames are limited to 8 KiB.
    max_unauthenticated_connections: int = DEFAULT_MAX_UNAUTHENTICATED_CONNECTIONS
    max_unauthenticated_per_address: int = DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS
    # Bytes of partly received frames across all connections; while more are held,
    # connections that add to them are paused (one may always finish its frame).
    receive_buffer_budget_bytes: int = DEFAULT_RECEIVE_BUFFER_BUDGET_BYTES
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S
    loopback_users: list[str] = field(default_factory=lambda: ["guest"])
    default_user_enabled: bool = True
    # PLAIN (and HTTP basic) from a non-loopback address over a connection without TLS
    # puts the password on the network: refused unless this is true (docs/security.md).
    allow_plain_without_tls: bool = False
    # EXTERNAL: the user a verified client certificate names (cert_login.py), or "none".
    tls_cert_login: str = "none"
    users: list[UserConfig] = field(default_factory=list)
    # Message store: 0 = fsync before every confirm (group commit); N > 0 = fsync at most
    # every N ms and confirm persistent messages before they are on disk (unsafe).
    fsync_interval_ms: int = DEFAULT_FSYNC_INTERVAL_MS
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    # Resource alarms (as RabbitMQ's vm_memory_high_watermark and disk_free_limit):
    # publishers are blocked while the memory the broker accounts for (messages held,
    # buffers) is above this fraction of RAM (or of the cgroup limit), until it is below
    # 0.9 of it (RSS far above it is a backstop), or while free disk space under
    # data_dir is below disk_free_limit_bytes.
    memory_high_watermark: float = DEFAULT_MEMORY_HIGH_WATERMARK
    # Per queue: beyond this many bytes of messages in memory, new messages are kept on
    # disk with only a packed index in memory (see docs/storage.md, "Long queues").
    queue_memory_budget_bytes: int = DEFAULT_QUEUE_MEMORY_BUDGET_BYTES
    disk_free_limit_bytes: int = DEFAULT_DISK_FREE_LIMIT_BYTES
    # Log topics with cleanup_policy "compact": the cleaner checks one partition at a
    # time, at most this often (docs/logs.md, "Compaction").
    log_cleaner_interval_ms: int = DEFAULT_LOG_CLEANER_INTERVAL_MS
    # Log topics: how often partitions are checked for segments past their retention
    # (and idle active segments past segment_ms are rolled); docs/logs.md, "Retention".
    log_retention_check_interval_ms: int = DEFAULT_LOG_RETENTION_CHECK_INTERVAL_MS
    # Log topics: at most this many closed segments are open for reading at once,
    # across all partitions (an LRU; each partition also keeps its active segment open).
    log_max_open_segments: int = DEFAULT_LOG_MAX_OPEN_SEGMENTS
    # Consumer groups (docs/logs.md, "Consumer groups: broker semantics"): a join to an
    # empty group waits this long for more members; session timeouts asked by members
    # must lie within the bounds; a group without members loses its committed offsets
    # this long after it became empty.
    group_initial_rebalance_delay_ms: int = DEFAULT_GROUP_INITIAL_REBALANCE_DELAY_MS
    group_min_session_timeout_ms: int = DEFAULT_GROUP_MIN_SESSION_TIMEOUT_MS
    group_max_session_timeout_ms: int = DEFAULT_GROUP_MAX_SESSION_TIMEOUT_MS
    offsets_retention_ms: int = DEFAULT_OFFSETS_RETENTION_MS
    # Transactions (docs/logs.md, "Transactions"): a transaction open longer than its
    # producer's timeout (default transaction_timeout_ms, at most
    # transaction_max_timeout_ms) is aborted by the coordinator.
    transaction_timeout_ms: int = DEFAULT_TRANSACTION_TIMEOUT_MS
    transaction_max_timeout_ms: int = DEFAULT_TRANSACTION_MAX_TIMEOUT_MS
    # The admin plane against browsers (docs/security.md, "HTTP API protections"): Host
    # names /api answers to besides loopback, IP addresses, the host name and the bind
    # address (".example.com": a domain and its subdomains; "*": any), and origins besides
    # the broker's own that may write ("https://ui.example.com"; "*": any).
    http_allowed_hosts: list[str] = field(default_factory=list)
    http_allowed_origins: list[str] = field(default_factory=list)
    # HTTP and HTTPS connections open at once, in total and per peer address.
    http_max_connections: int = DEFAULT_HTTP_MAX_CONNECTIONS
    http_max_connections_per_address: int = DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS
    # Web UI sessions (docs/management.md, "Web UI"): idle time before a login expires.
    http_session_idle_timeout_s: int = DEFAULT_HTTP_SESSION_IDLE_TIMEOUT_S
    # Audit log (docs/security.md, "Audit log"): JSON lines, rotated by size.  None (the
    # default) writes <data_dir>/audit.log; "" turns the audit log off.
    audit_log_file: str | None = None
    audit_log_max_bytes: int = DEFAULT_AUDIT_LOG_MAX_BYTES
    audit_log_backups: int = DEFAULT_AUDIT_LOG_BACKUPS

    @property
    def http_bind_host(self) -> str:
        """The address the HTTP endpoints listen on (``http_host`` or else ``host``)."""
        return self.host if self.http_host is None else self.http_host

    @property
    def handshake_timeout_s(self) -> float:
        return self.handshake_timeout_ms / 1000.0

    @property
    def plain_enabled(self) -> bool:
        """Whether the plain native listener opens (``plain_port = 0`` turns it off)."""
        return self.plain_port != 0

    @property
    def amqp_enabled(self) -> bool:
        """Whether the AMQP 0-9-1 listener opens (``amqp_port = 0`` turns it off)."""
        return self.amqp_port != 0

    @property
    def amqps_enabled(self) -> bool:
        """Whether the AMQP-over-TLS listener opens: TLS is configured and ``amqps_port``
        is not 0."""
        return self.tls_enabled and self.amqps_port != 0

    @property
    def tls_enabled(self) -> bool:
        """Whether the TLS listeners (tls_port, https_port) open."""
        return self.tls_cert_file is not None and self.tls_key_file is not None

    def tls_files(self) -> TlsFiles:
        assert self.tls_cert_file is not None and self.tls_key_file is not None
        return TlsFiles(
            cert_file=self.tls_cert_file,
            key_file=self.tls_key_file,
            ca_file=self.tls_ca_file,
            client_auth=self.tls_client_auth,
            min_version=self.tls_min_version,
            ciphers=self.tls_ciphers,
        )


# --- value checks -------------------------------------------------------------------------
# Each check takes (where, value) and returns the normalised value or raises ConfigError.
# ``where`` names the key and its source, e.g. "config.toml: port" or "WHARF_PORT".

_Check = Callable[[str, Any], Any]


def _bad(where: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{where}: expected {expected}, got {value!r}")


def _int_check(lo: int, hi: int | None = None) -> _Check:
    def check(where: str, value: Any) -> int:
        bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, f"an integer {bound}", value)
        if value < lo or (hi is not None and value > hi):
            raise _bad(where, f"an integer {bound}", value)
        return value

    return check


def _float_check(lo: float, *, allow_equal: bool) -> _Check:
    def check(where: str, value: Any) -> float:
        bound = f">= {lo}" if allow_equal else f"> {lo}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(where, f"a number {bound}", value)
        if value < lo or (value == lo and not allow_equal) or value != value:
            raise _bad(where, f"a number {bound}", value)
        try:
            result = float(value)
        except OverflowError:  # an integer beyond the float range
            raise _bad(where, f"a finite number {bound}", value) from None
        if not math.isfinite(result):  # inf would silently turn a limit off
            raise _bad(where, f"a finite number {bound}", value)
        return result

    return check


def _str_check(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(where, "a non-empty string", value)
    return value


def _optional_str_check(where: str, value: Any) -> str | None:
    return None if value is None else _str_check(where, value)


def _optional_port_check(where: str, value: Any) -> int | None:
    return None if value is None else _int_check(0, 65_535)(where, value)


def _tls_version_check(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad(where, "a TLS version: 1.2 or 1.3", value)
    try:
        parse_min_version(value)
    except TlsError:
        raise _bad(where, "a TLS version: 1.2 or 1.3", value) from None
    return value.strip().lower().removeprefix("tlsv")


def _path_or_off_check(where: str, value: Any) -> str | None:
    """A file path, "" (off) or None (the default place)."""
    if value is not None and not isinstance(value, str):
        raise _bad(where, 'a file path, or "" to turn it off', value)
    return value


def _choice_check(choices: tuple[str, ...]) -> _Check:
    def check(where: str, value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise _bad(where, "one of " + ", ".join(choices), value)
        return value.lower()

    return check


def _bool_check(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(where, "true or false", value)
    return value


def _str_list_check(where: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _bad(where, "a list of non-empty strings", value)
    return list(value)


_USER_KEYS: Final = ("name", "password_hash", "tags", "scram_sha_256")


def _users_check(where: str, value: Any) -> list[UserConfig]:
    if not isinstance(value, list):
        raise _bad(where, "an array of [[users]] tables", value)
    users: list[UserConfig] = []
    seen: set[str] = set()
    for i, entry in enumerate(value):
        at = f"{where}[{i}]"
        if isinstance(entry, UserConfig):
            entry = dataclasses.asdict(entry)
        if not isinstance(entry, dict):
            raise _bad(at, "a table with name, password_hash, tags", entry)
        unknown = set(entry) - set(_USER_KEYS)
        if unknown:
            raise ConfigError(unknown_key_message(at, sorted(unknown)[0], _USER_KEYS))
        for required in ("name", "password_hash"):
            if required not in entry:
                raise ConfigError(f"{at}: missing key {required!r}")
        name = _str_check(f"{at}.name", entry["name"])
        if name in seen:
            raise ConfigError(f"{at}.name: user {name!r} is defined twice")
        seen.add(name)
        password_hash = _str_check(f"{at}.password_hash", entry["password_hash"])
        try:
            parse_password_hash(password_hash)
        except ValueError as exc:
            raise ConfigError(
                f"{at}.password_hash: {exc} (create one with `wharf hash-password`)"
            ) from None
        tags = _str_list_check(f"{at}.tags", entry.get("tags", []))
        scram = entry.get("scram_sha_256")
        if scram is not None:
            scram = _str_check(f"{at}.scram_sha_256", scram)
            try:
                parse_scram_credential(scram)
            except ValueError as exc:
                raise ConfigError(f"{at}.scram_sha_256: {exc}") from None
        users.append(
            UserConfig(name=name, password_hash=password_hash, tags=tags, scram_sha_256=scram)
        )
    return users


_CHECKS: Final[dict[str, _Check]] = {
    "host": _str_check,
    "port": _int_check(0, 65_535),
    "plain_port": _optional_port_check,
    "http_host": _optional_str_check,
    "http_port": _int_check(0, 65_535),
    "tls_port": _int_check(0, 65_535),
    "https_port": _int_check(0, 65_535),
    "amqp_port": _int_check(0, 65_535),
    "amqps_port": _int_check(0, 65_535),
    "tls_cert_file": _optional_str_check,
    "tls_key_file": _optional_str_check,
    "tls_ca_file": _optional_str_check,
    "tls_client_auth": _choice_check(CLIENT_AUTH_MODES),
    "tls_min_version": _tls_version_check,
    "tls_ciphers": _optional_str_check,
    "data_dir": _str_check,
    "log_level": _choice_check(LOG_LEVELS),
    "log_format": _choice_check(LOG_FORMATS),
    "max_frame_bytes": _int_check(MIN_FRAME_BYTES, MAX_FRAME_BYTES_LIMIT),
    "max_message_bytes": _int_check(1, MAX_FRAME_BYTES_LIMIT),
    "max_connections": _int_check(1),
    "max_consumers_per_connection": _int_check(1),
    "heartbeat_s": _int_check(0, MAX_HEARTBEAT_S),
    "ack_timeout_ms": _int_check(1),
    "handshake_timeout_ms": _int_check(1, 3_600_000),
    "max_unauthenticated_connections": _int_check(1),
    "max_unauthenticated_per_address": _int_check(1),
    "receive_buffer_budget_bytes": _int_check(MIB),
    "shutdown_timeout_s": _float_check(0.0, allow_equal=True),
    "loopback_users": _str_list_check,
    "default_user_enabled": _bool_check,
    "allow_plain_without_tls": _bool_check,
    "tls_cert_login": _choice_check(CERT_LOGIN_MODES),
    "users": _users_check,
    "fsync_interval_ms": _int_check(0, 60_000),
    "segment_bytes": _int_check(MIB),
    "memory_high_watermark": _float_check(0.0, allow_equal=False),
    "queue_memory_budget_bytes": _int_check(0),
    "disk_free_limit_bytes": _int_check(0),
    "log_cleaner_interval_ms": _int_check(10, 86_400_000),
    "log_retention_check_interval_ms": _int_check(10, 86_400_000),
    "log_max_open_segments": _int_check(1, 1_000_000),
    "group_initial_rebalance_delay_ms": _int_check(0, 3_600_000),
    "group_min_session_timeout_ms": _int_check(1, 86_400_000),
    "group_max_session_timeout_ms": _int_check(1, 86_400_000),
    "offsets_retention_ms": _int_check(1),
    "transaction_timeout_ms": _int_check(1, 86_400_000),
    "transaction_max_timeout_ms": _int_check(1, 86_400_000),
    "http_allowed_hosts": _str_list_check,
    "http_allowed_origins": _str_list_check,
    "http_max_connections": _int_check(1),
    "http_max_connections_per_address": _int_check(1),
    "http_session_idle_timeout_s": _int_check(1, MAX_HTTP_SESSION_IDLE_TIMEOUT_S),
    "audit_log_file": _path_or_off_check,
    "audit_log_max_bytes": _int_check(4096),
    "audit_log_backups": _int_check(0, 1_000),
}
assert set(_CHECKS) == {f.name for f in dataclasses.fields(Settings)}


# --- environment variables ----------------------------------------------------------------


def _parse_env(name: str, key: str, raw: str) -> Any:
    """Turn a WHARF_* string into the Python type the key's check expects."""
    default = _DEFAULTS[key]
    if key == "users":
        raise ConfigError(f"{name}: users can only be configured in the TOML file")
    if key in _OPTIONAL_KEYS:
        if not raw.strip():
            # unset, except where "" is a value of its own (audit_log_file: turned off)
            return "" if key in _EMPTY_IS_A_VALUE else None
        if key == "plain_port":
            try:
                return int(raw.strip())
            except ValueError:
                raise _bad(name, "an integer", raw) from None
        return raw
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise _bad(name, "true or false", raw)
    if isinstance(default, int):
        try:
            return int(raw.strip())
        except ValueError:
            raise _bad(name, "an integer", raw) from None
    if isinstance(default, float):
        try:
            return float(raw.strip())
        except ValueError:
            raise _bad(name, "a number", raw) from None
    if isinstance(default, list):  # loopback_users, http_allowed_*: comma-separated
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


_DEFAULTS: Final[dict[str, Any]] = {
    f.name: getattr(Settings(), f.name) for f in dataclasses.fields(Settings)
}
# Settings whose default is None ("not set"); an empty WHARF_* variable leaves them unset.
_OPTIONAL_KEYS: Final = frozenset(k for k, v in _DEFAULTS.items() if v is None)
_EMPTY_IS_A_VALUE: Final = frozenset({"audit_log_file"})


def _seconds_to_ms(where: str, value: Any) -> int:
    seconds: float = _float_check(0.0, allow_equal=False)(where, value)
    return max(1, round(seconds * 1000))


# Older names still read: (the setting they set, how their value converts).  An alias
# and its setting given in the same place: the setting wins.
_ALIASES: Final[dict[str, tuple[str, _Check]]] = {
    "handshake_timeout_s": ("handshake_timeout_ms", _seconds_to_ms),
}


def _env_value(name: str, key: str, raw: str) -> Any:
    if key in _ALIASES:
        target, convert = _ALIASES[key]
        try:
            number: Any = float(raw.strip())
        except ValueError:
            raise _bad(name, "a number", raw) from None
        return convert(name, number)
    return _CHECKS[key](name, _parse_env(name, key, raw))


# --- loading ------------------------------------------------------------------------------


def _read_toml(config_path: str) -> dict[str, Any]:
    try:
        with open(config_path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {config_path!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {config_path!r} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {config_path!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes the whole file before parsing
        raise ConfigError(
            f"config file {config_path!r} is not UTF-8 (byte {exc.start}): TOML files are UTF-8"
        ) from None
    except ValueError as exc:  # tomllib's int(): more digits than sys.get_int_max_str_digits()
        raise ConfigError(f"config file {config_path!r} is not valid TOML: {exc}") from None


def validate_settings(settings: Settings) -> Settings:
    """Check every field and the cross-field rules; returns ``settings`` (normalised)."""
    for key, check in _CHECKS.items():
        setattr(settings, key, check(key, getattr(settings, key)))
    if settings.max_message_bytes > settings.max_frame_bytes:
        raise ConfigError(
            f"max_message_bytes ({settings.max_message_bytes}) must not exceed "
            f"max_frame_bytes ({settings.max_frame_bytes}): a message travels in one frame"
        )
    _check_listeners(settings)
    if settings.group_min_session_timeout_ms > settings.group_max_session_timeout_ms:
        raise ConfigError(
            f"group_min_session_timeout_ms ({settings.group_min_session_timeout_ms}) must not "
            f"exceed group_max_session_timeout_ms ({settings.group_max_session_timeout_ms})"
        )
    return settings


def _check_listeners(settings: Settings) -> None:
    """plain_port and port, TLS files, and that no two listeners share a port."""
    if settings.plain_port:
        settings.port = settings.plain_port  # plain_port is port's other name
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        given, missing = (
            ("tls_cert_file", "tls_key_file")
            if settings.tls_key_file is None
            else ("tls_key_file", "tls_cert_file")
        )
        raise ConfigError(f"{given} is set but {missing} is not: TLS needs both")
    if not settings.tls_enabled:
        if (
            settings.tls_ca_file is not None
            or settings.tls_client_auth != "none"
            or settings.tls_cert_login != "none"
        ):
            raise ConfigError(
                "tls_ca_file, tls_client_auth and tls_cert_login need TLS: set tls_cert_file "
                "and tls_key_file"
            )
        if not settings.plain_enabled:
            raise ConfigError(
                "plain_port = 0 turns the plain listener off, but TLS is not configured "
                "(tls_cert_file, tls_key_file): the broker would have no native listener"
            )
    elif settings.tls_cert_login != "none" and settings.tls_client_auth == "none":
        raise ConfigError(
            f"tls_cert_login = {settings.tls_cert_login!r} needs client certificates: set "
            'tls_client_auth = "optional" or "required" and tls_ca_file'
        )
    if settings.tls_enabled:
        try:
            check_files(settings.tls_files())
        except TlsError as exc:
            raise ConfigError(str(exc)) from None
    listeners = [("http_port", settings.http_bind_host, settings.http_port)]
    if settings.plain_enabled:
        listeners.append(("port", settings.host, settings.port))
    if settings.tls_enabled:
        listeners.append(("tls_port", settings.host, settings.tls_port))
        listeners.append(("https_port", settings.http_bind_host, settings.https_port))
    if settings.amqp_enabled:
        listeners.append(("amqp_port", settings.host, settings.amqp_port))
    if settings.amqps_enabled:
        listeners.append(("amqps_port", settings.host, settings.amqps_port))
    seen: dict[tuple[str, int], str] = {}
    for key, host, port in listeners:
        if port == 0:
            continue  # the OS picks a free one
        other = seen.get((host, port))
        if other is not None:
            raise ConfigError(
                f"{other} and {key} are both {port}: every listener needs a port of its own"
            )
        seen[(host, port)] = key


def load_settings(
    config_path: str | None,
    overrides: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings from defaults < TOML file < WHARF_* env < ``overrides``.

    ``overrides`` maps field names to command-line values; ``None`` means "not given".
    ``environ`` defaults to ``os.environ`` (tests pass their own).
    """
    values: dict[str, Any] = {}
    if config_path is not None:
        toml = _read_toml(config_path)
        for key, value in sorted(toml.items(), key=lambda kv: kv[0] not in _ALIASES):
            if key in _ALIASES:
                target, convert = _ALIASES[key]
                values[target] = convert(f"{config_path}: {key}", value)
            elif key not in _CHECKS:
                raise ConfigError(unknown_key_message(config_path, key, _CHECKS))
            else:
                values[key] = _CHECKS[key](f"{config_path}: {key}", value)
    env = os.environ if environ is None else environ
    typos = misspelt_env_vars(env)
    if typos:
        raise ConfigError(
            "; ".join(f"{name}: no such setting (did you mean {guess}?)" for name, guess in typos)
        )
    for key in (*_ALIASES, *_CHECKS):  # aliases first: the setting's own name wins
        name = ENV_PREFIX + key.upper()
        raw = env.get(name)
        if raw is not None:
            values[_ALIASES[key][0] if key in _ALIASES else key] = _env_value(name, key, raw)
    for key, value in overrides.items():
        if key not in _CHECKS:
            raise ConfigError(unknown_key_message("command line", key, _CHECKS))
        if value is not None:
            values[key] = _CHECKS[key](key, value)
    return validate_settings(Settings(**values))


def describe(settings: Settings) -> dict[str, Any]:
    """Effective settings as a JSON-ready dict; password hashes are left out."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name == "users":
            value = [{"name": u.name, "tags": list(u.tags)} for u in value]
        elif f.name == "http_host":
            value = settings.http_bind_host
        elif f.name == "audit_log_file":
            value = audit_path(value, settings.data_dir) or ""  # "": off
        elif isinstance(value, list):
            value = list(value)
        out[f.name] = value
    return out


# --- logging ------------------------------------------------------------------------------

# Connection code logs with ``extra={"conn": <connection name>}``; both formats show it.
CONN_ID_ATTR: Final = "conn"


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, [conn], [exc]."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        conn_id = getattr(record, CONN_ID_ATTR, None)
        if conn_id is not None:
            entry[CONN_ID_ATTR] = conn_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class HumanLogFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        conn_id = getattr(record, CONN_ID_ATTR, None)
        if conn_id is None:
            return line
        head, sep, rest = line.partition(": ")
        return f"{head} [{conn_id}]{sep}{rest}"


class _WharfLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler configure_logging installed so a second call replaces it."""


def configure_logging(level: str, fmt: str = "human", *, stream: TextIO | None = None) -> None:
    """Send the root logger to ``stream`` (stderr) at ``level`` in "human" or "json" format."""
    level = _choice_check(LOG_LEVELS)("log_level", level)
    fmt = _choice_check(LOG_FORMATS)("log_format", fmt)
    handler = _WharfLogHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonLogFormatter() if fmt == "json" else HumanLogFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _WharfLogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
