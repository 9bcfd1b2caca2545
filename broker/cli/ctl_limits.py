"""`wharf ctl user-limits`: RabbitMQ-style per-user limits and byte-rate quotas through
/api/user-limits (docs/security.md, "Limits and quotas")."""

from __future__ import annotations

import click

from ..core.quotas import LIMIT_NAMES
from .ctl_client import ApiClient, pass_client, seg, table


@click.group("user-limits")
def user_limits() -> None:
    """Set, list and clear users' connection limits and byte-rate quotas (administrators
    only)."""


@user_limits.command("list")
@click.argument("user", required=False)
@pass_client
def user_limits_list(c: ApiClient, user: str | None) -> None:
    """Every user's limits (or USER's)."""
    path = "/user-limits" if user is None else f"/user-limits/{seg(user)}"
    ls = c.request("GET", path)
    rows = [(u["user"], name, value) for u in ls for name, value in sorted(u["value"].items())]
    c.show(ls, table(("USER", "LIMIT", "VALUE"), rows))


@user_limits.command("set")
@click.argument("user")
@click.argument("name", type=click.Choice(LIMIT_NAMES))
@click.argument("value", type=int)
@pass_client
def user_limits_set(c: ApiClient, user: str, name: str, value: int) -> None:
    """Set USER's limit NAME to VALUE (-1: no limit).  Byte rates are bytes per second
    over all of USER's connections; over them the broker slows USER down."""
    r = c.request("PUT", f"/user-limits/{seg(user)}/{seg(name)}", {"value": value})
    c.show(r, f"{name} of {user} set to {value}")


@user_limits.command("clear")
@click.argument("user")
@click.argument("name", type=click.Choice(LIMIT_NAMES))
@pass_client
def user_limits_clear(c: ApiClient, user: str, name: str) -> None:
    """Remove USER's limit NAME."""
    r = c.request("DELETE", f"/user-limits/{seg(user)}/{seg(name)}")
    c.show(r, f"{name} of {user} cleared")
