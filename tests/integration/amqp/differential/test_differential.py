"""The differential AMQP harness in ``make test``: every scenario of scenarios.py runs
against a real Wharf (its AMQP listener on a free port) and what the client observed is
compared with RabbitMQ 3.10's recorded observation (recordings/rabbitmq-3.10.json,
refreshed by ``make amqp-recordings``).

A scenario with a declared ``Deviation`` is compared with the observation its
``expect`` derives from the recording: Wharf's documented behaviour (docs/amqp.md, "Where
Wharf differs from RabbitMQ"), so every difference is listed and reviewed in one place.

One broker serves the whole module (as one RabbitMQ served the recording): scenarios use
their own queue and exchange names and close their connections, and a broker per scenario
would cost more than all the scenarios together.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from wharf.broker.config import Settings
from wharf.broker.server import Broker

from ..raw_amqp import free_port
from .normalise import normalise, streams
from .scenarios import SCENARIOS, run_scenario

RECORDING = Path(__file__).parent / "recordings" / "rabbitmq-3.10.json"
RECORDED: dict[str, Any] = json.loads(RECORDING.read_text())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def wharf(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Broker]:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        amqp_port=free_port(),
        amqps_port=0,
        heartbeat_s=60,  # RabbitMQ's default, so that connection.tune reads the same
        data_dir=str(tmp_path_factory.mktemp("differential") / "data"),
    )
    b = Broker(settings)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


def test_the_recording_is_rabbitmq_and_covers_every_scenario() -> None:
    assert RECORDED["server"]["product"] == "RabbitMQ"
    assert RECORDED["server"]["version"].startswith("3.10.")
    assert sorted(RECORDED["scenarios"]) == sorted(SCENARIOS)
    # A scenario waits only for answers that come: a wait RabbitMQ did not answer is a
    # scenario bug (and 2 s of every run).
    waited = [
        n for n, obs in RECORDED["scenarios"].items() if any(e["m"] == "timeout" for e in obs)
    ]
    assert not waited, waited


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_wharf_observes_as_rabbitmq(wharf: Broker, name: str) -> None:
    entry = SCENARIOS[name]
    recorded = normalise(RECORDED["scenarios"][name])  # idempotent: a newer normaliser
    expected = recorded
    if entry.deviation is not None:
        expected = entry.deviation.expect(recorded)
        assert expected != recorded, "a deviation must differ from RabbitMQ's observation"
    s = await run_scenario(name, wharf.amqp_port)
    got = normalise(s.events)
    assert streams(got) == streams(expected)
