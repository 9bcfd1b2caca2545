"""``python -m benchmarks soak``: the whole persistent publish/consume/ack cycle, for hours.

One broker subprocess (``wharf serve``, default settings unless overridden), one durable
queue, ``--publishers`` processes that ``publish_many`` persistent messages in a loop and
one consumer process that acks each message as it arrives and, every ``--lag-every``
seconds, stops for ``--lag`` seconds so the queue grows past its memory budget and pages
to disk.  Segment rolls, deletions, compaction and paging all happen along the way.

Every ``--sample`` seconds the parent records: messages/s published and consumed, the
queue's depth, the broker's RSS, the bytes under its data directory, its open fds
(``/proc/<pid>/fd``), ``wharf_store_failed`` and the publish errors so far.  At the end it
writes the samples and a summary as JSON (``<out>.json``) and, when matplotlib is
installed (``pip install -e '.[bench]'``), a plot of throughput, RSS, disk and fds over
time (``<out>``, default ``docs/soak.png``).  The summary also goes to stdout.  Exit code
1 if any publish failed or the store failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import tempfile
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as EventT
from pathlib import Path
from typing import Any, Final

import wharf
from benchmarks.perf.common import (
    broker_command,
    emit,
    free_port,
    http_get,
    log,
    port_open,
    rss_bytes,
    run_async,
)

QUEUE: Final = "soak"
DEFAULT_MESSAGES: Final = 20_000_000
DEFAULT_OUT: Final = Path("docs/soak.png")
BODY_BYTES: Final = 200
BATCH: Final = 20
PREFETCH: Final = 1000
READY_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 60.0
# After publishing ends, how long the consumer may take to catch up.
DRAIN_TIMEOUT_S: Final = 600.0
POLL_S: Final = 0.1
# The consumer reports its count every 100 messages and at least this often.
REPORT_EVERY_S: Final = 0.5
MIB: Final = 1024 * 1024
# Broker settings the command line may override, as WHARF_* environment variables.
OVERRIDES: Final = (
    ("segment_bytes", "WHARF_SEGMENT_BYTES"),
    ("queue_memory_budget_bytes", "WHARF_QUEUE_MEMORY_BUDGET_BYTES"),
    ("fsync_interval_ms", "WHARF_FSYNC_INTERVAL_MS"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks soak", description=__doc__)
    p.add_argument("--messages", type=int, default=DEFAULT_MESSAGES, help="messages in all")
    p.add_argument("--duration", type=float, help="seconds of publishing (instead of a count)")
    p.add_argument("--publishers", type=int, default=3, help="publisher processes")
    p.add_argument("--batch", type=int, default=BATCH, help="messages per publish_many")
    p.add_argument("--size", type=int, default=BODY_BYTES, help="body bytes")
    p.add_argument("--lag-every", type=float, default=60.0, help="seconds between pauses")
    p.add_argument("--lag", type=float, default=10.0, help="seconds the consumer pauses")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG plot; JSON beside it")
    p.add_argument("--work-dir", type=Path, help="data dir and broker log (default: a temp dir)")
    for name, _ in OVERRIDES:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"broker {name}")
    return p


# -- worker processes ----------------------------------------------------------------------


def publisher_main(
    url: str,
    count: int,
    batch: int,
    size: int,
    stop: EventT,
    published: Synchronized[int],
    errors: Synchronized[int],
    first_error: mp.Queue[str],
) -> None:
    run_async(_publish(url, count, batch, size, stop, published, errors, first_error))


async def _publish(
    url: str,
    count: int,
    batch: int,
    size: int,
    stop: EventT,
    published: Synchronized[int],
    errors: Synchronized[int],
    first_error: mp.Queue[str],
) -> None:
    conn = await wharf.connect(url)
    bodies = [b"s" * size] * batch
    sent = 0
    try:
        while sent < count and not stop.is_set():
            n = min(batch, count - sent)
            try:
                await conn.publish_many("", QUEUE, bodies[:n], persistent=True)
            except wharf.WharfError as exc:
                with errors.get_lock():
                    errors.value += n
                if first_error.empty():
                    first_error.put(repr(exc))
            else:
                with published.get_lock():
                    published.value += n
            sent += n
    finally:
        await conn.close()


def consumer_main(
    url: str,
    lag_every_s: float,
    lag_s: float,
    done: EventT,
    consumed: Synchronized[int],
) -> None:
    run_async(_consume(url, lag_every_s, lag_s, done, consumed))


async def _consume(
    url: str, lag_every_s: float, lag_s: float, done: EventT, consumed: Synchronized[int]
) -> None:
    conn = await wharf.connect(url)
    n = 0
    reported = 0

    def report() -> None:
        nonlocal reported
        with consumed.get_lock():
            consumed.value += n - reported
        reported = n

    async def take() -> None:
        nonlocal n
        next_lag = time.monotonic() + lag_every_s
        async with conn.consume(QUEUE, prefetch=PREFETCH) as messages:
            async for msg in messages:
                await msg.ack()
                n += 1
                if n % 100 == 0:
                    report()
                    if lag_s > 0 and time.monotonic() >= next_lag:
                        # A consumer falling behind: the queue grows and pages to disk.
                        await asyncio.sleep(lag_s)
                        next_lag = time.monotonic() + lag_every_s

    async def report_stragglers() -> None:
        # The last messages of a run (fewer than 100) are counted too.
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            report()

    taking = asyncio.create_task(take())
    reporting = asyncio.create_task(report_stragglers())
    stopping = asyncio.create_task(asyncio.to_thread(done.wait))
    try:
        await asyncio.wait((taking, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        taking.cancel()
        reporting.cancel()
        with contextlib.suppress(asyncio.CancelledError, wharf.WharfError):
            await taking
        with contextlib.suppress(asyncio.CancelledError):
            await reporting
        report()
        await conn.close()
        done.set()
        await stopping


# -- the parent: broker, workers, samples --------------------------------------------------


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue  # deleted while walking
    return total


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def scrape(http_url: str) -> dict[str, float]:
    """The few metrics a sample records (missing ones are absent)."""
    wanted = {
        f'wharf_queue_messages_ready{{queue="{QUEUE}",vhost="/"}}': "ready",
        "wharf_store_failed": "store_failed",
        "wharf_store_segments": "segments",
    }
    out: dict[str, float] = {}
    try:
        status, text = http_get(f"{http_url}/metrics")
    except OSError:
        return out
    if status != 200:
        return out
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key in wanted:
            out[wanted[key]] = float(value)
    return out


def start_broker(
    work: Path, env_overrides: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int, int]:
    """A ``wharf serve`` subprocess; returns it, its native port and its HTTP port."""
    port, http_port = free_port(), free_port()
    while http_port == port:
        http_port = free_port()
    cmd = broker_command(port, http_port, str(work / "data"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHARF_")}
    env.update(env_overrides)
    log(f"soak: starting broker {' '.join(cmd)} {env_overrides}")
    with open(work / "broker.log", "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"broker exited with {proc.returncode}; see {work / 'broker.log'}")
        try:
            status, _ = http_get(f"http://127.0.0.1:{http_port}/readyz", timeout_s=1.0)
        except OSError:
            status = 0
        if status == 200 and port_open("127.0.0.1", port):
            return proc, port, http_port
        time.sleep(POLL_S)
    proc.kill()
    raise SystemExit("broker not ready in time")


def stop_broker(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


async def declare(url: str) -> None:
    conn = await wharf.connect(url)
    try:
        await conn.declare_queue(QUEUE, durable=True)
    finally:
        await conn.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {
        env: str(getattr(args, name)) for name, env in OVERRIDES if getattr(args, name) is not None
    }
    temp = args.work_dir is None
    work: Path = args.work_dir or Path(tempfile.mkdtemp(prefix="wharf-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    proc, port, http_port = start_broker(work, overrides)
    http_url = f"http://127.0.0.1:{http_port}"
    url = f"wharf://guest:guest@127.0.0.1:{port}"
    run_async(declare(url))
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    done = ctx.Event()
    published = ctx.Value("q", 0)
    consumed = ctx.Value("q", 0)
    errors = ctx.Value("q", 0)
    first_error: mp.Queue[str] = ctx.Queue()
    per = args.messages // args.publishers if args.duration is None else 1 << 62
    pubs = [
        ctx.Process(
            target=publisher_main,
            args=(url, per, args.batch, args.size, stop, published, errors, first_error),
            name=f"soak-publisher-{i}",
        )
        for i in range(args.publishers)
    ]
    cons = ctx.Process(
        target=consumer_main, args=(url, args.lag_every, args.lag, done, consumed), name="soak-c"
    )
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    cons.start()
    for p in pubs:
        p.start()
    last = (started, 0, 0)
    next_sample = started + args.sample
    publishing_done_at: float | None = None
    finished_at: float | None = None
    try:
        while True:
            time.sleep(POLL_S)
            now = time.monotonic()
            if args.duration is not None and now - started >= args.duration:
                stop.set()
            if publishing_done_at is None and not any(p.is_alive() for p in pubs):
                publishing_done_at = now
                log(f"soak: publishing done after {now - started:.0f} s")
            if now >= next_sample:
                next_sample += args.sample
                pub, con = published.value, consumed.value
                dt = now - last[0]
                metrics = scrape(http_url)
                sample = {
                    "t_s": round(now - started, 1),
                    "published": pub,
                    "consumed": con,
                    "publish_msgs_s": round((pub - last[1]) / dt),
                    "consume_msgs_s": round((con - last[2]) / dt),
                    "queue_depth": pub - con,
                    "rss_mb": round(rss_bytes(proc.pid) / MIB, 1),
                    "disk_mb": round(dir_bytes(work / "data") / MIB, 1),
                    "open_fds": open_fds(proc.pid),
                    "publish_errors": errors.value,
                    **metrics,
                }
                samples.append(sample)
                last = (now, pub, con)
                log(
                    f"soak: {sample['t_s']:.0f} s pub {pub} ({sample['publish_msgs_s']}/s) "
                    f"con {con} ({sample['consume_msgs_s']}/s) rss {sample['rss_mb']} MB "
                    f"disk {sample['disk_mb']} MB fds {sample['open_fds']} "
                    f"errors {errors.value}"
                )
            if proc.poll() is not None:
                log("soak: the broker died")
                break
            if publishing_done_at is not None and consumed.value >= published.value:
                finished_at = now
                break
            if publishing_done_at is not None and now - publishing_done_at > DRAIN_TIMEOUT_S:
                log("soak: the consumer did not catch up in time")
                break
    finally:
        stop.set()
        done.set()
        for p in pubs:
            p.join(STOP_TIMEOUT_S)
        cons.join(STOP_TIMEOUT_S)
        if cons.is_alive():
            cons.terminate()
        elapsed = (finished_at or time.monotonic()) - started
        final_disk = dir_bytes(work / "data")
        final_metrics = scrape(http_url)
        code = stop_broker(proc)
    errors_text = None if first_error.empty() else first_error.get()
    summary = {
        "scenario": "soak",
        "settings": overrides or "defaults",
        "publishers": args.publishers,
        "batch": args.batch,
        "size": args.size,
        "published": published.value,
        "consumed": consumed.value,
        "publish_errors": errors.value,
        "first_error": errors_text,
        "store_failed": final_metrics.get("store_failed"),
        "seconds": round(elapsed, 1),
        "mean_msgs_s": round(consumed.value / elapsed) if elapsed else None,
        "max_rss_mb": max((s["rss_mb"] for s in samples), default=None),
        "max_disk_mb": max((s["disk_mb"] for s in samples), default=None),
        "max_open_fds": max((s["open_fds"] for s in samples), default=None),
        "max_queue_depth": max((s["queue_depth"] for s in samples), default=None),
        "final_disk_mb": round(final_disk / MIB, 1),
        "broker_exit_code": code,
        "broker_log": str(work / "broker.log"),
    }
    write_results(args.out, summary, samples)
    if temp and not errors.value and code == 0:
        shutil.rmtree(work, ignore_errors=True)
        summary["broker_log"] = None
    return summary


def write_results(out: Path, summary: dict[str, Any], samples: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"summary": summary, "samples": samples}, indent=1) + "\n"
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("soak: matplotlib not installed (pip install -e '.[bench]'): no plot")
        return
    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(t, [s["publish_msgs_s"] for s in samples], label="published")
    axes[0].plot(t, [s["consume_msgs_s"] for s in samples], label="consumed (acked)")
    axes[0].set_ylabel("msg/s")
    axes[0].legend(loc="lower right")
    axes[1].plot(t, [s["rss_mb"] for s in samples], color="tab:red")
    axes[1].set_ylabel("broker RSS (MB)")
    axes[2].plot(t, [s["disk_mb"] for s in samples], color="tab:green", label="data dir")
    ax_q = axes[2].twinx()
    ax_q.plot(t, [s["queue_depth"] for s in samples], color="tab:gray", lw=0.8)
    ax_q.set_ylabel("queue depth (msgs)", color="tab:gray")
    axes[2].set_ylabel("disk (MB)")
    axes[3].plot(t, [s["open_fds"] for s in samples], color="tab:purple")
    axes[3].set_ylabel("broker open fds")
    axes[3].set_xlabel("minutes")
    fig.suptitle(
        f"Wharf soak: {summary['consumed']:,} persistent msgs, "
        f"{summary['publish_errors']} publish errors, settings {summary['settings']}"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    log(f"soak: wrote {out} and {out.with_suffix('.json')}")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    summary = run(args)
    emit(summary)
    failed = summary["publish_errors"] or summary["store_failed"] or summary["broker_exit_code"]
    return 1 if failed else 0
