"""Browser tests of the web UI: a broker on its own event loop in a thread (the tests are
plain functions: Playwright's sync API and the SDK's blocking client run in the test's
thread), filled through the SDK, and Debian's headless chromium driven by Playwright
through its executable path (never Playwright's own browser download)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import pytest

import wharf
from wharf.broker.config import UserConfig
from wharf.broker.security.passwords import hash_password

from ..conftest import make_settings
from ..helpers import broker_thread

CHROMIUM: Final = os.environ.get("WHARF_TEST_CHROMIUM", "/usr/bin/chromium")
CALL_TIMEOUT_S: Final = 10.0
MONITOR_PASSWORD: Final = "monitor-secret-1"
ADMIN_PASSWORD: Final = "admin-secret-1"


@dataclass
class Filled:
    """The broker the UI tests look at, and what the SDK put in it."""

    base: str  # http://127.0.0.1:PORT
    url: str  # the SDK's wharf:// URL
    conn: wharf.sync.SyncConnection
    keep: list[Any] = field(default_factory=list)  # open consumers and streams


def fill(conn: wharf.sync.SyncConnection) -> list[Any]:
    """Queues, exchanges and bindings, dead letters, a topic with records, consumer
    groups (one with a live member, one empty with committed offsets)."""
    conn.declare_exchange("orders", "topic", durable=True)
    conn.declare_queue("orders.eu", durable=True, arguments={"x-max-length": 10_000})
    conn.bind_queue("orders.eu", "orders", "eu.#")
    conn.declare_queue("orders.us", durable=True)
    conn.bind_queue("orders.us", "orders", "us.#")
    conn.publish_many("orders", "eu.de", [b'{"order": 1, "item": "boat"}', b"plain text"])
    conn.publish("orders", "us.ny", b"\x00\x01binary")
    conn.declare_queue("purge.me", durable=True)
    conn.publish_many("", "purge.me", [b"a", b"b", b"c"])
    # Dead letters: rejected from "work" into "work.dlq".
    conn.declare_queue("work.dlq", durable=True)
    conn.declare_queue(
        "work",
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "work.dlq"},
    )
    conn.publish_many("", "work", [b"job-1", b"job-2"])
    for _ in range(2):
        msg = conn.get("work")
        assert msg is not None
        msg.reject(requeue=False)
    consumer = conn.consume("orders.us", prefetch=5)
    conn.create_topic("events", partitions=3, retention_ms=86_400_000)
    conn.bind_topic("events", "orders", "eu.#")
    for i in range(12):
        conn.produce("events", f'{{"n": {i}}}'.encode(), key=f"k{i % 4}".encode())
    conn.reset_offsets("billing", "events", "latest")  # an empty group with offsets
    for i in range(5):
        conn.produce("events", f'{{"late": {i}}}'.encode(), partition=i % 3)
    # A group with a live member that has read and committed a few records.
    stream = conn.subscribe("events", group="analytics", auto_offset_reset="earliest")
    records: list[Any] = []
    while len(records) < 4:
        records += stream.getmany(timeout=CALL_TIMEOUT_S, max_records=4)
    stream.commit()
    return [consumer, stream]


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if shutil.which(CHROMIUM) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    return CHROMIUM


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filled]:
    settings = make_settings(
        tmp_path_factory.mktemp("ui"),
        group_initial_rebalance_delay_ms=0,  # a lone member joins at once
        users=[
            UserConfig("admin", hash_password(ADMIN_PASSWORD), ["administrator"]),
            UserConfig("monitor", hash_password(MONITOR_PASSWORD), ["monitoring"]),
        ],
    )
    with broker_thread(settings) as broker:
        url = f"wharf://guest:guest@127.0.0.1:{broker.port}"
        with wharf.sync.connect(url, call_timeout=CALL_TIMEOUT_S) as conn:
            keep = fill(conn)
            yield Filled(f"http://127.0.0.1:{broker.http_port}", url, conn, keep)
            for k in keep:
                (k.close if hasattr(k, "close") else k.cancel)()


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()
