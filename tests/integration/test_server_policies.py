"""Server-side policies: managed over the HTTP API and ``wharf ctl``, felt over TCP."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import wharf
from wharf.broker.config import Settings
from wharf.broker.server import Broker

from ..helpers import wait_until

TIMEOUT_S = 5.0
GUEST = ("guest", "guest")


def _qname(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Response(NamedTuple):
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def api(
    broker: Broker,
    method: str,
    path: str,
    body: Any = None,
    auth: tuple[str, str] = GUEST,
) -> Response:
    data = b"" if body is None else json.dumps(body).encode()
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Connection: close",
        f"Authorization: Basic {token}",
    ]
    if data:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.http_port)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        async with asyncio.timeout(TIMEOUT_S):
            raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return Response(int(head.split(b" ", 2)[1]), payload)


async def put_policy(broker: Broker, name: str, pattern: str, definition: Any, **more: Any) -> Any:
    r = await api(
        broker,
        "PUT",
        f"/api/policies/%2F/{name}",
        {"pattern": pattern, "definition": definition, **more},
    )
    assert r.status in (200, 201), r
    return r.json()


async def _first(conn: wharf.Connection, queue: str) -> wharf.Message:
    async with conn.consume(queue, prefetch=1) as messages:
        return await asyncio.wait_for(messages.__anext__(), TIMEOUT_S)


async def _ready(conn: wharf.Connection, queue: str) -> int:
    return (await conn.declare_queue(queue, passive=True)).messages


# -- HTTP API -------------------------------------------------------------------------------------


async def test_policy_crud_over_the_api(broker: Broker) -> None:
    assert (await api(broker, "GET", "/api/policies")).json() == []
    r = await api(
        broker,
        "PUT",
        "/api/policies/%2F/limits",
        {"pattern": "^orders\\.", "definition": {"max-length": 100}, "priority": 2},
    )
    assert r.status == 201, r
    expected = {
        "name": "limits",
        "pattern": "^orders\\.",
        "definition": {"max-length": 100},
        "priority": 2,
        "apply-to": "queues",
        "vhost": "/",
    }
    assert r.json() == expected
    assert (await api(broker, "GET", "/api/policies/%2F/limits")).json() == expected
    assert (await api(broker, "GET", "/api/policies")).json() == [expected]
    r = await api(
        broker, "PUT", "/api/policies/%2F/limits", {"pattern": ".", "definition": {"max-length": 5}}
    )
    assert r.status == 200 and r.json()["priority"] == 0  # replaced as a whole
    r = await api(broker, "DELETE", "/api/policies/%2F/limits")
    assert r.status == 200 and r.json() == {}
    r = await api(broker, "GET", "/api/policies/%2F/limits")
    assert r.status == 404 and r.json()["code"] == 404
    assert (await api(broker, "DELETE", "/api/policies/%2F/limits")).status == 404


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"pattern": ".", "definition": {"message-ttl": -5}}, "message-ttl"),
        ({"pattern": ".", "definition": {"max-length": "10"}}, "max-length"),
        ({"pattern": ".", "definition": {"overflow": "nope"}}, "overflow"),
        ({"pattern": ".", "definition": {"ha-mode": "all"}}, "ha-mode"),
        ({"pattern": ".", "definition": {}}, "definition"),
        ({"pattern": "."}, "definition"),
        ({"pattern": "(", "definition": {"max-length": 1}}, "pattern"),
        ({"definition": {"max-length": 1}}, "pattern"),
        ({"pattern": ".", "definition": {"max-length": 1}, "apply-to": "exchanges"}, "apply-to"),
        ({"pattern": ".", "definition": {"max-length": 1}, "priority": "high"}, "priority"),
        ({"pattern": ".", "definition": {"max-length": 1}, "colour": "red"}, "colour"),
    ],
)
async def test_bad_policies_are_400_naming_the_key(
    broker: Broker, body: dict[str, Any], named: str
) -> None:
    r = await api(broker, "PUT", "/api/policies/%2F/bad", body)
    assert r.status == 400, r
    assert r.json()["code"] == 400
    assert named in r.json()["error"]
    assert (await api(broker, "GET", "/api/policies")).json() == []


async def test_only_administrators_change_policies(broker: Broker) -> None:
    r = await api(broker, "PUT", "/api/users/viewer", {"password": "pw", "tags": ["monitoring"]})
    assert r.status == 201, r
    viewer = ("viewer", "pw")
    body = {"pattern": ".", "definition": {"max-length": 1}}
    assert (await api(broker, "PUT", "/api/policies/%2F/p", body, auth=viewer)).status == 403
    await put_policy(broker, "p", ".", {"max-length": 1})
    assert (await api(broker, "GET", "/api/policies", auth=viewer)).status == 200
    assert (await api(broker, "DELETE", "/api/policies/%2F/p", auth=viewer)).status == 403


async def test_queue_shows_its_policy_and_effective_arguments(
    broker: Broker, conn: wharf.Connection
) -> None:
    q = _qname("shown")
    await conn.declare_queue(q, arguments={"x-max-length": 3, "x-custom": 1})
    r = (await api(broker, "GET", f"/api/queues/%2F/{q}")).json()
    assert r["policy"] is None
    assert r["effective_arguments"] == {"x-max-length": 3, "x-custom": 1}
    await put_policy(broker, "low", "^shown-", {"max-length": 50}, priority=1)
    await put_policy(
        broker, "high", "^shown-", {"max-length": 10, "message-ttl": 60000}, priority=9
    )
    r = (await api(broker, "GET", f"/api/queues/%2F/{q}")).json()
    assert r["policy"] == "high"
    assert r["arguments"] == {"x-max-length": 3, "x-custom": 1}  # as declared
    assert r["effective_arguments"] == {"x-max-length": 3, "x-custom": 1, "x-message-ttl": 60000}
    (listed,) = [x for x in (await api(broker, "GET", "/api/queues")).json() if x["name"] == q]
    assert listed["policy"] == "high"


# -- behaviour over TCP ---------------------------------------------------------------------------


async def test_policy_ttl_and_dlx_apply_to_an_existing_queue(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.declare_exchange("pdlx", "fanout")
    await conn.declare_queue("pdead")
    await conn.bind_queue("pdead", "pdlx", "")
    await conn.declare_queue("pwork")  # no arguments: everything comes from the policy
    await put_policy(
        broker, "expire", "^pwork$", {"message-ttl": 30, "dead-letter-exchange": "pdlx"}
    )
    await conn.publish("", "pwork", b"stale")
    dead = await _first(conn, "pdead")
    assert dead.body == b"stale"
    (death,) = dead.headers["x-death"]
    assert death["queue"] == "pwork" and death["reason"] == "expired"
    assert await conn.get("pwork") is None


async def test_a_lower_queue_argument_beats_a_higher_policy_limit(
    broker: Broker, conn: wharf.Connection
) -> None:
    await put_policy(broker, "cap", "^capped", {"max-length": 5})
    await conn.declare_queue("capped-own", arguments={"x-max-length": 2})
    await conn.declare_queue("capped-policy")  # declared after the policy: applied at declare
    for i in range(4):
        await conn.publish("", "capped-own", b"%d" % i)
        await conn.publish("", "capped-policy", b"%d" % i)
    assert await _ready(conn, "capped-own") == 2
    assert await _ready(conn, "capped-policy") == 4
    for i in range(4, 8):
        await conn.publish("", "capped-policy", b"%d" % i)
    assert await _ready(conn, "capped-policy") == 5
    msg = await conn.get("capped-policy", no_ack=True)
    assert msg is not None and msg.body == b"3"  # drop-head dropped the oldest


async def test_deleting_the_policy_removes_its_effect(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.declare_queue("uncapped")
    await put_policy(broker, "one", "^uncapped$", {"max-length": 1, "overflow": "reject-publish"})
    await conn.publish("", "uncapped", b"a")
    with pytest.raises(wharf.WharfError):
        await conn.publish("", "uncapped", b"b")  # refused: nacked by the policy's overflow
    assert await _ready(conn, "uncapped") == 1
    assert (await api(broker, "DELETE", "/api/policies/%2F/one")).status == 200
    r = (await api(broker, "GET", "/api/queues/%2F/uncapped")).json()
    assert r["policy"] is None and r["effective_arguments"] == {}
    for body in (b"b", b"c", b"d"):
        await conn.publish("", "uncapped", body)
    assert await _ready(conn, "uncapped") == 4


async def test_changing_a_policy_reapplies_it(broker: Broker, conn: wharf.Connection) -> None:
    await conn.declare_queue("changing")
    await put_policy(broker, "p", "^changing$", {"max-length": 1})
    await conn.publish("", "changing", b"a")
    await conn.publish("", "changing", b"b")
    assert await _ready(conn, "changing") == 1
    await put_policy(broker, "p", "^changing$", {"max-length": 3})
    for body in (b"c", b"d", b"e"):
        await conn.publish("", "changing", body)
    assert await _ready(conn, "changing") == 3


async def test_policies_survive_a_restart(tmp_path: Path) -> None:
    settings = Settings(
        host="127.0.0.1", port=0, http_port=0, amqp_port=0, data_dir=str(tmp_path / "data")
    )
    b = Broker(settings)
    await b.start()
    try:
        await put_policy(b, "durable-cap", "^kept", {"max-length": 2}, priority=4)
        conn = await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}")
        await conn.declare_queue("kept", durable=True)
        await conn.close()
    finally:
        await b.stop()
    b = Broker(settings)
    await b.start()
    try:
        (policy,) = (await api(b, "GET", "/api/policies")).json()
        assert policy["name"] == "durable-cap" and policy["priority"] == 4
        assert (await api(b, "GET", "/api/queues/%2F/kept")).json()["policy"] == "durable-cap"
        conn = await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}")
        try:
            for i in range(4):
                await conn.publish("", "kept", b"%d" % i, persistent=True)
            assert await _ready(conn, "kept") == 2  # applied to the recovered queue
        finally:
            await conn.close()
    finally:
        await b.stop()


# -- wharf ctl ------------------------------------------------------------------------------------


class CtlResult(NamedTuple):
    code: int
    out: str
    err: str


async def run_ctl(broker: Broker, *args: str) -> CtlResult:
    beside = Path(sys.executable).parent / "wharf"
    script = str(beside) if beside.exists() else shutil.which("wharf")
    if script is None:
        pytest.skip("the wharf console script is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHARF_", "_WHARF"))}
    env["WHARF_HTTP_URL"] = f"http://127.0.0.1:{broker.http_port}"
    proc = await asyncio.create_subprocess_exec(
        script,
        "ctl",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(30.0):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return CtlResult(proc.returncode, out.decode(), err.decode())


async def test_ctl_policies_set_list_delete(broker: Broker) -> None:
    r = await run_ctl(
        broker, "policies", "set", "ttl", "^jobs\\.", '{"message-ttl": 1000}', "--priority", "3"
    )
    assert r.code == 0, r
    assert "policy ttl set" in r.out
    assert broker.topology.policies.get("ttl").priority == 3
    r = await run_ctl(broker, "policies", "list")
    assert r.code == 0, r
    header, row = r.out.strip().splitlines()
    assert header.split() == ["NAME", "PATTERN", "APPLY_TO", "PRIORITY", "DEFINITION"]
    assert row.split()[:4] == ["ttl", "^jobs\\.", "queues", "3"]
    r = await run_ctl(broker, "--json", "policies", "list")
    assert json.loads(r.out)[0]["definition"] == {"message-ttl": 1000}
    r = await run_ctl(broker, "policies", "set", "bad", ".", '{"message-ttl": "soon"}')
    assert r.code == 1 and "message-ttl" in r.err and "HTTP 400" in r.err
    r = await run_ctl(broker, "policies", "set", "bad", ".", "not json")
    assert r.code == 2 and "JSON object" in r.err
    r = await run_ctl(broker, "policies", "delete", "ttl")
    assert r.code == 0 and "policy ttl deleted" in r.out
    r = await run_ctl(broker, "policies", "delete", "ttl")
    assert r.code == 1 and "HTTP 404" in r.err


async def test_policies_through_the_sdk(broker: Broker, conn: wharf.Connection) -> None:
    await conn.declare_queue("sdkpol-dead")
    await conn.declare_queue("sdkpol.work")
    created = await conn.set_policy(
        "sdk-ttl",
        r"^sdkpol\.",
        {"message-ttl": 20, "dead-letter-exchange": "", "dead-letter-routing-key": "sdkpol-dead"},
        priority=3,
    )
    assert created is True
    assert [p["name"] for p in await conn.list_policies()] == ["sdk-ttl"]
    await conn.publish("", "sdkpol.work", b"expires")
    dead: list[wharf.Message] = []

    async def dead_lettered() -> bool:
        m = await conn.get("sdkpol-dead")
        if m is not None:
            dead.append(m)
        return bool(dead)

    await wait_until(dead_lettered, what="the expired message dead-lettered")
    got = dead[0]
    assert got.headers["x-death"][0]["reason"] == "expired"
    await conn.delete_policy("sdk-ttl")
    assert await conn.list_policies() == []
    with pytest.raises(wharf.NotFound):
        await conn.delete_policy("sdk-ttl")
    with pytest.raises(wharf.InvalidArgument):
        await conn.set_policy("bad", "(", {"message-ttl": 1})
