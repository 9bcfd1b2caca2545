"""``python -m benchmarks.login_guessing``: how fast can parallel connections guess a password?

Starts its own broker (in this process, port 0, a temporary data directory) with users
``app`` and ``ops``, then for ``--seconds``:

- ``--connections`` attackers (200) each loop: connect from 127.0.0.2, AUTH as ``app``
  with a wrong password, wait for the answer, close.  ``guesses_per_s`` counts answered
  guesses (a guess abandoned unanswered teaches the attacker nothing it could not learn
  by waiting for the delay);
- a prober logs in with correct passwords every ``--probe-interval-s``: ``ops`` from the
  attacked address (``same_address``), ``app`` from another address (``same_user``) and
  with ``--probe-same-pair``, ``app`` from the attacked address (indistinguishable from
  the attacker; its successes reset the pair's delay); for each, the slowest and median
  login in ms.

``--connections 1`` gives the single-connection rate to compare with.  Prints one JSON
object; nothing is asserted.  Linux only (it uses 127.0.0.2 and 127.0.0.3 as sources).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from typing import Any

from wharf.broker.config import Settings, UserConfig
from wharf.broker.security.passwords import hash_password
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.codec import FrameDecoder, encode

APP_PASSWORD = "app-correct-horse"
OPS_PASSWORD = "ops-battery-staple"
ATTACKER = "127.0.0.2"
OTHER = "127.0.0.3"
ANSWER_TIMEOUT_S = 60.0


async def login(port: int, user: str, password: str, source: str) -> str:
    """ "ok", or the refusal's message."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    decoder = FrameDecoder()
    frames: list[Any] = []
    try:
        writer.write(F.HANDSHAKE + encode(F.Auth(1, "PLAIN", user, password, 0, {})))
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            while len(frames) < 2:
                data = await reader.read(65536)
                if not data:
                    break
                frames.extend(decoder.feed(data))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    if len(frames) < 2:
        return "closed"
    return "ok" if frames[1][0] == F.AUTH_OK else str(frames[1][3])


async def run(
    connections: int, seconds: float, probe_interval_s: float, probe_same_pair: bool
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data_dir:
        users = [
            UserConfig("app", hash_password(APP_PASSWORD), []),
            UserConfig("ops", hash_password(OPS_PASSWORD), []),
        ]
        broker = Broker(
            Settings(
                host="127.0.0.1",
                port=0,
                http_port=0,
                amqp_port=0,
                data_dir=data_dir,
                users=users,
                max_unauthenticated_per_address=connections + 10,
                log_level="error",
            )
        )
        await broker.start()
        answered = 0
        probes: dict[str, list[float]] = {"same_address": [], "same_user": [], "same_pair": []}
        deadline = time.monotonic() + seconds

        async def attacker(n: int) -> None:
            nonlocal answered
            i = 0
            while time.monotonic() < deadline:
                i += 1
                with contextlib.suppress(OSError, TimeoutError):
                    answer = await login(broker.port, "app", f"guess-{n}-{i}", ATTACKER)
                    # Only checked passwords count ("too many waiting" teaches nothing).
                    if answer == "invalid credentials" and time.monotonic() < deadline:
                        answered += 1

        async def prober(name: str, user: str, password: str, source: str) -> None:
            await asyncio.sleep(min(1.0, seconds / 4))  # let the attack build up
            while time.monotonic() < deadline:
                started = time.monotonic()
                with contextlib.suppress(OSError, TimeoutError):
                    if await login(broker.port, user, password, source) == "ok":
                        probes[name].append((time.monotonic() - started) * 1000)
                await asyncio.sleep(probe_interval_s)

        cases = [
            ("same_address", "ops", OPS_PASSWORD, ATTACKER),
            ("same_user", "app", APP_PASSWORD, OTHER),
        ]
        if probe_same_pair:  # its successes reset the pair's delay: off for guess rates
            cases.append(("same_pair", "app", APP_PASSWORD, ATTACKER))
        tasks = [asyncio.create_task(attacker(n)) for n in range(connections)]
        tasks += [asyncio.create_task(prober(*case)) for case in cases]
        await asyncio.sleep(seconds)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await broker.stop()
    result: dict[str, Any] = {
        "connections": connections,
        "seconds": seconds,
        "guesses": answered,
        "guesses_per_s": round(answered / seconds, 2),
    }
    for name, values in probes.items():
        result[f"{name}_logins"] = len(values)
        if values:
            result[f"{name}_max_ms"] = round(max(values), 1)
            result[f"{name}_p50_ms"] = round(statistics.median(values), 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.login_guessing", description=__doc__
    )
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--probe-interval-s", type=float, default=0.5)
    parser.add_argument("--probe-same-pair", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(
        run(args.connections, args.seconds, args.probe_interval_s, args.probe_same_pair)
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
