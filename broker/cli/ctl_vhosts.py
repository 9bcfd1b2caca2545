"""`wharf ctl vhosts`: virtual hosts and their limits through /api/vhosts and
/api/vhost-limits (docs/security.md, "Virtual hosts").  Changes need the administrator
tag."""

from __future__ import annotations

import click

from .ctl_client import ApiClient, pass_client, seg, table

# RabbitMQ's vhost limits, plus Wharf's max-topics (core/vhosts.py LIMIT_NAMES).
LIMIT_NAMES = ("max-connections", "max-queues", "max-topics")


@click.group()
def vhosts() -> None:
    """List, add and delete virtual hosts; set their limits."""


@vhosts.command("list")
@pass_client
def vhosts_list(c: ApiClient) -> None:
    """Every vhost with its counts."""
    vs = c.request("GET", "/vhosts")
    rows = [(v["name"], v["queues"], v["topics"], v["connections"], v["description"]) for v in vs]
    c.show(vs, table(("NAME", "QUEUES", "TOPICS", "CONNECTIONS", "DESCRIPTION"), rows))


@vhosts.command("add")
@click.argument("name")
@click.option("--description", default="", help="Free text.")
@click.option("--tags", default="", help="Comma-separated tags.")
@pass_client
def vhosts_add(c: ApiClient, name: str, description: str, tags: str) -> None:
    """Create vhost NAME (or change its description and tags)."""
    body = {"description": description, "tags": tags}
    v = c.request("PUT", f"/vhosts/{seg(name)}", body)
    c.show(v, f"vhost {name} added")


@vhosts.command("delete")
@click.argument("name")
@pass_client
def vhosts_delete(c: ApiClient, name: str) -> None:
    """Delete vhost NAME: closes its connections and deletes everything in it."""
    r = c.request("DELETE", f"/vhosts/{seg(name)}")
    c.show(r, f"vhost {name} deleted ({r['connections_closed']} connections closed)")


@vhosts.group("limits")
def limits() -> None:
    """Per-vhost limits: max-connections, max-queues, max-topics."""


@limits.command("list")
@pass_client
def limits_list(c: ApiClient) -> None:
    """The limits of every vhost that has some."""
    ls = c.request("GET", "/vhost-limits")
    rows = [(x["vhost"], k, v) for x in ls for k, v in sorted(x["value"].items())]
    c.show(ls, table(("VHOST", "LIMIT", "VALUE"), rows))


@limits.command("set")
@click.argument("limit", type=click.Choice(LIMIT_NAMES))
@click.argument("value", type=int)
@pass_client
def limits_set(c: ApiClient, limit: str, value: int) -> None:
    """Set LIMIT of the vhost (--vhost/-p) to VALUE (a negative VALUE removes it)."""
    r = c.request("PUT", f"/vhost-limits/{c.v}/{seg(limit)}", {"value": value})
    c.show(r, f"{limit} of vhost {c.vhost} set to {value}")


@limits.command("clear")
@click.argument("limit", type=click.Choice(LIMIT_NAMES))
@pass_client
def limits_clear(c: ApiClient, limit: str) -> None:
    """Remove LIMIT of the vhost (--vhost/-p)."""
    r = c.request("DELETE", f"/vhost-limits/{c.v}/{seg(limit)}")
    c.show(r, f"{limit} of vhost {c.vhost} cleared")
