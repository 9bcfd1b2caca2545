"""``python -m benchmarks.client_suites``: the AMQP client libraries' own integration test
suites (pika, aio-pika, aiormq, and kombu's py-amqp transport) against Wharf's AMQP
listener, and against RabbitMQ for comparison.

Not part of ``make test`` (a full run takes 30-40 minutes on two cores); ``make
client-suites`` runs it.  Steps:

1. Sources, in ``--workdir`` (default /tmp/amqpsuites), at the versions installed in the
   project venv: aio-pika's, aiormq's and kombu's sdists (``pip download
   --no-binary``; they carry their tests), pika's git tag (its sdist has no tests:
   ``git clone``, or ``--pika-git`` naming a local git directory to ``git archive`` from).
2. A scratch venv there with those clients and their test dependencies (aiomisc-pytest,
   shortuuid, timeout-decorator), so nothing conflicts with ours.
3. The suites start RabbitMQ in Docker; a stand-in ``tests/docker_client.py`` (and a
   plugin with the two fixtures aiormq's sdist conftest lacks) points them at a running
   broker instead.  pika's acceptance tests have 5672 written in: they read
   ``SUITE_AMQP_PORT`` after a two-line patch.
4. Wharf: ``wharf serve`` on free ports with a temporary data directory, TLS from
   aiormq's test certificates (``amqps_port`` for the amqps variants), and the default
   ``max_message_bytes`` (128 MiB, RabbitMQ 3.x's; the suites publish 20-22 MB bodies).
   RabbitMQ is the
   one on 127.0.0.1:5672/5671 (shared/anchors/start_rabbitmq.sh).
5. Each suite on each broker with ``--junitxml``; the summary (stdout, JSON) has the
   counts per suite and broker and the tests that pass on RabbitMQ and fail on Wharf.

pika runs its blocking and async acceptance tests (asyncio and select-based ioloops; the
gevent, tornado and twisted variants need packages the suite does not install); kombu
runs ``t/integration/test_py_amqp.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from benchmarks.perf.common import free_port, log, port_open

SUITES: Final = ("pika", "aio-pika", "aiormq", "kombu")
RABBIT_HOST: Final = "127.0.0.1"
RABBIT_PORT: Final = 5672
RABBIT_TLS_PORT: Final = 5671
TEST_DEPS: Final = ("pytest", "pytest-timeout", "aiomisc", "aiomisc-pytest", "shortuuid",
                    "timeout-decorator")  # fmt: skip
PIKA_REPO: Final = "https://github.com/pika/pika"
PIKA_TESTS: Final = (
    "tests/acceptance/blocking_adapter_test.py",
    "tests/acceptance/async_adapter_tests.py",
    "tests/acceptance/enforce_one_basicget_test.py",
)
KOMBU_TESTS: Final = "t/integration/test_py_amqp.py"
TEST_TIMEOUT_S: Final = 60
SUITE_TIMEOUT_S: Final = 3600
BROKER_START_S: Final = 30.0

DOCKER_STANDIN: Final = '''"""Stand-in for the suite's docker_client: the broker already runs."""
import os
from dataclasses import dataclass


class DockerNotAvailableError(Exception):
    pass


@dataclass
class DockerHostInfo:
    is_tcp: bool = False
    socket_path: str | None = None
    host: str | None = None
    port: int | None = None

    @property
    def container_host(self) -> str:
        return os.environ.get("SUITE_AMQP_HOST", "127.0.0.1")


@dataclass
class ContainerInfo:
    id: str
    ports: dict
    host: str


def parse_docker_host(docker_host=None):
    return DockerHostInfo()


def check_docker_available():
    return DockerHostInfo()


def external_broker():
    return ContainerInfo(
        id="external",
        ports={"5672/tcp": int(os.environ.get("SUITE_AMQP_PORT", "5672")),
               "5671/tcp": int(os.environ.get("SUITE_AMQPS_PORT", "5671"))},
        host=os.environ.get("SUITE_AMQP_HOST", "127.0.0.1"),
    )


class DockerClient:
    def __init__(self, docker_host_info=None):
        self.docker_host_info = docker_host_info or DockerHostInfo()

    def run(self, image, ports, environment=None):
        return external_broker()

    def kill(self, container_id):
        pass

    def remove(self, container_id):
        pass
'''

FIXTURES_PLUGIN: Final = '''"""Fixtures aiormq's sdist conftest uses without defining them."""
import pytest
from yarl import URL

from docker_client import external_broker


@pytest.fixture(scope="session")
def rabbitmq_container():
    return external_broker()


@pytest.fixture(scope="session")
def amqp_direct_url(rabbitmq_container):
    return URL.build(scheme="amqp", user="guest", password="guest", path="//",
                     host=rabbitmq_container.host,
                     port=rabbitmq_container.ports["5672/tcp"])
'''

PIKA_PATCHES: Final = (
    (
        "tests/acceptance/blocking_adapter_test.py",
        "DEFAULT_URL = PARAMS_URL_TEMPLATE % {'port': 5672}",
        "import os\nDEFAULT_URL = PARAMS_URL_TEMPLATE % "
        "{'port': int(os.environ.get('SUITE_AMQP_PORT', '5672'))}",
    ),
    (
        "tests/base/async_test_base.py",
        "return pika.ConnectionParameters(host='localhost', port=5672)",
        "import os\n        return pika.ConnectionParameters(host='localhost', "
        "port=int(os.environ.get('SUITE_AMQP_PORT', '5672')))",
    ),
)


def run(cmd: list[str], cwd: Path | None = None, **kw: Any) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, cwd=cwd, check=True, **kw)


def installed(name: str) -> str:
    return metadata.version(name)


def fetch_sources(work: Path, pika_git: str | None) -> dict[str, Path]:
    """Each suite's source tree (tests included) under ``work``."""
    sdist = work / "sdist"
    sdist.mkdir(parents=True, exist_ok=True)
    trees: dict[str, Path] = {}
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(sdist)]
    for name, prefix in (("aio-pika", "aio_pika"), ("aiormq", "aiormq"), ("kombu", "kombu")):
        version = installed(name)
        tree = work / f"{prefix}-{version}"
        if not tree.exists():
            run([*pip, "--no-binary", name, f"{name}=={version}"])
            run(["tar", "xzf", str(sdist / f"{prefix}-{version}.tar.gz"), "-C", str(work)])
        trees[name] = tree
    version = installed("pika")
    tree = work / f"pika-{version}-src"
    if not tree.exists():
        if pika_git:
            tree.mkdir()
            archive = subprocess.run(
                ["git", f"--git-dir={pika_git}", "archive", version],
                check=True,
                capture_output=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        else:
            run(["git", "clone", "-q", "--depth", "1", "--branch", version, PIKA_REPO, str(tree)])
        for rel, old, new in PIKA_PATCHES:
            path = tree / rel
            text = path.read_text()
            if old not in text:
                raise SystemExit(f"pika {version}: cannot point {rel} at another port")
            path.write_text(text.replace(old, new))
    trees["pika"] = tree
    shim = work / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "docker_client.py").write_text(DOCKER_STANDIN)
    (shim / "suite_fixtures.py").write_text(FIXTURES_PLUGIN)
    for name in ("aio-pika", "aiormq"):
        (trees[name] / "tests" / "docker_client.py").write_text(DOCKER_STANDIN)
    return trees


def scratch_venv(work: Path) -> Path:
    venv = work / "venv"
    python = venv / "bin" / "python"
    if not python.exists():
        run([sys.executable, "-m", "venv", str(venv)])
    wanted = [f"{n}=={installed(n)}" for n in (*SUITES, "amqp")] + list(TEST_DEPS)
    stamp = venv / "requirements.txt"
    if not stamp.exists() or stamp.read_text().split() != wanted:
        run([str(python), "-m", "pip", "install", "-q", *wanted])
        stamp.write_text("\n".join(wanted))
    return python


class Wharf:
    """``wharf serve`` on free ports, TLS from aiormq's test certificates."""

    def __init__(self, work: Path, certs: Path) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="wharf-suites-", dir=work))
        self.amqp_port = free_port()
        self.amqps_port = free_port()
        wharf = Path(sys.executable).with_name("wharf")
        cmd = [str(wharf), "serve", "--host", "127.0.0.1", "--data-dir", str(self.data)]
        for opt in ("--port", "--http-port", "--tls-port", "--https-port"):
            cmd += [opt, str(free_port())]
        cmd += ["--amqp-port", str(self.amqp_port), "--amqps-port", str(self.amqps_port)]
        cmd += ["--tls-cert-file", str(certs / "server.pem")]
        cmd += ["--tls-key-file", str(certs / "server.key")]
        cmd += ["--tls-ca-file", str(certs / "ca.pem"), "--tls-client-auth", "optional"]
        cmd += ["--log-level", "warning"]
        env = dict(os.environ)
        self.log_path = self.data / "wharf.log"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                ["nice", "-n", "10", *cmd], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + BROKER_START_S
        while not port_open("127.0.0.1", self.amqp_port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"wharf did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.data, ignore_errors=True)


def run_suite(
    python: Path, suite: str, tree: Path, shim: Path, port: int, tls_port: int, xml: Path,
    keyword: str | None,
) -> None:  # fmt: skip
    env = {
        **os.environ,
        "SUITE_AMQP_PORT": str(port),
        "SUITE_AMQPS_PORT": str(tls_port),
        "PYTHONPATH": str(shim),
        "RABBITMQ_HOST": "127.0.0.1",  # kombu's
        "RABBITMQ_5672_TCP": str(port),
    }
    cmd = ["nice", "-n", "10", str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += ["--timeout", str(TEST_TIMEOUT_S), f"--junitxml={xml}"]
    if suite == "pika":
        pika_only = "not gevent and not tornado"
        keyword = f"({pika_only}) and ({keyword})" if keyword else pika_only
        cmd += PIKA_TESTS
    elif suite == "kombu":
        cmd += ["-W", "ignore", KOMBU_TESTS]
    else:
        cmd += ["-o", "log_cli=false"]
        if suite == "aiormq":
            cmd += ["-p", "suite_fixtures"]
        cmd += ["tests"]
    if keyword:
        cmd += ["-k", keyword]
    log(f"{suite}: {' '.join(cmd)}")
    with xml.with_suffix(".log").open("wb") as out:
        subprocess.run(
            cmd, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=SUITE_TIMEOUT_S
        )


def outcomes(xml: Path) -> dict[str, str]:
    """test id -> passed / failed / skipped, from a junit file."""
    out: dict[str, str] = {}
    if not xml.exists():
        return out
    for case in ET.parse(xml).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            out[name] = "failed"
        elif case.find("skipped") is not None:
            out.setdefault(name, "skipped")
        else:
            out.setdefault(name, "passed")
    return out


def counts(results: dict[str, str]) -> dict[str, int]:
    c = {"passed": 0, "failed": 0, "skipped": 0}
    for v in results.values():
        c[v] += 1
    return c


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--workdir", default="/tmp/amqpsuites")
    p.add_argument(
        "--suites", default=",".join(SUITES), help="comma-separated: " + ",".join(SUITES)
    )
    p.add_argument("--brokers", default="wharf,rabbitmq", help="wharf, rabbitmq or both")
    p.add_argument("--pika-git", help="a local git directory of pika to archive the tag from")
    p.add_argument("-k", dest="keyword", help="pytest -k expression for every suite")
    args = p.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    suites = [s for s in args.suites.split(",") if s]
    brokers = [b for b in args.brokers.split(",") if b]
    trees = fetch_sources(work, args.pika_git)
    python = scratch_venv(work)
    results_dir = work / "results"
    results_dir.mkdir(exist_ok=True)
    summary: dict[str, Any] = {"versions": {s: installed(s) for s in SUITES}, "suites": {}}
    found: dict[tuple[str, str], dict[str, str]] = {}
    for broker in brokers:
        server: Wharf | None = None
        if broker == "wharf":
            server = Wharf(work, trees["aiormq"] / "tests" / "certs")
            port, tls_port = server.amqp_port, server.amqps_port
        else:
            if not port_open(RABBIT_HOST, RABBIT_PORT):
                log("RabbitMQ is not on 127.0.0.1:5672 (shared/anchors/start_rabbitmq.sh)")
                continue
            port, tls_port = RABBIT_PORT, RABBIT_TLS_PORT
        try:
            for suite in suites:
                xml = results_dir / f"{suite}-{broker}.xml"
                xml.unlink(missing_ok=True)
                run_suite(
                    python, suite, trees[suite], work / "shim", port, tls_port, xml, args.keyword
                )
                found[(suite, broker)] = outcomes(xml)
        finally:
            if server is not None:
                server.stop()
    for suite in suites:
        entry: dict[str, Any] = {
            b: counts(found[(suite, b)]) for b in brokers if (suite, b) in found
        }
        wharf, rabbit = found.get((suite, "wharf")), found.get((suite, "rabbitmq"))
        if wharf is not None and rabbit is not None:
            entry["fail_on_wharf_only"] = sorted(
                t for t, v in wharf.items() if v == "failed" and rabbit.get(t) == "passed"
            )
        summary["suites"][suite] = entry
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
