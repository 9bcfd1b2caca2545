"""Real Celery workers (``celery -A celery_tasks worker``, subprocesses) on Wharf's AMQP
port: a round trip with the rpc:// result backend, groups and a chord (file:// backend),
a retry with a countdown, ``acks_late`` with a worker killed by SIGKILL mid-task, and
tasks held for a countdown that do not stall the worker.

The broker runs in the test's event loop; the Celery client blocks, so its calls run in a
thread of its own (``Client``).  Tasks leave files in ``tmp_path/out`` (the app is
celery_tasks.py beside this file).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest
from celery import Celery, chord, group

from wharf.broker.server import Broker

from ...helpers import wait_until

APP_DIR: Final = Path(__file__).parent
# A worker's start (import, connect, mingle's one-second wait) on a loaded machine.
WORKER_START_S: Final = 25.0
RESULT_TIMEOUT_S: Final = 15.0
# A worker asked to stop (SIGTERM, warm shutdown) is killed after this long.
WORKER_STOP_S: Final = 10.0
TASK_QUEUE: Final = "celery"
T = TypeVar("T")


@dataclass
class Worker:
    name: str
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass
class CeleryEnv:
    broker: Broker
    broker_url: str
    backend: str
    out: Path
    tmp: Path

    def client(self) -> Celery:
        app = Celery("wharf_test_client", broker=self.broker_url, backend=self.backend or None)
        app.conf.broker_connection_retry_on_startup = True
        return app

    @contextlib.asynccontextmanager
    async def worker(self, name: str, *args: str, pool: str = "solo") -> AsyncIterator[Worker]:
        log = self.tmp / f"worker-{name}.log"
        env = dict(os.environ)
        env.update(
            WHARF_TEST_BROKER_URL=self.broker_url,
            WHARF_TEST_RESULT_BACKEND=self.backend,
            WHARF_TEST_OUT_DIR=str(self.out),
            PYTHONPATH=os.pathsep.join([str(APP_DIR), env.get("PYTHONPATH", "")]),
        )
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "celery", "-A", "celery_tasks", "worker",
                "-P", pool, "-c", "1", "-n", f"{name}@%h", "--loglevel=INFO", *args,
                cwd=str(self.tmp),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: prefork children too
            )  # fmt: skip
        worker = Worker(name, proc, log)
        try:
            await wait_until(
                lambda: self.consuming(worker),
                timeout=WORKER_START_S,
                what=f"worker {name} consuming",
            )
            yield worker
        finally:
            await stop(worker)

    async def consuming(self, worker: Worker) -> bool:
        if worker.proc.returncode is not None:
            raise AssertionError(f"worker {worker.name} exited:\n{worker.output()}")
        queues = await asyncio.to_thread(api, self.broker, "queues")
        return any(q["name"] == TASK_QUEUE and q["consumers"] for q in queues)


async def stop(worker: Worker) -> None:
    proc = worker.proc
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), WORKER_STOP_S)
        except TimeoutError:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # what is left of its group
    await proc.wait()


def api(broker: Broker, path: str) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{broker.http_port}/api/{path}",
        headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()},
    )
    with urllib.request.urlopen(request, timeout=RESULT_TIMEOUT_S) as response:
        return json.loads(response.read())


def make_env(broker: Broker, tmp_path: Path, backend: str) -> CeleryEnv:
    out = tmp_path / "out"
    out.mkdir()
    url = f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}//"
    return CeleryEnv(broker, url, backend, out, tmp_path)


@pytest.fixture
def celery_rpc(broker: Broker, tmp_path: Path) -> CeleryEnv:
    return make_env(broker, tmp_path, "rpc://")


class Client:
    """A Celery client app used from one thread of its own: Celery keeps the result
    backend (and the rpc:// backend its connection) per thread, and the Celery client
    blocks, so it cannot run in the broker's event loop."""

    def __init__(self, env: CeleryEnv) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-client")
        self._env = env
        self.app: Celery | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args))

    async def call(self, fn: Callable[[Celery], T]) -> T:
        assert self.app is not None
        return await self.run(fn, self.app)

    async def __aenter__(self) -> Client:
        self.app = await self.run(self._env.client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.app is not None:
            await self.run(close_client, self.app)
        self._thread.shutdown()


def close_client(app: Celery) -> None:
    # app.close() only forgets the connection pool: close every connection, so that none
    # is left for the broker's stop to wait on.
    consumer = getattr(app.backend, "result_consumer", None)
    if consumer is not None:
        # The rpc:// backend's result consumer; stop() fails harmlessly if it never started.
        with contextlib.suppress(Exception):
            consumer.stop()
    app.pool.force_close_all()
    app.close()


async def test_round_trip_rpc_backend_prefork(celery_rpc: CeleryEnv) -> None:
    def scenario(app: Celery) -> None:
        result = app.send_task("wharf_test.add", (2, 3))
        assert result.get(timeout=RESULT_TIMEOUT_S) == 5
        results = group(app.signature("wharf_test.add", (i, i)) for i in range(5))()
        assert results.get(timeout=RESULT_TIMEOUT_S) == [0, 2, 4, 6, 8]
        pong = app.control.inspect(timeout=2).ping()
        assert pong == {f"prefork@{os.uname().nodename}": {"ok": "pong"}}

    async with celery_rpc.worker("prefork", pool="prefork"), Client(celery_rpc) as client:
        await client.call(scenario)


async def test_group_and_chord_file_backend(broker: Broker, tmp_path: Path) -> None:
    """A chord needs a result backend that keeps results (rpc:// refuses chords): the
    filesystem one needs no server.  Its chord_unlock task polls with countdown retries."""
    results = tmp_path / "results"
    results.mkdir()
    env = make_env(broker, tmp_path, f"file://{results}")

    def scenario(app: Celery) -> None:
        header = [app.signature("wharf_test.add", (i, i)) for i in range(4)]
        result = chord(header)(app.signature("wharf_test.total"))
        assert result.get(timeout=RESULT_TIMEOUT_S) == 12

    async with env.worker("chord"), Client(env) as client:
        await client.call(scenario)


async def test_retry_with_countdown(celery_rpc: CeleryEnv) -> None:
    countdown = 0.5

    def scenario(app: Celery) -> None:
        result = app.send_task("wharf_test.flaky", ("f", countdown))
        assert result.get(timeout=RESULT_TIMEOUT_S) == 2

    async with celery_rpc.worker("retry"), Client(celery_rpc) as client:
        await client.call(scenario)
    starts = [float((celery_rpc.out / f"f.try{n}").read_text()) for n in range(3)]
    # Each retry ran after its countdown (the worker holds it unacked until then).
    assert all(later - earlier >= countdown * 0.9 for earlier, later in itertools_pairs(starts))


def itertools_pairs(values: list[float]) -> list[tuple[float, float]]:
    return list(zip(values, values[1:], strict=False))


async def test_acks_late_task_redelivered_after_worker_sigkill(celery_rpc: CeleryEnv) -> None:
    """acks_late: the task is acked when it finishes; a worker killed mid-task leaves it
    unacked, the broker requeues it when the connection drops, and the next worker
    runs it (redelivered) to the end."""
    out = celery_rpc.out
    async with Client(celery_rpc) as client:
        async with celery_rpc.worker("first") as first:
            result = await client.call(lambda app: app.send_task("wharf_test.hold", ("job",)))
            started = out / f"job.started.{first.pid}"
            await wait_until(started.exists, timeout=RESULT_TIMEOUT_S, what="job started")
            assert json.loads(started.read_text()) == {"redelivered": False}
            first.proc.send_signal(signal.SIGKILL)
            await first.proc.wait()
        await wait_until(
            lambda: ready_in_queue(celery_rpc.broker), what="the task back in its queue"
        )
        (out / "job.release").touch()
        async with celery_rpc.worker("second") as second:
            pid = await client.run(result.get, RESULT_TIMEOUT_S)
            assert pid == second.pid
            again = out / f"job.started.{second.pid}"
            assert json.loads(again.read_text()) == {"redelivered": True}
            assert (out / "job.done").read_text() == str(second.pid)


async def ready_in_queue(broker: Broker) -> bool:
    queues = await asyncio.to_thread(api, broker, "queues")
    return any(q["name"] == TASK_QUEUE and q["messages_ready"] == 1 for q in queues)


async def test_tasks_held_for_a_countdown_do_not_stall_the_worker(
    celery_rpc: CeleryEnv,
) -> None:
    """A worker with prefetch 1 that holds a task for its countdown raises its prefetch
    with basic.qos (global=false, as Celery sends it to a broker that is not RabbitMQ);
    the next task runs at once, not after the countdown."""

    def scenario(app: Celery) -> None:
        app.send_task("wharf_test.add", (0, 0), countdown=120)
        assert app.send_task("wharf_test.add", (1, 1)).get(timeout=RESULT_TIMEOUT_S) == 2

    async with celery_rpc.worker("eta", "--prefetch-multiplier", "1"), Client(celery_rpc) as client:
        await client.call(scenario)
