"""Asynchronous errors over TCP: an error no call is waiting for (a refused
fire-and-forget publish, a returned fire-and-forget mandatory message, a refused settle
of a ``get`` message) reaches ``conn.on_error`` and the "error" event, and is never
raised from a later, unrelated call (docs/sdk.md, "Asynchronous errors")."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

import wharf

TIMEOUT_S = 5.0

Connect = Callable[..., Any]


def collect(conn: wharf.Connection) -> tuple[list[wharf.WharfError], list[wharf.ConnectionEvent]]:
    errors: list[wharf.WharfError] = []
    events: list[wharf.ConnectionEvent] = []
    conn.on_error(errors.append)
    conn.on_event(events.append)
    return errors, events


async def test_refused_fire_and_forget_publish_never_fails_the_next_call(
    conn: wharf.Connection,
) -> None:
    errors, events = collect(conn)

    await conn.publish("missing-exchange", "k", b"m", confirm=False)
    # The next, unrelated call succeeds.  The broker handles a connection's frames in
    # order, so its ERROR for the publish arrived before this answer.
    assert (await conn.declare_queue("q")).name == "q"
    await conn.publish("", "q", b"confirmed")

    assert [type(e) for e in errors] == [wharf.NotFound]
    assert errors[0].code == 404
    assert "missing-exchange" in errors[0].message
    assert [(e.name, type(e.error)) for e in events] == [("error", wharf.NotFound)]
    assert (await conn.get("q", no_ack=True)) is not None


async def test_without_on_error_the_error_is_logged_and_the_next_call_succeeds(
    conn: wharf.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="wharf.client"):
        await conn.publish("missing-exchange", "k", b"m", confirm=False)
        await conn.declare_queue("q")
    lines = [r.getMessage() for r in caplog.records if "on_error" in r.getMessage()]
    assert len(lines) == 1 and "missing-exchange" in lines[0]


async def test_fire_and_forget_errors_arrive_before_close_returns(
    connect: Connect,
) -> None:
    conn: wharf.Connection = await connect()
    errors: list[wharf.WharfError] = []
    conn.on_error(errors.append)

    for i in range(3):
        await conn.publish(f"missing-{i}", "k", b"m", confirm=False)
    # The broker answers CLOSE after every frame sent before it.
    await conn.close()

    assert [e.code for e in errors] == [404, 404, 404]
    assert [f"missing-{i}" in e.message for i, e in enumerate(errors)] == [True] * 3


async def test_returned_fire_and_forget_mandatory_message_reaches_on_error(
    conn: wharf.Connection,
) -> None:
    errors, _ = collect(conn)

    await conn.publish("amq.direct", "nowhere", b"lost", mandatory=True, confirm=False)
    await conn.declare_queue("q")

    assert [type(e) for e in errors] == [wharf.Unroutable]
    assert errors[0].details["routing_key"] == "nowhere"
    assert errors[0].details["body"] == b"lost"


async def test_async_callback_runs_as_a_task(conn: wharf.Connection) -> None:
    seen: asyncio.Future[wharf.WharfError] = asyncio.get_running_loop().create_future()

    async def on_error(error: wharf.WharfError) -> None:
        seen.set_result(error)

    conn.on_error(on_error)
    await conn.publish("missing-exchange", "k", b"m", confirm=False)
    assert isinstance(await asyncio.wait_for(seen, TIMEOUT_S), wharf.NotFound)


async def test_confirmed_publish_still_raises_its_own_error(conn: wharf.Connection) -> None:
    errors, _ = collect(conn)

    with pytest.raises(wharf.NotFound):
        await conn.publish("missing-exchange", "k", b"m")
    with pytest.raises(wharf.Unroutable):
        await conn.publish("amq.direct", "nowhere", b"m", mandatory=True)

    assert errors == []  # the caller's own errors are raised, not reported twice


async def test_sync_client_on_error(url: str) -> None:
    def run() -> list[wharf.WharfError]:
        errors: list[wharf.WharfError] = []
        with wharf.sync.connect(url) as conn:
            conn.on_error(errors.append)
            conn.publish("missing-exchange", "k", b"m", confirm=False)
            conn.declare_queue("q")  # does not raise
        return errors

    errors = await asyncio.to_thread(run)
    assert [type(e) for e in errors] == [wharf.NotFound]
