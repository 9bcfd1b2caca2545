"""Crash-test helpers: a ``wharf serve`` subprocess, kill -9, simulated power loss, and
the crash loop shared by ``test_crash.py``, ``test_power_loss.py`` and
``benchmarks/crashloop.py``.

The crash loop, one cycle: start the broker on the data directory left by the previous
cycle (with a default or a tiny per-queue memory budget, so recovery of paged long
queues is crashed too), connect publishers and one consumer per queue (some cycles
leave a queue without one, so backlogs survive several crashes), let them run for a
random 0.2-1.5 s (seeded), then ``kill -9`` the broker; some cycles stop it with
SIGTERM under full load instead (it must exit 0), and some are preceded by a broker
killed while still starting.  With power loss on, every stop is followed by cutting
the segments back to what was fsynced.  A ``Ledger`` records what the clients saw:
every message sent, confirmed (``publish_many`` returned) and delivered.  The last
cycle only publishes; a final drain then takes everything out and the run is judged:
nothing confirmed was lost, nothing was invented, and messages of one publisher are
first delivered in publish order.

Power loss: a broker started with ``WHARF_TEST_SYNC_LOG=<file>`` appends
``"<segment path> <fsynced length>"`` to the file after every fsync of a segment (the
hook lives in ``wharf.broker.store.fsio``, the one fault point every durable writer goes through).
After a kill, ``simulate_power_loss`` truncates each segment to the last length
logged for it and deletes segments never logged (never fsynced).  Then it rewrites
the log to the lengths that now exist, so a later cycle that creates a segment with a
reused path is not judged by a line about the old file.  (Not simulated: a deleted
segment coming back because its unlink was not yet on disk; that could only bring
back settled messages, never lose one.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import wharf

WHARF_BIN: Final = Path(sys.executable).with_name("wharf")
# ``wharf`` with module constants set first (BrokerProcess's ``constants``).
CONSTANTS_PRELUDE: Final = """
import importlib, json, sys
for target, value in json.loads(sys.argv.pop(1)).items():
    module, _, name = target.rpartition(".")
    setattr(importlib.import_module(module), name, value)
from wharf.broker.cli.main import main
sys.argv[0] = "wharf"
sys.exit(main())
"""
HTTP_TIMEOUT_S: Final = 30.0
# Budget for a broker to start (recovery included) and open its native port.
START_TIMEOUT_S: Final = 30.0
# A broker that found a freshly picked port taken meanwhile is started again on others.
PORT_ATTEMPTS: Final = 3
PORT_TAKEN: Final = "Address already in use"
# Passed as WHARF_SHUTDOWN_TIMEOUT_S; a SIGTERM exit must come within it plus slack.
SHUTDOWN_TIMEOUT_S: Final = 3.0
EXIT_SLACK_S: Final = 10.0
# Between two readiness probes (polling, not synchronisation: nothing to wait on).
READY_POLL_S: Final = 0.02
# After kill -9, every client task must notice the lost connection within this.
CLIENT_EXIT_TIMEOUT_S: Final = 15.0
# Budget for draining every queue at the end of a crash run.
DRAIN_TIMEOUT_S: Final = 60.0
# One crash cycle (start, run, kill, reap) and one whole restart test.  pytest-timeout
# cannot interrupt a test blocked in uvloop (its SIGALRM handler's exception is lost in
# a loop callback), so every await here runs under an asyncio budget of its own.
CYCLE_TIMEOUT_S: Final = 60.0
# pytest-timeout's backstop for a whole crash loop: start-up, the drain, and a cycle a few
# times as long as an idle machine's (~3 s) for each cycle.
LOOP_TIMEOUT_BASE_S: Final = 120.0
LOOP_TIMEOUT_PER_CYCLE_S: Final = 20.0
TEST_BUDGET_S: Final = 60.0
# The smallest segment the broker accepts: small segments make rolls and deletions
# of settled segments happen within a few cycles.
SMALL_SEGMENT_BYTES: Final = 1024 * 1024

LOG_PROBLEM_RE: Final = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b")
TORN_TAIL_RE: Final = re.compile(r"message store: .* truncated (\d+) bytes")


def free_port() -> int:
    """A port that was free a moment ago (the broker cannot report a port-0 choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment minus WHARF_* settings (a developer's
    WHARF_FSYNC_INTERVAL_MS would void every durability claim), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHARF_")}
    env["WHARF_SHUTDOWN_TIMEOUT_S"] = str(SHUTDOWN_TIMEOUT_S)
    env["WHARF_AMQP_PORT"] = "0"  # no AMQP listener (5672 may be in use here)
    env["WHARF_AMQPS_PORT"] = "0"
    if extra:
        env.update(extra)
    return env


class BrokerDied(AssertionError):
    pass


class BrokerProcess:
    """One ``wharf serve`` process after another on the same data directory.

    Every ``start`` picks fresh ports and a fresh log file (``broker-<n>.log`` beside
    the data directory), so the output of each run can be read after the fact.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
        max_open_files: int | None = None,
        constants: dict[str, int] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        # Module constants of the broker overridden before it starts ("module.NAME" ->
        # value), for thresholds that are not settings (the transaction log's compaction
        # size): a soak with small ones crosses them many times in a short test.
        self.constants = dict(constants or {})
        # RLIMIT_NOFILE of the broker process (as ``ulimit -n``), None: inherited.
        self.max_open_files = max_open_files
        self.log_dir = log_dir if log_dir is not None else self.data_dir.parent
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.http_port = 0
        self.runs = 0
        self.log_path = self.log_dir / "broker-0.log"

    @property
    def url(self) -> str:
        return f"wharf://guest:guest@127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start a broker process without waiting for it (see ``start``)."""
        self.runs += 1
        self.port = free_port()
        self.http_port = free_port()
        while self.http_port == self.port:
            self.http_port = free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"broker-{self.runs}.log"
        prefix = [str(WHARF_BIN)]
        if self.constants:
            prefix = [sys.executable, "-c", CONSTANTS_PRELUDE, json.dumps(self.constants)]
        cmd = [
            *prefix,
            "serve",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--http-port", str(self.http_port),
            "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        limit = self.max_open_files

        def set_limit() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with self.log_path.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=broker_env(self.extra_env),
                preexec_fn=set_limit if limit is not None else None,
            )
        self.proc = proc
        return proc

    async def start(self) -> None:
        """Spawn a broker and wait until its native port accepts an SDK login.

        The ports were free when picked, but another process may take one before the
        broker listens (it then exits at once, naming the busy port): pick new ones.
        """
        if self.running:
            raise RuntimeError("the previous broker is still running")
        for attempt in range(PORT_ATTEMPTS):
            self.spawn()
            try:
                await self.wait_ready()
                return
            except BrokerDied:
                if attempt + 1 == PORT_ATTEMPTS or PORT_TAKEN not in self.output():
                    raise

    async def wait_ready(self) -> None:
        proc = self.proc
        assert proc is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while True:
                    if proc.poll() is not None:
                        raise BrokerDied(
                            f"broker exited with {proc.returncode} during start-up "
                            f"(log {self.log_path}):\n{self.output()}"
                        )
                    try:
                        conn = await wharf.connect(self.url, timeout=5.0)
                    except (wharf.WharfError, OSError):
                        await asyncio.sleep(READY_POLL_S)
                        continue
                    await conn.close()
                    return
        except TimeoutError:
            raise BrokerDied(
                f"broker not ready within {START_TIMEOUT_S} s (log {self.log_path}):\n"
                f"{self.output()}"
            ) from None

    async def kill(self) -> None:
        """kill -9 and reap."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)

    async def terminate(self) -> int:
        """SIGTERM; returns the exit code (the broker must exit on its own)."""
        proc = self.proc
        assert proc is not None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(proc.wait, SHUTDOWN_TIMEOUT_S + EXIT_SLACK_S)
        except subprocess.TimeoutExpired:
            await self.kill()
            raise AssertionError(
                f"broker did not exit within {SHUTDOWN_TIMEOUT_S + EXIT_SLACK_S} s of "
                f"SIGTERM:\n{self.output()}"
            ) from None

    async def wait_exit(self, timeout_s: float) -> int:
        proc = self.proc
        assert proc is not None
        try:
            return await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"broker still running after {timeout_s} s") from None

    async def stop(self, mode: str) -> None:
        """``"sigterm"``: clean shutdown (exit code 0); ``"kill"``: kill -9."""
        if mode == "kill":
            await self.kill()
        elif mode == "sigterm":
            code = await self.terminate()
            assert code == 0, f"exit code {code} after SIGTERM:\n{self.output()}"
        else:
            raise ValueError(f"unknown stop mode {mode!r}")

    async def restart(self, mode: str) -> None:
        await self.stop(mode)
        await self.start()

    async def connect(self) -> wharf.Connection:
        return await wharf.connect(self.url, timeout=10.0)

    def log_problems(self) -> list[str]:
        """Tracebacks and ERROR lines in this run's log."""
        return [line for line in self.output().splitlines() if LOG_PROBLEM_RE.search(line)]

    def torn_tail_bytes(self) -> int:
        """Bytes recovery cut off torn segment tails in this run."""
        return sum(int(m.group(1)) for m in TORN_TAIL_RE.finditer(self.output()))

    async def close(self) -> None:
        """Teardown: whatever is still running is killed."""
        await self.kill()


@contextlib.asynccontextmanager
async def broker_process(
    data_dir: Path,
    *,
    env: dict[str, str] | None = None,
    start: bool = True,
    budget_s: float = TEST_BUDGET_S,
    max_open_files: int | None = None,
    constants: dict[str, int] | None = None,
) -> AsyncIterator[BrokerProcess]:
    """A broker (started unless ``start=False``), killed at the end; the whole ``async
    with`` body runs within ``budget_s`` (TimeoutError beyond it)."""
    bp = BrokerProcess(data_dir, env=env, max_open_files=max_open_files, constants=constants)
    try:
        async with asyncio.timeout(budget_s):
            if start:
                await bp.start()
            yield bp
    finally:
        await bp.close()


def http_json(bp: BrokerProcess, path: str, method: str = "GET") -> Any:
    """A management API call as guest (blocking: run it in a thread from a test)."""
    req = urllib.request.Request(f"http://127.0.0.1:{bp.http_port}{path}", method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
        return json.loads(resp.read())


# -- power loss ---------------------------------------------------------------------------


@dataclass
class PowerLoss:
    truncated_files: int = 0
    deleted_files: int = 0
    cut_bytes: int = 0


def read_sync_log(sync_log: Path) -> dict[str, int]:
    """Segment file name -> last fsynced length.  A final line without its newline was
    being written when the broker died; its fsync confirmed nothing yet: ignored."""
    try:
        text = sync_log.read_text()
    except FileNotFoundError:
        return {}
    lengths: dict[str, int] = {}
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        path, _, length = line.strip().rpartition(" ")
        lengths[Path(path).name] = int(length)
    return lengths


def segment_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "messages").glob("*.seg"))


def simulate_power_loss(data_dir: Path, sync_log: Path) -> PowerLoss:
    """Cut every segment back to its last fsynced length; delete never-fsynced ones.

    Call only while no broker runs on ``data_dir``.
    """
    synced = read_sync_log(sync_log)
    out = PowerLoss()
    for seg in segment_files(data_dir):
        size = seg.stat().st_size
        length = synced.get(seg.name)
        if length is None:
            seg.unlink()
            out.deleted_files += 1
            out.cut_bytes += size
        elif length < size:
            os.truncate(seg, length)
            out.truncated_files += 1
            out.cut_bytes += size - length
    # What is on disk now is what a rebooted machine would find: all of it durable.
    lines = [f"{seg} {seg.stat().st_size}\n" for seg in segment_files(data_dir)]
    sync_log.write_text("".join(lines))
    return out


# -- the crash loop -----------------------------------------------------------------------

EXCHANGE: Final = "crash.direct"
QUEUE_PREFIX: Final = "crash.q"
# A body: b"p<publisher>-<seq>|" then padding.
ID_RE: Final = re.compile(rb"p(\d+)-(\d+)\|")
PREFETCH: Final = 64
NACK_RATIO: Final = 0.05
MAX_BATCH: Final = 24
MAX_ACK_EVERY: Final = 32
MAX_PAD_BYTES: Final = 300
# Published and not yet received (per cycle) before publishers wait for consumers:
# keeps queue depth, and so recovery time, bounded over many cycles.
BACKLOG_LIMIT_MESSAGES: Final = 3000
# Share of (cycle, queue) pairs without a consumer: messages then pile up on disk and
# are recovered by several restarts before anyone reads them.
NO_CONSUMER_RATIO: Final = 0.25
# Per-queue memory budgets a cycle's broker runs with (None: the default): a small one
# keeps most of a backlog on disk behind the paged index, recovered as such.
MEMORY_BUDGETS_BYTES: Final[tuple[int | None, ...]] = (None, 16 * 1024)
MEMORY_BUDGET_ENV: Final = "WHARF_QUEUE_MEMORY_BUDGET_BYTES"
# Share of cycles stopped by SIGTERM (graceful, under load) instead of kill -9, and of
# cycles preceded by a broker killed while starting (before or during recovery).
SIGTERM_RATIO: Final = 0.15
STARTUP_KILL_RATIO: Final = 0.15
STARTUP_KILL_MAX_S: Final = 0.5
KILL_AFTER_MIN_S: Final = 0.2
KILL_AFTER_MAX_S: Final = 1.5
SEED_ENV: Final = "WHARF_CRASH_SEED"
# Examples kept per kind of failure (the counts are always complete).
MAX_EXAMPLES: Final = 20

# The ledger keeps one byte per message, (publisher, seq) -> state, so a soak of
# millions of messages fits in a few MB: bits 0-2 the queue it was sent to (index + 1,
# 0 = never sent), bit 3 confirmed, bits 4-7 deliveries (saturating at 15).
_QUEUE_BITS: Final = 0x07
_CONFIRMED: Final = 0x08
_ONE_DELIVERY: Final = 0x10
_MAX_DELIVERIES: Final = 15


class Ledger:
    """What the clients saw over the whole run, and the verdicts drawn from it."""

    def __init__(self, queues: list[str], publishers: int) -> None:
        if len(queues) > _QUEUE_BITS:
            raise ValueError(f"at most {_QUEUE_BITS} queues")
        self.queues = queues
        self._queue_no = {q: i + 1 for i, q in enumerate(queues)}
        self._state = [bytearray() for _ in range(publishers)]
        self.sent = 0
        self.confirmed = 0
        self.delivered = 0  # distinct ids
        self.deliveries = 0
        self.drained = 0
        self.drained_first = 0
        self.unflagged_redeliveries = 0
        self.invented = 0
        self.order_violations = 0
        self.drain_order_violations = 0
        self.examples: dict[str, list[str]] = {}
        # Client errors other than losing the connection to the killed broker.
        self.errors: list[str] = []
        # (queue no, publisher) -> seq of the newest first delivery, over the whole run
        # and within the final drain.
        self._newest_first: dict[tuple[int, int], int] = {}
        self._newest_first_in_drain: dict[tuple[int, int], int] = {}
        self.draining = False

    def note(self, kind: str, example: str) -> None:
        examples = self.examples.setdefault(kind, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(example)

    def record_sent(self, publisher: int, first: int, n: int, queue: str) -> None:
        state = self._state[publisher]
        if len(state) < first + n:
            state.extend(bytes(first + n - len(state)))
        state[first : first + n] = bytes([self._queue_no[queue]]) * n
        self.sent += n

    def record_confirmed(self, publisher: int, first: int, n: int) -> None:
        state = self._state[publisher]
        for seq in range(first, first + n):
            state[seq] |= _CONFIRMED
        self.confirmed += n

    def record_delivery(self, queue: str, msg: wharf.Message) -> bool:
        """Returns True for the first delivery of this message."""
        self.deliveries += 1
        if self.draining:
            self.drained += 1
        qno = self._queue_no[queue]
        m = ID_RE.match(msg.body)
        pub, seq = (int(m.group(1)), int(m.group(2))) if m else (-1, -1)
        state = self._state[pub] if 0 <= pub < len(self._state) else None
        mid = f"p{pub}-{seq}" if m else repr(msg.body[:40])
        if state is None or not 0 < seq < len(state) or state[seq] & _QUEUE_BITS != qno:
            self.invented += 1
            self.note("invented", f"{queue}: {mid}")
            return False
        if msg.delivery_count < 1 or msg.redelivered != (msg.delivery_count > 1):
            self.note(
                "anomaly",
                f"{queue}: {mid} redelivered={msg.redelivered} count={msg.delivery_count}",
            )
        seen = state[seq] >> 4
        if seen < _MAX_DELIVERIES:
            state[seq] += _ONE_DELIVERY
        if seen:
            if not msg.redelivered:
                self.unflagged_redeliveries += 1
            return False
        self.delivered += 1
        # Messages of one publisher in one queue are first delivered in publish order.
        key = (qno, pub)
        newest = self._newest_first.get(key, 0)
        if seq <= newest:
            self.order_violations += 1
            self.note("order", f"{queue}: {mid} first delivered after p{pub}-{newest}")
        self._newest_first[key] = max(seq, newest)
        if self.draining:
            self.drained_first += 1
            newest = self._newest_first_in_drain.get(key, 0)
            if seq <= newest:
                self.drain_order_violations += 1
                self.note("drain order", f"{queue}: {mid} drained after p{pub}-{newest}")
            self._newest_first_in_drain[key] = max(seq, newest)
        return True

    def lost(self) -> dict[str, list[str]]:
        """Confirmed and never delivered, per queue (ids in publish order)."""
        out: dict[str, list[str]] = {}
        for pub, state in enumerate(self._state):
            for seq, st in enumerate(state):
                if st & _CONFIRMED and st < _ONE_DELIVERY:
                    q = self.queues[(st & _QUEUE_BITS) - 1]
                    out.setdefault(q, []).append(f"p{pub}-{seq}")
        return out

    def totals(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "confirmed": self.confirmed,
            "delivered": self.delivered,
            "deliveries": self.deliveries,
            "duplicates": self.deliveries - self.delivered - self.invented,
            "lost": sum(len(v) for v in self.lost().values()),
            "invented": self.invented,
            "order_violations": self.order_violations,
            "drain_order_violations": self.drain_order_violations,
            "anomalies": len(self.examples.get("anomaly", [])),
            "unflagged_redeliveries": self.unflagged_redeliveries,
            "drained": self.drained,
            "drained_never_delivered_before": self.drained_first,
        }


class Backlog:
    """Publishers wait while too many messages are published and not yet received."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.outstanding = 0
        self.stopped = False
        self._room = asyncio.Event()
        self._room.set()

    async def reserve(self, n: int) -> bool:
        """False once the cycle is over."""
        await self._room.wait()
        if self.stopped:
            return False
        self.outstanding += n
        if self.outstanding >= self.limit:
            self._room.clear()
        return True

    def release(self) -> None:
        self.outstanding -= 1
        if self.outstanding < self.limit:
            self._room.set()

    def stop(self) -> None:
        self.stopped = True
        self._room.set()


@dataclass
class CrashConfig:
    cycles: int
    seed: int
    publishers: int = 3
    queues: int = 3
    power_loss: bool = False
    kill_after_min_s: float = KILL_AFTER_MIN_S
    kill_after_max_s: float = KILL_AFTER_MAX_S
    backlog_limit: int = BACKLOG_LIMIT_MESSAGES


@dataclass
class CrashReport:
    config: CrashConfig
    ledger: Ledger
    cycles: int = 0
    seconds: float = 0.0
    torn_tail_bytes: int = 0
    sigterm_stops: int = 0
    startup_kills: int = 0
    power_loss: PowerLoss = field(default_factory=PowerLoss)
    log_problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.config.seed,
            "cycles": self.cycles,
            "publishers": self.config.publishers,
            "queues": self.config.queues,
            "power_loss": self.config.power_loss,
            **self.ledger.totals(),
            "client_errors": len(self.ledger.errors),
            "broker_log_problems": len(self.log_problems),
            "sigterm_stops": self.sigterm_stops,
            "startup_kills": self.startup_kills,
            "torn_tail_bytes": self.torn_tail_bytes,
            "power_loss_cut_bytes": self.power_loss.cut_bytes,
            "power_loss_truncated_files": self.power_loss.truncated_files,
            "power_loss_deleted_files": self.power_loss.deleted_files,
            "seconds": round(self.seconds, 2),
        }

    def failures(self) -> list[str]:
        """Every broken durability promise, as readable lines."""
        ledger = self.ledger
        out = [
            f"{q}: {len(ids)} confirmed messages never delivered, e.g. {ids[:MAX_EXAMPLES]}"
            for q, ids in ledger.lost().items()
        ]
        labels = {
            "invented": "delivered but never sent (to that queue)",
            "anomaly": "redelivered flag disagrees with delivery_count",
            "order": "first deliveries out of publish order",
            "drain order": "never-delivered messages drained out of publish order",
        }
        for kind, label in labels.items():
            if ledger.examples.get(kind):
                out.append(f"{label}: {ledger.examples[kind]}")
        if ledger.errors:
            out.append(f"client errors: {ledger.errors[:MAX_EXAMPLES]}")
        if self.log_problems:
            out.append(f"broker logged problems: {self.log_problems[:MAX_EXAMPLES]}")
        return out


class CrashLoop:
    """Publish, consume, kill -9, (power loss), restart; then drain and judge."""

    def __init__(
        self,
        work_dir: Path,
        config: CrashConfig,
        on_cycle: Callable[[CrashReport], None] | None = None,
    ) -> None:
        self.config = config
        self.data_dir = work_dir / "data"
        self.sync_log = work_dir / "sync.log"
        self.queues = [f"{QUEUE_PREFIX}{i}" for i in range(config.queues)]
        self.ledger = Ledger(self.queues, config.publishers)
        self.report = CrashReport(config, self.ledger)
        self.on_cycle = on_cycle
        self.rng = random.Random(config.seed)
        # Publisher slot -> next sequence number; carried across cycles so ids are unique
        # and a slot's ids grow in publish order over the whole run.
        self.next_seq = [1] * config.publishers
        env = {"WHARF_SEGMENT_BYTES": str(SMALL_SEGMENT_BYTES)}
        if config.power_loss:
            env["WHARF_TEST_SYNC_LOG"] = str(self.sync_log)
        self.broker = BrokerProcess(self.data_dir, env=env, log_dir=work_dir / "logs")
        # Set once the cycle's broker is being stopped: a 320 is expected from then on.
        self._stopping = False

    async def run(self) -> CrashReport:
        started = time.monotonic()
        step = "drain"
        try:
            for cycle in range(self.config.cycles):
                step = f"cycle {cycle}"
                async with asyncio.timeout(CYCLE_TIMEOUT_S):
                    await self.run_cycle(cycle)
                self.report.cycles += 1
                self.report.seconds = time.monotonic() - started
                if self.on_cycle is not None:
                    self.on_cycle(self.report)
            step = "drain"
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await self.drain()
        except TimeoutError:
            raise AssertionError(
                f"{step} overran its time budget\n{describe_failure(self.report)}"
            ) from None
        finally:
            await self.broker.close()
            self.report.seconds = time.monotonic() - started
        return self.report

    def _collect_log(self) -> None:
        self.report.log_problems.extend(
            f"run {self.broker.runs}: {line}" for line in self.broker.log_problems()
        )
        self.report.torn_tail_bytes += self.broker.torn_tail_bytes()

    async def _declare(self, conn: wharf.Connection, first: bool) -> None:
        """First cycle: create the topology; later ones: it must have survived."""
        if first:
            await conn.declare_exchange(EXCHANGE, "direct", durable=True)
            for q in self.queues:
                await conn.declare_queue(q, durable=True)
                await conn.bind_queue(q, EXCHANGE, q)
            return
        await conn.declare_exchange(EXCHANGE, "direct", passive=True)
        for q in self.queues:
            await conn.declare_queue(q, passive=True)

    async def run_cycle(self, cycle: int) -> None:
        cfg = self.config
        broker = self.broker
        budget = self.rng.choice(MEMORY_BUDGETS_BYTES)
        if budget is None:
            broker.extra_env.pop(MEMORY_BUDGET_ENV, None)
        else:
            broker.extra_env[MEMORY_BUDGET_ENV] = str(budget)
        if cycle > 0 and self.rng.random() < STARTUP_KILL_RATIO:
            await self._kill_during_startup()
        await broker.start()
        self._stopping = False
        conns: list[wharf.Connection] = []
        try:
            while len(conns) < cfg.publishers + len(self.queues):
                conns.append(await broker.connect())
            await self._declare(conns[0], cycle == 0)
            backlog = Backlog(cfg.backlog_limit)
            seed = f"{cfg.seed}/{cycle}"
            # The last cycle only publishes: the drain then starts with a backlog nobody
            # has seen, recovered after a crash, whose order it can check.
            last_cycle = cycle == cfg.cycles - 1
            tasks = [
                asyncio.create_task(
                    self._publisher(p, conns[p], backlog, random.Random(f"{seed}/p{p}"))
                )
                for p in range(cfg.publishers)
            ]
            tasks += [
                asyncio.create_task(
                    self._consumer(
                        q, conns[cfg.publishers + i], backlog, random.Random(f"{seed}/{q}")
                    )
                )
                for i, q in enumerate(self.queues)
                if self.rng.random() >= NO_CONSUMER_RATIO and not last_cycle
            ]
            clean_stop = self.rng.random() < SIGTERM_RATIO
            # The one sleep that is not synchronisation: the random moment of the crash.
            await asyncio.sleep(self.rng.uniform(cfg.kill_after_min_s, cfg.kill_after_max_s))
            if not broker.running:
                self.ledger.errors.append(f"cycle {cycle}: the broker died on its own")
            self._stopping = True
            if clean_stop:
                # A graceful shutdown under full load: exit 0, nothing confirmed lost.
                self.report.sigterm_stops += 1
                code = await broker.terminate()
                if code != 0:
                    self.ledger.errors.append(f"cycle {cycle}: exit code {code} after SIGTERM")
            else:
                await broker.kill()
            backlog.stop()
            try:
                async with asyncio.timeout(CLIENT_EXIT_TIMEOUT_S):
                    await asyncio.gather(*tasks)
            except TimeoutError:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self.ledger.errors.append(
                    f"cycle {cycle}: clients did not notice the killed broker within "
                    f"{CLIENT_EXIT_TIMEOUT_S} s"
                )
        finally:
            await broker.kill()
            for c in conns:
                with contextlib.suppress(Exception):
                    await c.close()
            self._collect_log()
        self._lose_power()

    async def _kill_during_startup(self) -> None:
        """kill -9 a broker that is still starting: importing, recovering, or just
        ready (the moment is random)."""
        self.report.startup_kills += 1
        self.broker.spawn()
        await asyncio.sleep(self.rng.uniform(0.0, STARTUP_KILL_MAX_S))
        await self.broker.kill()
        self._collect_log()
        self._lose_power()

    def _lose_power(self) -> None:
        if self.config.power_loss:
            cut = simulate_power_loss(self.data_dir, self.sync_log)
            pl = self.report.power_loss
            pl.truncated_files += cut.truncated_files
            pl.deleted_files += cut.deleted_files
            pl.cut_bytes += cut.cut_bytes

    def _lost_broker(self, exc: wharf.WharfError) -> bool:
        """Errors that only say the broker went away: killed, or shut down (320)."""
        if isinstance(exc, wharf.ConnectionLost):
            return True
        return self._stopping and isinstance(exc, wharf.ConnectionForced)

    async def _publisher(
        self, p: int, conn: wharf.Connection, backlog: Backlog, rng: random.Random
    ) -> None:
        ledger = self.ledger
        while True:
            n = rng.randint(1, MAX_BATCH)
            if not await backlog.reserve(n):
                return
            q = rng.choice(self.queues)
            first = self.next_seq[p]
            self.next_seq[p] = first + n
            pad = b"." * rng.randint(0, MAX_PAD_BYTES)
            bodies = [b"p%d-%d|%s" % (p, seq, pad) for seq in range(first, first + n)]
            ledger.record_sent(p, first, n, q)
            try:
                await conn.publish_many(EXCHANGE, q, bodies, persistent=True, mandatory=True)
            except wharf.WharfError as exc:
                if not self._lost_broker(exc):
                    ledger.errors.append(f"publisher {p}: {exc!r}")
                return
            ledger.record_confirmed(p, first, n)

    async def _consumer(
        self, queue: str, conn: wharf.Connection, backlog: Backlog, rng: random.Random
    ) -> None:
        ledger = self.ledger
        to_ack: list[wharf.Message] = []
        ack_every = rng.randint(1, MAX_ACK_EVERY)
        try:
            async with conn.consume(queue, prefetch=PREFETCH) as messages:
                async for msg in messages:
                    if ledger.record_delivery(queue, msg):
                        backlog.release()
                    if rng.random() < NACK_RATIO:
                        await msg.nack(requeue=True)
                        continue
                    to_ack.append(msg)
                    if len(to_ack) >= ack_every:
                        for m in to_ack:
                            await m.ack()
                        to_ack.clear()
                        ack_every = rng.randint(1, MAX_ACK_EVERY)
        except wharf.WharfError as exc:
            if not self._lost_broker(exc):
                ledger.errors.append(f"consumer of {queue}: {exc!r}")

    async def drain(self) -> None:
        """Restart once more and take every message out of every queue; then a clean
        restart must find them all gone (the drain's acks were written at shutdown)."""
        broker = self.broker
        ledger = self.ledger
        await broker.start()
        conn = await broker.connect()
        ledger.draining = True
        try:
            await self._declare(conn, first=False)
            for q in self.queues:
                await self._drain_queue(conn, q)
        finally:
            ledger.draining = False
            await conn.close()
        code = await broker.terminate()
        self._collect_log()
        if code != 0:
            ledger.errors.append(f"broker exited with {code} after SIGTERM")
        await broker.start()
        conn = await broker.connect()
        try:
            for q in self.queues:
                info = await conn.declare_queue(q, passive=True)
                if info.messages:
                    ledger.errors.append(f"{q}: {info.messages} messages back after the drain")
        finally:
            await conn.close()
        await broker.terminate()
        self._collect_log()

    async def _drain_queue(self, conn: wharf.Connection, queue: str) -> None:
        info = await conn.declare_queue(queue, passive=True)
        if info.messages:
            taken = 0
            async with conn.consume(queue, prefetch=PREFETCH * 8) as messages:
                async for msg in messages:
                    self.ledger.record_delivery(queue, msg)
                    await msg.ack()
                    taken += 1
                    if taken >= info.messages:
                        break
        left = await conn.declare_queue(queue, passive=True)
        if left.messages:
            self.ledger.errors.append(f"{queue}: {left.messages} messages left after drain")


def crash_config_from_env(
    cycles_env: str, default_cycles: int, default_seed: int, *, power_loss: bool
) -> CrashConfig:
    """Cycles from ``cycles_env``; the seed from WHARF_CRASH_SEED (a fixed default keeps
    CI reproducible as far as timing allows)."""
    cycles = int(os.environ.get(cycles_env, default_cycles))
    seed = int(os.environ.get(SEED_ENV, default_seed))
    return CrashConfig(cycles=cycles, seed=seed, power_loss=power_loss)


def crash_loop_timeout_s(cycles_env: str, default_cycles: int) -> float:
    """pytest-timeout's limit for a crash loop: it grows with the cycles, whose length a
    loaded machine stretches (each cycle is also bounded by CYCLE_TIMEOUT_S)."""
    cycles = int(os.environ.get(cycles_env, default_cycles))
    return LOOP_TIMEOUT_BASE_S + cycles * LOOP_TIMEOUT_PER_CYCLE_S


def describe_failure(report: CrashReport) -> str:
    lines = [f"seed {report.config.seed} (rerun with {SEED_ENV}={report.config.seed})"]
    lines += report.failures()
    lines.append(f"totals: {report.summary()}")
    return "\n".join(lines)
