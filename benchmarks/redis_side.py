"""The Redis side of ``python -m benchmarks logs``: a Redis 7 server for the anchor
figures (started for the run unless one already answers on the port) and
``redis-benchmark`` runs of XADD and XRANGE on one stream, read from its CSV output.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import time
from typing import Any, Final

REDIS_STREAM: Final = "s"
REDIS_XADD_PIPELINE: Final = 100
REDIS_XRANGE_PIPELINE: Final = 10
REDIS_XRANGE_REQUESTS: Final = 20_000
REDIS_XRANGE_COUNT: Final = 1000
REDIS_START_TIMEOUT_S: Final = 10.0


class Redis:
    """A Redis server for the anchor figures (``--save '' --appendonly no``), started
    here unless one already answers on the port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None  # a server started here
        self.problem: str | None = None
        self.version = ""

    def cli(self, *argv: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return out.stdout.strip()

    def start(self) -> None:
        for tool in ("redis-server", "redis-benchmark", "redis-cli"):
            if shutil.which(tool) is None:
                self.problem = (
                    f"{tool} not found (install it with /work/shared/anchors/start_rabbitmq.sh); "
                    "Wharf figures only"
                )
                return
        if self.cli("PING") != "PONG":
            self.proc = subprocess.Popen(
                ["redis-server", "--save", "", "--appendonly", "no", "--port", str(self.port)],
                stdout=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + REDIS_START_TIMEOUT_S
            while self.cli("PING") != "PONG":
                if time.monotonic() > deadline:
                    self.problem = f"redis-server did not answer on port {self.port}"
                    return
                time.sleep(0.1)
        for line in self.cli("INFO", "server").splitlines():
            if line.startswith("redis_version:"):
                self.version = line.split(":", 1)[1].strip()

    def stop(self) -> None:
        if self.proc is not None:
            self.cli("SHUTDOWN", "NOSAVE")
            try:
                self.proc.wait(REDIS_START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def bench(self, pipeline: int, requests: int, *command: str) -> dict[str, Any]:
        argv = ["redis-benchmark", "-p", str(self.port), "-P", str(pipeline)]
        argv += ["-n", str(requests), "--csv", *command]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
        rows = list(csv.reader(out.stdout.splitlines()))
        shown = " ".join(a if a != "*" else "'*'" for a in argv)
        if out.returncode or len(rows) < 2:
            return {"cmd": shown, "error": (out.stderr or out.stdout)[-500:]}
        return {"cmd": shown, "requests_s": round(float(rows[1][1]))}

    def throughput(self, count: int, size: int, xrange_requests: int) -> dict[str, Any]:
        self.cli("DEL", REDIS_STREAM)
        xadd = self.bench(REDIS_XADD_PIPELINE, count, "XADD", REDIS_STREAM, "*", "f", "v" * size)
        length = int(self.cli("XLEN", REDIS_STREAM) or 0)
        xrange = self.bench(
            REDIS_XRANGE_PIPELINE,
            xrange_requests,
            *("XRANGE", REDIS_STREAM, "-", "+", "COUNT", str(REDIS_XRANGE_COUNT)),
        )
        per_request = min(REDIS_XRANGE_COUNT, length)
        entries_s = xrange.get("requests_s")
        self.cli("DEL", REDIS_STREAM)
        return {
            "xadd": xadd,
            "xrange": xrange,
            "stream_length": length,
            "produce_records_s": xadd.get("requests_s"),
            "consume_records_s": None if entries_s is None else entries_s * per_request,
        }
