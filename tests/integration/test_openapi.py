"""Schemathesis against a live broker: no request the OpenAPI document allows (or almost
allows: negative cases) may get a 5xx or break the server, and answers must match it.

The broker runs in a background thread on its own uvloop: schemathesis drives requests
synchronously (requests/hypothesis), which would block a broker on the test's loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings

from wharf.broker.config import Settings
from wharf.broker.http.api import api_routes, wharf_version
from wharf.broker.http.openapi import openapi_document
from wharf.broker.server import Broker

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    ignored_auth,
    positive_data_acceptance,
)

GUEST_AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0


class ThreadedBroker:
    """A broker on a uvloop in a daemon thread, for synchronous test clients."""

    def __init__(self, settings: Settings) -> None:
        self.broker = Broker(settings)
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.broker.start(), self.loop).result(START_TIMEOUT_S)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.broker.stop(), self.loop).result(STOP_TIMEOUT_S)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(STOP_TIMEOUT_S)
            self.loop.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.broker.http_port}"


@pytest.fixture(scope="module")
def live_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedBroker]:
    data = Path(tmp_path_factory.mktemp("openapi")) / "data"
    tb = ThreadedBroker(
        Settings(host="127.0.0.1", port=0, http_port=0, amqp_port=0, data_dir=str(data))
    )
    tb.start()
    try:
        yield tb
    finally:
        tb.stop()


def _get(url: str) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": GUEST_AUTH})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


# The document is built without a server, so each operation can be its own test case; a
# test below checks that the broker serves exactly this document.
DOCUMENT = openapi_document(wharf_version(), api_routes())
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
OPERATIONS = [
    (path, method.upper()) for path, methods in DOCUMENT["paths"].items() for method in methods
]
EXAMPLES_PER_OPERATION = 25
# ignored_auth retries requests with wrong credentials; the broker's per-host failure
# slowdown (up to 5 s per answer) then makes the run crawl.  test_api.py covers 401/403.
EXCLUDED_CHECKS = [ignored_auth]


def _free_form(schema: Any) -> bool:
    """Whether a schema holds a map of any values (arguments, headers, configs)."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" not in schema:
            return True
        return any(_free_form(v) for v in schema.values())
    if isinstance(schema, list):
        return any(_free_form(v) for v in schema)
    return False


def _body_schema(operation: dict[str, Any]) -> Any:
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema", {})
    ref = schema.get("$ref", "")
    return DOCUMENT["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else schema


# Schema-valid requests the broker may rightly refuse, so "positive data is accepted" is
# not checked for them (no 5xx and response conformance still are):
# - a PATCH of a topic to fewer partitions than a generated POST gave it (a 400: the
#   count can grow but never shrink), which depends on what earlier cases left behind;
# - bodies with free-form maps, whose values the broker bounds as msgpack does (64-bit
#   integers) at any depth, which JSON Schema cannot state for a map of anything;
# - paged lists: a page beyond the last one depends on how many items earlier cases
#   left, and with use_regex=true the name must be a valid regular expression.
STATEFUL_OPERATIONS = {("/api/topics/{vhost}/{name}", "PATCH")} | {
    (path, method.upper())
    for path, methods in DOCUMENT["paths"].items()
    for method, operation in methods.items()
    if _free_form(_body_schema(operation))
    or any(p["name"] == "page" for p in operation.get("parameters", []))
}


def test_the_served_document_is_the_tested_one(live_broker: ThreadedBroker) -> None:
    assert _get(live_broker.base_url + "/api/openapi.json") == json.loads(json.dumps(DOCUMENT))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_no_request_shape_breaks_the_api(
    live_broker: ThreadedBroker, path: str, method: str, mode: Any
) -> None:
    operation = SCHEMA[path][method]
    excluded = list(EXCLUDED_CHECKS)
    if (path, method) in STATEFUL_OPERATIONS:
        excluded.append(positive_data_acceptance)

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(
            base_url=live_broker.base_url,
            headers={"Authorization": GUEST_AUTH},
            excluded_checks=excluded,
            timeout=30,
        )

    run()


def test_broker_still_serves_after_the_fuzzing(live_broker: ThreadedBroker) -> None:
    overview = _get(live_broker.base_url + "/api/overview")
    assert overview["product"] == "wharf"
    assert live_broker.broker.ready
