"""Shared pieces of the benchmark scenarios: the broker under test, clocks, figures.

Every scenario either starts its own broker subprocess (free ports, temporary data
directory, waits for ``/readyz``) or uses a running one given by ``--url``.  Producers and
consumers run in separate processes; they share one clock (``time.time_ns``, the same
machine) and every message body starts with the 8-byte big-endian send time in ns.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import uvloop

DEFAULT_NATIVE_PORT: Final = 5680
DEFAULT_TLS_PORT: Final = 5681
DEFAULT_HTTP_PORT: Final = 8680
BROKER_READY_TIMEOUT_S: Final = 30.0
BROKER_STOP_TIMEOUT_S: Final = 15.0
STAMP_BYTES: Final = 8
# Poll interval of the orchestrator and of the workers' stop watchers.
POLL_S: Final = 0.02

T = TypeVar("T")


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the result JSON."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


def stamp(pad: bytes) -> bytes:
    """A body: the send time (ns, big-endian) followed by ``pad``."""
    return time.time_ns().to_bytes(STAMP_BYTES, "big") + pad


def padding(size: int) -> bytes:
    if size < STAMP_BYTES:
        raise SystemExit(f"--size must be at least {STAMP_BYTES} bytes (the timestamp)")
    return b"x" * (size - STAMP_BYTES)


def percentiles_ms(latencies_ns: list[int]) -> dict[str, float | None]:
    """p50/p99/p99.9/max in ms, indexed like the RabbitMQ anchor (``int(p * (n - 1))``)."""
    if not latencies_ns:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    lats = sorted(latencies_ns)
    last = len(lats) - 1

    def pct(p: float) -> float:
        return round(lats[int(p * last)] / 1e6, 3)

    return {"p50_ms": pct(0.5), "p99_ms": pct(0.99), "p999_ms": pct(0.999), "max_ms": pct(1.0)}


def rate(count: int, start_ns: int, end_ns: int) -> int | None:
    if end_ns <= start_ns:
        return None
    return round(count * 1e9 / (end_ns - start_ns))


@dataclass(frozen=True)
class Target:
    """Where the broker under test listens, and how to observe it."""

    host: str
    port: int
    username: str
    password: str
    http_url: str | None
    pid: int | None
    # TLS (wharfs://): the CA file that signed the broker's certificate; None for plain.
    cafile: str | None = None

    @property
    def url(self) -> str:
        if self.cafile is not None:
            return (
                f"wharfs://{self.username}:{self.password}@{self.host}:{self.port}"
                f"?cafile={self.cafile}"
            )
        return f"wharf://{self.username}:{self.password}@{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client context for the raw protocol client (None: plain)."""
        if self.cafile is None:
            return None
        return ssl.create_default_context(cafile=self.cafile)


def parse_url(url: str, http_url: str | None, pid: int | None) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("wharf", "wharfs"):
        raise SystemExit(
            "--url must look like wharf://user:pass@host:port or "
            f"wharfs://user:pass@host:port?cafile=ca.pem, got {url!r}"
        )
    tls = parts.scheme == "wharfs"
    cafile = dict(parse_qsl(parts.query)).get("cafile") if tls else None
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (DEFAULT_TLS_PORT if tls else DEFAULT_NATIVE_PORT)
    if http_url is None:
        http_url = f"http://{host}:{DEFAULT_HTTP_PORT}"
    if pid is None and host in ("127.0.0.1", "localhost", "::1"):
        pid = find_listener_pid(port)
    return Target(
        host=host,
        port=port,
        username=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        http_url=http_url.rstrip("/"),
        pid=pid,
        cafile=cafile,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""


def broker_command(port: int, http_port: int, data_dir: str) -> list[str]:
    """The console script next to this interpreter (it runs uvloop), else ``-m``."""
    script = Path(sys.executable).with_name("wharf")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "wharf.broker.cli.main"]
    return [
        *head,
        "serve",
        "--port",
        str(port),
        "--http-port",
        str(http_port),
        "--amqp-port",  # off: RabbitMQ may hold 5672 while the two are compared
        "0",
        "--data-dir",
        data_dir,
    ]


def tls_files(directory: str) -> tuple[str, str, str]:
    """(ca.pem, cert.pem, key.pem) in ``directory``, made with trustme if missing (a CA
    and a certificate for 127.0.0.1 and localhost).  Give the same files to RabbitMQ
    (RABBIT_TLS_CA/CERT/KEY) and its client (AMQP_CAFILE) to compare on equal terms."""
    d = Path(directory)
    ca, cert, key = d / "ca.pem", d / "cert.pem", d / "key.pem"
    if not (ca.exists() and cert.exists() and key.exists()):
        import trustme  # a dev dependency: only the --tls benchmarks need it

        d.mkdir(parents=True, exist_ok=True)
        authority = trustme.CA()
        leaf = authority.issue_cert("127.0.0.1", "localhost")
        authority.cert_pem.write_to_path(str(ca))
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        log(f"TLS certificates written to {d}")
    return str(ca), str(cert), str(key)


@contextlib.contextmanager
def local_broker(extra_args: Sequence[str] = (), tls_dir: str | None = None) -> Iterator[Target]:
    """Start a broker on free ports with a temporary data dir; stop it afterwards.

    With ``tls_dir``, the broker also listens for TLS (certificates from
    :func:`tls_files`) and the target is its TLS port (wharfs://).
    """
    data_dir = tempfile.mkdtemp(prefix="wharf-bench-")
    port, http_port = free_port(), free_port()
    while http_port == port:
        http_port = free_port()
    log_path = Path(data_dir) / "broker.log"
    cmd = [*broker_command(port, http_port, str(Path(data_dir) / "data")), *extra_args]
    cafile: str | None = None
    target_port = port
    if tls_dir is not None:
        cafile, cert, key = tls_files(tls_dir)
        target_port = free_port()
        cmd += ["--tls-port", str(target_port), "--https-port", str(free_port())]
        cmd += ["--tls-cert-file", cert, "--tls-key-file", key]
    log(f"starting broker: {' '.join(cmd)}")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    http_url = f"http://127.0.0.1:{http_port}"
    try:
        _wait_ready(proc, http_url, target_port, log_path)
        yield Target("127.0.0.1", target_port, "guest", "guest", http_url, proc.pid, cafile)
    finally:
        _stop(proc)
        if proc.returncode not in (0, -signal.SIGTERM):
            log(f"broker exited with {proc.returncode}; log tail:\n{_tail(log_path)}")
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def broker_target(
    url: str | None,
    http_url: str | None = None,
    pid: int | None = None,
    tls_dir: str | None = None,
) -> Iterator[Target]:
    if url:
        yield parse_url(url, http_url, pid)
    else:
        with local_broker(tls_dir=tls_dir) as target:
            yield target


def _wait_ready(proc: subprocess.Popen[bytes], http_url: str, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + BROKER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"broker exited with {proc.returncode} during start-up:\n{_tail(log_path)}"
            )
        try:
            status, _ = http_get(f"{http_url}/readyz", timeout_s=1.0)
        except OSError:
            status = 0
        if status == 200 and port_open("127.0.0.1", port):
            return
        time.sleep(0.1)
    _stop(proc)
    raise SystemExit(f"broker not ready within {BROKER_READY_TIMEOUT_S}s:\n{_tail(log_path)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(BROKER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log("broker ignored SIGTERM; killing it")
        proc.kill()
        proc.wait()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return "(no broker log)"


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status (VmRSS is in kB)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def find_listener_pid(port: int) -> int | None:
    """The pid of the local process listening on TCP ``port`` (Linux /proc), if visible."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as rows:
                next(rows, None)
                for row in rows:
                    cols = row.split()
                    # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
                    if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":
                        inodes.add(cols[9])
        except OSError:
            continue
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in wanted:
                    return int(entry)
        except OSError:
            continue
    return None


def scrape_metric(http_url: str, name: str, labels: dict[str, str]) -> float | None:
    """One sample of a Prometheus metric whose labels include ``labels``; None if absent."""
    try:
        status, text = http_get(f"{http_url}/metrics")
    except OSError:
        return None
    if status != 200:
        return None
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name) :]
        if rest[:1] not in ("{", " "):
            continue
        if all(w in rest for w in wanted):
            return float(line.rsplit(None, 1)[1])
    return None


def unique_name(prefix: str) -> str:
    return f"{prefix}_{time.time_ns()}"
