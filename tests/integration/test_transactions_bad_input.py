"""The issue's bad input for transactions, over the socket, each with its numeric code
and no change of state (the topic's offsets, the coordinator's record of the id, the
group's committed offsets); and the error paths of /api/transactions and
``wharf ctl transactions``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import wharf
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.records import encode_values

from ..conftest import RawClient
from ..helpers import wait_until
from .test_api import api
from .test_ctl import run_ctl

RC = "read_committed"


async def state(broker: Broker, conn: wharf.Connection, topic: str, tid: str) -> Any:
    """What a refused request must leave as it was."""
    txn = (await api(broker, "GET", f"/api/transactions/%2F/{tid}")).json()
    txn.pop("age_ms", None)
    offsets = (await conn.describe_topic(topic))["offsets"]
    return txn, offsets, await conn.committed_offsets("grp")


async def test_fenced_epoch_is_refused_for_every_request_and_changes_nothing(
    broker: Broker,
    conn: wharf.Connection,
    connect: Callable[..., Any],
    raw_client: Callable[..., Any],
) -> None:
    await conn.create_topic("fz", 1)
    old = conn.transactional_producer("tx-fenced")
    await old.begin()
    await old.produce("fz", b"zombie", partition=0)
    pid, old_epoch = old.producer_id, old.producer_epoch
    other: wharf.Connection = await connect()
    new = other.transactional_producer("tx-fenced")
    await new.begin()  # bumps the epoch: the old epoch's transaction is aborted
    await new.produce("fz", b"kept", partition=0)
    assert (new.producer_id, new.producer_epoch) == (pid, old_epoch + 1)
    before = await state(broker, conn, "fz", "tx-fenced")
    raw: RawClient = await raw_client()
    payload = encode_values([b"late"], None, None, 1000)
    requests: list[Any] = [
        F.Produce(1, "fz", 0, payload, 0, "written", pid, old_epoch, 1, True),
        F.TxnSendOffsets(2, "tx-fenced", pid, old_epoch, "grp", [["fz", 0, 1, None]]),
        F.EndTxn(3, "tx-fenced", pid, old_epoch, True),
        F.EndTxn(4, "tx-fenced", pid, old_epoch, False),
    ]
    for frame in requests:
        raw.send(frame)
        assert (await raw.recv())[:3] == [F.ERROR, frame.request_id, 413], frame
    assert await state(broker, conn, "fz", "tx-fenced") == before
    # Through the SDK: every later call of the old producer raises ProducerFenced.
    for call in (lambda: old.produce("fz", b"late", partition=0), old.commit):
        with pytest.raises(wharf.ProducerFenced) as info:
            await call()
        assert info.value.code == 413
    assert await state(broker, conn, "fz", "tx-fenced") == before
    await new.commit()
    got = await conn.fetch("fz", 0, 0, isolation_level=RC)
    assert [r.value for r in got] == [b"kept"]


async def test_commit_without_begin_and_produce_outside_change_nothing(
    broker: Broker, conn: wharf.Connection, raw_client: Callable[..., Any]
) -> None:
    await conn.create_topic("ob", 1)
    p = conn.transactional_producer("tx-outside")
    async with p.transaction():
        await p.produce("ob", b"first", partition=0)
    pid, epoch = p.producer_id, p.producer_epoch
    before = await state(broker, conn, "ob", "tx-outside")
    assert before[0]["state"] == "CompleteCommit"
    raw: RawClient = await raw_client()
    # After a commit: END_TXN(commit) again is a retry of it (answered, nothing done,
    # as in Kafka); END_TXN(abort) is refused.
    raw.send(F.EndTxn(1, "tx-outside", pid, epoch, True))
    assert (await raw.recv())[:2] == [F.OK, 1]
    raw.send(F.EndTxn(11, "tx-outside", pid, epoch, False))
    assert (await raw.recv())[:3] == [F.ERROR, 11, 415]
    assert await state(broker, conn, "ob", "tx-outside") == before
    # A commit without begin: a registered id that never had a transaction.
    raw.send(F.InitTransactions(12, "tx-fresh"))
    fresh = (await raw.recv())[2]
    for rid, commit in ((13, True), (14, False)):
        raw.send(F.EndTxn(rid, "tx-fresh", fresh["producer_id"], fresh["producer_epoch"], commit))
        assert (await raw.recv())[:3] == [F.ERROR, rid, 415]
    doc = (await api(broker, "GET", "/api/transactions/%2F/tx-fresh")).json()
    assert doc["state"] == "Empty" and doc["partitions"] == [], doc
    payload = encode_values([b"outside"], None, None, 1000)
    # A plain (non-transactional) produce under the transactional producer's id.
    raw.send(F.Produce(2, "ob", 0, payload, 0, "written", pid, epoch, 1))
    assert (await raw.recv())[:3] == [F.ERROR, 2, 415]
    raw.send(F.TxnSendOffsets(3, "tx-outside", pid, epoch, "grp", [["ob", 0, 1, None]]))
    reply = await raw.recv()
    if reply[0] == F.OK:  # send_offsets may begin a transaction: then abort it
        raw.send(F.EndTxn(4, "tx-outside", pid, epoch, False))
        assert (await raw.recv())[0] == F.OK
    else:
        assert reply[:3] == [F.ERROR, 3, 415], reply
        assert await state(broker, conn, "ob", "tx-outside") == before
    for call in (p.commit, lambda: p.produce("ob", b"outside", partition=0)):
        with pytest.raises(wharf.InvalidTxnState) as info:
            await call()
        assert info.value.code == 415
    after = await state(broker, conn, "ob", "tx-outside")
    assert after[1] == before[1] and after[2] == before[2] == {}
    assert [r.value for r in await conn.fetch("ob", 0, 0, isolation_level=RC)] == [b"first"]


async def test_send_offsets_for_a_group_that_moved_to_a_new_generation(
    conn: wharf.Connection, connect: Callable[..., Any]
) -> None:
    await conn.create_topic("gsrc", 2)
    await conn.create_topic("gout", 1)
    first: wharf.Connection = await connect()
    second: wharf.Connection = await connect()
    opts: dict[str, Any] = {"auto_offset_reset": "earliest", "enable_auto_commit": False}
    p = conn.transactional_producer("tx-gen")
    async with first.subscribe("gsrc", group="grp", **opts) as a:
        await wait_until(lambda: a.generation >= 1, what="the first member joined")
        old_gen, member = a.generation, a.member_id
        await p.begin()
        await p.produce("gout", b"out", partition=0)
        await p.send_offsets("grp", {("gsrc", 0): 1}, member_id=member, generation=old_gen)
        async with second.subscribe("gsrc", group="grp", **opts) as b:
            await wait_until(lambda: b.generation > old_gen, what="the group rebalanced")
            with pytest.raises(wharf.IllegalGeneration) as info:
                await p.send_offsets(
                    "grp", {("gsrc", 0): 5, ("gsrc", 1): 5}, member_id=member, generation=old_gen
                )
            assert info.value.code == 410
            await p.commit()
    # Only the offsets sent while the generation was current were committed.
    assert await conn.committed_offsets("grp") == {("gsrc", 0): 1}
    assert [r.value for r in await conn.fetch("gout", 0, 0, isolation_level=RC)] == [b"out"]


async def test_api_and_ctl_error_paths(broker: Broker, conn: wharf.Connection) -> None:
    await conn.create_topic("eo", 1)
    p = conn.transactional_producer("tx-empty")
    await p.begin()  # registered, no transaction open
    base = "/api/transactions"
    r = await api(broker, "GET", f"{base}/nosuch-vhost")
    assert r.status == 404 and r.json()["code"] == 404, r
    r = await api(broker, "GET", f"{base}/nosuch-vhost/tx-empty")
    assert r.status == 404 and r.json()["code"] == 404, r
    r = await api(broker, "POST", f"{base}/nosuch-vhost/tx-empty/abort")
    assert r.status == 404 and r.json()["code"] == 404, r
    r = await api(broker, "POST", f"{base}/%2F/tx-empty/abort")  # nothing open
    assert r.status == 409 and r.json()["code"] == 415, r
    r = await api(broker, "POST", f"{base}/%2F/{'x' * 300}/abort")
    assert r.status in (400, 404) and r.json()["code"] in (400, 404), r
    r = await api(broker, "GET", f"{base}/%2F/tx-empty", auth=None)
    assert r.status == 401, r
    r = await api(broker, "DELETE", f"{base}/%2F/tx-empty")
    assert r.status == 405, r
    r = await api(broker, "GET", f"{base}/%2F/tx-empty")
    assert r.status == 200 and r.json()["state"] == "Empty", r
    url = f"http://127.0.0.1:{broker.http_port}"
    r = await run_ctl("transactions", "abort", "nobody", url=url)
    assert r.code == 1 and "404" in r.err, r
    r = await run_ctl("transactions", "abort", "tx-empty", url=url)
    assert r.code == 1 and "415" in r.err, r
    r = await run_ctl("--vhost", "nosuch-vhost", "transactions", "list", url=url)
    assert r.code == 1 and "404" in r.err, r
    r = await run_ctl("transactions", "describe", url=url)  # the id is missing
    assert r.code == 2, r
    r = await run_ctl("transactions", "list", url=url, env={"WHARF_PASSWORD": "wrong"})
    assert r.code == 1 and "401" in r.err, r
    r = await api(broker, "GET", f"{base}/%2F/tx-empty")
    assert r.json()["state"] == "Empty", r
    await p.abort()
