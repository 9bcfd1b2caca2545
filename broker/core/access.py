"""Who may do what: RabbitMQ's permission model, decided here for every way in.

Every protocol adapter (the native wire, HTTP, later AMQP) turns its request into an
operation name of ``OPERATIONS`` and asks ``AccessControl.authorize``; the table says
which permission on which resource each operation needs, so the ways in cannot disagree.
docs/security.md "## Permissions" is the user-facing description.

The model (as RabbitMQ's ``rabbit_auth_backend_internal``):

* Per user per virtual host, three regular expressions: ``configure`` (create, delete,
  alter a resource), ``write`` (put messages into it) and ``read`` (take messages out).
  A regex is searched in the resource name, not anchored (RabbitMQ uses ``re:run``):
  ``orders`` also matches ``old-orders``; write ``^orders\\.`` to mean a prefix.  The
  empty string is ``^$``: it matches nothing (no name is empty; the default exchange is
  ``amq.default`` here).  ``.*`` matches everything.
* Resources are queues, exchanges, log topics (kind ``topic``) and consumer groups
  (kind ``group``), checked with the same three regexes.
* Topic authorisation: per user, vhost and topic exchange, ``write`` and ``read``
  regexes on routing keys (publish is write, binding a queue is read).  ``{username}``
  and ``{vhost}`` in them are replaced by the user's name and vhost.  No topic
  permission for an exchange means full access to it (as RabbitMQ).
* A user without a permission entry on a vhost cannot connect to it.
* The ``administrator`` tag passes every check (Wharf's choice, see the docs: the
  built-in guest and configured administrators keep working unchanged).
* Policies need the ``policymaker`` or ``administrator`` tag.
* What the management API shows (RabbitMQ's management user tags): ``administrator``
  and ``monitoring`` see every vhost and every connection; any other user sees only the
  vhosts it has a permission entry on (``can_see_vhost``) and only its own connections
  (``can_see_connection``).  The HTTP layer filters its listings by these, nothing else.

Upgrades: users of the config file (and the built-in guest) without an explicit entry
have full access on ``/``; users created through the API start with none.  On the first
start with a definitions document that has no permissions yet, the runtime users it
holds are given full access on ``/`` once, so existing deployments keep working.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

from wharf.protocol.errors import AccessRefused, InvalidArgument, WharfError

DEFAULT_VHOST: Final = "/"
ALL: Final = ".*"
# The default exchange's name for permission checks (as RabbitMQ and the HTTP API).
DEFAULT_EXCHANGE_RESOURCE: Final = "amq.default"

CONFIGURE: Final = "configure"
WRITE: Final = "write"
READ: Final = "read"
PERMISSIONS: Final = (CONFIGURE, WRITE, READ)

ADMINISTRATOR: Final = "administrator"
MONITORING: Final = "monitoring"
POLICYMAKER: Final = "policymaker"
MANAGEMENT: Final = "management"
# Tags that may use the management API's read-only listings (RabbitMQ: management and up).
MANAGEMENT_TAGS: Final = frozenset({ADMINISTRATOR, MONITORING, POLICYMAKER, MANAGEMENT})
# Tags that see every vhost and every user's connections (RabbitMQ's ``is_monitor``).
SEE_ALL_TAGS: Final = frozenset({ADMINISTRATOR, MONITORING})

# Bounds: regexes are set by administrators, but definitions.json must stay small and a
# pathological pattern should not be accepted by accident.
MAX_REGEX_CHARS: Final = 1_024
MAX_PERMISSION_ENTRIES: Final = 100_000
# Decisions remembered per session for publish (the hot path): per exchange, and per
# (exchange, routing key) under topic permissions; cleared wholesale when full.
MAX_CACHED_DECISIONS: Final = 4_096

_NOTHING: Final = "^$"


def compile_regex(pattern: str) -> re.Pattern[str]:
    """RabbitMQ's reading of a permission regex: "" is ``^$``, otherwise searched."""
    if len(pattern) > MAX_REGEX_CHARS:
        raise InvalidArgument(f"a permission regex is at most {MAX_REGEX_CHARS} characters")
    try:
        return re.compile(pattern or _NOTHING)
    except re.error as exc:
        raise InvalidArgument(f"invalid regular expression {pattern!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks: the authenticated user, its tags and the vhost of its connection; and,
    for the audit line of a refusal only, where from (peer address, protocol: "native",
    "http")."""

    user: str
    tags: tuple[str, ...] = ()
    vhost: str = DEFAULT_VHOST
    peer: str = field(default="", compare=False)
    protocol: str = field(default="", compare=False)

    @property
    def is_administrator(self) -> bool:
        return ADMINISTRATOR in self.tags


@dataclass(frozen=True, slots=True)
class Permission:
    """configure/write/read regexes of one user on one vhost, compiled once."""

    configure: str
    write: str
    read: str
    _compiled: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = tuple(compile_regex(p) for p in (self.configure, self.write, self.read))
        object.__setattr__(self, "_compiled", compiled)

    def allows(self, permission: str, name: str) -> bool:
        return self._compiled[PERMISSIONS.index(permission)].search(name) is not None

    def describe(self) -> dict[str, str]:
        return {"configure": self.configure, "write": self.write, "read": self.read}


FULL_ACCESS: Final = Permission(ALL, ALL, ALL)
NO_ACCESS: Final = Permission("", "", "")


@dataclass(frozen=True, slots=True)
class TopicPermission:
    """write/read regexes on the routing keys of one topic exchange.  ``{username}`` and
    ``{vhost}`` are expanded for ``user`` and ``vhost`` before compiling (one record is
    one user's on one vhost, so the expansion is fixed)."""

    exchange: str
    write: str
    read: str
    user: str = ""
    vhost: str = DEFAULT_VHOST
    _compiled: tuple[re.Pattern[str], re.Pattern[str]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        def expand(p: str) -> str:
            # Variables are replaced verbatim, as RabbitMQ does (not regex-escaped).
            return p.replace("{username}", self.user).replace("{vhost}", self.vhost)

        for p in (self.write, self.read):
            compile_regex(p)  # the stored text itself must be valid
        compiled = (compile_regex(expand(self.write)), compile_regex(expand(self.read)))
        object.__setattr__(self, "_compiled", compiled)

    def allows(self, permission: str, routing_key: str) -> bool:
        pattern = self._compiled[0] if permission == WRITE else self._compiled[1]
        return pattern.search(routing_key) is not None

    def describe(self) -> dict[str, str]:
        return {"exchange": self.exchange, "write": self.write, "read": self.read}


# -- the operation table ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Need:
    """One requirement of an operation: ``permission`` on the resource of kind ``kind``
    named by the operation's argument ``arg``."""

    permission: str
    kind: str
    arg: str


def _n(permission: str, kind: str, arg: str | None = None) -> Need:
    return Need(permission, kind, arg or kind)


# Operation -> what it needs (RabbitMQ's table for AMQP 0-9-1 methods, plus log topics and
# consumer groups with the same meaning).  An operation that needs nothing but access to
# the vhost has an empty tuple.  Tag-gated operations are in OPERATION_TAGS.
OPERATIONS: Final[dict[str, tuple[Need, ...]]] = {
    # exchanges
    "exchange.declare": (_n(CONFIGURE, "exchange"),),
    "exchange.declare.passive": (),
    # Declaring with an alternate exchange: also write on it and read on the declared one.
    "exchange.declare.alternate": (_n(WRITE, "exchange", "alternate"), _n(READ, "exchange")),
    "exchange.delete": (_n(CONFIGURE, "exchange"),),
    "exchange.bind": (_n(WRITE, "exchange", "destination"), _n(READ, "exchange", "source")),
    "exchange.unbind": (_n(WRITE, "exchange", "destination"), _n(READ, "exchange", "source")),
    # queues
    "queue.declare": (_n(CONFIGURE, "queue"),),
    "queue.declare.passive": (),
    # Declaring with a dead-letter exchange: also write on it and read on the queue.
    "queue.declare.dead_letter": (_n(WRITE, "exchange", "dead_letter"), _n(READ, "queue")),
    "queue.delete": (_n(CONFIGURE, "queue"),),
    "queue.bind": (_n(WRITE, "queue"), _n(READ, "exchange")),
    "queue.unbind": (_n(WRITE, "queue"), _n(READ, "exchange")),
    "queue.purge": (_n(READ, "queue"),),
    # Moving dead letters out of a queue into another: read it, write the target.
    "queue.replay": (_n(READ, "queue"), _n(WRITE, "queue", "target")),
    # messages
    "basic.publish": (_n(WRITE, "exchange"),),
    "basic.consume": (_n(READ, "queue"),),
    "basic.get": (_n(READ, "queue"),),
    # log topics
    "topic.create": (_n(CONFIGURE, "topic"),),
    "topic.delete": (_n(CONFIGURE, "topic"),),
    "topic.alter": (_n(CONFIGURE, "topic"),),
    "topic.describe": (),
    "topic.produce": (_n(WRITE, "topic"),),
    "topic.fetch": (_n(READ, "topic"),),
    "topic.subscribe": (_n(READ, "topic"),),
    "topic.list_offsets": (_n(READ, "topic"),),
    "topic.bind": (_n(WRITE, "topic"), _n(READ, "exchange")),
    "topic.unbind": (_n(WRITE, "topic"), _n(READ, "exchange")),
    # consumer groups: membership and offsets are read on the group name
    "group.join": (_n(READ, "group"),),
    "group.heartbeat": (_n(READ, "group"),),
    "group.leave": (_n(READ, "group"),),
    "group.commit": (_n(READ, "group"),),
    "group.offsets": (_n(READ, "group"),),
    "group.describe": (_n(READ, "group"),),
    "group.reset_offsets": (_n(READ, "group"), _n(READ, "topic")),
    "group.delete": (_n(CONFIGURE, "group"),),
    # transactions: an operator's abort needs what the producer of that id needs (Kafka's
    # Write on the TransactionalId resource)
    "transaction.abort": (_n(WRITE, "transaction"),),
    # listings and producer ids: any user with access to the vhost
    "list": (),
    "producer.init": (),
    "policy.list": (),
    "policy.set": (),
    "policy.delete": (),
}

# Operations that need one of these tags (besides the vhost access every operation needs).
OPERATION_TAGS: Final[dict[str, frozenset[str]]] = {
    "policy.set": frozenset({POLICYMAKER, ADMINISTRATOR}),
    "policy.delete": frozenset({POLICYMAKER, ADMINISTRATOR}),
}


def refusal(actor: Actor, permission: str, kind: str, name: str) -> WharfError:
    """RabbitMQ's wording: ``configure access to queue 'q1' in vhost '/' refused for
    user 'app'``."""
    return AccessRefused(
        f"{permission} access to {kind} '{name}' in vhost '{actor.vhost}' "
        f"refused for user '{actor.user}'",
        details={"kind": kind, "name": name, "permission": permission, "vhost": actor.vhost},
    )


def resource_name(kind: str, name: str) -> str:
    return DEFAULT_EXCHANGE_RESOURCE if kind == "exchange" and name == "" else name


# -- the owner ---------------------------------------------------------------------------


class AccessControl:
    """Permissions and topic permissions of every user on every vhost, and the decisions.

    ``implicit_full`` (set by the broker) says whether a user without an explicit entry
    has full access on the default vhost: the built-in guest and config-file users.
    ``on_change`` persists (``records``); ``generation`` grows on every change so that
    sessions can cache decisions and notice when to drop them.
    """

    __slots__ = (
        "_perms",
        "_topic",
        "generation",
        "implicit_full",
        "on_change",
        "on_denied",
        "denied",
    )

    def __init__(self) -> None:
        # (vhost, user) -> Permission; NO_ACCESS also records an explicit clear.
        self._perms: dict[tuple[str, str], Permission] = {}
        # (vhost, user) -> exchange -> TopicPermission
        self._topic: dict[tuple[str, str], dict[str, TopicPermission]] = {}
        self.generation = 0
        self.implicit_full: Callable[[str], bool] = lambda user: False
        self.on_change: Callable[[], None] | None = None
        # Refusals by (vhost, resource kind), for wharf_access_denied_total; "vhost" is a
        # refused login, "tag" an operation refused for a missing tag.  Bounded by the
        # vhosts times the few kinds.
        self.denied: dict[tuple[str, str], int] = {}
        # Told of every refusal (the broker writes it to the audit log): the actor, the
        # kind counted above and the refusal.
        self.on_denied: Callable[[Actor, str, WharfError], None] | None = None

    def _refuse(self, actor: Actor, kind: str, error: WharfError) -> NoReturn:
        key = (actor.vhost, kind)
        self.denied[key] = self.denied.get(key, 0) + 1
        if self.on_denied is not None:
            self.on_denied(actor, kind, error)
        raise error

    # -- decisions -------------------------------------------------------------------

    def permission(self, vhost: str, user: str) -> Permission | None:
        """The user's permissions on the vhost; None: no access to it at all."""
        p = self._perms.get((vhost, user))
        if p is not None:
            return None if p is NO_ACCESS else p
        if vhost == DEFAULT_VHOST and self.implicit_full(user):
            return FULL_ACCESS
        return None

    def check_vhost(self, actor: Actor) -> None:
        """Raise unless ``actor`` may connect to its vhost."""
        if actor.is_administrator or self.permission(actor.vhost, actor.user) is not None:
            return
        self._refuse(
            actor,
            "vhost",
            AccessRefused(
                f"access to vhost '{actor.vhost}' refused for user '{actor.user}'",
                details={"vhost": actor.vhost},
            ),
        )

    # -- visibility (what the management API lists) -----------------------------------

    @staticmethod
    def sees_everything(actor: Actor) -> bool:
        """administrator and monitoring see every vhost and connection."""
        return not SEE_ALL_TAGS.isdisjoint(actor.tags)

    def can_see_vhost(self, actor: Actor, vhost: str) -> bool:
        """May ``actor`` (its ``vhost`` field is ignored) see ``vhost`` and what is in it?
        RabbitMQ's ``list_visible_vhosts``: all for administrator and monitoring, else the
        vhosts it may connect to."""
        return self.sees_everything(actor) or self.permission(vhost, actor.user) is not None

    def visible_vhosts(self, actor: Actor, vhosts: Iterable[str]) -> list[str]:
        """The names of ``vhosts`` that ``actor`` may see, in their order."""
        return [v for v in vhosts if self.can_see_vhost(actor, v)]

    def check_vhost_visible(self, actor: Actor, *, exists: bool = True) -> None:
        """Raise ``AccessRefused`` (403) unless ``actor`` may see ``actor.vhost``.

        A vhost that does not exist is refused with the same words to those who cannot
        see every vhost, so that a refusal does not tell whether a name is taken; it is
        not counted (names from a request path would grow ``denied`` without bound)."""
        if self.can_see_vhost(actor, actor.vhost):
            return
        error = AccessRefused(
            f"access to vhost '{actor.vhost}' refused for user '{actor.user}'",
            details={"vhost": actor.vhost},
        )
        if not exists:
            raise error
        self._refuse(actor, "vhost", error)

    def can_see_connection(self, actor: Actor, owner: str) -> bool:
        """May ``actor`` see a connection of user ``owner``: its own, or any for
        administrator and monitoring (RabbitMQ's ``is_authorized_user`` for reads)."""
        return self.sees_everything(actor) or owner == actor.user

    def allowed(self, actor: Actor, permission: str, kind: str, name: str) -> bool:
        if actor.is_administrator:
            return True
        p = self.permission(actor.vhost, actor.user)
        return p is not None and p.allows(permission, resource_name(kind, name))

    def check(self, actor: Actor, permission: str, kind: str, name: str) -> None:
        """Raise ``AccessRefused`` (403) unless ``actor`` has ``permission`` on it."""
        if not self.allowed(actor, permission, kind, name):
            self._refuse(actor, kind, refusal(actor, permission, kind, resource_name(kind, name)))

    def authorize(self, actor: Actor, operation: str, **names: str) -> None:
        """Raise unless ``actor`` may do ``operation`` (a key of ``OPERATIONS``) on the
        resources ``names`` gives by argument (``queue=``, ``exchange=``, ...)."""
        needs = OPERATIONS[operation]
        tags = OPERATION_TAGS.get(operation)
        if tags is not None and tags.isdisjoint(actor.tags):
            self._refuse(
                actor,
                "tag",
                AccessRefused(
                    f"user '{actor.user}' needs one of the tags {sorted(tags)} for {operation}",
                    details={"operation": operation, "vhost": actor.vhost},
                ),
            )
        self.check_vhost(actor)
        for need in needs:
            name = names.get(need.arg)
            if name is None:
                continue  # an optional resource that is not named (replay's target)
            self.check(actor, need.permission, need.kind, name)

    def topic_allowed(self, actor: Actor, permission: str, exchange: str, key: str) -> bool:
        if actor.is_administrator:
            return True
        by_exchange = self._topic.get((actor.vhost, actor.user))
        tp = None if by_exchange is None else by_exchange.get(exchange)
        return tp is None or tp.allows(permission, key)

    def check_topic(self, actor: Actor, permission: str, exchange: str, key: str) -> None:
        """Topic authorisation of routing key ``key`` on topic exchange ``exchange``."""
        if not self.topic_allowed(actor, permission, exchange, key):
            self._refuse(
                actor,
                "routing_key",
                AccessRefused(
                    f"{permission} access to topic '{key}' in exchange '{exchange}' in vhost "
                    f"'{actor.vhost}' refused for user '{actor.user}'",
                    details={
                        "kind": "topic",
                        "exchange": exchange,
                        "routing_key": key,
                        "permission": permission,
                        "vhost": actor.vhost,
                    },
                ),
            )

    def has_topic_permissions(self, actor: Actor) -> bool:
        return not actor.is_administrator and (actor.vhost, actor.user) in self._topic

    # -- changes ---------------------------------------------------------------------

    def set_permission(self, vhost: str, user: str, permission: Permission) -> bool:
        """Set the user's permissions on the vhost; True if it had no entry."""
        key = (vhost, user)
        new = key not in self._perms or self._perms[key] is NO_ACCESS
        if key not in self._perms and len(self._perms) >= MAX_PERMISSION_ENTRIES:
            raise InvalidArgument(f"permission entry limit {MAX_PERMISSION_ENTRIES} reached")
        self._perms[key] = permission
        self._changed()
        return new

    def clear_permission(self, vhost: str, user: str) -> bool:
        """Remove the user's access to the vhost (also the implicit one); False if it
        had none."""
        had = self.permission(vhost, user) is not None
        self._perms[(vhost, user)] = NO_ACCESS
        self._topic.pop((vhost, user), None)
        self._changed()
        return had

    def set_topic_permission(
        self, vhost: str, user: str, exchange: str, write: str, read: str
    ) -> bool:
        tp = TopicPermission(exchange, write, read, user, vhost)  # raises on a bad regex
        by_exchange = self._topic.setdefault((vhost, user), {})
        new = exchange not in by_exchange
        by_exchange[exchange] = tp
        self._changed()
        return new

    def clear_topic_permission(self, vhost: str, user: str, exchange: str | None = None) -> bool:
        """Remove one exchange's topic permission (all of the user's when None)."""
        by_exchange = self._topic.get((vhost, user))
        if not by_exchange:
            return False
        if exchange is None:
            del self._topic[(vhost, user)]
        elif by_exchange.pop(exchange, None) is None:
            return False
        elif not by_exchange:
            del self._topic[(vhost, user)]
        self._changed()
        return True

    def forget_user(self, user: str) -> None:
        """The user was deleted: drop its entries (a new user by that name starts clean)."""
        keys = [k for k in self._perms if k[1] == user] + [k for k in self._topic if k[1] == user]
        for k in keys:
            self._perms.pop(k, None)
            self._topic.pop(k, None)
        if keys:
            self._changed()

    def forget_vhost(self, vhost: str) -> None:
        """The vhost was deleted: drop every entry on it (a new vhost by that name
        starts with none, as in RabbitMQ)."""
        keys = [k for k in self._perms if k[0] == vhost] + [k for k in self._topic if k[0] == vhost]
        for k in keys:
            self._perms.pop(k, None)
            self._topic.pop(k, None)
        if keys:
            self._changed()

    def _changed(self) -> None:
        self.generation += 1
        if self.on_change is not None:
            self.on_change()

    # -- listings --------------------------------------------------------------------

    def describe(self, vhost: str, user: str) -> dict[str, str] | None:
        p = self.permission(vhost, user)
        if p is None:
            return None
        return {"user": user, "vhost": vhost, **p.describe()}

    def describe_all(self, users: Iterable[str]) -> list[dict[str, str]]:
        """Every effective entry, the implicit ones of ``users`` included."""
        out: dict[tuple[str, str], dict[str, str]] = {}
        for vhost, user in self._perms:
            d = self.describe(vhost, user)
            if d is not None:
                out[(vhost, user)] = d
        for user in users:
            d = self.describe(DEFAULT_VHOST, user)
            if d is not None:
                out[(DEFAULT_VHOST, user)] = d
        return [out[k] for k in sorted(out)]

    def describe_topic(self, vhost: str, user: str) -> list[dict[str, str]]:
        by_exchange = self._topic.get((vhost, user), {})
        return [
            {"user": user, "vhost": vhost, **tp.describe()} for _, tp in sorted(by_exchange.items())
        ]

    def describe_topic_all(self) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for vhost, user in sorted(self._topic):
            out.extend(self.describe_topic(vhost, user))
        return out

    # -- persistence (definitions.json "permissions" and "topic_permissions") ----------

    def records(self) -> dict[str, list[dict[str, Any]]]:
        perms = []
        for (vhost, user), p in sorted(self._perms.items()):
            if p is NO_ACCESS:
                perms.append({"user": user, "vhost": vhost, "cleared": True})
            else:
                perms.append({"user": user, "vhost": vhost, **p.describe()})
        return {"permissions": perms, "topic_permissions": self.describe_topic_all()}

    def load(self, doc: dict[str, Any], runtime_users: Iterable[str]) -> list[str]:
        """Apply saved records (at start); returns a message per skipped bad record.

        A document without a ``permissions`` key predates permissions: ``runtime_users``
        (users created through the API then) get full access on the default vhost, once.
        """
        errors: list[str] = []
        perms = doc.get("permissions")
        if perms is None:
            for user in runtime_users:
                self._perms[(DEFAULT_VHOST, user)] = FULL_ACCESS
            self.generation += 1
            return errors
        for i, rec in enumerate(perms if isinstance(perms, list) else []):
            try:
                user, vhost = _user_vhost(rec)
                if rec.get("cleared") is True:
                    self._perms[(vhost, user)] = NO_ACCESS
                else:
                    self._perms[(vhost, user)] = permission_from(rec)
            except (InvalidArgument, AttributeError) as exc:
                errors.append(f"permissions[{i}] ignored: {exc}")
        topic = doc.get("topic_permissions")
        for i, rec in enumerate(topic if isinstance(topic, list) else []):
            try:
                user, vhost = _user_vhost(rec)
                ex, write, read = (_text(rec, k) for k in ("exchange", "write", "read"))
                tp = TopicPermission(ex, write, read, user, vhost)
                self._topic.setdefault((vhost, user), {})[ex] = tp
            except (InvalidArgument, AttributeError) as exc:
                errors.append(f"topic_permissions[{i}] ignored: {exc}")
        self.generation += 1
        return errors


def _text(rec: dict[str, Any], key: str) -> str:
    value = rec.get(key)
    if not isinstance(value, str):
        raise InvalidArgument(f"'{key}' must be a string")
    return value


def _user_vhost(rec: Any) -> tuple[str, str]:
    if not isinstance(rec, dict):
        raise InvalidArgument("expected an object")
    return _text(rec, "user"), _text(rec, "vhost")


def permission_from(body: Any) -> Permission:
    """A ``Permission`` from ``{"configure", "write", "read"}`` (each a regex string)."""
    if not isinstance(body, dict):
        raise InvalidArgument("expected an object with configure, write and read")
    return Permission(*(_text(body, k) for k in PERMISSIONS))
