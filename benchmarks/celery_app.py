"""The Celery app of ``python -m benchmarks celery`` (benchmarks/amqp_clients.py).

The worker runs ``celery -A benchmarks.celery_app worker -P solo -c 1``; the sender
imports the same app.  Settings come from the environment the benchmark sets: the broker
URL, the queue (a fresh name per run, so RabbitMQ keeps no leftovers), how many tasks to
expect and two files: the worker writes ``time.time_ns()`` into the ready file once it
consumes, and into the done file when the last expected task has run.  No result
backend: completion is counted in the worker (the solo pool runs tasks in its one
process).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Final

from celery import Celery
from celery.signals import worker_ready

BROKER_URL_ENV: Final = "WHARF_BENCH_BROKER_URL"
QUEUE_ENV: Final = "WHARF_BENCH_QUEUE"
COUNT_ENV: Final = "WHARF_BENCH_COUNT"
READY_FILE_ENV: Final = "WHARF_BENCH_READY_FILE"
DONE_FILE_ENV: Final = "WHARF_BENCH_DONE_FILE"
TASK_NAME: Final = "wharf_bench.noop"

app = Celery("wharf_bench", broker=os.environ.get(BROKER_URL_ENV))
app.conf.update(
    task_default_queue=os.environ.get(QUEUE_ENV, "wharf_bench"),
    task_ignore_result=True,
    worker_enable_remote_control=False,  # no pidbox queue per worker
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_expected = int(os.environ.get(COUNT_ENV, "0"))
_done = 0


def _write(env: str) -> None:
    path = os.environ.get(env)
    if path:
        Path(path).write_text(str(time.time_ns()))


@app.task(name=TASK_NAME)
def noop(i: int) -> None:
    global _done
    _done += 1
    if _done == _expected:
        _write(DONE_FILE_ENV)


@worker_ready.connect
def _on_ready(**_: Any) -> None:
    _write(READY_FILE_ENV)
