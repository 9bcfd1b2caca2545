"""``python -m benchmarks amqp``: the RabbitMQ raw-client anchor against RabbitMQ and against
Wharf's AMQP 0-9-1 listener, side by side.

The client is the same program on both sides: ``rabbit_raw.py COUNT SIZE [durable]`` from
the anchors directory, run with the anchor venv's Python (pamqp, uvloop).  It pre-encodes
basic.publish frames and writes them in batches of 500 on one connection, and consumes on
a second one (basic.qos prefetch 2000, one cumulative basic.ack per socket read);
``durable`` adds a durable queue, persistent messages and publisher confirms.  RabbitMQ is
the one on 127.0.0.1:5672 (the anchor's default address); Wharf is started fresh for every
measurement (``wharf serve`` on free ports, ``--amqp-port`` on a free port, a temporary
data directory) and the anchor is pointed at it with ``AMQP_PORT``.

Every run measures each scenario on both brokers, the order flipping from run to run so
that drift in the machine's load does not favour one of them.  The headline is the median
of the per-run ratios Wharf / RabbitMQ of end-to-end msg/s (> 1: Wharf is faster), as in
``benchmarks compare``.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

from benchmarks.compare import (
    DEFAULT_ANCHOR_PYTHON,
    DEFAULT_ANCHORS,
    RABBIT_HOST,
    RABBIT_PORT,
    _median,
    _median_figures,
    _rabbit_problem,
    _ratio,
)
from benchmarks.perf.common import emit, free_port, local_broker, log, port_open

SCENARIOS: Final = ("transient", "durable")
FIGURES: Final = ("publish_msgs_s", "confirmed_msgs_s", "end_to_end_msgs_s", "broker_cpu_s")
# Targets of issue 14: end-to-end msg/s over AMQP, Wharf / RabbitMQ, same client.
TARGET_RATIOS: Final = {"transient": 1.5, "durable": 3.0}
DEFAULT_TIMEOUT_S: Final = 300.0
ANCHOR_BATCH: Final = 500  # messages per write in rabbit_raw.py
AMQP_READY_TIMEOUT_S: Final = 10.0
AMQP_READY_POLL_S: Final = 0.05
CLOCK_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` (None once it is gone, or unknown)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def _beam_pid() -> int | None:
    """RabbitMQ's Erlang VM, if exactly one runs here (for its CPU seconds)."""
    out = subprocess.run(
        ["ps", "-C", "beam.smp", "-o", "pid="], capture_output=True, text=True, check=False
    ).stdout.split()
    return int(out[0]) if len(out) == 1 else None


def _anchor(
    anchor_python: str, script: Path, args: list[str], port: int, timeout_s: float
) -> dict[str, Any]:
    """Run the anchor once against 127.0.0.1:``port``; its JSON line, or an error."""
    env = {**os.environ, "AMQP_HOST": RABBIT_HOST, "AMQP_PORT": str(port)}
    env.pop("AMQP_CAFILE", None)  # plain TCP on both sides
    cmd = [anchor_python, str(script), *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no result after {timeout_s:.0f} s: {' '.join(cmd)} (port {port})"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                result: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            return result
    tail = proc.stderr.strip()[-500:]
    return {"error": f"exit {proc.returncode}, no JSON from {' '.join(cmd)}: {tail}"}


def _wharf(anchor_python: str, script: Path, args: list[str], timeout_s: float) -> dict[str, Any]:
    """A fresh Wharf with its AMQP listener on a free port, and the anchor against it."""
    amqp_port = free_port()
    with local_broker(["--amqp-port", str(amqp_port)]) as target:
        deadline = time.monotonic() + AMQP_READY_TIMEOUT_S
        while not port_open(RABBIT_HOST, amqp_port):
            if time.monotonic() > deadline:
                return {"error": f"Wharf's AMQP port {amqp_port} did not open"}
            time.sleep(AMQP_READY_POLL_S)
        cpu_before = _cpu_s(target.pid) if target.pid else None
        result = _anchor(anchor_python, script, args, amqp_port, timeout_s)
        cpu_after = _cpu_s(target.pid) if target.pid else None
    if cpu_before is not None and cpu_after is not None:
        result["broker_cpu_s"] = round(cpu_after - cpu_before, 2)
    return result


def amqp_compare(
    *,
    scenarios: list[str],
    runs: int,
    count: int,
    size: int,
    anchors: str,
    anchor_python: str,
    timeout_s: float,
) -> dict[str, Any]:
    script = Path(anchors) / "rabbit_raw.py"
    rabbit_problem = _rabbit_problem(anchors, anchor_python)
    if rabbit_problem:
        log(rabbit_problem)
    out: dict[str, Any] = {
        "scenario": "amqp",
        "client": f"{script} {count} {size} [durable] (the same on both brokers)",
        "runs": runs,
        "count": count,
        "size": size,
        "rabbitmq": rabbit_problem or f"reachable on {RABBIT_HOST}:{RABBIT_PORT}",
        "load_before": _load(),
    }
    if not script.exists() or not os.access(anchor_python, os.X_OK):
        out["error"] = f"need {script} and {anchor_python} (the anchor venv)"
        return out
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in scenarios}
    for i in range(runs):
        for scenario in scenarios:
            args = [str(count), str(size)] + (["durable"] if scenario == "durable" else [])
            row: dict[str, Any] = {"run": i + 1, "load_before": _load()}
            order = ["rabbitmq", "wharf"] if rabbit_problem is None else ["wharf"]
            if i % 2:
                order.reverse()
            for name in order:
                log(f"{scenario} run {i + 1}/{runs}: {name}")
                if name == "rabbitmq":
                    beam = _beam_pid()
                    cpu_before = _cpu_s(beam) if beam else None
                    row[name] = _anchor(anchor_python, script, args, RABBIT_PORT, timeout_s)
                    cpu_after = _cpu_s(beam) if beam else None
                    if cpu_before is not None and cpu_after is not None:
                        row[name]["broker_cpu_s"] = round(cpu_after - cpu_before, 2)
                else:
                    row[name] = _wharf(anchor_python, script, args, timeout_s)
                log(f"{scenario} run {i + 1}/{runs}: {name}: {row[name]}")
            row["ratio"] = _ratio(
                (row.get("wharf") or {}).get("end_to_end_msgs_s"),
                (row.get("rabbitmq") or {}).get("end_to_end_msgs_s"),
            )
            rows[scenario].append(row)
    targets: dict[str, Any] = {}
    for scenario, scenario_rows in rows.items():
        ratio = _median([r.get("ratio") for r in scenario_rows])
        out[scenario] = {
            "runs": scenario_rows,
            "median_rabbitmq": _median_figures(scenario_rows, "rabbitmq", FIGURES),
            "median_wharf": _median_figures(scenario_rows, "wharf", FIGURES),
            "median_ratio": ratio,
        }
        goal = TARGET_RATIOS[scenario]
        targets[f"{scenario}_ge_{goal}x"] = None if ratio is None else ratio >= goal
    out["targets"] = targets
    out["load_after"] = _load()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks amqp", description=__doc__)
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated subset of transient,durable (durable: durable queue, "
        "persistent messages, publisher confirms)",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=300_000, help="messages per measurement")
    parser.add_argument("--size", type=int, default=100, help="body bytes")
    parser.add_argument("--anchors", default=DEFAULT_ANCHORS)
    parser.add_argument("--anchor-python", default=DEFAULT_ANCHOR_PYTHON)
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per measurement"
    )
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown or not chosen:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    if args.runs <= 0 or args.count <= 0 or args.size <= 0:
        parser.error("--runs, --count and --size must be > 0")
    if args.count % ANCHOR_BATCH:
        # The anchor publishes count // 500 batches and then waits for count deliveries.
        parser.error(f"--count must be a multiple of {ANCHOR_BATCH}")
    result = amqp_compare(
        scenarios=chosen,
        runs=args.runs,
        count=args.count,
        size=args.size,
        anchors=args.anchors,
        anchor_python=args.anchor_python,
        timeout_s=args.timeout,
    )
    emit(result)
    failed = any(
        "error" in (r.get(name) or {})
        for s in chosen
        for r in result.get(s, {}).get("runs", [])
        for name in ("rabbitmq", "wharf")
    )
    return 1 if failed or "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
