"""Deployment files agree with the broker: the Grafana dashboard only queries metrics a real
broker exports, docker-compose.yml only mounts files that exist, and the Dockerfile has the
instructions operators rely on (docs/operations.md).

No Docker here: the image itself is built and run by scripts/build_image.sh (not in CI).
The YAML files are read line by line, without PyYAML (not a dependency).
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import wharf
from wharf.broker.config import DEFAULT_HTTP_PORT, DEFAULT_PORT, load_settings
from wharf.broker.server import Broker

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "wharf.json"
DATASOURCES_DIR = REPO / "deploy" / "grafana" / "provisioning" / "datasources"
DASHBOARD_PROVIDERS_DIR = REPO / "deploy" / "grafana" / "provisioning" / "dashboards"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus.yml"
COMPOSE_BROKER_CONFIG = REPO / "deploy" / "wharf.toml"
DATA_VOLUME = "/var/lib/wharf"
TIMEOUT_S = 5.0

# --- PromQL: metric names referenced by an expression --------------------------------------

_PROMQL_WORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
# Label lists after by/without/on/ignoring/group_left/group_right name labels, not metrics.
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(\s*\()?")
_NUMBER_WITH_UNIT = re.compile(r"\b\d+(?:\.\d+)?[smhdwy]\b")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names or inside strings, label matchers or ranges.  Names are kept as written
    (``wharf_messages_published_total``, ``..._bucket``), which is how Prometheus stores
    the series, so they are compared with the sample names of a scrape."""
    text = _STRING.sub('""', expr)
    text = _LABEL_MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub(" ", text)
    text = _NUMBER_WITH_UNIT.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _PROMQL_WORDS:
            continue
        names.add(name)
    return names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("wharf_connections", {"wharf_connections"}),
        ('wharf_queues{job="wharf", instance=~"$instance"}', {"wharf_queues"}),
        (
            'rate(wharf_messages_published_total{job="wharf"}[1m])',
            {"wharf_messages_published_total"},
        ),
        (
            'sum by (queue) (wharf_queue_messages_ready{queue!~"amq.*"}) '
            "/ on(instance) group_left wharf_queues",
            {"wharf_queue_messages_ready", "wharf_queues"},
        ),
        (
            "histogram_quantile(0.99, sum without(le) (rate(x_seconds_bucket[5m] offset 1h)))",
            {"x_seconds_bucket"},
        ),
        (
            "max_over_time(process_resident_memory_bytes[1h:1m]) > 2e9",
            {"process_resident_memory_bytes"},
        ),
        ('label_replace(up, "a", "$1", "b", "(.*)") == bool 1', {"up"}),
    ],
)
def test_metric_names_of_promql(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def _exprs(node: Any) -> list[str]:
    """Every "expr" string anywhere in the dashboard (panels, rows' nested panels...)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_exprs(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_exprs(item))
    return found


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


# --- a real broker's /metrics ---------------------------------------------------------------


async def _scrape_sample_names(port: int) -> set[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(TIMEOUT_S):
            data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return {
        sample.name
        for family in text_string_to_metric_families(body.decode("utf-8"))
        for sample in family.samples
    }


async def test_every_metric_the_dashboard_queries_is_exported(
    broker: Broker, conn: wharf.Connection
) -> None:
    # Per-queue series exist only once a queue does.
    await conn.declare_queue("deploy-dashboard-check")
    await conn.publish("", "deploy-dashboard-check", b"x")
    exported = await _scrape_sample_names(broker.http_port)

    exprs = _exprs(_dashboard())
    assert exprs, "the dashboard has no queries"
    referenced: dict[str, str] = {}
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric name found in {expr!r}"
        for name in names:
            referenced.setdefault(name, expr)
    missing = {name: expr for name, expr in referenced.items() if name not in exported}
    assert not missing, f"dashboard queries metrics the broker does not export: {missing}"


def test_dashboard_has_the_operations_panels() -> None:
    exprs = _exprs(_dashboard())
    names = set().union(*(metric_names(e) for e in exprs))
    for required in (
        "wharf_queue_messages_ready",
        "wharf_queue_messages_unacked",
        "wharf_queue_consumers",
        "wharf_consumers",
        "wharf_connections",
        "process_resident_memory_bytes",
        "wharf_alarm",
        "wharf_store_bytes",
        "wharf_store_fsyncs_total",
    ):
        assert required in names, required
    for counter in ("published", "delivered", "acked"):
        name = f"wharf_messages_{counter}_total"
        assert any(re.search(rf"\brate\(\s*{name}\b[^)]*\[1m\]", e) for e in exprs), name
    # A raw counter graphs as an ever-growing line: counters are only used through rate().
    for expr in exprs:
        for name in metric_names(expr):
            if name.endswith("_total"):
                assert re.search(rf"\b(?:i?rate|increase)\(\s*{name}\b", expr), expr


def _yaml_value(path: Path, key: str) -> list[str]:
    """Values of ``key: value`` lines anywhere in a simple YAML file (quotes stripped)."""
    pattern = re.compile(rf"^\s*-?\s*{re.escape(key)}:\s*(.+?)\s*$")
    values = []
    for line in path.read_text().splitlines():
        match = pattern.match(line.split(" #", 1)[0])
        if match:
            values.append(match.group(1).strip("\"'"))
    return values


def test_dashboard_uses_the_provisioned_datasource() -> None:
    dashboard = _dashboard()
    assert dashboard["title"] == "Wharf"
    assert dashboard["uid"]
    provisioned_uids = {uid for f in DATASOURCES_DIR.glob("*.yml") for uid in _yaml_value(f, "uid")}
    assert provisioned_uids, "no datasource uid provisioned"
    ids = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            ids.append(panel["id"])
            assert "gridPos" in panel, panel["title"]
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] in provisioned_uids, panel["title"]

    walk(dashboard["panels"])
    assert len(ids) == len(set(ids)), "panel ids must be unique"


# --- docker-compose.yml and the files it mounts ---------------------------------------------

_VOLUME_ENTRY = re.compile(r"""^\s*-\s*["']?(\.{1,2}/[^:"'\s]+):([^:"'\s]+)""")


def _compose_bind_mounts() -> list[tuple[str, str]]:
    """(host path, container path) of every ``- ./path:/target[:mode]`` line."""
    mounts = []
    for line in COMPOSE.read_text().splitlines():
        match = _VOLUME_ENTRY.match(line.split(" #", 1)[0])
        if match:
            mounts.append((match.group(1), match.group(2)))
    return mounts


def test_every_file_the_compose_file_mounts_exists() -> None:
    mounts = _compose_bind_mounts()
    sources = {source for source, _ in mounts}
    assert {
        "./deploy/prometheus.yml",
        "./deploy/grafana/provisioning",
        "./deploy/grafana/dashboards",
        "./deploy/wharf.toml",
    } <= sources, sources
    for source, _target in mounts:
        assert (COMPOSE.parent / source).exists(), f"docker-compose.yml mounts missing {source}"
    text = COMPOSE.read_text()
    assert re.search(r"^\s*build:\s*\.\s*$", text, re.MULTILINE), "wharf is built from ."
    assert f":{DATA_VOLUME}" in text, "the broker's data directory is a volume"
    assert "healthcheck:" in text


def test_grafana_and_prometheus_configs_point_at_each_other() -> None:
    mounts = dict(_compose_bind_mounts())
    # The dashboard provider reads the directory compose mounts the dashboards into.
    provider_paths = {
        p for f in DASHBOARD_PROVIDERS_DIR.glob("*.yml") for p in _yaml_value(f, "path")
    }
    assert mounts["./deploy/grafana/dashboards"] in provider_paths
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    # Prometheus scrapes the compose service on the broker's HTTP port every 5 s.
    prometheus = PROMETHEUS_CONFIG.read_text()
    assert f'"wharf:{DEFAULT_HTTP_PORT}"' in prometheus
    assert "scrape_interval: 5s" in prometheus
    assert "/metrics" in prometheus
    assert mounts["./deploy/prometheus.yml"] == "/etc/prometheus/prometheus.yml"


def test_compose_broker_config_is_valid_and_has_a_network_user() -> None:
    settings = load_settings(str(COMPOSE_BROKER_CONFIG), {}, environ={})
    # guest/guest is loopback-only, so a container needs a user of its own.
    assert settings.users
    assert settings.default_user_enabled is False


# --- Dockerfile -------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends in a line continuation"
    return instructions


def _all(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in instructions if kw == keyword]


def test_dockerfile_has_what_operators_rely_on() -> None:
    ins = _dockerfile_instructions()
    assert ins[0][0] == "ARG" and ins[0][1].startswith("BASE="), "ARG BASE=... comes first"
    froms = _all(ins, "FROM")
    assert len(froms) >= 2, "multi-stage: a builder and a runtime stage"
    assert all(f.split()[0] == "${BASE}" for f in froms), froms

    users = _all(ins, "USER")
    assert users and users[-1] not in ("root", "0"), "runs as a non-root user"
    exposed = {p.split("/")[0] for args in _all(ins, "EXPOSE") for p in args.split()}
    assert {str(DEFAULT_PORT), str(DEFAULT_HTTP_PORT)} <= exposed
    assert any(DATA_VOLUME in args for args in _all(ins, "VOLUME"))
    env = " ".join(_all(ins, "ENV"))
    assert f"WHARF_DATA_DIR={DATA_VOLUME}" in env

    healthchecks = _all(ins, "HEALTHCHECK")
    assert len(healthchecks) == 1
    assert "/healthz" in healthchecks[0] and "urllib" in healthchecks[0]
    assert json.loads(_all(ins, "ENTRYPOINT")[-1]) == ["wharf"]
    assert json.loads(_all(ins, "CMD")[-1]) == ["serve"]


def test_dockerfile_copies_only_what_exists() -> None:
    for args in _all(_dockerfile_instructions(), "COPY"):
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        if any(a.startswith("--from") for a in shlex.split(args)):
            continue
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"COPY of missing {source}"
