"""``python -m benchmarks connect_rate``: connection set-ups (handshake + login + close) per
second, Wharf with SCRAM-SHA-256 (plain TCP and TLS) against RabbitMQ's PLAIN over TLS.

Wharf runs as its own process (``wharf serve`` on free ports, the same certificates as
RabbitMQ's AMQPS listener: ``--tls-dir``, default /tmp/anchor-certs); the client is a raw
protocol client in this process (no SDK objects), ``--concurrency`` workers each looping
for ``--seconds``: connect, handshake, AUTH, AUTH_CHALLENGE, AUTH_RESPONSE, AUTH_OK (the
server signature checked), CLOSE, CLOSE_OK.  SCRAM's client side (PBKDF2 of the password,
4,096 rounds, ~3 ms) is paid by every Wharf SCRAM login and counted; RabbitMQ's PLAIN has
none.  The broker's login cache (security/auth.py) makes repeated PLAIN logins cheap;
SCRAM needs none (the broker checks HMACs).  Wharf PLAIN figures are given for reference.

RabbitMQ is measured by benchmarks/rabbit_connect.py under the anchor venv's Python
(pamqp), with the same worker count, against 127.0.0.1:5671.  Modes run one after the
other, never at once.  Prints one JSON object; ratios are Wharf / RabbitMQ.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

import scramp

from benchmarks.perf.common import Target, emit, local_broker, log, run_async
from wharf.protocol import frames as F
from wharf.protocol.codec import FrameDecoder, encode

DEFAULT_TLS_DIR: Final = "/tmp/anchor-certs"
DEFAULT_ANCHOR_PYTHON: Final = "/tmp/anchor-venv/bin/python"
SCRAM: Final = "SCRAM-SHA-256"
ANSWER_TIMEOUT_S: Final = 30.0


async def _recv(reader: asyncio.StreamReader, decoder: FrameDecoder, pending: list[Any]) -> Any:
    while not pending:
        data = await reader.read(65536)
        if not data:
            raise EOFError("closed by the broker")
        pending.extend(decoder.feed(data))
    return pending.pop(0)


async def wharf_connection(target: Target, mechanism: str, tls: ssl.SSLContext | None) -> None:
    """One connection set-up and close, as a minimal client does it."""
    reader, writer = await asyncio.open_connection(
        target.host, target.port, ssl=tls, server_hostname=target.host if tls else None
    )
    decoder = FrameDecoder(expect_handshake=False)
    pending: list[Any] = []
    try:
        writer.write(F.HANDSHAKE)
        hello = await _recv(reader, decoder, pending)
        assert hello[0] == F.HELLO, hello
        if mechanism == SCRAM:
            client = scramp.ScramClient([SCRAM], target.username, target.password)
            writer.write(encode(F.Auth(1, SCRAM, "", client.get_client_first(), 0, {})))
            challenge = await _recv(reader, decoder, pending)
            assert challenge[0] == F.AUTH_CHALLENGE, challenge
            client.set_server_first(challenge[2])
            writer.write(encode(F.AuthResponse(1, client.get_client_final())))
            ok = await _recv(reader, decoder, pending)
            assert ok[0] == F.AUTH_OK, ok
            client.set_server_final(ok[5])
        else:
            writer.write(encode(F.Auth(1, "PLAIN", target.username, target.password, 0, {})))
            ok = await _recv(reader, decoder, pending)
            assert ok[0] == F.AUTH_OK, ok
        writer.write(encode(F.Close(2, 0, "bye")))
        while (await _recv(reader, decoder, pending))[0] != F.CLOSE_OK:
            pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _wharf_rate(
    target: Target, mechanism: str, seconds: float, concurrency: int
) -> dict[str, Any]:
    tls = target.ssl_context()
    await wharf_connection(target, mechanism, tls)  # warm up (and the PLAIN cache)
    done = errors = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done, errors
        while time.monotonic() < deadline:
            try:
                async with asyncio.timeout(ANSWER_TIMEOUT_S):
                    await wharf_connection(target, mechanism, tls)
                done += 1
            except (OSError, EOFError, AssertionError, TimeoutError, ssl.SSLError):
                errors += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - start
    return {
        "connections": done,
        "errors": errors,
        "seconds": round(elapsed, 2),
        "per_s": round(done / elapsed, 1),
    }


def _rabbit_rate(
    anchor_python: str, seconds: float, concurrency: int, cafile: str
) -> dict[str, Any]:
    script = Path(__file__).with_name("rabbit_connect.py")
    if not os.access(anchor_python, os.X_OK):
        return {"error": f"anchor python {anchor_python} not found"}
    proc = subprocess.run(
        [anchor_python, str(script), str(seconds), str(concurrency), cafile],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:] or f"exit {proc.returncode}"}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def connect_rate(
    seconds: float, concurrency: int, tls_dir: str, anchor_python: str
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "scenario": "connect_rate",
        "seconds": seconds,
        "concurrency": concurrency,
        "tls_dir": tls_dir,
        "note": (
            "connection set-up = connect + (TLS) + handshake + login + close; Wharf SCRAM "
            "includes the client's PBKDF2 (4096 rounds); RabbitMQ: AMQP PLAIN guest/guest "
            "over TLS; Wharf PLAIN logins are served from the broker's login cache"
        ),
    }
    for name, mechanism, use_tls in (
        ("wharf_scram", SCRAM, False),
        ("wharf_tls_scram", SCRAM, True),
        ("wharf_plain", "PLAIN", False),
        ("wharf_tls_plain", "PLAIN", True),
    ):
        with local_broker(tls_dir=tls_dir if use_tls else None) as target:
            log(f"{name}: {seconds} s, {concurrency} workers")
            results[name] = run_async(_wharf_rate(target, mechanism, seconds, concurrency))
            log(f"{name}: {results[name]}")
    cafile = str(Path(tls_dir) / "ca.pem")
    log(f"rabbitmq_tls_plain: {seconds} s, {concurrency} workers")
    results["rabbitmq_tls_plain"] = _rabbit_rate(anchor_python, seconds, concurrency, cafile)
    log(f"rabbitmq_tls_plain: {results['rabbitmq_tls_plain']}")
    rabbit = results["rabbitmq_tls_plain"].get("per_s")
    if rabbit:
        results["ratios_vs_rabbitmq_tls_plain"] = {
            name: round(results[name]["per_s"] / rabbit, 2)
            for name in ("wharf_scram", "wharf_tls_scram", "wharf_plain", "wharf_tls_plain")
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks connect_rate", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="per mode")
    parser.add_argument("--concurrency", type=int, default=8, help="client workers")
    parser.add_argument(
        "--tls-dir",
        default=DEFAULT_TLS_DIR if Path(DEFAULT_TLS_DIR, "ca.pem").exists() else "benchmarks-tls",
        help="ca.pem, cert.pem, key.pem shared with RabbitMQ's AMQPS listener",
    )
    parser.add_argument("--anchor-python", default=DEFAULT_ANCHOR_PYTHON)
    args = parser.parse_args(argv)
    emit(connect_rate(args.seconds, args.concurrency, args.tls_dir, args.anchor_python))
    return 0


if __name__ == "__main__":
    sys.exit(main())
