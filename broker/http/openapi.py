"""The OpenAPI 3 document of the management API (``GET /api/openapi.json``).

Generated from the route table (``ManagementApi.routes``, api.py and api_logs.py): each
route carries its method, path, query flags, auth rule and a short description of its
answer and body (``Route.doc``); the component schemas are here.  tests/integration/
test_openapi.py runs schemathesis against it, so a handler and its description cannot
drift apart unnoticed.  Schemas use a short notation: "field:t" with t = s(tring)
b(oolean) i(nteger) m(ap) l(ist of strings); a trailing "!" marks a required field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

from ..core.policies.arguments import OVERFLOW_MODES  # server-side policies
from ..core.policies.registry import (  # server-side policies
    MAX_PATTERN_CHARS,
    POLICY_KEYS,
    PRIORITY_MAX,
    PRIORITY_MIN,
    int_bounds,
)
from ..core.quotas import LIMIT_NAMES as USER_LIMIT_NAMES
from ..core.quotas import MAX_LIMIT_VALUE as USER_MAX_LIMIT_VALUE
from ..core.quotas import NO_LIMIT
from ..core.vhosts import (
    LIMIT_NAMES,
    MAX_DESCRIPTION_CHARS,
    MAX_LIMIT_VALUE,
    MAX_VHOST_TAGS,
    MAX_VHOST_TAGS_TEXT_CHARS,
    QUEUE_TYPES,
)
from ..logs.group_model import RESET_TARGETS
from ..logs.topicconfig import (
    CLEANUP_POLICIES,
    MAX_MS,
    MAX_SEGMENT_BYTES,
    MIN_SEGMENT_BYTES,
    TIMESTAMP_TYPES,
)
from ..logs.topics import MAX_PARTITIONS, TOPIC_NAME_RE
from ..security.users import (
    MAX_PASSWORD_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS_PER_USER,
    MAX_USER_NAME_CHARS,
    PASSWORD_HASH_PATTERN,
    TAG_PATTERN,
    USER_NAME_PATTERN,
)
from .api_core import (
    JSON_CONTENT_TYPE,
    MAX_PEEK_COUNT,
    MSGPACK_INT_MAX,
    MSGPACK_INT_MIN,
    Route,
)
from .api_logs import ISOLATION_LEVELS, MAX_BROWSE_RECORDS, MAX_RESET_PARTITIONS, MAX_RESET_VALUE
from .api_paging import MAX_NAME_FILTER_CHARS, MAX_PAGE_SIZE
from .sessions import SESSION_COOKIE

_TYPES: Final[dict[str, dict[str, Any]]] = {
    "s": {"type": "string"},
    "b": {"type": "boolean"},
    "i": {"type": "integer"},
    "m": {"type": "object"},
    "l": {"type": "array", "items": {"type": "string"}},
}


def _schema(fields: str, *, closed: bool = False, **special: Any) -> dict[str, Any]:
    props: dict[str, Any] = {}
    required: list[str] = []
    for item in fields.split():
        name, _, kind = item.partition(":")
        if kind.endswith("!"):
            kind = kind[:-1]
            required.append(name)
        props[name] = dict(_TYPES[kind])
    for name, extra in special.items():
        props[name] = {**props.get(name, {}), **extra}
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    if closed:
        out["additionalProperties"] = False
    return out


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _enum(*values: Any) -> dict[str, Any]:
    return {"enum": list(values)}


def _int_range(low: int, high: int = MAX_MS) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high}


# Topic settings (logs/topicconfig.py); "delete,compact" is "compact,delete" normalised.
_TOPIC_CONFIG: Final = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "retention_ms": _int_range(-1),
        "retention_bytes": _int_range(-1),
        "segment_bytes": _int_range(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
        "segment_ms": _int_range(1),
        "timestamp_type": _enum(*TIMESTAMP_TYPES),
        "cleanup_policy": _enum(*CLEANUP_POLICIES, "delete,compact"),
        "min_cleanable_dirty_ratio": {"type": "number", "minimum": 0, "maximum": 1},
        "delete_retention_ms": _int_range(0),
    },
}


def _apply_to_queues(schema: dict[str, Any]) -> dict[str, Any]:
    """Server-side policies: "apply-to" (not a Python name) is "queues" only."""
    schema["properties"]["apply-to"].update(_enum("queues"))
    return schema


_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "Error": _schema("error:s! code:i!"),
    "Empty": _schema(""),
    "Overview": _schema(
        "product:s version:s! ready:b object_totals:m! queue_totals:m! message_stats:m! "
        "alarms:l! memory:m listeners:m! node:m! log_stats:m!",
        listeners={"type": "array", "items": _schema("protocol:s host:s port:i")},
        node=_schema(
            "uptime_s:i! disk_free_bytes:i! disk_free_limit_bytes:i! fsyncs_total:i! "
            "fd_used:i! fd_limit:i!"
        ),
        log_stats=_schema(
            "records_produced:i! records_fetched:i! bytes_produced:i! bytes_fetched:i!"
        ),
    ),
    "WhoAmI": _schema("name:s! tags:l! csrf_token:s"),
    "Login": _schema("name:s! tags:l! csrf_token:s! idle_timeout_s:i!"),
    "LoginRequest": _schema(
        "username:s! password:s!",
        closed=True,
        username={"minLength": 1, "maxLength": MAX_USER_NAME_CHARS},
        password={"maxLength": MAX_PASSWORD_CHARS},
    ),
    "Tls": _schema(
        "cert_file:s! key_file:s! ca_file:s client_auth:s! min_version:s! not_after:s! "
        "expiry_seconds:i! loaded_at:s! reloads:i! last_error:s",
        ca_file={"nullable": True},
        last_error={"nullable": True},
    ),
    "Queue": _schema(
        "name:s! type:s! durable:b! exclusive:b auto_delete:b! arguments:m! messages_ready:i! "
        "messages_unacked:i consumers:i! policy:s effective_arguments:m "
        "dedup_window_ms:i dedup_ids:i duplicates_dropped:i message_stats:m!",
        policy={"nullable": True},
        # Counts since start (RabbitMQ's names); rates are two readings apart.
        message_stats=_schema(
            "publish:i! deliver:i! get:i! deliver_get:i! ack:i! redeliver:i! "
            "dead_lettered:i! expired:i!"
        ),
    ),
    "QueueDeclare": _schema(
        "durable:b auto_delete:b exclusive:b arguments:m", closed=True, exclusive=_enum(False)
    ),
    "MessageCount": _schema("messages:i!"),
    "Moved": _schema("moved:i!"),
    "ReplayRequest": _schema(
        "target:s reason:s limit:i max_deaths:i",
        closed=True,
        limit={"minimum": 0, "maximum": MSGPACK_INT_MAX},
        max_deaths={"minimum": 0, "maximum": MSGPACK_INT_MAX},
    ),
    "PeekRequest": _schema(
        "count:i encoding:s truncate:i",
        closed=True,
        count={"minimum": 1, "maximum": MAX_PEEK_COUNT},
        encoding=_enum("auto", "base64"),
        truncate={"minimum": 0, "maximum": MSGPACK_INT_MAX},
    ),
    "PeekedMessage": _schema(
        "payload:s! payload_encoding:s! payload_bytes:i! exchange:s! routing_key:s! "
        "properties:m! redelivered:b! delivery_count:i!",
        payload_encoding=_enum("string", "base64"),
    ),
    "Exchange": _schema("name:s! type:s! durable:b! auto_delete:b! internal:b! arguments:m!"),
    "ExchangeDeclare": _schema(
        "type:s! durable:b auto_delete:b internal:b arguments:m",
        closed=True,
        type=_enum("direct", "fanout", "topic", "headers"),
    ),
    "Publish": _schema(
        "routing_key:s payload:s! payload_encoding:s properties:m",
        closed=True,
        payload_encoding=_enum("string", "base64"),
        properties=_schema(
            "headers:m content_type:s content_encoding:s message_id:s correlation_id:s "
            "reply_to:s timestamp:i type:s app_id:s user_id:s persistent:b priority:i "
            "expiration:i",
            priority={"minimum": 0, "maximum": 255},
            expiration={"minimum": 0},
        ),
    ),
    "Routed": _schema("routed:b! refused:b"),
    "Binding": _schema(
        "source:s! destination:s! destination_type:s routing_key:s arguments:m",
        closed=True,
        destination={"minLength": 1, "maxLength": 255},
        destination_type=_enum("queue", "exchange", "topic"),
    ),
    "Connection": _schema(
        "name:s! peer:s! user:s! state:s! protocol:s! channels:i! heartbeat_s:i consumers:i "
        "unacked:i client_properties:m tls:b! tls_version:s cipher:s",
        state=_enum("starting", "open", "closing"),
    ),
    "Channel": _schema(
        "name:s! connection:s! number:i! user:s! vhost:s! protocol:s! consumer_count:i! "
        "messages_unacknowledged:i! prefetch_count:i! global_prefetch_count:i! confirm:b! "
        "transactional:b! message_stats:m!",
        message_stats=_schema("publish:i! deliver_get:i!"),
    ),
    "Consumer": _schema(
        "consumer_tag:s! queue:s! connection:s! prefetch:i no_ack:b exclusive:b unacked:i "
        "arguments:m"
    ),
    "Permission": _schema("user:s! vhost:s! configure:s! write:s! read:s!"),
    "PermissionPut": _schema("configure:s! write:s! read:s!", closed=True),
    "TopicPermission": _schema("user:s! vhost:s! exchange:s! write:s! read:s!"),
    "TopicPermissionPut": _schema("exchange:s! write:s! read:s!", closed=True),
    "UserLimits": _schema(
        "user:s! value:m!",
        value={"additionalProperties": {"type": "integer"}},
    ),
    "UserLimit": _schema("user:s! name:s! value:i!", name=_enum(*USER_LIMIT_NAMES)),
    "UserLimitPut": _schema(
        "value:i!", closed=True, value=_int_range(NO_LIMIT, USER_MAX_LIMIT_VALUE)
    ),
    "User": _schema("name:s! tags:l! source:s!", source=_enum("builtin", "config", "runtime")),
    "UserPut": {
        **_schema(
            "password:s password_hash:s",
            closed=True,
            password={"minLength": 1, "maxLength": MAX_PASSWORD_CHARS},
            password_hash={"pattern": PASSWORD_HASH_PATTERN},
            tags={
                "oneOf": [
                    {
                        "type": "array",
                        "maxItems": MAX_TAGS_PER_USER,
                        "items": {
                            "type": "string",
                            "maxLength": MAX_TAG_CHARS,
                            "pattern": TAG_PATTERN,
                        },
                    },
                    # "a,b": at most MAX_TAGS_PER_USER tags fit in this length.
                    {
                        "type": "string",
                        "maxLength": 2 * MAX_TAGS_PER_USER,
                        "pattern": r"^[^\u0000-\u001f\u007f]*$",
                    },
                ]
            },
        ),
        "not": {"required": ["password", "password_hash"]},
    },
    "UserDeleted": _schema("connections_closed:i!"),
    # virtual hosts (core/vhosts.py)
    "Vhost": _schema(
        "name:s! description:s! tags:l! default_queue_type:s metadata:m messages_ready:i "
        "messages_unacknowledged:i queues:i topics:i connections:i limits:m"
    ),
    "VhostPut": _schema(
        "description:s default_queue_type:s tracing:b",
        closed=True,
        description={"maxLength": MAX_DESCRIPTION_CHARS},
        # A list, or RabbitMQ's comma-separated string (short enough for MAX_VHOST_TAGS).
        tags={
            "oneOf": [
                {"type": "string", "maxLength": MAX_VHOST_TAGS_TEXT_CHARS},
                {
                    "type": "array",
                    "maxItems": MAX_VHOST_TAGS,
                    "items": {"type": "string", "minLength": 1, "maxLength": 255},
                },
            ],
        },
        default_queue_type=_enum(*QUEUE_TYPES),
    ),
    "VhostDeleted": _schema("connections_closed:i!"),
    "VhostLimits": _schema("vhost:s! value:m!"),
    "VhostLimitPut": _schema(
        "value:i!", closed=True, value={"minimum": MSGPACK_INT_MIN, "maximum": MAX_LIMIT_VALUE}
    ),
    # server-side policies
    "Policy": _apply_to_queues(_schema("name:s! pattern:s! definition:m! priority:i! apply-to:s!")),
    "PolicyPut": _apply_to_queues(
        _schema(
            "pattern:s! definition:m! priority:i apply-to:s",
            closed=True,
            pattern={"maxLength": MAX_PATTERN_CHARS, "format": "regex"},
            priority={"minimum": PRIORITY_MIN, "maximum": PRIORITY_MAX},
            definition={
                "minProperties": 1,
                "additionalProperties": False,
                "properties": {
                    k: (
                        {"type": "string"}
                        if k in ("dead-letter-exchange", "dead-letter-routing-key")
                        else {"enum": list(OVERFLOW_MODES)}
                        if k == "overflow"
                        else {
                            "type": "integer",
                            "minimum": int_bounds(k)[0],
                            "maximum": int_bounds(k)[1],
                        }
                    )
                    for k in POLICY_KEYS
                },
            },
        )
    ),
    # log topics and consumer groups (api_logs.py)
    "Topic": _schema(
        "name:s! partitions:i! config:m! offsets:m! internal:b",
        offsets={"type": "array", "items": _ref("TopicPartition")},
    ),
    "TopicPartition": _schema("partition:i! earliest:i! latest:i! log_end:i bytes:i segments:i"),
    "TopicRecord": _schema(
        "partition:i! offset:i! timestamp:i! key:m! value:m! headers:m!",
        key={"nullable": True, **_schema("text:s! base64:s!", text={"nullable": True})},
        value={"nullable": True, **_schema("text:s! base64:s!", text={"nullable": True})},
        headers={"nullable": True},
    ),
    "TopicPut": _schema(
        "partitions:i config:m",
        closed=True,
        partitions={"minimum": 1, "maximum": MAX_PARTITIONS},
        config=_TOPIC_CONFIG,
    ),
    "TopicAlter": {
        **_schema(
            "partitions:i config:m",
            closed=True,
            partitions={"minimum": 1, "maximum": MAX_PARTITIONS},
            config=_TOPIC_CONFIG,
        ),
        "anyOf": [{"required": ["partitions"]}, {"required": ["config"]}],
    },
    "GroupSummary": _schema(
        "group:s! state:s! members:i! generation:i! strategy:s",
        strategy={"nullable": True},
    ),
    "Group": _schema(
        "group:s! state:s! generation:i! strategy:s members:m! offsets:m!",
        strategy={"nullable": True},
        members={"type": "array", "items": _ref("GroupMember")},
        offsets={"type": "array", "items": _ref("GroupOffset")},
    ),
    "GroupMember": _schema(
        "member_id:s! instance_id:s client_host:s topics:l assignment:m",
        instance_id={"nullable": True},
        assignment={"type": "array", "items": {"type": "array"}},
    ),
    "GroupOffset": _schema(
        "topic:s! partition:i! committed:i! latest:i! lag:i! member:s",
        member={"nullable": True},
    ),
    "ResetOffsets": {
        **_schema(
            "topic:s! to:s! value:i partitions:m dry_run:b",
            closed=True,
            to=_enum(*RESET_TARGETS),
            value={"minimum": 0, "maximum": MAX_RESET_VALUE},
            partitions={
                "type": "array",
                "maxItems": MAX_RESET_PARTITIONS,
                "items": {"type": "integer", "minimum": 0, "maximum": MAX_PARTITIONS - 1},
            },
        ),
        # "offset" and "timestamp" need a value.
        "anyOf": [{"properties": {"to": _enum("earliest", "latest")}}, {"required": ["value"]}],
    },
    "OffsetsReset": _schema(
        "group:s! topic:s! offsets:m! dry_run:b!",
        offsets={"type": "array", "items": _schema("topic:s! partition:i! offset:i!")},
    ),
    # transactions (api_logs.py, logs/transactions.py)
    "Transaction": _schema(
        "transactional_id:s! producer_id:i! producer_epoch:i! state:s! timeout_ms:i! "
        "partitions:m! groups:l! start_ms:i! age_ms:i! queue_acks:i vhost:s",
        partitions={"type": "array", "items": {"type": "array"}},
    ),
}

_ERRORS: Final = {
    "400": "Bad request: malformed body, unknown field, bad value (code 400).",
    "401": "Missing or wrong credentials (HTTP basic), or an ended web UI session.",
    "403": "Not permitted: needs the administrator tag, a reserved name, or a change made "
    "with the session cookie without its X-CSRF-Token (code 403).",
    "404": "No such queue, exchange, binding, connection, user, topic, group or transactional "
    "id (code 404).",
    "409": "Precondition failed (406: also a group that has members), exclusive queue owned "
    "by a connection (405), consumer group rebalancing (409), a transactional id without an "
    "open transaction (415).",
    "413": "Request body over 1 MiB, or message over max_message_bytes (code 311).",
    "503": "Resource alarm or message store unavailable (code 506).",
}

# method, path, success status, response schema ([X]: array of X), request body schema,
# boolean query flags, summary.  201 answers also allow 200 (already existed).
# Each operation's success status, response schema ([X]: array of X), request body schema
# and summary come from its route (api_core.Route.doc, "STATUS RESULT BODY summary"), so
# the document lists exactly the routes the API dispatches.  201 answers also allow 200.


def _result_schema(name: str, paged: bool = False) -> dict[str, Any]:
    """``paged``: the route takes ``page`` (api_paging.py): with it the answer is a page
    object around the items, without it the plain array."""
    if name == "-":
        return {"type": "object"}
    if name.startswith("["):
        array = {"type": "array", "items": _ref(name[1:-1])}
        if not paged:
            return array
        page = _schema(
            "items:m! page:i! page_size:i! page_count:i! item_count:i! filtered_count:i! "
            "total_count:i!",
            items=array,
        )
        return {"oneOf": [array, page]}
    return _ref(name)


# Path parameters other than {name}, and query parameters that are not flags.
_PATH_PARAMS: Final = {
    "{vhost}": "Percent-encoded virtual host (%2F: the default vhost /).",
    "{user}": "Percent-encoded user name.",
}
_QUERY_KINDS: Final = {
    "exchange": "s",
    # paging of lists (api_paging.py)
    "page": "i",
    "page_size": "i",
    "name": "s",
    "sort": "s",
    # browsing topic records (api_logs.py)
    "partition": "i",
    "offset": "i",
    "timestamp": "i",
    "limit": "i",
    "isolation_level": "s",
}
# Bounds of query parameters (integer ranges, string lengths, enums), as the handlers
# check them.
_QUERY_BOUNDS: Final[dict[str, dict[str, Any]]] = {
    "page": {"minimum": 1},
    "page_size": {"minimum": 1, "maximum": MAX_PAGE_SIZE},
    "partition": {"minimum": 0, "maximum": MAX_PARTITIONS - 1},
    "offset": {"minimum": 0, "maximum": MAX_RESET_VALUE},
    "timestamp": {"minimum": 0, "maximum": MAX_RESET_VALUE},
    "limit": {"minimum": 1, "maximum": MAX_BROWSE_RECORDS},
    "isolation_level": {"enum": list(ISOLATION_LEVELS)},
    "name": {"maxLength": MAX_NAME_FILTER_CHARS},
    "sort": {"maxLength": MAX_NAME_FILTER_CHARS},
}


def openapi_document(api_version: str, routes: Iterable[Route]) -> dict[str, Any]:
    """The document for ``routes`` (``ManagementApi.routes``: the table that dispatches)."""
    paths: dict[str, dict[str, Any]] = {}
    error = {"content": {JSON_CONTENT_TYPE: {"schema": _ref("Error")}}}
    name_param = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "Percent-encoded name (amq.default: the default exchange).",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    }
    user_param = {
        **name_param,
        "description": "Percent-encoded user name.",
        "schema": {
            "type": "string",
            "maxLength": MAX_USER_NAME_CHARS,
            "pattern": USER_NAME_PATTERN,
        },
    }
    topic_param = {
        **name_param,
        "description": "Percent-encoded topic name.",
        "schema": {"type": "string", "pattern": f"^{TOPIC_NAME_RE.pattern}$"},
    }
    group_param = {**name_param, "description": "Percent-encoded consumer group name."}
    limit_param = {
        **name_param,
        "description": "The limit: max-connections, max-queues or max-topics.",
        "schema": _enum(*LIMIT_NAMES),
    }
    special_params = {
        "/users/": user_param,
        "/topics/": topic_param,
        "/groups/": group_param,
        "/vhost-limits/": limit_param,
    }
    for route in routes:
        method, path = route.method, "/" + "/".join(route.path)
        ok, result, body, summary = route.doc.split(maxsplit=3)
        paged = "page" in route.query
        success = {"content": {JSON_CONTENT_TYPE: {"schema": _result_schema(result, paged)}}}
        responses: dict[str, Any] = {ok: {"description": "Success", **success}}
        if ok == "201":
            responses["200"] = {"description": "Already there (unchanged)", **success}
        responses.update({k: {"description": v, **error} for k, v in _ERRORS.items()})
        params: list[dict[str, Any]] = []
        if "{name}" in path:
            prefix = path[: path.index("/", 1) + 1]
            params.append(special_params.get(prefix, name_param))
        for seg in route.path:  # other parameters: /permissions/{vhost}/{user}
            if seg.startswith("{") and seg != "{name}":
                param = user_param if seg == "{user}" else name_param
                params.append({**param, "name": seg[1:-1], "description": _PATH_PARAMS[seg]})
        params += [
            {
                "name": f,
                "in": "query",
                "required": False,
                "schema": {**_TYPES[_QUERY_KINDS.get(f, "b")], **_QUERY_BOUNDS.get(f, {})},
            }
            for f in route.query
        ]
        if route.admin:
            summary += " Needs the administrator tag."
        op_id = method.lower() + re.sub(r"[{}]", "", path).replace("/", "_").replace(".", "_")
        op: dict[str, Any] = {"summary": summary, "operationId": op_id, "responses": responses}
        if route.path == ("auth", "login"):
            op["security"] = []  # the one operation that takes no credentials
        if params:
            op["parameters"] = params
        if body != "-":
            op["requestBody"] = {
                "required": any(k in _SCHEMAS[body] for k in ("required", "anyOf")),
                "content": {JSON_CONTENT_TYPE: {"schema": _ref(body)}},
            }
        paths.setdefault("/api" + path, {})[method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Wharf management API",
            "version": api_version,
            "description": "See docs/management.md.  Needs a user with one of the tags "
            "administrator, monitoring, policymaker or management; changes are decided by "
            "the user's permissions (docs/security.md); users, permissions and TLS need the "
            "administrator tag.",
        },
        # Either HTTP basic, or the web UI's session cookie (POST /api/auth/login; changes
        # then also need its X-CSRF-Token header).
        "security": [{"basic": []}, {"session": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
            },
            "schemas": _SCHEMAS,
        },
    }
