"""``python -m benchmarks.hostile``: what hostile clients cost the broker (issue 11, §6).

Starts its own broker (or uses ``--url`` with ``--pid``) and runs, one after another:

- ``bomb_preauth``: one 32 MiB frame whose body is an array of 32 million empty maps
  (0x80), sent right after the handshake, without logging in;
- ``bomb_after_login``: the same frame from a logged-in connection;
- ``unauth_senders``: ``--senders`` connections (60) that each send the handshake and
  31 MiB of an unfinished frame without logging in.

A canary connection publishes (confirmed) and gets one small message in a loop the
whole time (the attackers run in a separate process, so they never delay it on the
client side).  For a quiet second before the attacks and for each attack, the result
has the canary's round trips (``canary_max_ms``, the longest, bounds the worst loop
stall it saw; ``canary_p50_ms``) and any canary errors; plus the broker's RSS before, at
its peak (sampled every 10 ms) and after.  Prints one JSON object on stdout; nothing here
is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import struct
import sys
import time
from typing import Any

import wharf
from benchmarks.perf.common import (
    Target,
    broker_target,
    emit,
    log,
    rss_bytes,
    run_async,
    unique_name,
)
from wharf.protocol import frames as F
from wharf.protocol.codec import encode

MIB = 1024 * 1024
BOMB_BYTES = 32 * MIB
UNFINISHED_FRAME_BYTES = 31 * MIB
RSS_SAMPLE_S = 0.01
SETTLE_S = 1.0
SEND_TIMEOUT_S = 20.0


def bomb_frame() -> bytes:
    count = BOMB_BYTES - 5
    payload = b"\xdd" + struct.pack(">I", count) + b"\x80" * count
    return struct.pack(">I", len(payload)) + payload


class Canary:
    def __init__(self, conn: wharf.Connection, queue: str) -> None:
        self.conn = conn
        self.queue = queue
        self.rtts_ns: list[tuple[int, int]] = []  # (start, duration)
        self.errors: list[str] = []
        self._stop = False

    async def run(self) -> None:
        while not self._stop:
            start = time.monotonic_ns()
            try:
                await self.conn.publish("", self.queue, b"canary")
                await self.conn.get(self.queue, no_ack=True)
            except Exception as exc:
                self.errors.append(repr(exc))
                await asyncio.sleep(0.05)
                continue
            self.rtts_ns.append((start, time.monotonic_ns() - start))

    def stop(self) -> None:
        self._stop = True

    def window(self, start_ns: int, end_ns: int) -> list[int]:
        # Round trips that overlapped the window, including one that started before it.
        return [d for s, d in self.rtts_ns if s + d >= start_ns and s <= end_ns]


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            await asyncio.sleep(RSS_SAMPLE_S)


async def _send_all(port: int, data: bytes, *, login: bool) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(F.HANDSHAKE)
        if login:
            await reader.read(65536)  # HELLO
            writer.write(encode(F.Auth(1, "PLAIN", "guest", "guest", 0, {})))
            await reader.read(65536)  # AUTH_OK
        writer.write(data)
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await writer.drain()
                reply = b""
                while chunk := await reader.read(65536):
                    reply += chunk
        except (ConnectionError, TimeoutError) as exc:
            return type(exc).__name__
        return "closed by broker" if reply else "closed"
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def attack_only(kind: str, port: int, senders: int) -> Any:
    """The attacker process: run one attack, return how it ended."""
    if kind == "bomb_preauth":
        return await _send_all(port, bomb_frame(), login=False)
    if kind == "bomb_after_login":
        return await _send_all(port, bomb_frame(), login=True)
    unfinished = struct.pack(">I", UNFINISHED_FRAME_BYTES) + b"\xc4" * (UNFINISHED_FRAME_BYTES - 1)
    outcomes = await asyncio.gather(
        *(_send_all(port, unfinished, login=False) for _ in range(senders))
    )
    return {o: outcomes.count(o) for o in set(outcomes)}


async def _attacker_process(kind: str, port: int, senders: int) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.hostile",
        "--attack-only",
        kind,
        "--port",
        str(port),
        "--senders",
        str(senders),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    return json.loads(out) if out.strip() else f"attacker exited with {proc.returncode}"


def _rtt_summary(rtts: list[int]) -> dict[str, Any]:
    rtts = sorted(rtts)
    return {
        "canary_round_trips": len(rtts),
        "canary_p50_ms": round(rtts[len(rtts) // 2] / 1e6, 2) if rtts else None,
        "canary_max_ms": round(rtts[-1] / 1e6, 2) if rtts else None,
    }


async def _attack(
    name: str, target: Target, canary: Canary, pid: int, attack: Any
) -> dict[str, Any]:
    rss_before = rss_bytes(pid)
    sampler = RssSampler(pid)
    sampling = asyncio.ensure_future(sampler.run())
    errors_before = len(canary.errors)
    start = time.monotonic_ns()
    outcome = await attack()
    end = time.monotonic_ns()
    await asyncio.sleep(SETTLE_S)
    sampling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampling
    result = {
        "attack_s": round((end - start) / 1e9, 3),
        "outcome": outcome,
        **_rtt_summary(canary.window(start, end)),
        "canary_errors": canary.errors[errors_before:],
        "rss_before_mb": round(rss_before / MIB, 1),
        "rss_peak_mb": round(max(sampler.peak, rss_before) / MIB, 1),
        "rss_after_mb": round(rss_bytes(pid) / MIB, 1),
    }
    log(f"{name}: {result}")
    return result


async def run(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    pid = args.pid or target.pid
    if pid is None:
        raise SystemExit("give --pid of the broker to measure its RSS")
    conn = await wharf.connect(target.url)
    queue = unique_name("canary")
    await conn.declare_queue(queue)
    canary = Canary(conn, queue)
    canary_task = asyncio.ensure_future(canary.run())
    quiet_start = time.monotonic_ns()
    await asyncio.sleep(SETTLE_S)
    results: dict[str, Any] = {
        "quiet": _rtt_summary(canary.window(quiet_start, time.monotonic_ns()))
    }
    for kind in ("bomb_preauth", "bomb_after_login", "unauth_senders"):

        async def attack(kind: str = kind) -> Any:
            return await _attacker_process(kind, target.port, args.senders)

        results[kind] = await _attack(kind, target, canary, pid, attack)
    results["unauth_senders"]["senders"] = args.senders
    canary.stop()
    await canary_task
    await conn.close()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hostile", description=__doc__)
    p.add_argument("--url", help="wharf://user:pass@host:port of a running broker")
    p.add_argument("--pid", type=int, help="pid of that broker (for RSS)")
    p.add_argument("--senders", type=int, default=60, help="unauthenticated senders")
    p.add_argument("--attack-only", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.attack_only:
        print(json.dumps(run_async(attack_only(args.attack_only, args.port, args.senders))))
        return 0
    with broker_target(args.url, pid=args.pid) as target:
        emit(run_async(run(args, target)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
