"""``python -m benchmarks ui``: the web UI against a big broker (issue 16's targets).

A ``wharf serve`` subprocess is filled through the SDK with ``--queues`` queues (10,000),
``--connections`` open SDK connections (1,000) and ``--topics`` topics (100); headless
chromium (Debian's, through Playwright) then logs in and loads the Overview and Queues
pages ``--runs`` times each: the figure is the time from the navigation to the page
showing the broker's data (the Overview's totals, the Queues table's first row).  Then the
broker's CPU time (``/proc/PID/stat``) is read over ``--seconds`` with no tab open and
with one tab on the Overview at the default 5 s refresh.  Last, message throughput
(``benchmarks throughput``'s raw client, ``--tp-count`` messages) is measured on the same
broker with no tab and with ``--tabs`` tabs open (Overview, Queues, Connections, ...; each
loaded, its network idle, before the run starts), alternately, ``--tp-runs`` times each.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any, Final

import wharf
from benchmarks.perf import scenarios
from benchmarks.perf.common import Target, emit, local_broker, log, run_async

CHROMIUM: Final = os.environ.get("WHARF_TEST_CHROMIUM", "/usr/bin/chromium")
DECLARE_BATCH: Final = 500
CONNECT_BATCH: Final = 50
PAGE_TIMEOUT_MS: Final = 30_000


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


async def fill(target: Target, queues: int, topics: int, connections: int) -> list[Any]:
    url = f"wharf://{target.username}:{target.password}@{target.host}:{target.port}"
    conn = await wharf.connect(url)
    for start in range(0, queues, DECLARE_BATCH):
        names = range(start, min(queues, start + DECLARE_BATCH))
        await asyncio.gather(*(conn.declare_queue(f"bench.q{i:05d}") for i in names))
    await asyncio.gather(
        *(conn.create_topic(f"bench.t{i:03d}", partitions=3) for i in range(topics))
    )
    log(f"{queues} queues and {topics} topics declared")
    opened: list[Any] = [conn]
    while len(opened) < connections:
        n = min(CONNECT_BATCH, connections - len(opened))
        opened += await asyncio.gather(*(wharf.connect(url) for _ in range(n)))
    log(f"{len(opened)} connections open")
    return opened


async def page_times(base: str, runs: int) -> dict[str, list[float]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        await page.goto(base + "/")
        await page.fill("#login-user", "guest")
        await page.fill("#login-password", "guest")
        await page.click("button[type=submit]")
        await page.wait_for_selector("#whoami:has-text('guest')")
        out: dict[str, list[float]] = {"overview": [], "queues": []}
        for _ in range(runs):
            for name, ready in (
                ("overview", "#page dl.facts dd"),
                ("queues", "#page table tbody tr"),
            ):
                await page.goto("about:blank")
                t0 = time.perf_counter()
                await page.goto(f"{base}/#/{name}")
                await page.wait_for_selector(ready)
                out[name].append(time.perf_counter() - t0)
        await browser.close()
    return out


async def tab_cpu(base: str, pid: int, seconds: float) -> dict[str, float]:
    from playwright.async_api import async_playwright

    idle0 = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    idle = cpu_seconds(pid) - idle0
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page()
        await page.goto(base + "/")
        await page.fill("#login-user", "guest")
        await page.fill("#login-password", "guest")
        await page.click("button[type=submit]")
        await page.wait_for_selector("#page dl.facts dd")
        busy0 = cpu_seconds(pid)
        await asyncio.sleep(seconds)
        busy = cpu_seconds(pid) - busy0
        await browser.close()
    return {
        "broker_cpu_idle_pct": round(100 * idle / seconds, 2),
        "broker_cpu_one_tab_pct": round(100 * busy / seconds, 2),
        "one_tab_cost_pct": round(100 * (busy - idle) / seconds, 2),
    }


TAB_PAGES: Final = ("overview", "queues", "connections", "topics", "groups")


async def login(page: Any, base: str) -> None:
    await page.goto(base + "/")
    await page.fill("#login-user", "guest")
    await page.fill("#login-password", "guest")
    await page.click("button[type=submit]")
    await page.wait_for_selector("#whoami:has-text('guest')")


def browser_cpu_seconds() -> float:
    """CPU time of every chromium process on the machine (the tabs' own cost)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if "chrom" not in f.read():
                    continue
            total += cpu_seconds(int(entry))
        except OSError:
            continue  # gone meanwhile
    return total


def one_throughput(target: Target, count: int) -> float:
    url = f"wharf://{target.username}:{target.password}@{target.host}:{target.port}"
    result = scenarios.throughput(
        url=url,
        count=count,
        size=100,
        producers=1,
        consumers=1,
        batch=500,
        prefetch=2000,
        msg_rate=0.0,
        confirm=True,
        inflight=4,
        raw=True,
        timeout_s=300.0,
    )
    return float(result["end_to_end_msgs_s"] or 0.0)


async def throughput_with_tabs(target: Target, tabs: int, count: int, runs: int) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    assert target.http_url is not None
    without: list[float] = []
    with_tabs: list[float] = []
    # Broker CPU seconds per run, and the browser's during the runs with tabs.
    broker_cpu: dict[str, list[float]] = {"none": [], "tabs": []}
    browser_cpu: list[float] = []
    assert target.pid is not None
    pid = target.pid
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for _ in range(runs):
            c0 = cpu_seconds(pid)
            without.append(await asyncio.to_thread(one_throughput, target, count))
            broker_cpu["none"].append(cpu_seconds(pid) - c0)
            context = await browser.new_context()
            for i in range(tabs):
                page = await context.new_page()
                if i == 0:  # the others share its session cookie
                    await login(page, target.http_url)
                await page.goto(f"{target.http_url}/#/{TAB_PAGES[i % len(TAB_PAGES)]}")
                await page.wait_for_selector("#page h1")
                # Open, not opening: the tab's first load (the OpenAPI document, the
                # page's first data) is over before the run; its polling is measured.
                await page.wait_for_load_state("networkidle")
            c0, b0 = cpu_seconds(pid), browser_cpu_seconds()
            with_tabs.append(await asyncio.to_thread(one_throughput, target, count))
            broker_cpu["tabs"].append(cpu_seconds(pid) - c0)
            browser_cpu.append(browser_cpu_seconds() - b0)
            await context.close()
        await browser.close()
    a, b = statistics.median(without), statistics.median(with_tabs)
    return {
        "tabs": tabs,
        "end_to_end_msgs_s_no_tab": [round(x) for x in without],
        f"end_to_end_msgs_s_{tabs}_tabs": [round(x) for x in with_tabs],
        "throughput_change_pct": round(100 * (b - a) / a, 1) if a else None,
        # What the broker spends per message, tabs or not: the tabs' own cost to it.
        "broker_cpu_us_per_msg_no_tab": round(
            1e6 * statistics.median(broker_cpu["none"]) / count, 2
        ),
        f"broker_cpu_us_per_msg_{tabs}_tabs": round(
            1e6 * statistics.median(broker_cpu["tabs"]) / count, 2
        ),
        "browser_cpu_s_per_run_with_tabs": round(statistics.median(browser_cpu), 2),
    }


async def run(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    assert target.http_url is not None and target.pid is not None
    opened = await fill(target, args.queues, args.topics, args.connections)
    try:
        times = await page_times(target.http_url, args.runs)
        cpu = await tab_cpu(target.http_url, target.pid, args.seconds)
        tp = await throughput_with_tabs(target, args.tabs, args.tp_count, args.tp_runs)
    finally:
        await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)
    return {
        "scenario": "ui",
        "queues": args.queues,
        "topics": args.topics,
        "connections": args.connections,
        **{f"{k}_load_s_median": round(statistics.median(v), 3) for k, v in times.items()},
        **{f"{k}_load_s_max": round(max(v), 3) for k, v in times.items()},
        **cpu,
        "cpu_window_s": args.seconds,
        **tp,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks ui", description=__doc__)
    parser.add_argument("--queues", type=int, default=10_000)
    parser.add_argument("--topics", type=int, default=100)
    parser.add_argument("--connections", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="each CPU window")
    parser.add_argument("--tabs", type=int, default=5)
    parser.add_argument("--tp-count", type=int, default=300_000, help="messages per run")
    parser.add_argument("--tp-runs", type=int, default=3)
    args = parser.parse_args(argv)
    with local_broker() as target:
        emit(run_async(run(args, target)))
    return 0
