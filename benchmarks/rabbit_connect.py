"""Anchor for ``python -m benchmarks connect_rate``: RabbitMQ connection set-ups per second.

Run with the anchor venv's Python (it has pamqp), not Wharf's:

    /tmp/anchor-venv/bin/python benchmarks/rabbit_connect.py SECONDS CONCURRENCY [CAFILE]

Each of CONCURRENCY workers loops for SECONDS: TCP (and with CAFILE, TLS) connect, AMQP
0-9-1 handshake with PLAIN guest/guest (Start, StartOk, Tune, TuneOk, Open, OpenOk), then
Close/CloseOk.  Prints one JSON line: {"connections": N, "per_s": N / SECONDS, ...}.
``AMQP_HOST`` / ``AMQP_PORT`` say where (default 127.0.0.1, 5671 with CAFILE else 5672).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
from typing import Any

from pamqp import commands as C
from pamqp import frame

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


async def one_connection(host: str, port: int, tls: ssl.SSLContext | None) -> None:
    reader, writer = await asyncio.open_connection(
        host, port, ssl=tls, server_hostname=host if tls else None
    )
    buf = b""

    async def read_frame() -> Any:
        nonlocal buf
        while True:
            try:
                consumed, _, value = frame.unmarshal(buf)
            except Exception:  # not a whole frame yet
                data = await reader.read(65536)
                if not data:
                    raise EOFError("closed") from None
                buf += data
                continue
            buf = buf[consumed:]
            return value

    try:
        writer.write(PROTOCOL_HEADER)
        await read_frame()  # Start
        start_ok = C.Connection.StartOk(
            client_properties={}, mechanism="PLAIN", response="\x00guest\x00guest"
        )
        writer.write(frame.marshal(start_ok, 0))
        tune = await read_frame()
        writer.write(
            frame.marshal(
                C.Connection.TuneOk(
                    channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0
                ),
                0,
            )
        )
        writer.write(frame.marshal(C.Connection.Open(virtual_host="/"), 0))
        await read_frame()  # OpenOk
        writer.write(frame.marshal(C.Connection.Close(200, "bye", 0, 0), 0))
        await read_frame()  # CloseOk
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except Exception:  # a TLS close the peer cut short
            pass


async def main(seconds: float, concurrency: int, cafile: str | None) -> dict[str, Any]:
    tls = ssl.create_default_context(cafile=cafile) if cafile else None
    host = os.environ.get("AMQP_HOST", "127.0.0.1")
    port = int(os.environ.get("AMQP_PORT", "5671" if tls else "5672"))
    done = 0
    errors = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done, errors
        while time.monotonic() < deadline:
            try:
                await one_connection(host, port, tls)
                done += 1
            except (OSError, EOFError, ssl.SSLError):
                errors += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - start
    return {
        "connections": done,
        "errors": errors,
        "seconds": round(elapsed, 2),
        "per_s": round(done / elapsed, 1),
        "tls": tls is not None,
        "mechanism": "PLAIN",
    }


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    secs, conc = float(sys.argv[1]), int(sys.argv[2])
    ca = sys.argv[3] if len(sys.argv) > 3 else None
    print(json.dumps(asyncio.run(main(secs, conc, ca))))
