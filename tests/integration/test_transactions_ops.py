"""Operating transactions: /api/transactions, ``wharf ctl transactions`` and the
transaction metrics, over real HTTP and a real subprocess next to SDK producers."""

from __future__ import annotations

import json

import pytest

import wharf
from wharf.broker.server import Broker

from .test_api import api
from .test_ctl import run_ctl
from .test_http import scrape, value

RC = "read_committed"


async def _open_txn(conn: wharf.Connection, tid: str, topic: str) -> wharf.TransactionalProducer:
    await conn.create_topic(topic, 2)
    p = conn.transactional_producer(tid)
    await p.begin()
    await p.produce_many(topic, [b"a", b"b", b"c"], partition=1)
    return p


async def test_list_describe_and_abort_over_http(broker: Broker, conn: wharf.Connection) -> None:
    p = await _open_txn(conn, "tx-http", "ops-http")
    listed = (await api(broker, "GET", "/api/transactions")).json()
    assert [(t["transactional_id"], t["state"], t["vhost"]) for t in listed] == [
        ("tx-http", "Ongoing", "/")
    ]
    in_vhost = (await api(broker, "GET", "/api/transactions/%2F")).json()
    assert [t["transactional_id"] for t in in_vhost] == ["tx-http"]
    doc = (await api(broker, "GET", "/api/transactions/%2F/tx-http")).json()
    assert doc["partitions"] == [["ops-http", 1]] and doc["producer_epoch"] >= 0
    assert doc["age_ms"] >= 0 and doc["timeout_ms"] > 0

    # LSO lag: three records behind the open transaction; open count 1.
    samples = await scrape(broker)
    labels = {"topic": "ops-http", "partition": "1", "vhost": "/"}
    assert value(samples, "wharf_topic_partition_lso_lag", **labels) == 3
    assert value(samples, "wharf_topic_partition_lso_lag", **{**labels, "partition": "0"}) == 0
    assert value(samples, "wharf_transactions_open", vhost="/") == 1

    r = await api(broker, "POST", "/api/transactions/%2F/tx-http/abort")
    assert r.status == 200, r
    assert r.json()["state"] == "CompleteAbort"
    with pytest.raises(wharf.TransactionAborted):
        await p.produce("ops-http", b"late", partition=1)
    await p.abort()
    assert await conn.fetch("ops-http", 1, 0, isolation_level=RC) == []
    # Nothing left to abort: 409 with the transaction-state code; unknown ids are 404.
    r = await api(broker, "POST", "/api/transactions/%2F/tx-http/abort")
    assert r.status == 409 and r.json()["code"] == 415, r
    r = await api(broker, "POST", "/api/transactions/%2F/nobody/abort")
    assert r.status == 404 and r.json()["code"] == 404, r
    assert (await api(broker, "GET", "/api/transactions/%2F/nobody")).status == 404

    async with p.transaction():
        await p.produce("ops-http", b"kept", partition=1)
    samples = await scrape(broker)
    assert value(samples, "wharf_transactions_open", vhost="/") == 0
    assert value(samples, "wharf_transactions_committed_total", vhost="/") == 1
    assert value(samples, "wharf_transactions_aborted_total", vhost="/") == 1
    assert value(samples, "wharf_transactions_timed_out_total", vhost="/") == 0
    assert value(samples, "wharf_topic_partition_lso_lag", **labels) == 0


async def test_abort_needs_write_on_the_transactional_id(
    broker: Broker, conn: wharf.Connection
) -> None:
    """As group reset: decided by permissions (administrators pass); reads for anyone who
    can see the vhost."""
    await _open_txn(conn, "tx-perm", "ops-perm")
    assert (
        await api(broker, "PUT", "/api/users/app", {"password": "pw", "tags": "management"})
    ).status
    perms = {"configure": "", "write": "^mine-.*", "read": ".*"}
    assert (await api(broker, "PUT", "/api/permissions/%2F/app", perms)).status == 201
    app = ("app", "pw")
    assert (await api(broker, "GET", "/api/transactions/%2F/tx-perm", auth=app)).status == 200
    r = await api(broker, "POST", "/api/transactions/%2F/tx-perm/abort", auth=app)
    assert r.status == 403, r
    assert (await api(broker, "GET", "/api/transactions/%2F/tx-perm")).json()["state"] == (
        "Ongoing"
    )
    perms["write"] = "^tx-.*"
    assert (await api(broker, "PUT", "/api/permissions/%2F/app", perms)).status == 200
    r = await api(broker, "POST", "/api/transactions/%2F/tx-perm/abort", auth=app)
    assert r.status == 200 and r.json()["state"] == "CompleteAbort", r


async def test_ctl_transactions_list_describe_abort(broker: Broker, conn: wharf.Connection) -> None:
    url = f"http://127.0.0.1:{broker.http_port}"
    r = await run_ctl("transactions", "list", url=url)
    assert r.code == 0 and r.out.strip() == "no transactional ids", r
    p = await _open_txn(conn, "tx-ctl", "ops-ctl")
    await p.produce("ops-ctl", b"d", partition=0)
    r = await run_ctl("transactions", "list", url=url)
    header, row = r.out.splitlines()
    assert header.split() == [
        "TRANSACTIONAL_ID", "PRODUCER_ID", "EPOCH", "STATE", "AGE_MS", "PARTITIONS"
    ]  # fmt: skip
    cells = row.split()
    assert cells[0] == "tx-ctl" and cells[3] == "Ongoing" and cells[5] == "2"
    r = await run_ctl("transactions", "describe", "tx-ctl", url=url)
    fields = dict(line.split(None, 1) for line in r.out.splitlines())
    assert fields["state"] == "Ongoing" and fields["partitions"] == "ops-ctl:0,1", r
    r = await run_ctl("--json", "transactions", "describe", "tx-ctl", url=url)
    assert json.loads(r.out)["partitions"] == [["ops-ctl", 0], ["ops-ctl", 1]], r
    r = await run_ctl("transactions", "abort", "tx-ctl", url=url)
    assert r.code == 0 and r.out.startswith("transaction of tx-ctl aborted"), r
    r = await run_ctl("transactions", "abort", "tx-ctl", url=url)
    assert r.code == 1 and "415" in r.err, r
    r = await run_ctl("transactions", "describe", "nobody", url=url)
    assert r.code == 1 and "404" in r.err, r
    await p.abort()
    assert await conn.fetch("ops-ctl", 1, 0, isolation_level=RC) == []
