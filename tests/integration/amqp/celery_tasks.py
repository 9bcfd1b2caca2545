"""The Celery app that test_amqp_celery.py runs real workers of (``celery -A celery_tasks
worker``), unmodified Celery against Wharf's AMQP port.

Settings come from the environment the test gives the worker: the broker URL, the result
backend (none when empty) and a directory where the tasks leave files, so that the test
sees what ran where even without a result backend.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Final

from celery import Celery, Task

BROKER_URL_ENV: Final = "WHARF_TEST_BROKER_URL"
RESULT_BACKEND_ENV: Final = "WHARF_TEST_RESULT_BACKEND"
OUT_DIR_ENV: Final = "WHARF_TEST_OUT_DIR"
# A held task gives up after this long (a test that forgot to release it fails anyway).
HOLD_MAX_S: Final = 30.0
# How often a held task looks for its release file (bounded polling in the worker).
HOLD_POLL_S: Final = 0.05

app = Celery(
    "wharf_test",
    broker=os.environ.get(BROKER_URL_ENV),
    backend=os.environ.get(RESULT_BACKEND_ENV) or None,
)
app.conf.broker_connection_retry_on_startup = True
OUT: Final = Path(os.environ.get(OUT_DIR_ENV, "."))


def leave(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (write, then rename): the test polls for the
    file's existence and reads it at once."""
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    part.rename(path)


@app.task(name="wharf_test.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="wharf_test.total")
def total(values: list[int]) -> int:
    return sum(values)


@app.task(name="wharf_test.hold", bind=True, acks_late=True)
def hold(self: Task, name: str) -> int:
    """Leave ``<name>.started.<pid>`` (with the delivery's redelivered flag), wait for
    ``<name>.release``, then leave ``<name>.done`` with the pid that finished it."""
    info: dict[str, Any] = self.request.delivery_info or {}
    leave(
        OUT / f"{name}.started.{os.getpid()}",
        json.dumps({"redelivered": bool(info.get("redelivered"))}),
    )
    deadline = time.monotonic() + HOLD_MAX_S
    while not (OUT / f"{name}.release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} was never released")
        time.sleep(HOLD_POLL_S)
    leave(OUT / f"{name}.done", str(os.getpid()))
    return os.getpid()


@app.task(name="wharf_test.flaky", bind=True, max_retries=3)
def flaky(self: Task, name: str, countdown: float) -> int:
    """Fails twice, retried each time with ``countdown``; ``<name>.try<n>`` holds the
    time each try started."""
    tries = self.request.retries
    leave(OUT / f"{name}.try{tries}", repr(time.time()))
    if tries < 2:
        raise self.retry(countdown=countdown)
    return tries
