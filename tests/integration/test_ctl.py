"""``wharf ctl`` run as a user runs it: the installed console script in a subprocess,
against a broker in this process (the subprocess is awaited, so the loop keeps serving)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import wharf
from wharf.broker.server import Broker

from ..helpers import wait_until

RUN_TIMEOUT_S = 30.0
POLL_S = 0.01


def _wharf_script() -> str:
    beside = Path(sys.executable).parent / "wharf"
    if beside.exists():
        return str(beside)
    found = shutil.which("wharf")
    if found is None:
        pytest.skip("the wharf console script is not installed")
    return found


class Result(NamedTuple):
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def run_ctl(
    *args: str, url: str | None = None, env: dict[str, str] | None = None, stdin: str = ""
) -> Result:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("WHARF_", "_WHARF"))}
    if url is not None:
        full_env["WHARF_HTTP_URL"] = url
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        _wharf_script(),
        "ctl",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full_env,
    )
    async with asyncio.timeout(RUN_TIMEOUT_S):
        out, err = await proc.communicate(stdin.encode())
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@pytest.fixture
def http_url(broker: Broker) -> str:
    return f"http://127.0.0.1:{broker.http_port}"


def _qname() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


async def test_queue_commands_print_tables_and_json(broker: Broker, http_url: str) -> None:
    q = _qname()
    r = await run_ctl("queues", "declare", q, "--durable", "--arg", "x-note=7", url=http_url)
    assert r.code == 0 and f"queue {q} declared" in r.out, r
    assert broker.queues[q].durable and broker.queues[q].arguments == {"x-note": 7}
    r = await run_ctl("queues", "list", url=http_url)
    header, row = r.out.splitlines()
    assert header.split() == ["NAME", "TYPE", "DURABLE", "AUTO_DELETE", "EXCLUSIVE"] + [
        "READY",
        "UNACKED",
        "CONSUMERS",
    ]
    assert row.split() == [q, "classic", "yes", "no", "no", "0", "0", "0"]
    # Columns line up: every cell starts where its header starts.
    assert header.index("DURABLE") == row.index("yes")
    r = await run_ctl("--json", "queues", "show", q, url=http_url)
    assert r.json()["name"] == q and r.json()["durable"] is True
    r = await run_ctl("queues", "delete", q, "--if-empty", url=http_url)
    assert r.code == 0 and "deleted (0 messages)" in r.out
    assert q not in broker.queues


async def test_publish_peek_and_purge(broker: Broker, http_url: str) -> None:
    q = _qname()
    await run_ctl("queues", "declare", q, url=http_url)
    r = await run_ctl("publish", "amq.default", q, "hello there", "--property", "priority=2")
    assert r.code == 1 and "cannot reach" in r.err  # no URL: the default port is not ours
    r = await run_ctl(
        "publish", "", q, "hello there", "--property", "priority=2", "--header", "h=x", url=http_url
    )
    assert r.code == 0 and r.out.strip() == "routed", r
    r = await run_ctl("publish", "amq.default", q, "//4=", "--base64", url=http_url)
    assert r.code == 0
    r = await run_ctl("publish", "amq.direct", "nowhere", "x", url=http_url)
    assert r.code == 0 and "routed to no queue" in r.out
    r = await run_ctl("queues", "peek", q, "--count", "5", url=http_url)
    lines = r.out.splitlines()
    assert lines[0].split() == ["EXCHANGE", "ROUTING_KEY", "DELIVERIES", "BYTES", "PAYLOAD"]
    assert lines[1].split(None, 4) == ["amq.default", q, "0", "11", "hello there"]
    assert lines[2].endswith("//4= (base64)")  # not UTF-8: shown as base64
    peeked = (await run_ctl("--json", "queues", "peek", q, url=http_url)).json()
    assert peeked[0]["properties"] == {"priority": 2, "headers": {"h": "x"}}
    assert broker.queues[q].ready_count == 2
    r = await run_ctl("queues", "purge", q, url=http_url)
    assert r.code == 0 and "purged (2 messages)" in r.out


async def test_exchanges_and_bindings(broker: Broker, http_url: str) -> None:
    q = _qname()
    await run_ctl("queues", "declare", q, url=http_url)
    r = await run_ctl("exchanges", "declare", "events", "topic", "--durable", url=http_url)
    assert r.code == 0 and broker.exchanges["events"].type == "topic"
    r = await run_ctl("bindings", "add", "events", q, "-k", "order.*", url=http_url)
    assert r.code == 0, r
    r = await run_ctl("bindings", "list", url=http_url)
    assert r.out.splitlines()[1].split() == ["events", "queue", q, "order.*", "-"]
    r = await run_ctl("exchanges", "delete", "events", "--if-unused", url=http_url)
    assert r.code == 1 and "in use" in r.err
    r = await run_ctl("bindings", "remove", "events", q, "-k", "order.*", url=http_url)
    assert r.code == 0
    r = await run_ctl("bindings", "remove", "events", q, "-k", "order.*", url=http_url)
    assert r.code == 1 and "no such binding" in r.err
    r = await run_ctl("exchanges", "list", url=http_url)
    names = [line.split()[0] for line in r.out.splitlines()[1:]]
    assert "amq.default" in names and "events" in names
    assert (await run_ctl("exchanges", "delete", "events", url=http_url)).code == 0
    r = await run_ctl("exchanges", "declare", "x", "bogus", url=http_url)
    assert r.code == 2 and "bogus" in r.err


async def test_connections_consumers_and_overview(
    broker: Broker, http_url: str, conn: wharf.Connection
) -> None:
    q = (await conn.declare_queue("")).name
    async with conn.consume(q, prefetch=3):
        await wait_until(lambda: broker.consumer_count == 1)
        (name,) = [c.name for c in broker.connections.values()]
        r = await run_ctl("consumers", "list", url=http_url)
        assert r.out.splitlines()[1].split()[1:4] == [q, name, "3"]
        r = await run_ctl("overview", url=http_url)
        assert ["consumers", "1"] in [line.split() for line in r.out.splitlines()]
        r = await run_ctl("--json", "connections", "list", url=http_url)
        (c,) = r.json()
        assert c["user"] == "guest"
        r = await run_ctl("channels", "list", url=http_url)
        header, row = r.out.splitlines()
        assert header.split() == [
            "NAME",
            "USER",
            "VHOST",
            "PROTOCOL",
            "CONSUMERS",
            "UNACKED",
            "PREFETCH",
            "MODE",
        ]
        assert row.split()[-6:] == ["/", "native", "1", "0", "0", "confirm"]
        r = await run_ctl(
            "connections", "close", c["name"], "--reason", "maintenance window", url=http_url
        )
        assert r.code == 0 and "closed" in r.out
        await wait_until(lambda: not broker.connections)
    with pytest.raises(wharf.WharfError) as info:
        await conn.declare_queue("")
    assert info.value.code == 320
    assert "maintenance window" in str(info.value)


async def test_users_add_passwd_delete(broker: Broker, http_url: str) -> None:
    r = await run_ctl(
        "users", "add", "ann", "--password", "pw1", "--tags", "monitoring", url=http_url
    )
    assert r.code == 0, r
    r = await run_ctl("users", "add", "ann", "--password", "pw1", url=http_url)
    assert r.code == 1 and "already exists" in r.err
    r = await run_ctl("users", "list", url=http_url)
    assert ["ann", "monitoring", "runtime"] in [line.split() for line in r.out.splitlines()]
    # ann may read but not write; credentials come from flags or the environment.
    r = await run_ctl("--user", "ann", "--password", "pw1", "queues", "list", url=http_url)
    assert r.code == 0
    env = {"WHARF_USER": "ann", "WHARF_PASSWORD": "pw1"}
    r = await run_ctl("queues", "declare", "nope", url=http_url, env=env)
    assert r.code == 1 and "refused for user 'ann'" in r.err and "403" in r.err
    # Without --password the new password is prompted for (hidden, confirmed).
    r = await run_ctl("users", "passwd", "ann", url=http_url, stdin="pw2\npw2\n")
    assert r.code == 0, r
    r = await run_ctl("queues", "list", url=http_url, env=env)
    assert r.code == 1 and "invalid credentials" in r.err
    r = await run_ctl("users", "passwd", "nobody", "--password", "x", url=http_url)
    assert r.code == 1 and "no user" in r.err
    r = await run_ctl("users", "delete", "ann", url=http_url)
    assert r.code == 0 and "ann" not in broker.authenticator.users


async def test_permissions_and_topic_permissions_commands(broker: Broker, http_url: str) -> None:
    r = await run_ctl(
        "users", "add", "app", "--password", "pw", "--tags", "management", url=http_url
    )
    assert r.code == 0, r
    env = {"WHARF_USER": "app", "WHARF_PASSWORD": "pw"}
    r = await run_ctl("queues", "declare", "orders.q", url=http_url, env=env)
    assert r.code == 1 and "access to vhost '/' refused for user 'app'" in r.err
    args = ("--configure", "^orders\\.", "--write", "^orders\\.", "--read", ".*")
    r = await run_ctl("permissions", "set", "app", *args, url=http_url)
    assert r.code == 0, r
    r = await run_ctl("queues", "declare", "orders.q", url=http_url, env=env)
    assert r.code == 0, r
    r = await run_ctl("queues", "declare", "billing.q", url=http_url, env=env)
    assert r.code == 1 and "configure access to queue 'billing.q'" in r.err
    r = await run_ctl("permissions", "list", url=http_url)
    assert ["app", "/", "^orders\\.", "^orders\\.", ".*"] in [
        line.split() for line in r.out.splitlines()
    ]
    tp = ("--exchange", "amq.topic", "--write", "^{username}", "--read", ".*")
    r = await run_ctl("topic-permissions", "set", "app", *tp, url=http_url)
    assert r.code == 0, r
    r = await run_ctl("--json", "topic-permissions", "list", url=http_url)
    assert r.json() == [
        {"user": "app", "vhost": "/", "exchange": "amq.topic", "write": "^{username}", "read": ".*"}
    ]
    r = await run_ctl("topic-permissions", "clear", "app", "--exchange", "amq.topic", url=http_url)
    assert r.code == 0, r
    assert broker.access.describe_topic("/", "app") == []
    r = await run_ctl("permissions", "clear", "app", url=http_url)
    assert r.code == 0, r
    assert broker.access.describe("/", "app") is None


async def test_errors_exit_1_and_usage_errors_exit_2(http_url: str) -> None:
    r = await run_ctl("queues", "show", "missing", url=http_url)
    assert r.code == 1 and r.out == ""
    assert "no queue 'missing'" in r.err and "404" in r.err
    r = await run_ctl("queues", "frobnicate", url=http_url)
    assert r.code == 2
    r = await run_ctl("queues", "declare", "q", "--arg", "novalue", url=http_url)
    assert r.code == 2 and "key=value" in r.err
    r = await run_ctl("--password", "wrong", "overview", url=http_url)
    assert r.code == 1 and "401" in r.err


async def test_pointed_at_the_wharf_port_it_says_so_without_a_traceback(broker: Broker) -> None:
    r = await run_ctl("queues", "list", url=f"http://127.0.0.1:{broker.port}")

    assert r.code == 1
    assert "this port speaks the Wharf protocol; the HTTP port is 8680" in r.err
    assert "Traceback" not in r.err
    assert r.out == ""


async def test_shell_completion_is_available() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("_WHARF")}
    env.update(
        {"_WHARF_COMPLETE": "bash_complete", "COMP_WORDS": "wharf ctl qu", "COMP_CWORD": "2"}
    )
    proc = await asyncio.create_subprocess_exec(
        _wharf_script(), stdout=asyncio.subprocess.PIPE, env=env
    )
    async with asyncio.timeout(RUN_TIMEOUT_S):
        out, _ = await proc.communicate()
    assert "queues" in out.decode()


async def _dead_letters(conn: wharf.Connection, dlq: str, count: int) -> None:
    """``count`` messages in ``dlq``, dead-lettered there by a TTL of 0."""
    await conn.declare_queue(dlq)
    src = _qname()
    args = {"x-message-ttl": 0, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}
    await conn.declare_queue(src, arguments=args)
    await conn.publish_many("", src, [b"m%d" % i for i in range(count)])
    await wait_until_async(lambda: conn.declare_queue(dlq, passive=True), count)


async def wait_until_async(declare: Any, count: int) -> None:
    async with asyncio.timeout(5.0):
        while (await declare()).messages < count:  # noqa: ASYNC110 (bounded polling)
            await asyncio.sleep(POLL_S)


async def test_replay_shows_progress_on_a_terminal_only(
    broker: Broker, http_url: str, url: str
) -> None:
    count = 2500  # three replay requests of at most 1000
    async with await wharf.connect(url) as conn:
        dlq, target = _qname(), _qname()
        await conn.declare_queue(target)
        await _dead_letters(conn, dlq, count)

        # stderr on a pseudo-terminal: a progress line there, stdout stays plain JSON.
        leader, follower = os.openpty()
        try:
            proc = await asyncio.create_subprocess_exec(
                _wharf_script(), "ctl", "--url", http_url, "--json", "queues", "replay", dlq,
                "--to", target, "--limit", "2200",
                stdout=asyncio.subprocess.PIPE, stderr=follower,
            )  # fmt: skip
            async with asyncio.timeout(RUN_TIMEOUT_S):
                out, _ = await proc.communicate()
            os.close(follower)
            follower = -1
            terminal = b""
            with contextlib.suppress(OSError):  # EIO once everything is read
                while chunk := os.read(leader, 4096):
                    terminal += chunk
        finally:
            os.close(leader)
            if follower >= 0:
                os.close(follower)
        assert proc.returncode == 0
        assert json.loads(out) == {"moved": 2200}
        assert b"replaying " + dlq.encode() + b": 1000/2200" in terminal
        assert (await conn.declare_queue(target, passive=True)).messages == 2200

        # Not a terminal: nothing on stderr, one request.
        r = await run_ctl("--json", "queues", "replay", dlq, "--to", target, url=http_url)
        assert r.code == 0 and r.json() == {"moved": count - 2200}
        assert r.err == ""
