"""Side by side with RabbitMQ: each anchor and its Wharf scenario, alternately, N runs.

Machines vary from run to run, so every figure is paired with the other broker measured
right next to it, and the headline is the median of the per-run ratios (oriented so that
> 1 means Wharf is better): wharf/rabbit for throughput, rabbit_p99/wharf_p99 for
latency, rabbit_bytes/wharf_bytes for memory.  The runs alternate which broker goes
first so that drift in the machine's load does not favour one of them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from benchmarks.perf.common import log, port_open

DEFAULT_ANCHORS: Final = "/work/shared/anchors"
DEFAULT_ANCHOR_PYTHON: Final = "/tmp/anchor-venv/bin/python"
RABBIT_HOST: Final = "127.0.0.1"  # the anchors connect here, hard-coded
RABBIT_PORT: Final = 5672
RUN_TIMEOUT_S: Final = 1800.0
# ``python -m benchmarks`` needs the repository root as its working directory.
REPO_ROOT: Final = Path(__file__).resolve().parent.parent
SCENARIOS: Final = ("throughput", "durable", "latency", "mem")
# Targets the product card sets (see benchmarks/README.md).
TARGET_THROUGHPUT_RATIO: Final = 2.0
TARGET_LATENCY_RATIO: Final = 1.0
TARGET_RSS_BYTES_PER_MSG: Final = 400
# RabbitMQ hands a deleted queue's memory back to the OS only after ~30 s; the mem anchor
# reads beam's RSS as its baseline, so wait until that RSS is steady before each run.
BEAM_SETTLE_POLL_S: Final = 2.5
BEAM_SETTLE_WINDOW: Final = 5  # readings that must agree (10 s)
BEAM_SETTLE_TOLERANCE: Final = 0.02
BEAM_SETTLE_TIMEOUT_S: Final = 180.0


def compare(
    *,
    scenarios: list[str],
    runs: int,
    anchors: str,
    anchor_python: str,
    count: int,
    size: int,
    msg_rate: int,
    seconds: int,
    mem_count: int,
    raw: bool,
    sdk: bool,
) -> dict[str, Any]:
    rabbit_problem = _rabbit_problem(anchors, anchor_python)
    if rabbit_problem:
        log(rabbit_problem)
    out: dict[str, Any] = {
        "scenario": "compare",
        "runs": runs,
        "rabbitmq": rabbit_problem or f"reachable on {RABBIT_HOST}:{RABBIT_PORT}",
    }
    anchor_dir = Path(anchors)
    for scenario in scenarios:
        wharf_cmds: dict[str, list[str]] = {}
        if scenario == "throughput":
            anchor = [str(anchor_dir / "rabbit_raw.py"), str(count), str(size)]
            common = ["--count", str(count), "--size", str(size)]
            if sdk:
                wharf_cmds["wharf_sdk"] = ["throughput", *common]
            if raw:
                wharf_cmds["wharf_raw"] = ["throughput", "--raw", *common]
        elif scenario == "durable":
            # durable queue, persistent messages, publisher confirms: fsync before confirm
            anchor = [str(anchor_dir / "rabbit_raw.py"), str(count), str(size), "durable"]
            common = ["--persistent", "--count", str(count), "--size", str(size)]
            if sdk:
                wharf_cmds["wharf_sdk"] = ["throughput", *common]
            if raw:
                wharf_cmds["wharf_raw"] = ["throughput", "--raw", *common]
        elif scenario == "latency":
            anchor = [str(anchor_dir / "rabbit_latency_mem.py"), "latency"]
            anchor += [str(msg_rate), str(seconds)]
            common = ["--rate", str(msg_rate), "--seconds", str(seconds)]
            if sdk:
                wharf_cmds["wharf_sdk"] = ["latency", *common]
            if raw:
                wharf_cmds["wharf_raw"] = ["latency", "--raw", *common]
        else:
            anchor = [str(anchor_dir / "rabbit_latency_mem.py"), "mem", str(mem_count), str(size)]
            wharf_cmds["wharf"] = ["mem", "--count", str(mem_count), "--size", str(size)]
        out[scenario] = _compare_one(
            scenario, runs, None if rabbit_problem else [anchor_python, *anchor], wharf_cmds
        )
    out["targets"] = _targets(out)
    return out


def _compare_one(
    scenario: str, runs: int, anchor_cmd: list[str] | None, wharf_cmds: dict[str, list[str]]
) -> dict[str, Any]:
    ratio_of = _RATIOS[scenario]
    rows: list[dict[str, Any]] = []
    for i in range(runs):
        row: dict[str, Any] = {"run": i + 1}
        steps: list[tuple[str, list[str]]] = []
        if anchor_cmd is not None:
            steps.append(("rabbitmq", anchor_cmd))
        steps += [(k, [sys.executable, "-m", "benchmarks", *v]) for k, v in wharf_cmds.items()]
        if i % 2:
            steps.reverse()
        for name, cmd in steps:
            if scenario == "mem" and name == "rabbitmq":
                _wait_beam_settled()
            log(f"{scenario} run {i + 1}/{runs}: {name}")
            row[name] = _run_json(cmd)
        for name in wharf_cmds:
            row[f"ratio_{name}"] = ratio_of(row.get("rabbitmq"), row.get(name))
        rows.append(row)
    summary: dict[str, Any] = {"runs": rows}
    for name in ["rabbitmq", *wharf_cmds]:
        summary[f"median_{name}"] = _median_figures(rows, name, _FIGURES[scenario])
    for name in wharf_cmds:
        summary[f"median_ratio_{name}"] = _median([r.get(f"ratio_{name}") for r in rows])
    return summary


def _ratio(num: Any, den: Any) -> float | None:
    """num/den; None when either side is missing or not positive (a failed measurement)."""
    if not isinstance(num, (int, float)) or not isinstance(den, (int, float)):
        return None
    if num <= 0 or den <= 0:
        return None
    return round(num / den, 3)


def _get(result: dict[str, Any] | None, key: str) -> Any:
    return result.get(key) if isinstance(result, dict) else None


_RATIOS: Final[dict[str, Callable[[Any, Any], float | None]]] = {
    "throughput": lambda r, w: _ratio(_get(w, "end_to_end_msgs_s"), _get(r, "end_to_end_msgs_s")),
    "durable": lambda r, w: _ratio(_get(w, "end_to_end_msgs_s"), _get(r, "end_to_end_msgs_s")),
    "latency": lambda r, w: _ratio(_get(r, "p99_ms"), _get(w, "p99_ms")),
    "mem": lambda r, w: _ratio(_get(r, "rss_bytes_per_msg"), _get(w, "rss_bytes_per_msg")),
}
_FIGURES: Final[dict[str, tuple[str, ...]]] = {
    "throughput": ("publish_msgs_s", "confirmed_msgs_s", "end_to_end_msgs_s", "p50_ms", "p99_ms"),
    "durable": ("publish_msgs_s", "confirmed_msgs_s", "end_to_end_msgs_s", "p50_ms", "p99_ms"),
    "latency": ("p50_ms", "p99_ms", "p999_ms", "max_ms"),
    "mem": ("rss_bytes_per_msg", "rss_after_mb"),
}


def _beam_rss_bytes() -> int:
    out = subprocess.run(
        ["ps", "-C", "beam.smp", "-o", "rss="], capture_output=True, text=True, check=False
    ).stdout
    return sum(int(x) for x in out.split()) * 1024


def _wait_beam_settled() -> None:
    start = time.monotonic()
    readings: list[int] = []
    while time.monotonic() - start < BEAM_SETTLE_TIMEOUT_S:
        readings = [*readings[-(BEAM_SETTLE_WINDOW - 1) :], _beam_rss_bytes()]
        if len(readings) == BEAM_SETTLE_WINDOW and max(readings) <= min(readings) * (
            1 + BEAM_SETTLE_TOLERANCE
        ):
            break
        time.sleep(BEAM_SETTLE_POLL_S)
    else:
        log(f"RabbitMQ RSS still moving after {BEAM_SETTLE_TIMEOUT_S}s; measuring anyway")
        return
    took = time.monotonic() - start
    log(f"RabbitMQ RSS steady at {readings[-1] / 2**20:.0f} MiB after {took:.0f}s")


def _median(values: list[Any]) -> float | None:
    nums = [v for v in values if isinstance(v, (int, float))]
    return round(statistics.median(nums), 3) if nums else None


def _median_figures(rows: list[dict[str, Any]], name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: _median([_get(r.get(name), k) for r in rows]) for k in keys}


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    tp = out.get("throughput")
    if tp:
        for name in ("wharf_sdk", "wharf_raw"):
            ratio = tp.get(f"median_ratio_{name}")
            if ratio is not None:
                targets[f"throughput_{name}_ge_2x"] = ratio >= TARGET_THROUGHPUT_RATIO
    lat = out.get("latency")
    if lat:
        for name in ("wharf_sdk", "wharf_raw"):
            ratio = lat.get(f"median_ratio_{name}")
            if ratio is not None:
                targets[f"latency_p99_{name}_le_rabbit"] = ratio >= TARGET_LATENCY_RATIO
    mem = out.get("mem")
    if mem:
        per_msg = mem.get("median_wharf", {}).get("rss_bytes_per_msg")
        if per_msg is not None:
            targets["rss_per_msg_le_400"] = per_msg <= TARGET_RSS_BYTES_PER_MSG
    return targets


def _rabbit_problem(anchors: str, anchor_python: str) -> str | None:
    if not port_open(RABBIT_HOST, RABBIT_PORT):
        return (
            f"RabbitMQ not reachable on {RABBIT_HOST}:{RABBIT_PORT} "
            "(start it with /work/shared/anchors/start_rabbitmq.sh); Wharf figures only"
        )
    if not os.access(anchor_python, os.X_OK):
        return f"anchor python {anchor_python} not found; Wharf figures only"
    if not (Path(anchors) / "rabbit_raw.py").exists():
        return f"anchor scripts not found in {anchors}; Wharf figures only"
    return None


def _run_json(cmd: list[str]) -> dict[str, Any]:
    """Run a benchmark command and parse the last JSON object it prints on stdout."""
    try:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
            cwd=REPO_ROOT,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {RUN_TIMEOUT_S}s: {' '.join(cmd)}"}
    for line in reversed(proc.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                parsed: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            if proc.returncode:
                parsed.setdefault("exit_code", proc.returncode)
            return parsed
    return {"error": f"exit {proc.returncode}, no JSON from: {' '.join(cmd)}"}
