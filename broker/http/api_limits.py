"""Management API endpoints for per-user limits (RabbitMQ's ``/api/user-limits`` shapes).

``PUT /api/user-limits/{user}/{name}`` with ``{"value": N}`` sets one limit (-1: none),
``DELETE`` clears it, ``GET /api/user-limits[/{user}]`` lists them as
``[{"user": u, "value": {name: N}}]``.  Names and meanings are the core's
(core/quotas.py); docs/security.md "## Limits and quotas" describes them.
Administrators only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wharf.protocol.errors import NotFound

from ..core.quotas import NO_LIMIT, check_limit
from .api_core import Call, Result, Route, route

if TYPE_CHECKING:
    from .api_broker import ApiBroker


class UserLimitsApi:
    """Handlers for /api/user-limits."""

    def __init__(self, broker: ApiBroker) -> None:
        self.broker = broker

    def routes(self) -> list[Route]:
        return [
            route(
                "GET /user-limits",
                self.list_limits,
                "200 [UserLimits] - Every user's limits.",
                admin=True,
            ),
            route(
                "GET /user-limits/{user}",
                self.get_limits,
                "200 [UserLimits] - One user's limits (an empty list: none).",
                admin=True,
            ),
            route(
                "PUT /user-limits/{user}/{name}",
                self.put_limit,
                "201 UserLimit UserLimitPut Set one limit of a user (-1: no limit).",
                admin=True,
            ),
            route(
                "DELETE /user-limits/{user}/{name}",
                self.delete_limit,
                "200 Empty - Clear one limit.",
                admin=True,
            ),
        ]

    def _user(self, call: Call) -> str:
        user = call.params[0]
        if user not in self.broker.authenticator.users:
            raise NotFound(f"no user '{user}'", details={"user": user})
        return user

    async def list_limits(self, call: Call) -> Result:
        return 200, self.broker.user_limits.describe_all()

    async def get_limits(self, call: Call) -> Result:
        found = self.broker.user_limits.describe(self._user(call))
        return 200, [] if found is None else [found]

    async def put_limit(self, call: Call) -> Result:
        user = self._user(call)
        name = call.params[1]
        f = call.json(("value",))
        value = check_limit(name, f.doc.get("value"))
        created = self.broker.user_limits.set(user, name, value)
        return (201 if created else 200), {"user": user, "name": name, "value": value}

    async def delete_limit(self, call: Call) -> Result:
        user = self._user(call)
        name = call.params[1]
        check_limit(name, NO_LIMIT)  # an unknown name is a 400, as on PUT
        if not self.broker.user_limits.clear(user, name):
            raise NotFound(f"user '{user}' has no {name} limit")
        return 200, {}
