"""amqplib's own test suite against Wharf, and against RabbitMQ to compare (`make
amqplib-suite`; not part of `make test`).

Takes amqplib's source (``--source DIR``, a checkout, or a ``git clone`` of the release
that node/package-lock.json pins into build/amqplib-suite/), installs its dev
dependencies (``npm ci``), starts ``wharf serve`` on free ports with a temporary data
directory, and runs ``node --test`` over the suite: once against Wharf, once against
RabbitMQ at ``--rabbitmq`` (default amqp://guest:guest@127.0.0.1:5672) if it answers.
Prints each run's counts and the tests that failed.  Nothing of amqplib is kept in the
repository.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

HERE: Final = Path(__file__).resolve().parent
REPO: Final = HERE.parents[3]
PRELOAD: Final = HERE / "suite_preload.js"
AMQPLIB_GIT: Final = "https://github.com/amqp-node/amqplib"
# Tests of Wharf's documented deviations (docs/amqp.md) that would hang the rest of their
# file if they failed (a connection amqplib never closes) are skipped on Wharf: none now.
WHARF_SKIPS: Final[tuple[str, ...]] = ()
# Per test (and per file: node applies it to each file's process as well).
TEST_TIMEOUT_MS: Final = 60_000
RUN_TIMEOUT_S: Final = 900
START_TIMEOUT_S: Final = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def pinned_version() -> str:
    lock = json.loads((HERE / "package-lock.json").read_text())
    return str(lock["packages"]["node_modules/amqplib"]["version"])


def source_tree(given: str | None) -> Path:
    if given:
        return Path(given).resolve()
    dest = REPO / "build" / "amqplib-suite" / "amqplib"
    if not dest.is_dir():
        tag = "v" + pinned_version()
        subprocess.run(
            ["git", "clone", "--quiet", "--depth", "1", "--branch", tag, AMQPLIB_GIT, str(dest)],
            check=True,
        )
    return dest


def run_suite(tree: Path, url: str, extra_env: dict[str, str]) -> str:
    env = dict(os.environ, URL=url, **extra_env)
    env["NODE_OPTIONS"] = f"{env.get('NODE_OPTIONS', '')} --require {PRELOAD}".strip()
    proc = subprocess.run(
        ["node", "--test", f"--test-timeout={TEST_TIMEOUT_MS}", "--test-reporter=tap"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    return proc.stdout + proc.stderr


def summarise(name: str, tap: str) -> None:
    counts = dict(re.findall(r"^# (tests|pass|fail|cancelled|skipped) (\d+)$", tap, re.M))
    failed = re.findall(r"^\s*not ok \d+ - (.+)$", tap, re.M)
    print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for test in failed:
        print(f"  failed: {test}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="an amqplib checkout (default: git clone)")
    parser.add_argument("--rabbitmq", default="amqp://guest:guest@127.0.0.1:5672")
    parser.add_argument("--tap-dir", help="keep each run's TAP output here")
    args = parser.parse_args()
    tree = source_tree(args.source)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=tree, check=True)
    version = json.loads((tree / "package.json").read_text())["version"]
    node_version = subprocess.check_output(["node", "-v"], text=True).strip()
    print(f"amqplib {version} test suite, node {node_version}")
    taps: dict[str, str] = {}

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="wharf-amqplib-") as data:
        wharf = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "wharf"), "serve", "--host", "127.0.0.1",
             "--port", "0", "--http-port", "0", "--tls-port", "0", "--https-port", "0",
             "--amqps-port", "0", "--amqp-port", str(port), "--data-dir", data,
             "--log-level", "warning"],
        )  # fmt: skip
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not answers("127.0.0.1", port):
                if wharf.poll() is not None or time.monotonic() > deadline:
                    print("wharf did not start", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            taps["wharf"] = run_suite(
                tree,
                f"amqp://guest:guest@127.0.0.1:{port}",
                {"AMQPLIB_REDIRECT_PORT": str(port), "AMQPLIB_SKIP": "|".join(WHARF_SKIPS)},
            )
        finally:
            wharf.send_signal(signal.SIGTERM)
            wharf.wait(timeout=30)

    rabbit = urlsplit(args.rabbitmq)
    if answers(rabbit.hostname or "127.0.0.1", rabbit.port or 5672):
        taps["rabbitmq"] = run_suite(tree, args.rabbitmq, {})
    else:
        print(f"no RabbitMQ at {args.rabbitmq}: Wharf only")
    for name, tap in taps.items():
        summarise(name, tap)
        if args.tap_dir:
            Path(args.tap_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.tap_dir) / f"{name}.tap").write_text(tap)
    return 0


if __name__ == "__main__":
    if shutil.which("node") is None:
        sys.exit("node is not installed (make node-deps installs it)")
    sys.exit(main())
