"""``python -m benchmarks aiopika`` and ``python -m benchmarks celery``: everyday AMQP client
code against RabbitMQ and against Wharf's AMQP 0-9-1 listener, side by side (issue 14's
client targets).

The client code is the same on both brokers, run with this venv's aio-pika and Celery.
RabbitMQ is the one on 127.0.0.1:5672 (guest/guest, vhost /); Wharf is started fresh for
every measurement (``wharf serve`` on free ports with ``--amqp-port`` on a free port and a
temporary data directory).  Broker, producer and consumer (or worker) are separate
processes.  Every run measures both brokers, the order flipping from run to run; the
headline is the median of the per-run ratios, oriented so that > 1 means Wharf is better.

``aiopika``: a consumer process declares a durable queue (a fresh name per measurement),
sets prefetch ``--prefetch`` and runs ``async for message in queue.iterator(): async with
message.process():`` (one basic.ack per message); once it consumes, a producer process
opens a channel with publisher confirms and publishes ``--count`` persistent messages as
``asyncio.gather`` of ``default_exchange.publish`` futures, ``--batch`` at a time.
Figure: end-to-end msg/s, count / (first publish to last message processed); ratio
Wharf / RabbitMQ.

``celery``: a Celery app without a result backend (``benchmarks/celery_app.py``), one
worker process ``celery worker -P solo -c 1`` (the solo pool runs the tasks in the worker
process; prefetch multiplier 4 and early acks, Celery's defaults), ``--count`` no-op
tasks sent with ``delay`` in a loop from a separate process (py-amqp, Celery's defaults:
persistent messages on a durable queue, no publisher confirms).  The worker counts the
tasks it ran and stamps the time of the last one.
Figure: wall time from the first ``delay`` to the last task done; ratio RabbitMQ / Wharf.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any, Final

from benchmarks.amqp import _beam_pid, _cpu_s
from benchmarks.compare import RABBIT_HOST, RABBIT_PORT, _median, _ratio
from benchmarks.perf.common import emit, free_port, local_broker, log, port_open, unique_name

from . import celery_app

RABBIT_URL: Final = f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}/"
AMQP_READY_TIMEOUT_S: Final = 10.0
POLL_S: Final = 0.05
DEFAULT_TIMEOUT_S: Final = 300.0
# A Celery worker's start-up (imports, connection, consumer) on a loaded machine.
WORKER_START_TIMEOUT_S: Final = 60.0
WORKER_STOP_TIMEOUT_S: Final = 15.0
BODY_SIZE: Final = 100


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextmanager
def _broker(name: str) -> Iterator[tuple[str, int | None]]:
    """(AMQP URL, broker pid) of RabbitMQ, or of a fresh Wharf stopped afterwards."""
    if name == "rabbitmq":
        yield RABBIT_URL, _beam_pid()
        return
    amqp_port = free_port()
    with local_broker(["--amqp-port", str(amqp_port)]) as target:
        deadline = time.monotonic() + AMQP_READY_TIMEOUT_S
        while not port_open(RABBIT_HOST, amqp_port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Wharf's AMQP port {amqp_port} did not open")
            time.sleep(POLL_S)
        yield f"amqp://guest:guest@{RABBIT_HOST}:{amqp_port}/", target.pid


# -- aio-pika --------------------------------------------------------------------------------


def _aiopika_consumer(
    url: str, queue: str, count: int, prefetch: int, ready: MpEvent, out: Any
) -> None:
    import aio_pika

    async def main() -> dict[str, Any]:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=prefetch)
            q = await channel.declare_queue(queue, durable=True)
            done = 0
            first_ns = 0
            async with q.iterator() as messages:
                ready.set()
                async for message in messages:
                    async with message.process():
                        if not done:
                            first_ns = time.time_ns()
                        done += 1
                    if done == count:
                        break
            last_ns = time.time_ns()
            await q.delete(if_unused=False, if_empty=False)
            return {"consumed": done, "first_consume_ns": first_ns, "last_consume_ns": last_ns}

    try:
        out.put(("consumer", asyncio.run(main())))
    except Exception as exc:  # reported in the result
        out.put(("consumer", {"error": repr(exc)}))


def _aiopika_producer(url: str, queue: str, count: int, batch: int, out: Any) -> None:
    import aio_pika

    async def main() -> dict[str, Any]:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            body = b"x" * BODY_SIZE
            exchange = channel.default_exchange
            start_ns = time.time_ns()
            for first in range(0, count, batch):
                await asyncio.gather(
                    *(
                        exchange.publish(
                            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                            routing_key=queue,
                        )
                        for _ in range(min(batch, count - first))
                    )
                )
            confirmed_ns = time.time_ns()
            return {"first_publish_ns": start_ns, "last_confirm_ns": confirmed_ns}

    try:
        out.put(("producer", asyncio.run(main())))
    except Exception as exc:  # reported in the result
        out.put(("producer", {"error": repr(exc)}))


def aiopika_once(
    url: str, count: int, batch: int, prefetch: int, timeout_s: float
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = unique_name("bench_aiopika")
    ready = ctx.Event()
    out = ctx.Queue()
    consumer = ctx.Process(target=_aiopika_consumer, args=(url, queue, count, prefetch, ready, out))
    consumer.start()
    procs = [consumer]
    try:
        if not ready.wait(timeout_s):
            return {"error": "the consumer did not start consuming"}
        producer = ctx.Process(target=_aiopika_producer, args=(url, queue, count, batch, out))
        producer.start()
        procs.append(producer)
        results: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while len(results) < len(procs):
            left = deadline - time.monotonic()
            if left <= 0:
                return {"error": f"timed out; have {sorted(results)}"}
            try:
                kind, res = out.get(timeout=min(left, 1.0))
            except Exception:  # queue.Empty
                if not any(p.is_alive() for p in procs) and out.empty():
                    return {"error": f"processes exited; have {results}"}
                continue
            results[kind] = res
        errors = {k: r["error"] for k, r in results.items() if "error" in r}
        if errors:
            return {"error": errors}
        prod, cons = results["producer"], results["consumer"]
        start, confirmed = prod["first_publish_ns"], prod["last_confirm_ns"]
        end = cons["last_consume_ns"]
        return {
            "consumed": cons["consumed"],
            "confirmed_msgs_s": round(count / ((confirmed - start) / 1e9)),
            "end_to_end_msgs_s": round(count / ((end - start) / 1e9)),
            "seconds": round((end - start) / 1e9, 3),
        }
    finally:
        for p in procs:
            p.join(5.0)
            if p.is_alive():
                p.kill()
                p.join()


# -- Celery ----------------------------------------------------------------------------------


def _celery_sender(url: str, queue: str, count: int, out: Any) -> None:
    os.environ[celery_app.BROKER_URL_ENV] = url
    os.environ[celery_app.QUEUE_ENV] = queue
    try:
        app = celery_app.app
        app.conf.broker_url = url
        app.conf.task_default_queue = queue
        noop = celery_app.noop
        first_ns = time.time_ns()
        for i in range(count):
            noop.delay(i)
        sent_ns = time.time_ns()
        out.put({"first_send_ns": first_ns, "last_send_ns": sent_ns})
    except Exception as exc:  # reported in the result
        out.put({"error": repr(exc)})


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        if text:
            return int(text)
        if proc.poll() is not None:
            return None
        time.sleep(POLL_S)
    return None


def celery_once(url: str, count: int, prefetch_multiplier: int, timeout_s: float) -> dict[str, Any]:
    queue = unique_name("bench_celery")
    with tempfile.TemporaryDirectory(prefix="wharf-bench-celery-") as tmp:
        ready_file, done_file = Path(tmp) / "ready", Path(tmp) / "done"
        log_path = Path(tmp) / "worker.log"
        env = {
            **os.environ,
            celery_app.BROKER_URL_ENV: url,
            celery_app.QUEUE_ENV: queue,
            celery_app.COUNT_ENV: str(count),
            celery_app.READY_FILE_ENV: str(ready_file),
            celery_app.DONE_FILE_ENV: str(done_file),
        }
        cmd = [
            sys.executable, "-m", "celery", "-A", "benchmarks.celery_app", "worker",
            "-P", "solo", "-c", "1", "--prefetch-multiplier", str(prefetch_multiplier),
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-Q", queue, "--loglevel", "WARNING",
        ]  # fmt: skip
        with log_path.open("wb") as log_file:
            worker = subprocess.Popen(
                cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            if _wait_file(ready_file, worker, WORKER_START_TIMEOUT_S) is None:
                return {"error": f"worker not ready: {log_path.read_text()[-800:]}"}
            ctx = mp.get_context("spawn")
            out = ctx.Queue()
            sender = ctx.Process(target=_celery_sender, args=(url, queue, count, out))
            sender.start()
            try:
                sent: dict[str, Any] = out.get(timeout=timeout_s)
            except Exception:  # queue.Empty
                return {"error": "the sender did not finish"}
            finally:
                sender.join(5.0)
                if sender.is_alive():
                    sender.kill()
            if "error" in sent:
                return sent
            done_ns = _wait_file(done_file, worker, timeout_s)
            if done_ns is None:
                return {"error": f"tasks not all done: {log_path.read_text()[-800:]}"}
            start = sent["first_send_ns"]
            # The worker's CPU seconds against the wall time: near 1 s per second means the
            # worker, not the broker, set the pace.
            worker_cpu = _cpu_s(worker.pid)
            return {
                "worker_cpu_s": worker_cpu,
                "wall_s": round((done_ns - start) / 1e9, 3),
                "send_s": round((sent["last_send_ns"] - start) / 1e9, 3),
                "tasks_s": round(count / ((done_ns - start) / 1e9)),
            }
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(WORKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            _delete_queue(url, queue)


def _delete_queue(url: str, queue: str) -> None:
    """Celery leaves its durable queue behind (RabbitMQ would keep it across runs)."""
    from kombu import Connection

    try:
        with Connection(url) as conn:
            conn.default_channel.queue_delete(queue)
    except Exception as exc:  # the figure does not depend on it
        log(f"could not delete {queue}: {exc!r}")


# -- side by side ----------------------------------------------------------------------------


def side_by_side(
    scenario: str,
    runs: int,
    measure: Callable[[str], dict[str, Any]],
    ratio: Callable[[dict[str, Any], dict[str, Any]], float | None],
    figures: tuple[str, ...],
    settings: dict[str, Any],
) -> dict[str, Any]:
    rabbit_ok = port_open(RABBIT_HOST, RABBIT_PORT)
    out: dict[str, Any] = {
        "scenario": scenario,
        **settings,
        "runs": runs,
        "rabbitmq": f"{RABBIT_HOST}:{RABBIT_PORT}" if rabbit_ok else "not reachable",
        "load_before": _load(),
    }
    rows: list[dict[str, Any]] = []
    for i in range(runs):
        row: dict[str, Any] = {"run": i + 1, "load_before": _load()}
        order = ["rabbitmq", "wharf"] if rabbit_ok else ["wharf"]
        if i % 2:
            order.reverse()
        for name in order:
            log(f"{scenario} run {i + 1}/{runs}: {name}")
            try:
                with _broker(name) as (url, pid):
                    cpu_before = _cpu_s(pid)
                    row[name] = measure(url)
                    cpu_after = _cpu_s(pid)
            except Exception as exc:  # one failed measurement does not end the run
                row[name] = {"error": repr(exc)}
                cpu_before = cpu_after = None
            if cpu_before is not None and cpu_after is not None:
                row[name]["broker_cpu_s"] = round(cpu_after - cpu_before, 2)
            log(f"{scenario} run {i + 1}/{runs}: {name}: {row[name]}")
        row["ratio"] = ratio(row.get("wharf") or {}, row.get("rabbitmq") or {})
        rows.append(row)
    out["per_run"] = rows
    for name in ("rabbitmq", "wharf"):
        out[f"median_{name}"] = {
            k: _median([(r.get(name) or {}).get(k) for r in rows]) for k in figures
        }
    out["per_run_ratios"] = [r["ratio"] for r in rows]
    out["median_ratio"] = _median([r["ratio"] for r in rows])
    out["load_after"] = _load()
    return out


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def aiopika_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks aiopika",
        description="aio-pika natural code (confirmed publishes gathered, async for + ack) "
        "on RabbitMQ and on Wharf",
    )
    parser.add_argument("--runs", type=_positive, default=3)
    parser.add_argument("--count", type=_positive, default=20_000)
    parser.add_argument("--batch", type=_positive, default=1000, help="publishes per gather")
    parser.add_argument("--prefetch", type=_positive, default=100)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    args = parser.parse_args(argv)
    result = side_by_side(
        "aiopika",
        args.runs,
        lambda url: aiopika_once(url, args.count, args.batch, args.prefetch, args.timeout),
        lambda w, r: _ratio(w.get("end_to_end_msgs_s"), r.get("end_to_end_msgs_s")),
        ("end_to_end_msgs_s", "confirmed_msgs_s", "broker_cpu_s"),
        {
            "count": args.count,
            "size": BODY_SIZE,
            "batch": args.batch,
            "prefetch": args.prefetch,
            "ratio": "wharf / rabbitmq end-to-end msg/s",
        },
    )
    result["target_wharf_ge_rabbitmq"] = (
        None if result["median_ratio"] is None else result["median_ratio"] >= 1.0
    )
    emit(result)
    return 0 if all("error" not in (r.get("wharf") or {}) for r in result["per_run"]) else 1


def celery_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks celery",
        description="10,000 no-op Celery tasks through RabbitMQ and through Wharf",
    )
    parser.add_argument("--runs", type=_positive, default=3)
    parser.add_argument("--count", type=_positive, default=10_000)
    parser.add_argument("--prefetch-multiplier", type=_positive, default=4)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    args = parser.parse_args(argv)
    result = side_by_side(
        "celery",
        args.runs,
        lambda url: celery_once(url, args.count, args.prefetch_multiplier, args.timeout),
        lambda w, r: _ratio(r.get("wall_s"), w.get("wall_s")),
        ("wall_s", "send_s", "tasks_s", "broker_cpu_s", "worker_cpu_s"),
        {
            "count": args.count,
            "worker": "celery worker -P solo -c 1 (one process)",
            "prefetch_multiplier": args.prefetch_multiplier,
            "result_backend": None,
            "ratio": "rabbitmq wall_s / wharf wall_s",
        },
    )
    result["target_wharf_le_rabbitmq"] = (
        None if result["median_ratio"] is None else result["median_ratio"] >= 1.0
    )
    emit(result)
    return 0 if all("error" not in (r.get("wharf") or {}) for r in result["per_run"]) else 1
