"""``wharf ctl``: manage a running broker over its HTTP management API (api.py).

The HTTP client and the table formatting are in ctl_client.py; the topic and
consumer-group commands in ctl_logs.py.  Exit codes: 0 on success, 1 when the broker
refuses or cannot be reached (message on stderr), 2 for usage errors (click's
convention).
"""

from __future__ import annotations

import json
from typing import Any, Final

import click

from .ctl_client import (
    DEFAULT_EXCHANGE_ALIAS,
    DEFAULT_URL,
    ApiClient,
    BrokerError,
    exchange_seg,
    https_context,
    key_values,
    parse_args,
    pass_client,
    seg,
    table,
)
from .ctl_limits import user_limits
from .ctl_logs import groups, topics, transactions  # log topics, groups, transactions
from .ctl_perms import permissions, topic_permissions
from .ctl_progress import TerminalProgress
from .ctl_vhosts import vhosts

# Payloads longer than this are cut in tables (``--json`` shows them whole).
TABLE_PAYLOAD_CHARS: Final = 60
# Messages per replay request when a terminal shows the progress of a replay.
REPLAY_STEP_MESSAGES: Final = 1000


@click.group()
@click.option(
    "--url",
    envvar="WHARF_HTTP_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="Broker HTTP address (also $WHARF_HTTP_URL).",
)
@click.option("--user", envvar="WHARF_USER", default="guest", help="User [guest] ($WHARF_USER).")
@click.option(
    "--password",
    envvar="WHARF_PASSWORD",
    default="guest",
    help="Password [guest] ($WHARF_PASSWORD; preferred: not visible in the process list).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.option(
    "--cafile",
    type=click.Path(dir_okay=False),
    help="PEM CA file to check an https:// broker's certificate [the system CAs].",
)
@click.option(
    "--certfile",
    type=click.Path(dir_okay=False),
    help="PEM client certificate, for a broker with tls_client_auth.",
)
@click.option("--keyfile", type=click.Path(dir_okay=False), help="PEM key of --certfile.")
@click.option(
    "--vhost",
    "-p",
    envvar="WHARF_VHOST",
    default="/",
    show_default=True,
    help="The virtual host to work in, as rabbitmqctl's -p ($WHARF_VHOST).",
)
@click.pass_context
def ctl(
    ctx: click.Context,
    url: str,
    user: str,
    password: str,
    as_json: bool,
    cafile: str | None,
    certfile: str | None,
    keyfile: str | None,
    vhost: str,
) -> None:
    """Manage a running broker over its HTTP management API (--url https://host:8681
    with --cafile for HTTPS).

    Shell completion (bash): eval "$(_WHARF_COMPLETE=bash_source wharf)"
    """
    ctx.obj = ApiClient(
        url, user, password, as_json, https_context(cafile, certfile, keyfile), vhost
    )


@ctl.command()
@pass_client
def overview(c: ApiClient) -> None:
    """Version, totals, message counters, alarms and listeners."""
    o = c.request("GET", "/overview")
    lines = {
        "version": o["version"],
        "ready": o["ready"],
        **o["object_totals"],
        **o["queue_totals"],
        **{f"messages_{k}": v for k, v in o["message_stats"].items()},
        "alarms": ", ".join(o["alarms"]) or "none",
        "listeners": ", ".join(f"{x['protocol']} {x['host']}:{x['port']}" for x in o["listeners"]),
    }
    c.show(o, key_values(lines))


# -- queues ------------------------------------------------------------------------------------


@ctl.group()
def queues() -> None:
    """List, show, declare, delete, purge and peek at queues."""


@queues.command("list")
@pass_client
def queues_list(c: ApiClient) -> None:
    """All queues."""
    qs = c.request("GET", f"/queues/{c.v}")
    rows = [
        (
            q["name"],
            q.get("type", "classic"),
            q["durable"],
            q["auto_delete"],
            q.get("exclusive", False),
            q["messages_ready"],
            q.get("messages_unacked", 0),
            q["consumers"],
        )
        for q in qs
    ]
    headers = (
        "NAME", "TYPE", "DURABLE", "AUTO_DELETE", "EXCLUSIVE", "READY", "UNACKED", "CONSUMERS"
    )  # fmt: skip
    c.show(qs, table(headers, rows))


@queues.command("show")
@click.argument("name")
@pass_client
def queues_show(c: ApiClient, name: str) -> None:
    """One queue's attributes and counts."""
    q = c.request("GET", f"/queues/{c.v}/{seg(name)}")
    c.show(q, key_values(q))


@queues.command("declare")
@click.argument("name")
@click.option("--durable", is_flag=True, help="Survive a broker restart.")
@click.option("--auto-delete", is_flag=True, help="Delete when the last consumer goes.")
@click.option("--arg", "args", multiple=True, metavar="K=V", help="Queue argument (repeat).")
@click.option(
    "--type",
    "queue_type",
    type=click.Choice(["classic", "quorum"]),
    help="x-queue-type (quorum: durable, keeps every message on disk; docs/amqp.md).",
)
@pass_client
def queues_declare(
    c: ApiClient,
    name: str,
    durable: bool,
    auto_delete: bool,
    args: tuple[str, ...],
    queue_type: str | None,
) -> None:
    """Declare queue NAME (no change if it exists with the same attributes)."""
    arguments = parse_args(args)
    if queue_type is not None:
        arguments["x-queue-type"] = queue_type
    body = {"durable": durable, "auto_delete": auto_delete, "arguments": arguments}
    q = c.request("PUT", f"/queues/{c.v}/{seg(name)}", body)
    c.show(q, f"queue {q['name']} declared")


@queues.command("delete")
@click.argument("name")
@click.option("--if-unused", is_flag=True, help="Only if it has no consumers.")
@click.option("--if-empty", is_flag=True, help="Only if it has no ready messages.")
@pass_client
def queues_delete(c: ApiClient, name: str, if_unused: bool, if_empty: bool) -> None:
    """Delete queue NAME and its messages."""
    query = {k: "true" for k, v in (("if_unused", if_unused), ("if_empty", if_empty)) if v}
    r = c.request("DELETE", f"/queues/{c.v}/{seg(name)}", query=query)
    c.show(r, f"queue {name} deleted ({r['messages']} messages)")


@queues.command("purge")
@click.argument("name")
@pass_client
def queues_purge(c: ApiClient, name: str) -> None:
    """Drop the ready messages of queue NAME."""
    r = c.request("DELETE", f"/queues/{c.v}/{seg(name)}/contents")
    c.show(r, f"queue {name} purged ({r['messages']} messages)")


@queues.command("replay")
@click.argument("name")
@click.option("--to", "target", help="Move to this queue (default: where each one died).")
@click.option("--reason", help="Only messages whose last death had this reason.")
@click.option("--limit", type=click.IntRange(0), default=0, help="At most this many (0 = all).")
@click.option("--max-deaths", type=click.IntRange(0), default=0, help="Only if died <= N times.")
@pass_client
def queues_replay(
    c: ApiClient, name: str, target: str | None, reason: str | None, limit: int, max_deaths: int
) -> None:
    """Move dead-lettered messages from queue NAME (a DLQ) back where they died."""
    body: dict[str, Any] = {"limit": limit, "max_deaths": max_deaths}
    if target:
        body["target"] = target
    if reason:
        body["reason"] = reason
    progress = TerminalProgress(f"replaying {name}", None)
    if progress.enabled:
        r = {"moved": _replay_in_steps(c, name, body, progress)}
    else:
        r = c.request("POST", f"/queues/{c.v}/{seg(name)}/replay", body)
    c.show(r, f"{r['moved']} messages moved out of {name}")


def _replay_in_steps(
    c: ApiClient, name: str, body: dict[str, Any], progress: TerminalProgress
) -> int:
    """The replay as several requests of at most ``REPLAY_STEP_MESSAGES``, so that a
    terminal shows how far it got.  Bounded by the queue's depth at the start, so that
    messages dying back into it are not replayed again and again."""
    depth = int(c.request("GET", f"/queues/{c.v}/{seg(name)}").get("messages_ready", 0))
    want = min(body["limit"], depth) if body["limit"] else depth
    progress.total = want
    moved = 0
    try:
        while moved < want:
            step = dict(body, limit=min(REPLAY_STEP_MESSAGES, want - moved))
            n = int(c.request("POST", f"/queues/{c.v}/{seg(name)}/replay", step)["moved"])
            moved += n
            progress.update(moved)
            if n < step["limit"]:
                break  # nothing left that matches
    finally:
        progress.finish()
    return moved


@queues.command("peek")
@click.argument("name")
@click.option("--count", type=click.IntRange(1, 100), default=1, show_default=True)
@pass_client
def queues_peek(c: ApiClient, name: str, count: int) -> None:
    """Show messages at the head of queue NAME without consuming them."""
    msgs = c.request("POST", f"/queues/{c.v}/{seg(name)}/get", {"count": count})
    rows = []
    for m in msgs:
        payload = m["payload"]
        if len(payload) > TABLE_PAYLOAD_CHARS:
            payload = payload[: TABLE_PAYLOAD_CHARS - 3] + "..."
        enc = "" if m["payload_encoding"] == "string" else " (base64)"
        rows.append(
            (
                m["exchange"] or DEFAULT_EXCHANGE_ALIAS,
                m["routing_key"],
                m["delivery_count"],
                m["payload_bytes"],
                payload.encode("unicode_escape").decode("ascii") + enc,
            )
        )
    headers = ("EXCHANGE", "ROUTING_KEY", "DELIVERIES", "BYTES", "PAYLOAD")
    c.show(msgs, table(headers, rows) if rows else f"queue {name} has no ready messages")


# -- exchanges ---------------------------------------------------------------------------------


@ctl.group()
def exchanges() -> None:
    """List, declare and delete exchanges."""


@exchanges.command("list")
@pass_client
def exchanges_list(c: ApiClient) -> None:
    """All exchanges (the default exchange shows as amq.default)."""
    exs = c.request("GET", f"/exchanges/{c.v}")
    rows = [
        (
            e["name"] or DEFAULT_EXCHANGE_ALIAS,
            e["type"],
            e["durable"],
            e["auto_delete"],
            e["internal"],
            e["arguments"],
        )
        for e in exs
    ]
    headers = ("NAME", "TYPE", "DURABLE", "AUTO_DELETE", "INTERNAL", "ARGUMENTS")
    c.show(exs, table(headers, rows))


@exchanges.command("declare")
@click.argument("name")
@click.argument(
    "type_", metavar="TYPE", type=click.Choice(["direct", "fanout", "topic", "headers"])
)
@click.option("--durable", is_flag=True, help="Survive a broker restart.")
@click.option("--auto-delete", is_flag=True, help="Delete when its last binding goes.")
@click.option("--internal", is_flag=True, help="Only other exchanges may publish to it.")
@click.option("--arg", "args", multiple=True, metavar="K=V", help="Exchange argument (repeat).")
@pass_client
def exchanges_declare(
    c: ApiClient,
    name: str,
    type_: str,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    args: tuple[str, ...],
) -> None:
    """Declare exchange NAME of TYPE."""
    body = {
        "type": type_,
        "durable": durable,
        "auto_delete": auto_delete,
        "internal": internal,
        "arguments": parse_args(args),
    }
    e = c.request("PUT", f"/exchanges/{c.v}/{exchange_seg(name)}", body)
    c.show(e, f"exchange {name} declared")


@exchanges.command("delete")
@click.argument("name")
@click.option("--if-unused", is_flag=True, help="Only if it has no bindings.")
@pass_client
def exchanges_delete(c: ApiClient, name: str, if_unused: bool) -> None:
    """Delete exchange NAME and its bindings."""
    query = {"if_unused": "true"} if if_unused else None
    r = c.request("DELETE", f"/exchanges/{c.v}/{exchange_seg(name)}", query=query)
    c.show(r, f"exchange {name} deleted")


# -- bindings ----------------------------------------------------------------------------------


@ctl.group()
def bindings() -> None:
    """List, add and remove bindings."""


@bindings.command("list")
@pass_client
def bindings_list(c: ApiClient) -> None:
    """All bindings."""
    bs = c.request("GET", f"/bindings/{c.v}")
    rows = [
        (b["source"], b["destination_type"], b["destination"], b["routing_key"], b["arguments"])
        for b in bs
    ]
    headers = ("SOURCE", "DEST_TYPE", "DESTINATION", "ROUTING_KEY", "ARGUMENTS")
    c.show(bs, table(headers, rows))


def _binding_options(f: Any) -> Any:
    f = click.option("--arg", "args", multiple=True, metavar="K=V", help="Binding argument.")(f)
    f = click.option("--routing-key", "-k", default="", help="Routing key (binding key).")(f)
    f = click.option(
        "--destination-type",
        "-t",
        type=click.Choice(["queue", "exchange", "topic"]),
        default="queue",
        show_default=True,
    )(f)
    f = click.argument("destination")(f)
    return click.argument("source")(f)


def _binding_body(
    source: str, destination: str, destination_type: str, routing_key: str, args: tuple[str, ...]
) -> dict[str, Any]:
    return {
        "source": source,
        "destination": destination,
        "destination_type": destination_type,
        "routing_key": routing_key,
        "arguments": parse_args(args),
    }


@bindings.command("add")
@_binding_options
@pass_client
def bindings_add(
    c: ApiClient,
    source: str,
    destination: str,
    destination_type: str,
    routing_key: str,
    args: tuple[str, ...],
) -> None:
    """Bind DESTINATION (a queue; an exchange with -t exchange; a log topic with -t topic)
    to exchange SOURCE."""
    body = _binding_body(source, destination, destination_type, routing_key, args)
    b = c.request("POST", f"/bindings/{c.v}", body)
    c.show(b, f"bound {destination_type} {destination} to {source} with key {routing_key!r}")


@bindings.command("remove")
@_binding_options
@pass_client
def bindings_remove(
    c: ApiClient,
    source: str,
    destination: str,
    destination_type: str,
    routing_key: str,
    args: tuple[str, ...],
) -> None:
    """Remove the binding of DESTINATION to SOURCE (same key and arguments)."""
    body = _binding_body(source, destination, destination_type, routing_key, args)
    b = c.request("DELETE", f"/bindings/{c.v}", body)
    c.show(b, f"unbound {destination_type} {destination} from {source}")


# -- connections and consumers -------------------------------------------------------------------


@ctl.group()
def connections() -> None:
    """List and close client connections."""


@connections.command("list")
@pass_client
def connections_list(c: ApiClient) -> None:
    """Client connections."""
    cs = c.request("GET", "/connections")
    rows = [
        (
            x["name"],
            x["user"],
            x["peer"],
            x["state"],
            x.get("protocol", ""),
            x.get("channels", 0),
            x.get("consumers", 0),
            x.get("unacked", 0),
            _client_of(x.get("client_properties") or {}),
        )
        for x in cs
    ]
    headers = ("NAME", "USER", "PEER", "STATE", "PROTOCOL", "CHANNELS", "CONSUMERS", "UNACKED")
    c.show(cs, table((*headers, "CLIENT"), rows))


def _client_of(props: dict[str, Any]) -> str:
    """The client library as RabbitMQ's management shows it: product and version."""
    product = props.get("product")
    version = props.get("version")
    if not isinstance(product, str):
        return "-"
    return f"{product} {version}" if isinstance(version, str) else product


@connections.command("close")
@click.argument("name")
@click.option("--reason", default=None, help="Told to the client (X-Reason, as RabbitMQ's).")
@pass_client
def connections_close(c: ApiClient, name: str, reason: str | None) -> None:
    """Close connection NAME (the client gets error 320 "closed by operator", or REASON)."""
    headers = {"X-Reason": reason} if reason else None
    r = c.request("DELETE", f"/connections/{seg(name)}", headers=headers)
    c.show(r, f"connection {name} closed")


@ctl.group()
def channels() -> None:
    """List channels (AMQP channels; a native connection's session shows as channel 1)."""


@channels.command("list")
@pass_client
def channels_list(c: ApiClient) -> None:
    """Channels of every visible connection."""
    chs = c.request("GET", "/channels")
    rows = [
        (
            x["name"],
            x["user"],
            x["vhost"],
            x["protocol"],
            x["consumer_count"],
            x["messages_unacknowledged"],
            x["prefetch_count"],
            "tx" if x["transactional"] else "confirm" if x["confirm"] else "-",
        )
        for x in chs
    ]
    headers = ("NAME", "USER", "VHOST", "PROTOCOL", "CONSUMERS", "UNACKED", "PREFETCH", "MODE")
    c.show(chs, table(headers, rows))


@ctl.group()
def consumers() -> None:
    """List consumers."""


@consumers.command("list")
@pass_client
def consumers_list(c: ApiClient) -> None:
    """Consumers on every connection."""
    cs = c.request("GET", f"/consumers/{c.v}")
    rows = [
        (x["consumer_tag"], x["queue"], x["connection"], x["prefetch"], x["unacked"], x["no_ack"])
        for x in cs
    ]
    headers = ("TAG", "QUEUE", "CONNECTION", "PREFETCH", "UNACKED", "NO_ACK")
    c.show(cs, table(headers, rows))


# -- users ---------------------------------------------------------------------------------------


@ctl.group()
def users() -> None:
    """List, add and delete users; change passwords (administrators only)."""


@users.command("list")
@pass_client
def users_list(c: ApiClient) -> None:
    """Users, their tags and where they are defined (builtin, config, runtime)."""
    us = c.request("GET", "/users")
    rows = [(u["name"], ",".join(u["tags"]) or "-", u["source"]) for u in us]
    c.show(us, table(("NAME", "TAGS", "SOURCE"), rows))


def _new_password(password: str | None) -> str:
    if password is None:
        password = str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
    if not password:
        raise click.UsageError("the password must not be empty")
    return password


@users.command("add")
@click.argument("name")
@click.option("--password", help="The password (prompted for, hidden, when omitted).")
@click.option("--tags", default="", help="Comma-separated tags, e.g. administrator.")
@pass_client
def users_add(c: ApiClient, name: str, password: str | None, tags: str) -> None:
    """Create user NAME (fails if it exists: use passwd to change a password)."""
    if _user_exists(c, name):
        raise BrokerError(f"user {name!r} already exists (use `wharf ctl users passwd`)")
    body = {"password": _new_password(password), "tags": tags}
    u = c.request("PUT", f"/users/{seg(name)}", body)
    c.show(u, f"user {name} added")


@users.command("passwd")
@click.argument("name")
@click.option("--password", help="The new password (prompted for, hidden, when omitted).")
@pass_client
def users_passwd(c: ApiClient, name: str, password: str | None) -> None:
    """Change the password of user NAME (tags unchanged)."""
    if not _user_exists(c, name):
        raise BrokerError(f"no user {name!r}")
    u = c.request("PUT", f"/users/{seg(name)}", {"password": _new_password(password)})
    c.show(u, f"password of user {name} changed")


@users.command("delete")
@click.argument("name")
@pass_client
def users_delete(c: ApiClient, name: str) -> None:
    """Delete user NAME and close its connections."""
    r = c.request("DELETE", f"/users/{seg(name)}")
    c.show(r, f"user {name} deleted ({r['connections_closed']} connections closed)")


def _user_exists(c: ApiClient, name: str) -> bool:
    try:
        c.request("GET", f"/users/{seg(name)}")
    except BrokerError as exc:
        if "HTTP 404" in exc.message:
            return False
        raise
    return True


# -- server-side policies -------------------------------------------------------------------------


@ctl.group()
def policies() -> None:
    """List, set and delete server-side queue policies (administrators only for changes)."""


@policies.command("list")
@pass_client
def policies_list(c: ApiClient) -> None:
    """All policies, by name."""
    ps = c.request("GET", f"/policies/{c.v}")
    rows = [(p["name"], p["pattern"], p["apply-to"], p["priority"], p["definition"]) for p in ps]
    c.show(ps, table(("NAME", "PATTERN", "APPLY_TO", "PRIORITY", "DEFINITION"), rows))


@policies.command("set")
@click.argument("name")
@click.argument("pattern")
@click.argument("definition")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher wins.")
@click.option("--apply-to", type=click.Choice(["queues"]), default="queues", show_default=True)
@pass_client
def policies_set(
    c: ApiClient, name: str, pattern: str, definition: str, priority: int, apply_to: str
) -> None:
    """Create or replace policy NAME for queues whose name matches PATTERN (a regex).

    DEFINITION is a JSON object, e.g. '{"max-length": 1000, "dead-letter-exchange": "dlx"}'.
    """
    try:
        doc = json.loads(definition)
    except ValueError:
        raise click.UsageError(f"DEFINITION must be a JSON object, got {definition!r}") from None
    if not isinstance(doc, dict):
        raise click.UsageError(f"DEFINITION must be a JSON object, got {definition!r}")
    body = {"pattern": pattern, "definition": doc, "priority": priority, "apply-to": apply_to}
    p = c.request("PUT", f"/policies/{c.v}/{seg(name)}", body)
    c.show(p, f"policy {name} set")


@policies.command("delete")
@click.argument("name")
@pass_client
def policies_delete(c: ApiClient, name: str) -> None:
    """Delete policy NAME (its queues fall back to their own arguments)."""
    r = c.request("DELETE", f"/policies/{c.v}/{seg(name)}")
    c.show(r, f"policy {name} deleted")


# -- publish -------------------------------------------------------------------------------------


@ctl.command()
@click.argument("exchange")
@click.argument("routing_key")
@click.argument("payload")
@click.option("--base64", "is_base64", is_flag=True, help="PAYLOAD is base64 (binary bodies).")
@click.option("--persistent", is_flag=True, help="Mark the message persistent.")
@click.option("--property", "props", multiple=True, metavar="K=V", help="Message property.")
@click.option("--header", "headers", multiple=True, metavar="K=V", help="Message header.")
@pass_client
def publish(
    c: ApiClient,
    exchange: str,
    routing_key: str,
    payload: str,
    is_base64: bool,
    persistent: bool,
    props: tuple[str, ...],
    headers: tuple[str, ...],
) -> None:
    """Publish a test message (EXCHANGE amq.default or "" for the default exchange)."""
    properties = parse_args(props, "--property")
    if headers:
        properties["headers"] = parse_args(headers, "--header")
    if persistent:
        properties["persistent"] = True
    body = {
        "routing_key": routing_key,
        "payload": payload,
        "payload_encoding": "base64" if is_base64 else "string",
        "properties": properties,
    }
    r = c.request("POST", f"/exchanges/{c.v}/{exchange_seg(exchange)}/publish", body)
    c.show(r, "routed" if r["routed"] else "published, but routed to no queue")


ctl.add_command(topics)  # ctl_logs.py
ctl.add_command(groups)  # ctl_logs.py
ctl.add_command(transactions)  # ctl_logs.py
ctl.add_command(permissions)  # ctl_perms.py
ctl.add_command(topic_permissions)  # ctl_perms.py
ctl.add_command(vhosts)  # ctl_vhosts.py
ctl.add_command(user_limits)  # ctl_limits.py


# -- TLS -----------------------------------------------------------------------------------


@ctl.group()
def tls() -> None:
    """The broker's TLS certificate: show it, reload it."""


@tls.command("show")
@pass_client
def tls_show(c: ApiClient) -> None:
    """The certificate in use: files, expiry, last reload."""
    doc = c.request("GET", "/tls")
    c.show(doc, key_values(doc))


@tls.command("reload")
@pass_client
def tls_reload(c: ApiClient) -> None:
    """Reload the certificate, key and CA files for new connections (as SIGHUP); on
    failure the broker keeps the previous certificate and the error says why."""
    doc = c.request("POST", "/tls/reload")
    c.show(doc, f"reloaded: {doc['cert_file']}, valid until {doc['not_after']}")
