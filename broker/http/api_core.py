"""Plumbing of the management HTTP API: JSON in and out, field checks, routes, errors.

api.py (queues, exchanges, bindings, connections, users, policies) and api_logs.py
(topics and consumer groups) build their handlers from these pieces; openapi.py
describes the result.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from wharf.protocol.errors import InvalidArgument, WharfError

from ..core.access import DEFAULT_VHOST, Actor

if TYPE_CHECKING:
    from ..core.vhosts import VirtualHost
    from ..security.users import StoredUser
    from .api_broker import ApiBroker
    from .sessions import Session

JSON_CONTENT_TYPE: Final = "application/json"
# Nesting depth allowed in request bodies (arguments, headers): deep JSON would make
# the msgpack encoder or the definitions writer recurse without bound.
MAX_BODY_DEPTH: Final = 32
# A route's OpenAPI line when it has none ("STATUS RESULT BODY summary", see Route.doc).
UNDOCUMENTED: Final = "- - - (undocumented)"
MAX_PEEK_COUNT: Final = 100
# A peek stops adding messages once their bodies reach this many bytes (at least one).
MAX_PEEK_BODY_BYTES: Final = 8 * 1024 * 1024
# msgpack integers are 64-bit.
MSGPACK_INT_MIN: Final = -(2**63)
MSGPACK_INT_MAX: Final = 2**64 - 1

# Wharf error code -> HTTP status; codes not listed are 400.
_STATUS_BY_CODE: Final = {
    311: 413,  # ContentTooLarge
    403: 403,  # AccessRefused
    404: 404,  # NotFound
    405: 409,  # ResourceLocked: exclusive queue owned by a connection
    406: 409,  # PreconditionFailed (also: a consumer group that still has members)
    409: 409,  # RebalanceInProgress
    415: 409,  # InvalidTxnState: no open transaction to abort
    506: 503,  # ResourceError: a limit, an alarm, or the store is unavailable
    541: 500,  # InternalError
}
INTERNAL_ERROR_CODE: Final = 541
METHOD_NOT_ALLOWED_CODE: Final = 540


def http_status(code: int) -> int:
    return _STATUS_BY_CODE.get(code, 400)


class ApiError(Exception):
    """An HTTP-level failure (401, 404 for a path, 405) with its Wharf code."""

    def __init__(
        self, status: int, code: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


# -- JSON in and out -------------------------------------------------------------------------


def jsonable(value: Any, depth: int = 0) -> Any:
    """Make broker values (msgpack-decoded: bytes, tuples, non-str keys, NaN) JSON-safe.

    bytes become ``{"$bin": "<hex>"}`` as in definitions.json.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth > MAX_BODY_DEPTH * 2:
        return None
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, dict):
        return {
            (k if isinstance(k, str) else json.dumps(jsonable(k, depth + 1))): jsonable(
                v, depth + 1
            )
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    return str(value)


class EncodedJson(bytes):
    """A handler's answer already encoded by ``dump_json`` (a large answer that does not
    change, such as the OpenAPI document): sent as it is."""


def dump_json(obj: Any) -> bytes:
    if isinstance(obj, EncodedJson):
        return obj
    return json.dumps(jsonable(obj), allow_nan=False).encode("utf-8")


def check_wire_value(value: Any, where: str, depth: int = 0) -> None:
    """Reject what msgpack cannot carry: ints beyond 64 bits, deep nesting, NaN."""
    if depth > MAX_BODY_DEPTH:
        raise InvalidArgument(f"{where}: nested deeper than {MAX_BODY_DEPTH} levels")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"{where}: lone surrogate in a string") from None
        return
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not MSGPACK_INT_MIN <= value <= MSGPACK_INT_MAX:
            raise InvalidArgument(f"{where}: integer out of the 64-bit range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{where}: numbers must be finite")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_wire_value(k, where, depth + 1)
            check_wire_value(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_wire_value(v, f"{where}[{i}]", depth + 1)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}``."""
    if not body.strip():
        return {}
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise InvalidArgument("request body must be a JSON object (UTF-8)") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("request body must be a JSON object")
    check_wire_value(doc, "body")
    return doc


class Fields:
    """Typed access to a JSON object's fields; unknown fields are an error (typos)."""

    def __init__(self, doc: dict[str, Any], allowed: tuple[str, ...]) -> None:
        for key in doc:
            if key not in allowed:
                raise InvalidArgument(
                    f"unknown field {key!r}; expected one of: {', '.join(allowed)}",
                    details={"argument": key},
                )
        self.doc = doc

    def _bad(self, key: str, what: str) -> WharfError:
        return InvalidArgument(f"field {key!r} must be {what}", details={"argument": key})

    def flag(self, key: str, default: bool = False) -> bool:
        v = self.doc.get(key, default)
        if type(v) is not bool:
            raise self._bad(key, "true or false")
        return v

    def text(self, key: str, default: str | None = None) -> str:
        v = self.doc.get(key, default)
        if v is None:
            raise InvalidArgument(f"field {key!r} is required", details={"argument": key})
        if type(v) is not str:
            raise self._bad(key, "a string")
        return v

    def opt_text(self, key: str) -> str | None:
        return self.text(key) if key in self.doc else None

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        v = self.doc.get(key, default)
        if type(v) is not int or not lo <= v <= hi:
            raise self._bad(key, f"an integer {lo}..{hi}")
        return v

    def obj(self, key: str) -> dict[str, Any]:
        v = self.doc.get(key)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self._bad(key, "an object")
        return v


def query_flag(query: Mapping[str, str], key: str) -> bool:
    raw = query.get(key)
    if raw is None:
        return False
    value = raw.lower()
    if value in ("", "true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise InvalidArgument(f"query parameter {key!r} must be true or false")


def query_bool(query: Mapping[str, str], key: str) -> bool:
    """A boolean query parameter as OpenAPI writes one: exactly ``true`` or ``false``
    (400, code 400, otherwise); absent is false."""
    raw = query.get(key)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise InvalidArgument(f"query parameter {key!r} must be true or false")


def query_int(query: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    """An integer query parameter in ``low..high`` (400, code 400, otherwise)."""
    raw = query.get(key)
    if raw is None:
        return default
    text = raw[1:] if raw.startswith("-") else raw
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or not (low <= int(raw) <= high):
        raise InvalidArgument(
            f"query parameter {key!r} must be an integer {low}..{high}",
            details={"argument": key},
        )
    return int(raw)


# -- requests --------------------------------------------------------------------------------


@dataclass(slots=True)
class Call:
    """One authenticated, routed request."""

    user: StoredUser
    params: list[str]
    query: dict[str, str]
    body: bytes
    peer: str = ""  # the client's address
    # The request's headers (case-insensitive in the server; X-Reason of a close).
    headers: Mapping[str, str] = field(default_factory=dict)
    # The web UI session that authenticated the request (None: HTTP basic).
    session: Session | None = None
    tls: bool = False  # came over HTTPS
    # Headers for the answer (a login's or logout's Set-Cookie).
    reply_headers: dict[str, str] = field(default_factory=dict)

    def actor(self) -> dict[str, str]:
        """Who made a change, for its audit line (security/audit.py)."""
        return {"actor": self.user.name, "peer": self.peer, "protocol": "http"}

    def core_actor(self, vhost: str = DEFAULT_VHOST) -> Actor:
        """The request's user on ``vhost`` as the core's permission checks see it
        (core/access.py)."""
        return Actor(self.user.name, tuple(self.user.tags), vhost, peer=self.peer, protocol="http")

    def json(self, allowed: tuple[str, ...]) -> Fields:
        return Fields(parse_body(self.body), allowed)


def vhost_parameter(path: tuple[str, ...], names: list[str]) -> str | None:
    """The vhost a route's path names (its first parameter: ``/api/queues/{vhost}``,
    ``/api/vhosts/{name}``), None for routes across vhosts."""
    if len(path) >= 2 and (path[1] == "{vhost}" or path[:2] == ("vhosts", "{name}")):
        return names[0]
    return None


def visible_vhosts(broker: ApiBroker, call: Call) -> list[VirtualHost]:
    """What a listing covers: the vhost the path names (the dispatcher has checked that
    the user may see it), or every vhost the user may see (core/access.py)."""
    if call.params:
        return [broker.vhosts.get(call.params[0])]
    actor = call.core_actor()
    return [v for v in broker.vhosts if broker.access.can_see_vhost(actor, v.name)]


Result = tuple[int, Any]
Handler = Callable[[Call], Awaitable[Result]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: tuple[str, ...]  # literal segments, or "{...}" for a parameter
    handler: Handler
    admin: bool = False  # needs the administrator tag
    query: tuple[str, ...] = field(default=())
    # For the OpenAPI document (openapi.py): "STATUS RESULT BODY summary", RESULT and BODY
    # naming component schemas ("[X]": array of X, "-": none).
    doc: str = UNDOCUMENTED

    def match(self, segments: list[str]) -> list[str] | None:
        if len(segments) != len(self.path):
            return None
        params: list[str] = []
        for pattern, seg in zip(self.path, segments, strict=True):
            if pattern.startswith("{"):
                params.append(seg)
            elif pattern != seg:
                return None
        return params


def route(
    spec: str,
    handler: Handler,
    doc: str = UNDOCUMENTED,
    *,
    admin: bool = False,
    query: tuple[str, ...] = (),
) -> Route:
    """One row of a route table, its path written as the URL reads (below /api):
    ``route("GET /queues/{vhost}/{name}", handler, doc)``; ``{...}`` is a parameter."""
    method, _, path = spec.partition(" /")
    return Route(method, tuple(path.split("/")), handler, admin, query, doc)
