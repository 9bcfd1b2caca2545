"""The audit log: who logged in, who changed what, as JSON lines in their own rotated file.

Separate from the broker log (which is for operators and may be verbose, reformatted or
shipped elsewhere): the audit log answers "who did what, from where, when" and keeps one
fixed shape.  One line per event::

    {"ts": "2026-12-06T14:02:03.123Z", "event": "auth.failure", "user": "app",
     "peer": "10.0.0.7:51234", "protocol": "native", "mechanism": "PLAIN",
     "reason": "invalid credentials"}

``ts`` and ``event`` are always there; the other fields depend on the event (see
``AuditEvent``; docs/security.md, "Audit log", lists them).  Field values are strings,
numbers, booleans, null or lists of strings.  Passwords and password hashes never appear:
callers pass names, addresses and outcomes only, and ``AuditLog.event`` drops any field
whose name says it holds a secret, as a second line of defence.

Lines are written (not fsynced) as events happen, on the event loop: one short ``write``
to the page cache per event.  The file is rotated by size (``audit_log_max_bytes``,
keeping ``audit_log_backups`` old files: audit.log.1 is the newest of them), as the
standard library's ``RotatingFileHandler`` does.  A write error is reported once in the
broker log and the broker keeps serving: losing the audit trail must not take the
broker down with it.

This module imports only the standard library, so every layer (core, wire, http, server)
may call it.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import time
from enum import StrEnum
from typing import Any, Final

log = logging.getLogger(__name__)

AUDIT_FILE_NAME: Final = "audit.log"
DEFAULT_AUDIT_LOG_MAX_BYTES: Final = 10 * 1024 * 1024
DEFAULT_AUDIT_LOG_BACKUPS: Final = 5
# Client-chosen strings (user names, mechanisms) are cut to this many characters, so a
# hostile client cannot make one audit line arbitrarily long.
MAX_FIELD_CHARS: Final = 512
# Field names that must never be written, whoever passes them.
SECRET_FIELDS: Final = frozenset({"password", "password_hash", "secret", "token"})

AuditValue = str | int | float | bool | None | list[Any] | dict[str, Any]


class AuditEvent(StrEnum):
    """Every kind of audit line.  Fields each kind carries (all optional but these):

    * ``auth.success`` / ``auth.failure``: user, peer, protocol, mechanism, [reason]
    * ``auth.logout``: user, peer, protocol (a web UI session ended by its user)
    * ``connection.open`` / ``connection.close``: connection, user, vhost, peer, protocol,
      tls_version (null on a plain connection), [duration_s]
    * ``connection.forced``: actor, peer, protocol, connection, user, vhost, reason (an
      operator closed it: ``DELETE /api/connections/{name}``, X-Reason)
    * ``user.created`` / ``user.updated`` / ``user.deleted``: actor, peer, protocol, user,
      [tags, previous_tags, password_changed]
    * ``policy.set`` / ``policy.deleted``: actor, peer, protocol, policy, [pattern, apply_to]
    * ``access.denied``: actor, peer, protocol, and vhost, resource_kind, reason (the core's
      permissions) or tag (a missing user tag)
    * ``permission.set`` / ``permission.deleted``: actor, peer, protocol, vhost, user,
      [configure, write, read]
    * ``topic_permission.set`` / ``topic_permission.deleted``: actor, peer, protocol, vhost,
      user, exchange (null: all of the user's), [write, read]
    * ``tls.reloaded`` / ``tls.reload_failed``: actor (null for SIGHUP), peer, protocol
      ("http", "signal"), cert_file, [not_after | error]
    * ``vhost.created`` / ``vhost.deleted``: actor, peer, protocol, vhost
    * ``vhost.limit_set`` / ``vhost.limit_cleared``: actor, peer, protocol, vhost, limit,
      [value]

    ``protocol`` names the way in: "native" (the Wharf protocol, as ``GET
    /api/connections`` says too), "http" (the management API), "signal" (SIGHUP).
    """

    AUTH_SUCCESS = "auth.success"
    AUTH_FAILURE = "auth.failure"
    AUTH_LOGOUT = "auth.logout"
    CONNECTION_OPEN = "connection.open"
    CONNECTION_CLOSE = "connection.close"
    CONNECTION_FORCED = "connection.forced"
    USER_CREATED = "user.created"
    USER_UPDATED = "user.updated"
    USER_DELETED = "user.deleted"
    POLICY_SET = "policy.set"
    POLICY_DELETED = "policy.deleted"
    ACCESS_DENIED = "access.denied"
    PERMISSION_SET = "permission.set"
    PERMISSION_DELETED = "permission.deleted"
    TOPIC_PERMISSION_SET = "topic_permission.set"
    TOPIC_PERMISSION_DELETED = "topic_permission.deleted"
    VHOST_CREATED = "vhost.created"
    VHOST_DELETED = "vhost.deleted"
    VHOST_LIMIT_SET = "vhost.limit_set"
    VHOST_LIMIT_CLEARED = "vhost.limit_cleared"
    TLS_RELOADED = "tls.reloaded"
    TLS_RELOAD_FAILED = "tls.reload_failed"


def _clip(value: Any) -> AuditValue:
    if isinstance(value, str):
        return value if len(value) <= MAX_FIELD_CHARS else value[:MAX_FIELD_CHARS] + "..."
    if isinstance(value, list | tuple):
        return [_clip(v) for v in value]
    if isinstance(value, dict):  # e.g. a policy definition: JSON values
        return {str(_clip(str(k))): _clip(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(_clip(str(value)))


def format_event(kind: AuditEvent, now: float, fields: dict[str, Any]) -> str:
    """One audit line (without the newline) for ``kind`` at wall-clock time ``now``."""
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    entry: dict[str, AuditValue] = {"ts": f"{ts}.{int(now * 1000) % 1000:03d}Z", "event": kind}
    for name, value in fields.items():
        if name in SECRET_FIELDS or name in entry:
            continue
        entry[name] = _clip(value)
    return json.dumps(entry, ensure_ascii=False, separators=(", ", ": "))


def policy_fields(policy: Any) -> dict[str, Any]:
    """What a policy.set line says about the policy (core/policies/registry.Policy)."""
    return {
        "policy": policy.name,
        "pattern": policy.pattern,
        "apply_to": policy.apply_to,
        "priority": policy.priority,
        "definition": policy.definition,
    }


def tls_version_of(transport: Any) -> str | None:
    """ "TLSv1.3" for a TLS transport, None for a plain one."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    return None if ssl_object is None else str(ssl_object.version())


def tls_fields(transport: Any) -> dict[str, Any]:
    """A connection's transport for the API: ``{"tls": False}``, or with TLS its
    protocol version and cipher suite (RabbitMQ's ``ssl_protocol``/``ssl_cipher``)."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return {"tls": False}
    fields: dict[str, Any] = {"tls": True, "tls_version": str(ssl_object.version())}
    cipher = ssl_object.cipher()  # None only before the handshake ends
    if cipher:
        fields["cipher"] = str(cipher[0])
    return fields


class AuditLog:
    """Writes audit events to ``path`` (rotated), or nowhere when ``path`` is None.

    One per broker (``Broker.audit``); a disabled one keeps the same API so call sites
    need no condition.  ``events`` counts the lines written (tests and metrics).
    """

    def __init__(
        self,
        path: str | None,
        *,
        max_bytes: int = DEFAULT_AUDIT_LOG_MAX_BYTES,
        backups: int = DEFAULT_AUDIT_LOG_BACKUPS,
    ) -> None:
        self.path = path
        self.events = 0
        self.write_errors = 0
        self._handler: logging.handlers.RotatingFileHandler | None = None
        if path is not None:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            # max_bytes 0 would mean "never rotate" to the handler; the setting's minimum
            # keeps it positive.  delay=False: a path that cannot be opened fails at start.
            handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
            )
            handler.setFormatter(logging.Formatter("%(message)s"))
            handler.handleError = self._write_failed  # type: ignore[method-assign]
            self._handler = handler

    @property
    def enabled(self) -> bool:
        return self._handler is not None

    def event(self, kind: AuditEvent, **fields: Any) -> None:
        """Write one ``kind`` line with ``fields`` (never pass a password: it is dropped)."""
        handler = self._handler
        if handler is None:
            return
        line = format_event(kind, time.time(), fields)
        handler.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
        self.events += 1

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
            self._handler = None

    def _write_failed(self, record: logging.LogRecord) -> None:
        self.write_errors += 1
        if self.write_errors == 1:
            log.error("audit log %s: cannot write (later errors are not logged)", self.path)


def audit_path(audit_log_file: str | None, data_dir: str) -> str | None:
    """The audit file for the settings: None (default) is <data_dir>/audit.log, "" is off."""
    if audit_log_file is None:
        return os.path.join(data_dir, AUDIT_FILE_NAME)
    return audit_log_file or None
