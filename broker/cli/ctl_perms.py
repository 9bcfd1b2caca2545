"""`wharf ctl permissions` and `wharf ctl topic-permissions`: RabbitMQ-style permissions
through /api/permissions and /api/topic-permissions (docs/security.md, "Permissions")."""

from __future__ import annotations

import click

from .ctl_client import ApiClient, pass_client, seg, table

_vhost_option = click.option(
    "--vhost", default=None, help="The virtual host [ctl's --vhost/-p, default /]."
)


@click.group()
def permissions() -> None:
    """Set, list and clear users' configure/write/read regexes (administrators only)."""


@permissions.command("list")
@pass_client
def permissions_list(c: ApiClient) -> None:
    """Every user's permissions on every vhost."""
    ps = c.request("GET", "/permissions")
    rows = [(p["user"], p["vhost"], p["configure"], p["write"], p["read"]) for p in ps]
    c.show(ps, table(("USER", "VHOST", "CONFIGURE", "WRITE", "READ"), rows))


@permissions.command("set")
@click.argument("user")
@_vhost_option
@click.option("--configure", required=True, help="Regex of names USER may create/delete.")
@click.option("--write", required=True, help="Regex of names USER may publish/produce to.")
@click.option("--read", required=True, help="Regex of names USER may consume/fetch from.")
@pass_client
def permissions_set(
    c: ApiClient, user: str, vhost: str | None, configure: str, write: str, read: str
) -> None:
    """Set USER's permissions on the vhost ('' matches nothing, '.*' everything; regexes
    are searched, not anchored: use '^orders\\.' for a prefix)."""
    vhost = vhost or c.vhost
    body = {"configure": configure, "write": write, "read": read}
    p = c.request("PUT", f"/permissions/{seg(vhost)}/{seg(user)}", body)
    c.show(p, f"permissions of {user} on {vhost} set")


@permissions.command("clear")
@click.argument("user")
@_vhost_option
@pass_client
def permissions_clear(c: ApiClient, user: str, vhost: str | None) -> None:
    """Remove USER's access to the vhost (it can no longer connect to it)."""
    vhost = vhost or c.vhost
    r = c.request("DELETE", f"/permissions/{seg(vhost)}/{seg(user)}")
    c.show(r, f"permissions of {user} on {vhost} cleared")


@click.group("topic-permissions")
def topic_permissions() -> None:
    """Set, list and clear routing-key regexes on topic exchanges (administrators only)."""


@topic_permissions.command("list")
@pass_client
def topic_permissions_list(c: ApiClient) -> None:
    """Every topic permission."""
    ps = c.request("GET", "/topic-permissions")
    rows = [(p["user"], p["vhost"], p["exchange"], p["write"], p["read"]) for p in ps]
    c.show(ps, table(("USER", "VHOST", "EXCHANGE", "WRITE", "READ"), rows))


@topic_permissions.command("set")
@click.argument("user")
@_vhost_option
@click.option("--exchange", required=True, help="The topic exchange.")
@click.option("--write", required=True, help="Regex of routing keys USER may publish with.")
@click.option("--read", required=True, help="Regex of binding keys USER may bind with.")
@pass_client
def topic_permissions_set(
    c: ApiClient, user: str, vhost: str | None, exchange: str, write: str, read: str
) -> None:
    """Set USER's routing-key regexes on EXCHANGE ({username} and {vhost} are expanded)."""
    vhost = vhost or c.vhost
    body = {"exchange": exchange, "write": write, "read": read}
    p = c.request("PUT", f"/topic-permissions/{seg(vhost)}/{seg(user)}", body)
    c.show(p, f"topic permissions of {user} on {exchange} set")


@topic_permissions.command("clear")
@click.argument("user")
@_vhost_option
@click.option("--exchange", default=None, help="Only this exchange's (default: all).")
@pass_client
def topic_permissions_clear(
    c: ApiClient, user: str, vhost: str | None, exchange: str | None
) -> None:
    """Remove USER's topic permissions on the vhost."""
    vhost = vhost or c.vhost
    query = None if exchange is None else {"exchange": exchange}
    r = c.request("DELETE", f"/topic-permissions/{seg(vhost)}/{seg(user)}", query=query)
    c.show(r, f"topic permissions of {user} on {vhost} cleared")
