"""``wharf ctl topics ...``, ``wharf ctl groups ...`` and ``wharf ctl transactions ...``:
log topics, consumer groups and transactions over the management API (api_logs.py), in
the spirit of kafka-topics.sh, kafka-consumer-groups.sh and kafka-transactions.sh.  Added to
``wharf ctl`` by ctl.py.
"""

from __future__ import annotations

from typing import Any

import click

from .ctl_client import ApiClient, key_values, parse_args, pass_client, seg, table

# -- topics --------------------------------------------------------------------------------------


def _topic_config(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``--config k=v`` pairs; Kafka's dotted names (retention.ms) mean the same setting."""
    return {k.replace(".", "_"): v for k, v in parse_args(pairs, "--config").items()}


_CONFIG_OPTION = click.option(
    "--config",
    "config",
    multiple=True,
    metavar="K=V",
    help="Topic setting, e.g. retention_ms=86400000 or cleanup_policy=compact (repeat).",
)


@click.group()
def topics() -> None:
    """List, describe, create, alter and delete log topics."""


@topics.command("list")
@pass_client
def topics_list(c: ApiClient) -> None:
    """All topics with their partition count, size on disk and cleanup policy."""
    ts = c.request("GET", f"/topics/{c.v}")
    rows = [
        (
            t["name"],
            t["partitions"],
            sum(p.get("bytes", 0) for p in t["offsets"]),
            t["config"].get("cleanup_policy"),
            t["config"].get("retention_ms"),
        )
        for t in ts
    ]
    headers = ("NAME", "PARTITIONS", "BYTES", "CLEANUP_POLICY", "RETENTION_MS")
    c.show(ts, table(headers, rows) if rows else "no topics")


@topics.command("describe")
@click.argument("name")
@pass_client
def topics_describe(c: ApiClient, name: str) -> None:
    """Settings of topic NAME and the offsets, size and segments of each partition."""
    t = c.request("GET", f"/topics/{c.v}/{seg(name)}")
    summary = key_values({"topic": t["name"], "partitions": t["partitions"], **t["config"]})
    rows = [
        (p["partition"], p["earliest"], p["latest"], p.get("bytes"), p.get("segments"))
        for p in t["offsets"]
    ]
    headers = ("PARTITION", "EARLIEST", "LATEST", "BYTES", "SEGMENTS")
    c.show(t, summary + "\n\n" + table(headers, rows))


@topics.command("create")
@click.argument("name")
@click.option("--partitions", type=click.IntRange(1), default=1, show_default=True)
@_CONFIG_OPTION
@pass_client
def topics_create(c: ApiClient, name: str, partitions: int, config: tuple[str, ...]) -> None:
    """Create topic NAME (no change if it exists with as many partitions)."""
    body = {"partitions": partitions, "config": _topic_config(config)}
    t = c.request("PUT", f"/topics/{c.v}/{seg(name)}", body)
    c.show(t, f"topic {t['name']} ready ({t['partitions']} partitions)")


@topics.command("alter")
@click.argument("name")
@click.option("--partitions", type=click.IntRange(1), help="New partition count (grow only).")
@_CONFIG_OPTION
@pass_client
def topics_alter(c: ApiClient, name: str, partitions: int | None, config: tuple[str, ...]) -> None:
    """Add partitions to topic NAME and/or change its settings (others stay as they are)."""
    body: dict[str, Any] = {}
    if partitions is not None:
        body["partitions"] = partitions
    if config:
        body["config"] = _topic_config(config)
    if not body:
        raise click.UsageError("give --partitions, --config or both")
    t = c.request("PATCH", f"/topics/{c.v}/{seg(name)}", body)
    c.show(t, f"topic {t['name']} altered ({t['partitions']} partitions)")


@topics.command("delete")
@click.argument("name")
@pass_client
def topics_delete(c: ApiClient, name: str) -> None:
    """Delete topic NAME with all its records (committed offsets of groups go too)."""
    r = c.request("DELETE", f"/topics/{c.v}/{seg(name)}")
    c.show(r, f"topic {name} deleted")


# -- consumer groups -----------------------------------------------------------------------------


@click.group()
def groups() -> None:
    """List, describe and delete consumer groups; reset their offsets."""


@groups.command("list")
@pass_client
def groups_list(c: ApiClient) -> None:
    """Groups with members or committed offsets."""
    gs = c.request("GET", f"/groups/{c.v}")
    rows = [
        (g["group"], g["state"], g["members"], g["generation"], g.get("strategy") or None)
        for g in gs
    ]
    headers = ("GROUP", "STATE", "MEMBERS", "GENERATION", "STRATEGY")
    c.show(gs, table(headers, rows) if rows else "no consumer groups")


@groups.command("describe")
@click.argument("group")
@click.option("--members", is_flag=True, help="List the members instead of the partitions.")
@pass_client
def groups_describe(c: ApiClient, group: str, members: bool) -> None:
    """Committed offset, latest offset, lag and owner of each partition of GROUP."""
    g = c.request("GET", f"/groups/{c.v}/{seg(group)}")
    summary = key_values(
        {
            "group": g["group"],
            "state": g["state"],
            "generation": g["generation"],
            "strategy": g.get("strategy") or None,
            "members": len(g["members"]),
        }
    )
    if members:
        rows: list[tuple[Any, ...]] = [
            (
                m["member_id"],
                m.get("instance_id") or None,
                m.get("client_host") or None,
                ",".join(m.get("topics", [])) or None,
                _assignment_text(m.get("assignment", [])),
            )
            for m in g["members"]
        ]
        headers: tuple[str, ...] = ("MEMBER", "INSTANCE", "HOST", "TOPICS", "ASSIGNMENT")
    else:
        rows = [
            (
                o["topic"],
                o["partition"],
                o["committed"] if o["committed"] >= 0 else None,
                o["latest"],
                o["lag"],
                o.get("member"),
            )
            for o in g["offsets"]
        ]
        headers = ("TOPIC", "PARTITION", "COMMITTED", "LATEST", "LAG", "MEMBER")
    c.show(g, summary + "\n\n" + table(headers, rows))


def _assignment_text(assignment: list[Any]) -> str:
    """[[topic, [0, 1]], ...] as 'topic:0,1 other:2'."""
    return " ".join(f"{t}:{','.join(str(p) for p in ps)}" for t, ps in assignment) or "-"


@groups.command("delete")
@click.argument("group")
@pass_client
def groups_delete(c: ApiClient, group: str) -> None:
    """Delete GROUP and its committed offsets (only when it has no members)."""
    r = c.request("DELETE", f"/groups/{c.v}/{seg(group)}")
    c.show(r, f"group {group} deleted")


@groups.command("reset-offsets")
@click.argument("group")
@click.option("--topic", required=True, help="The topic whose offsets move.")
@click.option(
    "--partition",
    "partitions",
    type=click.IntRange(0),
    multiple=True,
    help="Only this partition (repeat; default: all).",
)
@click.option("--to-earliest", is_flag=True, help="To the earliest offset still stored.")
@click.option("--to-latest", is_flag=True, help="To the latest offset (skip everything).")
@click.option("--to-offset", type=click.IntRange(0), help="To this offset.")
@click.option(
    "--to-timestamp",
    type=click.IntRange(0),
    metavar="MS",
    help="To the first record with a timestamp >= MS (epoch milliseconds).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show the new offsets without moving them (works while the group has members).",
)
@pass_client
def groups_reset_offsets(
    c: ApiClient,
    group: str,
    topic: str,
    partitions: tuple[int, ...],
    to_earliest: bool,
    to_latest: bool,
    to_offset: int | None,
    to_timestamp: int | None,
    dry_run: bool,
) -> None:
    """Move the committed offsets of GROUP on a topic (only while it has no members);
    with --dry-run, only show where they would go."""
    targets: list[tuple[str, int | None]] = []
    if to_earliest:
        targets.append(("earliest", None))
    if to_latest:
        targets.append(("latest", None))
    if to_offset is not None:
        targets.append(("offset", to_offset))
    if to_timestamp is not None:
        targets.append(("timestamp", to_timestamp))
    if len(targets) != 1:
        raise click.UsageError(
            "give exactly one of --to-earliest, --to-latest, --to-offset, --to-timestamp"
        )
    to, value = targets[0]
    body: dict[str, Any] = {"topic": topic, "to": to}
    if value is not None:
        body["value"] = value
    if partitions:
        body["partitions"] = list(partitions)
    if dry_run:
        body["dry_run"] = True
    r = c.request("POST", f"/groups/{c.v}/{seg(group)}/reset-offsets", body)
    rows = [(o["topic"], o["partition"], o["offset"]) for o in r["offsets"]]
    c.show(r, table(("TOPIC", "PARTITION", "NEW_OFFSET"), rows))


# -- transactions ----------------------------------------------------------------------------


@click.group()
def transactions() -> None:
    """List and describe transactional ids; abort an open transaction."""


def _txn_partitions(t: dict[str, Any]) -> str:
    """[[topic, 0], [topic, 1]] as 'topic:0,1'."""
    by_topic: dict[str, list[str]] = {}
    for topic, p in t.get("partitions", []):
        by_topic.setdefault(topic, []).append(str(p))
    return " ".join(f"{topic}:{','.join(ps)}" for topic, ps in by_topic.items()) or "-"


@transactions.command("list")
@pass_client
def transactions_list(c: ApiClient) -> None:
    """Transactional ids with their producer, epoch, state and the age of the open one."""
    ts = c.request("GET", f"/transactions/{c.v}")
    rows = [
        (
            t["transactional_id"],
            t["producer_id"],
            t["producer_epoch"],
            t["state"],
            t["age_ms"],
            len(t["partitions"]),
        )
        for t in ts
    ]
    headers = ("TRANSACTIONAL_ID", "PRODUCER_ID", "EPOCH", "STATE", "AGE_MS", "PARTITIONS")
    c.show(ts, table(headers, rows) if rows else "no transactional ids")


def _txn_text(t: dict[str, Any]) -> str:
    return key_values(
        {
            "transactional_id": t["transactional_id"],
            "producer_id": t["producer_id"],
            "producer_epoch": t["producer_epoch"],
            "state": t["state"],
            "timeout_ms": t["timeout_ms"],
            "age_ms": t["age_ms"],
            "partitions": _txn_partitions(t),
            "groups": ",".join(t.get("groups", [])) or None,
            "queue_acks": t.get("queue_acks", 0),
        }
    )


@transactions.command("describe")
@click.argument("tid")
@pass_client
def transactions_describe(c: ApiClient, tid: str) -> None:
    """State of transactional id TID and the partitions and groups of its transaction."""
    t = c.request("GET", f"/transactions/{c.v}/{seg(tid)}")
    c.show(t, _txn_text(t))


@transactions.command("abort")
@click.argument("tid")
@pass_client
def transactions_abort(c: ApiClient, tid: str) -> None:
    """Abort the open transaction of TID (its producer's next request is refused with
    TransactionAborted, as after a timeout)."""
    t = c.request("POST", f"/transactions/{c.v}/{seg(tid)}/abort")
    c.show(t, f"transaction of {tid} aborted\n" + _txn_text(t))
