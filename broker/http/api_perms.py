"""Management API endpoints for permissions and topic permissions (RabbitMQ's shapes).

``/api/permissions/{vhost}/{user}`` holds ``{"configure", "write", "read"}``,
``/api/topic-permissions/{vhost}/{user}`` one ``{"exchange", "write", "read"}`` per topic
exchange.  The vhost is a percent-encoded path segment (``%2F`` for ``/``) and must
exist.  Administrators only.  The decisions themselves are the core's
(core/access.py); docs/security.md "## Permissions" describes the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wharf.protocol.errors import NotFound

from ..core.access import Permission
from ..security.audit import AuditEvent
from .api_core import Call, Result, Route, route

if TYPE_CHECKING:
    from .api_broker import ApiBroker


class PermissionsApi:
    """Handlers for /api/permissions and /api/topic-permissions."""

    def __init__(self, broker: ApiBroker) -> None:
        self.broker = broker

    def routes(self) -> list[Route]:
        return [
            route(
                "GET /permissions",
                self.list_permissions,
                "200 [Permission] - Every user's permissions on every vhost.",
                admin=True,
            ),
            route(
                "GET /permissions/{vhost}/{user}",
                self.get_permission,
                "200 Permission - One user's, one vhost.",
                admin=True,
            ),
            route(
                "PUT /permissions/{vhost}/{user}",
                self.put_permission,
                "201 Permission PermissionPut Set a user's configure/write/read regexes.",
                admin=True,
            ),
            route(
                "DELETE /permissions/{vhost}/{user}",
                self.delete_permission,
                "200 Empty - Remove a user's access to a vhost.",
                admin=True,
            ),
            route(
                "GET /topic-permissions",
                self.list_topic_permissions,
                "200 [TopicPermission] - Every topic permission.",
                admin=True,
            ),
            route(
                "GET /topic-permissions/{vhost}/{user}",
                self.get_topic_permission,
                "200 [TopicPermission] - One user's topic permissions on one vhost.",
                admin=True,
            ),
            route(
                "PUT /topic-permissions/{vhost}/{user}",
                self.put_topic_permission,
                "201 TopicPermission TopicPermissionPut Routing-key regexes of an exchange.",
                admin=True,
            ),
            route(
                "DELETE /topic-permissions/{vhost}/{user}",
                self.delete_topic_permission,
                "200 Empty - Remove topic permissions (one exchange's with ?exchange=).",
                admin=True,
                query=("exchange",),
            ),
        ]

    def _target(self, call: Call) -> tuple[str, str]:
        vhost, user = call.params
        self.broker.vhosts.get(vhost)  # NotFound: "vhost 'x' not found"
        if user not in self.broker.authenticator.users:
            raise NotFound(f"no user '{user}'", details={"user": user})
        return vhost, user

    async def list_permissions(self, call: Call) -> Result:
        users = [u.name for u in self.broker.authenticator.users.all()]
        return 200, self.broker.access.describe_all(users)

    async def get_permission(self, call: Call) -> Result:
        vhost, user = self._target(call)
        found = self.broker.access.describe(vhost, user)
        if found is None:
            raise NotFound(f"user '{user}' has no permissions on vhost '{vhost}'")
        return 200, found

    async def put_permission(self, call: Call) -> Result:
        vhost, user = self._target(call)
        f = call.json(("configure", "write", "read"))
        permission = Permission(f.text("configure"), f.text("write"), f.text("read"))
        created = self.broker.access.set_permission(vhost, user, permission)
        doc = {"user": user, "vhost": vhost, **permission.describe()}
        self.broker.audit.event(AuditEvent.PERMISSION_SET, **call.actor(), **doc)
        return (201 if created else 200), doc

    async def delete_permission(self, call: Call) -> Result:
        vhost, user = self._target(call)
        if not self.broker.access.clear_permission(vhost, user):
            raise NotFound(f"user '{user}' has no permissions on vhost '{vhost}'")
        self.broker.audit.event(
            AuditEvent.PERMISSION_DELETED, **call.actor(), vhost=vhost, user=user
        )
        return 200, {}

    async def list_topic_permissions(self, call: Call) -> Result:
        return 200, self.broker.access.describe_topic_all()

    async def get_topic_permission(self, call: Call) -> Result:
        vhost, user = self._target(call)
        return 200, self.broker.access.describe_topic(vhost, user)

    async def put_topic_permission(self, call: Call) -> Result:
        vhost, user = self._target(call)
        f = call.json(("exchange", "write", "read"))
        exchange, write, read = f.text("exchange"), f.text("write"), f.text("read")
        created = self.broker.access.set_topic_permission(vhost, user, exchange, write, read)
        doc = {"user": user, "vhost": vhost, "exchange": exchange, "write": write, "read": read}
        self.broker.audit.event(AuditEvent.TOPIC_PERMISSION_SET, **call.actor(), **doc)
        return (201 if created else 200), doc

    async def delete_topic_permission(self, call: Call) -> Result:
        vhost, user = self._target(call)
        exchange = call.query.get("exchange")
        if not self.broker.access.clear_topic_permission(vhost, user, exchange):
            raise NotFound(f"user '{user}' has no such topic permissions on vhost '{vhost}'")
        self.broker.audit.event(
            AuditEvent.TOPIC_PERMISSION_DELETED,
            **call.actor(),
            vhost=vhost,
            user=user,
            exchange=exchange,  # null: every exchange's
        )
        return 200, {}
