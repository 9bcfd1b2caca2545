"""Segment rolls of log topics under a low open-file limit (issue 11, section 2).

``python -m benchmarks.log_rolls [--rolls 100000] [--topics 8] [--nofile 1024]``

Starts ``wharf serve`` with ``RLIMIT_NOFILE`` = ``--nofile`` (as ``ulimit -n``), creates
``--topics`` one-partition topics with ``segment_bytes`` = 1024 and produces
900-byte single-record batches round-robin over them, so every produce after a
topic's first rolls a segment, until ``--rolls`` rolls are done.  The broker's fd
count (``/proc/<pid>/fd``) is sampled during the run.  Then the broker is stopped
with SIGTERM and started again on the same directory (time to ready measured), and
every record is read back.  Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import wharf

WHARF_BIN: Final = Path(sys.executable).with_name("wharf")
SEGMENT_BYTES: Final = 1024
VALUE_BYTES: Final = 900
FD_SAMPLE_S: Final = 0.5
READY_TIMEOUT_S: Final = 600.0
PROBLEM_RE: Final = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|Too many open files")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, data_dir: Path, nofile: int, log_path: Path) -> None:
        self.data_dir = data_dir
        self.nofile = nofile
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"wharf://guest:guest@127.0.0.1:{self.port}"

    async def start(self) -> float:
        self.port, http_port = free_port(), free_port()
        nofile = self.nofile

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        env = {k: v for k, v in os.environ.items() if not k.startswith("WHARF_")}
        started = time.monotonic()
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - a benchmark driver, once
                [str(WHARF_BIN), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--amqp-port", "0", "--http-port", str(http_port),
                 "--data-dir", str(self.data_dir)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, preexec_fn=limit,
            )  # fmt: skip
        deadline = started + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"broker exited with {self.proc.returncode}; see {self.log_path}"
                )
            try:
                conn = await wharf.connect(self.url, timeout=5.0)
            except (wharf.WharfError, OSError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
                continue
            await conn.close()
            return time.monotonic() - started

    def fds(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(args.data_dir)
    data_dir = tmp / "data"
    log_path = tmp / "broker.log"
    broker = Broker(data_dir, args.nofile, log_path)
    await broker.start()
    names = [f"rolls{t}" for t in range(args.topics)]
    records = args.rolls + args.topics  # a topic's first record does not roll
    errors: list[str] = []
    fd_samples: list[int] = []
    done = 0
    conns = [await wharf.connect(broker.url) for _ in range(args.connections)]
    for name in names:
        await conns[0].create_topic(name, partitions=1, segment_bytes=SEGMENT_BYTES)
    value = b"." * VALUE_BYTES
    started = time.monotonic()

    async def sample() -> None:
        while True:
            fd_samples.append(broker.fds())
            await asyncio.sleep(FD_SAMPLE_S)

    async def produce(worker: int) -> None:
        nonlocal done
        conn = conns[worker % len(conns)]
        for i in range(worker, records, args.concurrency):
            try:
                await conn.produce_many(names[i % len(names)], [value], partition=0, acks=args.acks)
            except wharf.WharfError as exc:
                errors.append(repr(exc))
            done += 1
            if done % 10_000 == 0:
                print(f"{done} records, {broker.fds()} fds", file=sys.stderr)

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(produce(w) for w in range(args.concurrency)))
    produce_s = time.monotonic() - started
    segments = 0
    for name in names:
        info = await conns[0].describe_topic(name)
        segments += info["offsets"][0]["segments"]
    fd_samples.append(broker.fds())
    sampler.cancel()
    for c in conns:
        await c.close()
    exit_code = broker.stop()
    restart_s = await broker.start()
    fds_after_start = broker.fds()
    conn = await wharf.connect(broker.url)
    read_back = 0
    read_started = time.monotonic()
    for name in names:
        earliest, latest = await conn.list_offsets(name, 0)
        offset = earliest
        while offset < latest:
            recs = await conn.fetch(name, 0, offset, max_bytes=4 << 20)
            read_back += len(recs)
            offset = recs[-1].offset + 1
    read_s = time.monotonic() - read_started
    fds_after_read = broker.fds()
    await conn.close()
    second_exit = broker.stop()
    problems = [
        ln for ln in log_path.read_text(errors="replace").splitlines() if PROBLEM_RE.search(ln)
    ]
    return {
        "rolls_requested": args.rolls,
        "records_produced": records,
        "segments_at_end": segments,
        "topics": args.topics,
        "acks": args.acks,
        "nofile": args.nofile,
        "produce_errors": len(errors),
        "first_errors": errors[:5],
        "produce_s": round(produce_s, 1),
        "rolls_per_s": round(args.rolls / produce_s),
        "broker_fds_max": max(fd_samples),
        "broker_fds_median": sorted(fd_samples)[len(fd_samples) // 2],
        "sigterm_exit_code": exit_code,
        "restart_to_ready_s": round(restart_s, 2),
        "broker_fds_after_restart": fds_after_start,
        "records_read_back": read_back,
        "read_back_s": round(read_s, 1),
        "broker_fds_after_read_back": fds_after_read,
        "second_exit_code": second_exit,
        "broker_log_problems": len(problems),
        "first_log_problems": problems[:5],
        "data_dir": str(data_dir),
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.log_rolls", description=__doc__)
    p.add_argument("--rolls", type=int, default=100_000)
    p.add_argument("--topics", type=int, default=8)
    p.add_argument("--nofile", type=int, default=1024)
    p.add_argument("--acks", default="written", choices=("none", "written", "fsynced"))
    p.add_argument("--concurrency", type=int, default=32, help="produce calls in flight")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--data-dir", help="parent of the data dir (default: a new temp dir)")
    args = p.parse_args()
    args.data_dir = args.data_dir or tempfile.mkdtemp(prefix="wharf-rolls-")
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
