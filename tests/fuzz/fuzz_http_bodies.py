"""Fuzz target: the bodies of the management API's writes (broker/http/api*.py).

Input: one byte choosing an endpoint that takes a JSON body, then the body.  The request
goes through ``ManagementApi.handle`` in-process, without a server: the body parsing
(``api_core.parse_body``, ``Fields``) and every check of the handler, against a real
core ``Topology`` (queue ``q`` bound to topic exchange ``x``, made fresh for each input).
Only what lies beyond the checks is a stand-in: users are stored in a real
``UserStore`` but passwords are not hashed, and log topics and consumer groups are
stand-ins that apply the real topic-config and partition checks.

Fine: any answer but 500.  A 500 is a crash (``handle`` turns an unexpected exception
into a 500 and logs it; the harness raises that exception).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, Final, cast

from wharf.broker.config import Settings
from wharf.broker.core.access import AccessControl, Actor
from wharf.broker.core.session import CoreSession
from wharf.broker.core.vhosts import VirtualHosts
from wharf.broker.http.api import ManagementApi
from wharf.broker.logs.topicconfig import DEFAULTS
from wharf.broker.logs.topics import _check_partition_count
from wharf.broker.security.audit import AuditLog
from wharf.broker.security.identity import User
from wharf.broker.security.users import ADMINISTRATOR_TAG, StoredUser, UserStore

TARGET: Final = "http_bodies"
MAX_LEN: Final = 4 * 1024
# A well-formed hash (not of any password: the harness never checks one).
HASH: Final = "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U="
# (method, path) of every write that takes a JSON body.
ENDPOINTS: Final = (
    ("PUT", "/api/queues/%2F/q2"),
    ("POST", "/api/queues/%2F/q/get"),
    ("POST", "/api/queues/%2F/q/replay"),
    ("PUT", "/api/exchanges/%2F/x2"),
    ("POST", "/api/exchanges/%2F/x/publish"),
    ("POST", "/api/bindings/%2F"),
    ("DELETE", "/api/bindings/%2F"),
    ("PUT", "/api/users/u"),
    ("PUT", "/api/policies/%2F/p"),
    ("PUT", "/api/topics/%2F/t"),
    ("PATCH", "/api/topics/%2F/t"),
    ("POST", "/api/groups/%2F/g/reset-offsets"),
)
_AUTH: Final = {"authorization": "Basic cm9vdDpyb290"}  # root:root (any password passes)


class _Authenticator:
    def __init__(self) -> None:
        self.users = UserStore([StoredUser(User("root", (ADMINISTRATOR_TAG,)), HASH)])

    async def authenticate(
        self, username: str, password: str, peer_host: str, **where: Any
    ) -> User:
        return User(username, (ADMINISTRATOR_TAG,))

    async def authenticate_plain(
        self, username: str, password: str, peer_host: str, **where: Any
    ) -> User:
        return User(username, (ADMINISTRATOR_TAG,))

    async def hash_password(self, password: str) -> str:
        return HASH

    async def hash_credentials(self, password: str) -> tuple[str, str | None]:
        return HASH, None


async def _done() -> None:
    return None


class _Topics:
    """Log topics: the registry's own checks of partitions and config, no files."""

    def create(self, name: str, partitions: int, config: dict[str, Any] | None) -> dict[str, Any]:
        _check_partition_count(partitions)
        return {"name": name, "config": DEFAULTS.with_changes(config or {}).to_map()}

    def alter(
        self, name: str, partitions: int | None, config: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if partitions is not None:
            _check_partition_count(partitions)
        return {"name": name, "config": DEFAULTS.with_changes(config or {}).to_map()}


class _Groups:
    def reset_offsets(
        self,
        group: str,
        topic: str,
        to: str,
        value: int | None,
        partitions: list[int] | None,
        *,
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], Coroutine[Any, Any, None]]:
        return {"offsets": [(topic, p, value or 0) for p in partitions or [0]]}, _done()


class _Broker:
    def __init__(self) -> None:
        self.reset()

    def session(self, actor: Actor) -> CoreSession:
        return CoreSession(actor, self.access, self.vhosts.get(actor.vhost).topology)

    def reset(self) -> None:
        """Back to the initial state (the API object is built once: that takes ~1 ms)."""
        # The default vhost only, its topology real, its topics and groups stand-ins.
        self.settings = Settings(amqp_port=0)
        self.vhosts = VirtualHosts()
        vhost = self.vhosts.default
        self.topology = vhost.topology
        self.queues = self.topology.queues
        self.exchanges = self.topology.exchanges
        self.store = None
        self.connections: dict[str, Any] = {}
        self.authenticator = _Authenticator()
        self.audit = AuditLog(None)  # disabled: nowhere to write
        self.access = AccessControl()
        self.access.implicit_full = lambda user: True  # the harness's user is an admin
        self.logs = _Topics()
        self.groups = _Groups()
        vhost.logs = cast(Any, self.logs)
        vhost.groups = cast(Any, self.groups)
        owner: Any = object()
        self.topology.declare_queue(
            "q",
            owner=owner,
            durable=False,
            exclusive=False,
            auto_delete=False,
            passive=False,
            arguments=None,
        )
        x = self.topology.declare_exchange(
            "x",
            "topic",
            durable=False,
            auto_delete=False,
            internal=False,
            passive=False,
            arguments=None,
        )
        self.topology.bind(self.queues["q"], x.name, "a.#", None)


class _Unexpected(logging.Handler):
    """Keeps the exception ``handle`` logged with its 500."""

    def __init__(self) -> None:
        super().__init__()
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None:
            self.error = record.exc_info[1]


_broker = _Broker()
_api = ManagementApi(_broker)  # type: ignore[arg-type]  # the stand-in above
_unexpected = _Unexpected()
_api_log = logging.getLogger("wharf.api")


def one_input(data: bytes) -> None:
    if not data:
        return
    method, path = ENDPOINTS[data[0] % len(ENDPOINTS)]
    _unexpected.error = None
    # A fresh loop for each input: queues start timers (message TTLs) on the running loop,
    # and none may fire during a later input.
    loop = asyncio.new_event_loop()
    _api_log.addHandler(_unexpected)  # only meanwhile: the CI test shares the process
    try:
        _broker.reset()
        handled = _api.handle(method, path, "", _AUTH, data[1:], "127.0.0.1")
        status, _, body, _ = loop.run_until_complete(_never_waits(handled))
    finally:
        _api_log.removeHandler(_unexpected)
        loop.close()
    if status == 500:
        raise AssertionError(f"{method} {path}: 500") from _unexpected.error
    assert status < 500 or status == 503, (status, body)
    json.loads(body)


async def _never_waits(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to its end in one step: everything here is in memory."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("the handler waited for something")


def seeds() -> Iterator[bytes]:
    """Real API bodies, as docs/management.md shows them, one or more per endpoint."""
    bodies: dict[str, list[Any]] = {
        "/api/queues/%2F/q2": [
            {"durable": True, "arguments": {"x-max-length": 1000, "x-overflow": "reject-publish"}},
            {"arguments": {"x-message-ttl": 60000, "x-dead-letter-exchange": "dlx"}},
            {},
        ],
        "/api/queues/%2F/q/get": [{"count": 5, "encoding": "auto", "truncate": 100}],
        "/api/queues/%2F/q/replay": [{"target": "q", "limit": 10, "max_deaths": 3}],
        "/api/exchanges/%2F/x2": [
            {"type": "topic", "durable": True},
            {"type": "headers", "arguments": {"alternate-exchange": "x"}},
        ],
        "/api/exchanges/%2F/x/publish": [
            {"routing_key": "a.b", "payload": "hello", "properties": {"priority": 3}},
            {
                "routing_key": "a",
                "payload": "aGVsbG8=",
                "payload_encoding": "base64",
                "properties": {"headers": {"k": [1, "v"]}, "expiration": 1000},
            },
        ],
        "/api/bindings/%2F": [
            {"source": "x", "destination": "q", "routing_key": "b.*"},
            {"source": "amq.headers", "destination": "q", "arguments": {"x-match": "any"}},
            {"source": "x", "destination": "x2", "destination_type": "exchange"},
        ],
        "/api/users/u": [
            {"password": "s3cret", "tags": ["monitoring"]},
            {"password_hash": HASH, "tags": "administrator,management"},
        ],
        "/api/policies/%2F/p": [
            {"pattern": "^orders\\.", "definition": {"max-length": 10000}, "priority": 1},
            {"pattern": ".*", "definition": {"overflow": "reject-publish"}, "apply-to": "queues"},
        ],
        "/api/topics/%2F/t": [
            {"partitions": 3, "config": {"retention_ms": 3600000}},
            {"partitions": 4},
            {"config": {"cleanup_policy": "compact", "min_cleanable_dirty_ratio": 0.3}},
        ],
        "/api/groups/%2F/g/reset-offsets": [
            {"topic": "t", "to": "earliest"},
            {"topic": "t", "to": "offset", "value": 42, "partitions": [0, 2]},
        ],
    }
    for i, (_, path) in enumerate(ENDPOINTS):
        for body in bodies[path]:
            yield bytes([i]) + json.dumps(body).encode()
    yield bytes([0]) + b'{"arguments": {"x-max-length": 1e400}}'
    yield bytes([4]) + b"[1, 2]"


def dictionary() -> list[bytes]:
    return [b'"arguments"', b'"x-max-length"', b'"definition"', b'"config"', b"1e999", b"\\ud800"]
